"""`miars list` and the component options' help name what the plugin registry holds: built-ins and
installed plugins alike, read when the help is shown (not when the CLI is imported)."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
from typer.testing import CliRunner

from miars_core import cli
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.plugins import get_plugins

RUNNER = CliRunner()
ENV = {"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}


class EchoService:
    """Serves non-members the first k items (a test service)."""


class NothingDefense:
    """Changes nothing (a test defense)."""

    acts_on = "lists"


@hookimpl
def register_services(register):
    register("echo-service", EchoService)


@hookimpl
def register_defenses(register):
    register("nothing-defense", NothingDefense)


@pytest.fixture
def test_plugin(monkeypatch):
    """A plugin registered in this test beside the built-ins, as the process-wide plugins."""
    import miars_core.contracts.plugins as plugins_module

    module = types.ModuleType("help_test_plugin")
    module.register_services, module.register_defenses = register_services, register_defenses
    monkeypatch.setattr(plugins_module, "_cached", get_plugins(extra=[module]))
    return module


def _flat(text: str) -> str:
    """Help text without rich's box and line breaks (a name may wrap)."""
    return " ".join(text.replace("│", " ").split())


def test_a_plugin_s_service_and_defense_show_in_miars_list(test_plugin):
    rows = {r["name"]: r for r in json.loads(RUNNER.invoke(cli.app, ["list", "service", "--json"]).stdout)}
    assert rows["echo-service"]["plugin"] == "help_test_plugin" and {"popular", "foldin"} <= set(rows)
    assert "first k items" in rows["echo-service"]["summary"]
    table = RUNNER.invoke(cli.app, ["list", "defenses"], env=ENV)
    assert table.exit_code == 0 and "nothing-defense" in table.stdout and "help_test_plugin" in table.stdout


@pytest.mark.parametrize("command", [["attack"], ["grid"], ["bench-defenses"]])
def test_a_plugin_s_components_show_in_the_options_help(test_plugin, command):
    res = RUNNER.invoke(cli.app, [*command, "--help"], env=ENV)
    assert res.exit_code == 0, res.output
    text = _flat(res.stdout)
    service = text.split("--service ", 1)[1].split(" --", 1)[0]
    assert "installed: echo-service, foldin, popular" in service, service
    defense = text.split("--defense ", 1)[1].split(" --", 1)[0]
    assert "nothing-defense" in defense and "popularity-randomization" in defense
    assert "{installed:" not in text


def test_miars_attack_help_names_the_plugin_s_service(test_plugin):
    res = RUNNER.invoke(cli._attack_app(), ["--help"], env=ENV)
    assert res.exit_code == 0 and "echo-service" in _flat(res.stdout)


def test_the_help_lists_registry_names_and_survives_a_failing_registry():
    assert cli.fill_help("x; installed: {installed:service}.") == "x; installed: foldin, popular."
    assert cli.fill_help("{installed:recommender}").endswith("recbole:<Name>")

    def broken(kind):
        raise RuntimeError("a broken plugin")

    assert cli.fill_help("installed: {installed:service}", names=broken) == "installed: see `miars list service`"


def test_importing_the_cli_and_miars_help_load_no_plugin():
    """The lists are read when a command's help is shown: `miars --help` stays as fast as before."""
    code = ("import sys; from miars_core import cli; cli.app(['--help'], standalone_mode=False); "
            "print(sorted(m for m in sys.modules if m.startswith(('miars_attacks', 'miars_services', 'miars_defenses'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
