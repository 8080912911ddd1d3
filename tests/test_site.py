"""The docs site builds with ``mkdocs build --strict``, and its generated references match the code."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miars_core import cli
from miars_core.docgen import cli_options, cli_reference, command_names, hook_reference, hook_specs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NAV_PAGES = ("index", "tutorial", "reproduce", "cli", "hooks", "plugins", "protocol", "recbole", "notes")

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs-material is not installed (pip install -e '.[test]' installs it)",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _text(page: Path) -> str:
    """The page's text: tags removed without a gap (highlighted code is split into many spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


@needs_mkdocs
def test_site_builds_strict_with_every_page(site):
    for name in NAV_PAGES:
        assert (site / f"{name}.html").is_file(), f"{name}.html missing from the built site"
    assert (site / "img" / "report.png").is_file()
    assert not (site / "_hooks").exists(), "the build hook must not be published"


@needs_mkdocs
def test_built_cli_page_lists_every_command_and_option(site):
    text = _text(site / "cli.html")
    assert "<!-- miars:cli-reference -->" not in (site / "cli.html").read_text()
    for name in command_names():
        assert f"miars {name}" in text
        for flag in cli_options(name):
            assert flag in text, f"{flag} of `miars {name}` missing from cli.html"


@needs_mkdocs
def test_built_hook_page_lists_every_hook(site):
    text = _text(site / "hooks.html")
    for name, fn in hook_specs():
        assert f"def {name}(" in text
        first_sentence = fn.__doc__.split("``")[0].strip()  # the text before any code, e.g. "Register dataset loaders:"
        assert first_sentence in text


FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def test_cli_reference_agrees_with_help():
    """The options ``miars CMD --help`` prints are exactly the options the reference's table lists."""
    reference = cli_reference()
    runner = CliRunner()
    names = command_names()
    assert {"attack", "plugins", "list", "report"} <= set(names)
    for name in names:
        res = runner.invoke(cli.app, [name, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"})
        assert res.exit_code == 0, res.output
        section = reference.split(f"## `miars {name}`", 1)[1].split("\n## ", 1)[0]
        first_column = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
        documented = set(FLAG.findall(" ".join(first_column)))
        assert documented == set(f for f in cli_options(name) if f.startswith("--"))
        assert documented <= set(FLAG.findall(res.output)), f"the reference lists options `miars {name} --help` does not show"
        assert set(FLAG.findall(res.output)) <= set(FLAG.findall(section)), f"`miars {name} --help` shows options the reference lacks"


def test_hook_reference_covers_hookspecs_module():
    import miars_core.contracts.hookspecs as hookspecs

    hooks = sorted(n for n in dir(hookspecs) if n.startswith("register_"))
    assert sorted(n for n, _ in hook_specs()) == hooks
    text = hook_reference()
    for h in hooks:
        assert f"### `{h}`" in text


def test_reproduce_page_has_the_exact_grid_commands():
    text = (DOCS / "reproduce.md").read_text()
    flat = " ".join(text.replace("\\\n", " ").split())
    assert ("miars grid --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz --target item,lfm,ncf "
            "--shadow item,lfm,ncf --seed 0,1,2 --out runs/ml1m") in flat
    assert "miars grid --dataset lastfm-2k --data-dir DIR --target item,lfm,ncf --shadow item,lfm,ncf --seed 0,1,2" in flat


def test_docs_never_link_outside_the_docs_folder():
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            assert not target.startswith("../"), f"{page.name} links to {target}, outside docs/: mkdocs cannot resolve it"
