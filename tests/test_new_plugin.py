"""``miars new-plugin``: the generated package installs and passes its own tests, for every kind; bad input writes nothing.

The packages are installed for real, offline: ``pip install --no-deps --no-build-isolation --no-index
--target SITE`` builds each one's wheel with the installed setuptools and installs it (modules and
``.dist-info`` with the entry points) into a folder put on ``PYTHONPATH``, never into the test's own
environment. Their own tests then run, unchanged, in one pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miars_core import cli
from miars_core.contracts.plugins import AUTOLOAD_VAR
from miars_core.scaffold import KINDS, names, new_plugin

RUNNER = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _install(site: Path, packages: list[Path]) -> None:
    """``pip install`` the packages into ``site`` without the network, their dependencies or a build environment."""
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--disable-pip-version-check", "--target", str(site), *map(str, packages)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """One generated package per kind, and one with every kind; each installed on a shared site folder."""
    root = tmp_path_factory.mktemp("plugins")
    made = {kind: new_plugin(f"miars-t-{kind}", [kind], root) for kind in KINDS}
    made["all"] = new_plugin("miars-everything", list(KINDS), root)
    site = root / "site"
    _install(site, list(made.values()))
    env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_VAR}  # the entry points of these packages load
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])  # the installed modules, not the sources
    return root, made, env


def test_every_generated_package_passes_its_own_tests(packages):
    root, made, env = packages
    (root / "pytest.ini").write_text("[pytest]\n")
    tests = [str(p / "tests") for p in made.values()]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
                           "-c", str(root / "pytest.ini"), "--rootdir", str(root), *tests],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    per_kind = {kind: 3 for kind in KINDS}  # its check, check_plugin, installed
    expected = sum(per_kind.values()) + len(KINDS) + 2
    assert f"{expected} passed" in proc.stdout, proc.stdout[-2000:]


def test_the_installed_plugin_is_listed_and_runs_by_name(packages, small_dataset, tmp_path):
    _, made, env = packages
    listed = subprocess.run([sys.executable, "-m", "miars_core", "list", "recommender", "--json"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r["plugin"] for r in json.loads(listed.stdout)}
    assert rows["t-recommender-recommender"] == "t_recommender" and rows["everything-recommender"] == "everything"
    run = subprocess.run([sys.executable, "-m", "miars_core", "attack", "--dataset", str(small_dataset), "--target",
                          "t-recommender-recommender", "--defense", "everything-defense", "--service", "everything-service",
                          "--top-k", "10", "--attack-param", "epochs=20", "--no-cache", "-q", "--out", str(tmp_path / "r")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["recommenders"]["target"]["name"] == "t-recommender-recommender"
    assert result["versions"]["plugins"]["everything"]["version"] == "0.1.0"


def test_the_package_has_what_pip_and_pytest_need(packages):
    _, made, _ = packages
    package = made["all"]
    text = (package / "pyproject.toml").read_text()
    assert 'name = "miars-everything"' in text and '[project.entry-points.miars]\neverything = "miars_everything"' in text
    assert sorted(p.name for p in (package / "src" / "miars_everything").iterdir()) == sorted(
        ["__init__.py", *(f"{k.replace('-', '_')}.py" for k in KINDS)])
    # the recommender template shows the optional state contract (check_recommender then stores and loads it)
    assert "def get_state" in (package / "src" / "miars_everything" / "recommender.py").read_text()
    readme = (package / "README.md").read_text()
    assert "pip install -e" in readme and "miars attack --target everything-recommender" in readme
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())  # miars ships the templates with its wheel
    assert "templates/plugin/*.tmpl" in ours["tool"]["setuptools"]["package-data"]["miars_core"]


@pytest.mark.parametrize("args, words", [
    (["my plugin"], ["'my plugin' is not a valid distribution name"]),
    (["9lives"], ["module name '9lives'", "not a Python identifier"]),
    (["json"], ["'json'", "already uses"]),
    (["miars-core"], ["'miars_core'", "already uses"]),
    (["miars-ease", "--kind", "recomender"], ["--kind 'recomender'", "did you mean recommender?"]),
    (["miars-ease", "--kind", "recommender,nope"], ["--kind 'nope'", "choose from: recommender"]),
    (["taken"], ["exists", "never overwrites"]),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(args, words, tmp_path):
    (tmp_path / "taken").mkdir()
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = RUNNER.invoke(cli.app, ["new-plugin", *args, "--out", str(tmp_path)])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("miars: error: "), res.stderr
    for word in words:
        assert word in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_the_command_writes_the_package_and_says_what_next(tmp_path):
    res = RUNNER.invoke(cli.app, ["new-plugin", "miars-ease", "--kind", "recommender,defense", "--out", str(tmp_path / "new")])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"wrote {tmp_path / 'new' / 'miars-ease'}") and "pip install -e" in res.stdout
    assert (tmp_path / "new" / "miars-ease" / "src" / "miars_ease" / "defense.py").is_file()
    assert not [p for p in (tmp_path / "new").iterdir() if p.name.startswith(".")]  # no staging folder left
    assert names("miars-ease") == {"dist": "miars-ease", "module": "miars_ease", "entry": "ease", "short": "ease",
                                   "camel": "Ease"}
