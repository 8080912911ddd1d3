"""``miars new-plugin``: write an installable plugin package from working templates.

The package (``NAME/``) has a ``pyproject.toml`` with the ``miars`` entry point, one module per
component under ``src/<module>/`` (from ``miars_core/templates/plugin/*.py.tmpl``), the hooks in
``src/<module>/__init__.py``, tests that run the conformance checks of
:mod:`miars_core.kit.checks` on every component (``tests/test_conformance.py``) and a README.
The generated package passes its own tests unchanged (miars' test suite generates, installs and
tests one per kind). Bad input (a name that is not a distribution or module name, an unknown
kind, a folder that exists) is one ``MiarsError`` line, and nothing is written.
"""

from __future__ import annotations

import difflib
import keyword
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from string import Template

from .contracts.errors import MiarsError

TEMPLATES = Path(__file__).resolve().parent / "templates" / "plugin"


@dataclass(frozen=True)
class Kind:
    """One kind of component the scaffold writes."""

    name: str  # --kind value, also the registered name's suffix
    hook: str  # the hook that registers it
    label: str  # the class name's suffix
    test: str  # the conformance check call in the generated tests ({cls} is the class)
    summary: str


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("recommender", "register_recommenders", "Recommender", "checks.check_recommender({cls})",
         "item co-occurrence kNN with fold-in (recommend_for, new_accounts) and the state contract (get_state, set_state)"),
    Kind("defense", "register_defenses", "Defense",
         'checks.check_list_defense({cls}, bad_params=[{{"share": -0.1}}, {{"share": 2}}])',
         "a defense on the served lists"),
    Kind("data-defense", "register_defenses", "DataDefense",
         'checks.check_data_defense({cls}, bad_params=[{{"max_items": 0}}])', "a defense on the training data"),
    Kind("training-defense", "register_defenses", "TrainingDefense",
         'checks.check_training_defense({cls}, bad_params=[{{"epsilon": 0}}, {{"epsilon": -1}}])',
         "a defense on training, with a DP claim (privacy_)"),
    Kind("attack", "register_attacks", "Attack", "checks.check_attack({cls})", "an attack model on feature rows"),
    Kind("list-attack", "register_attacks", "ListAttack", "checks.check_attack({cls})",
         'an attack on the served lists (threat = "lists")'),
    Kind("query-attack", "register_attacks", "QueryAttack", "checks.check_attack({cls})",
         'an attack with query access (threat = "queries")'),
    Kind("service", "register_services", "Service", "checks.check_service({cls})",
         "what accounts the model was not trained on are served"),
    Kind("featurizer", "register_featurizers", "Featurizer", "checks.check_featurizer({cls})",
         "features from a user's items and served list"),
    Kind("dataset", "register_datasets", "Dataset", "checks.check_dataset({cls}, data_dir=tmp_path)",
         "a dataset loader (CSV pairs)"),
)}
#: Module names a plugin must not take: miars' own, and the built-in plugins'.
RESERVED = ("miars", "miars_core", "miars_datasets", "miars_recbole", "miars_attacks", "miars_defenses", "miars_services")
#: Entry-point names of the built-in plugins (a plugin's own must differ).
BUILTIN_ENTRY_POINTS = ("datasets", "recbole", "attacks", "defenses", "services")
_DIST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


def parse_kinds(values) -> list[str]:
    """``--kind`` values (repeatable, comma-separated) as known kinds, in the order of :data:`KINDS`."""
    if isinstance(values, str):
        values = [values]
    items = []
    for value in values or ["recommender"]:
        items += [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise MiarsError(f"--kind is empty; choose from: {', '.join(KINDS)}")
    for item in items:
        if item not in KINDS:
            hint = difflib.get_close_matches(item, list(KINDS), n=1, cutoff=0.5)
            did = f" (did you mean {hint[0]}?)" if hint else ""
            raise MiarsError(f"--kind {item!r} is not a kind of component{did}; choose from: {', '.join(KINDS)}")
    return [k for k in KINDS if k in items]


def names(name: str) -> dict[str, str]:
    """The distribution, module, entry-point and component base names of plugin ``name`` (or a MiarsError)."""
    if not isinstance(name, str) or not _DIST_NAME.match(name):
        raise MiarsError(f"plugin name {name!r} is not a valid distribution name: letters, digits, '-', '_' and '.', "
                         "starting and ending with a letter or digit; e.g. miars-ease")
    module = re.sub(r"[-_.]+", "_", name).lower()
    if not module.isidentifier() or keyword.iskeyword(module):
        raise MiarsError(f"plugin name {name!r} gives the module name {module!r}, which is not a Python identifier "
                         "(it must not start with a digit nor be a keyword); e.g. miars-ease")
    if module in RESERVED or module in getattr(sys, "stdlib_module_names", ()):
        raise MiarsError(f"plugin name {name!r} gives the module name {module!r}, which miars or Python already uses; "
                         "choose another, e.g. miars-ease")
    short = module[len("miars_"):] if module.startswith("miars_") and len(module) > len("miars_") else module
    entry = short if short not in BUILTIN_ENTRY_POINTS else module
    camel = "".join(part.capitalize() for part in short.split("_") if part)
    return {"dist": name, "module": module, "entry": entry, "short": short.replace("_", "-"), "camel": camel}


def new_plugin(name: str, kinds=None, out: str | os.PathLike | None = None) -> Path:
    """Write the plugin package ``NAME`` with one component per kind into ``out/NAME``; return its folder.

    Everything is checked first (the name, the kinds, the folder); the package is written into a
    temporary folder beside the target and renamed into place, so a failure leaves nothing behind.
    """
    chosen = parse_kinds(kinds)
    n = names(name)
    parent = Path(os.path.expanduser(os.fspath(out))) if out else Path(".")
    if parent.exists() and not parent.is_dir():
        raise MiarsError(f"--out {str(parent)!r} is a file, not a folder; pass a folder to write {name}/ into")
    target = parent / name
    if os.path.lexists(target):
        raise MiarsError(f"{str(target)!r} exists; choose another name or --out folder (new-plugin never overwrites)")
    files = render(n, chosen)
    created = not parent.exists()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp"))
    except OSError as exc:
        raise MiarsError(f"--out {str(parent)!r} cannot be written ({exc.strerror or exc}); pass a writable folder") from None
    try:
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        os.chmod(staging, 0o755)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(parent, ignore_errors=True)
        raise
    return target


def _classes(n: dict[str, str], chosen: list[str]) -> dict[str, tuple[str, str]]:
    """``{kind: (class name, registered name)}``."""
    return {k: (f"{n['camel']}{KINDS[k].label}", f"{n['short']}-{k}") for k in chosen}


def render(n: dict[str, str], chosen: list[str]) -> dict[str, str]:
    """Every file of the package, ``{relative path: text}``."""
    classes = _classes(n, chosen)
    values = {"dist": n["dist"], "module": n["module"]}
    for kind, (cls, registered) in classes.items():
        key = kind.replace("-", "_")
        values[f"{key}_class"], values[f"{key}_name"] = cls, registered
    src = f"src/{n['module']}"
    files = {
        "pyproject.toml": _pyproject(n, chosen),
        "README.md": _readme(n, chosen, classes),
        f"{src}/__init__.py": _init(n, chosen, classes),
        "tests/test_conformance.py": _tests(n, chosen, classes),
        ".gitignore": "__pycache__/\n*.egg-info/\n.pytest_cache/\nbuild/\ndist/\n",
    }
    for kind in chosen:
        key = kind.replace("-", "_")
        text = (TEMPLATES / f"{key}.py.tmpl").read_text(encoding="utf-8")
        files[f"{src}/{key}.py"] = Template(text).substitute(values)
    return files


def _pyproject(n: dict[str, str], chosen: list[str]) -> str:
    from . import __version__

    what = ", ".join(chosen)
    return f'''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "{n['dist']}"
version = "0.1.0"
description = "A miars plugin: {what}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["miars>={__version__}"]

[project.optional-dependencies]
test = ["pytest>=8"]

# miars finds plugins through this entry-point group; the name is what `miars plugins` shows.
[project.entry-points.miars]
{n['entry']} = "{n['module']}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''


def _init(n: dict[str, str], chosen: list[str], classes: dict[str, tuple[str, str]]) -> str:
    lines = [f'"""{n["dist"]}: a miars plugin ({", ".join(chosen)}).', "",
             "Each hook imports its components inside the function, so `miars --help` and every command",
             'stay fast (docs/plugins.md, "Rules"). docs/hooks.md has every contract.', '"""', "",
             "from miars_core.contracts.hookspecs import hookimpl", "", '__version__ = "0.1.0"', ""]
    hooks: dict[str, list[str]] = {}
    for kind in chosen:
        hooks.setdefault(KINDS[kind].hook, []).append(kind)
    for hook, kinds in hooks.items():
        lines += ["", "@hookimpl", f"def {hook}(register):"]
        for kind in kinds:
            cls, _ = classes[kind]
            lines.append(f"    from .{kind.replace('-', '_')} import {cls}")
        lines.append("")
        for kind in kinds:
            cls, registered = classes[kind]
            lines.append(f'    register("{registered}", {cls})')
        lines.append("")
    return "\n".join(lines)


def _tests(n: dict[str, str], chosen: list[str], classes: dict[str, tuple[str, str]]) -> str:
    module = n["module"]
    lines = [f'"""The conformance checks of miars (miars_core.kit.checks) on every component of {n["dist"]}.', "",
             "Run them with `pytest` after `pip install -e \".[test]\"`.", '"""', "",
             "from importlib.metadata import entry_points", "", "from miars_core.kit import checks", "",
             f"import {module}"]
    for kind in chosen:
        lines.append(f"from {module}.{kind.replace('-', '_')} import {classes[kind][0]}")
    for kind in chosen:
        cls, _ = classes[kind]
        key = kind.replace("-", "_")
        lines += ["", ""]
        if kind == "dataset":
            lines += [f"def test_{key}(tmp_path):",
                      '    (tmp_path / "pairs.csv").write_text("u1,a\\nu1,b\\nu2,b\\nu2,c\\nu1,a\\n")',
                      f"    data = {KINDS[kind].test.format(cls=cls)}",
                      "    assert (data.n_users, data.n_items, data.n_interactions) == (2, 3, 4)  # repeats count once"]
        else:
            lines += [f"def test_{key}():", f"    {KINDS[kind].test.format(cls=cls)}"]
    checked = [f"{'defense' if 'defense' in k else 'attack' if 'attack' in k else k}:{classes[k][1]}"
               for k in chosen if k != "dataset"]
    order = ["recommender", "defense", "featurizer", "attack", "service"]  # check_plugin's order of kinds
    checked.sort(key=lambda s: order.index(s.split(":")[0]))
    listed = "".join(f"\n        {c!r}," for c in checked)
    lines += ["", "", "def test_the_plugin_registers_every_component():  # and passes the checks (datasets: above)",
              f"    assert checks.check_plugin({module}) == [{listed}\n    ]" if checked else
              f"    assert checks.check_plugin({module}) == []",
              "", "", "def test_the_plugin_is_installed():",
              f'    assert "{module}" in {{ep.value for ep in entry_points(group="miars")}}, "pip install -e . first"', ""]
    return "\n".join(lines)


def _readme(n: dict[str, str], chosen: list[str], classes: dict[str, tuple[str, str]]) -> str:
    rows = "\n".join(f"| `{registered}` | {kind} | `src/{n['module']}/{kind.replace('-', '_')}.py` ({cls}) | "
                     f"{KINDS[kind].summary} |" for kind, (cls, registered) in classes.items())
    flags = {"recommender": "--target", "defense": "--defense", "data-defense": "--defense",
             "training-defense": "--defense", "attack": "--attack", "list-attack": "--attack",
             "query-attack": "--attack", "service": "--service", "featurizer": "--featurizer", "dataset": "--dataset"}
    uses = "\n".join(f"miars attack {flags[k]} {registered}" + (" --service foldin" if k == "query-attack" else "")
                     + (" --data-dir DIR" if k == "dataset" else "") for k, (_, registered) in classes.items())
    return f"""# {n['dist']}

A [miars](https://pypi.org/project/miars/) plugin: {', '.join(chosen)}. Written by `miars new-plugin`;
every component is a working template to replace with your own, keeping its contract.

| name | kind | module | what the template does |
| --- | --- | --- | --- |
{rows}

## Install and test

```bash
pip install -e ".[test]"   # registers the entry point `{n['entry']}` of the `miars` group
pytest                     # the conformance checks of miars on every component
miars plugins              # {n['entry']}: loaded, with what it provides
```

## Use

```bash
{uses}
```

or from Python: `miars_core.api.attack(...)` with the same options.

## Where things are

* `src/{n['module']}/__init__.py`: the hooks that register the components (imports inside the hooks keep
  `miars --help` fast).
* `src/{n['module']}/<kind>.py`: one module per component; the docstring's first line is the summary of
  `miars list <kind>`; attacks and defenses cite their paper there.
* `tests/test_conformance.py`: `miars_core.kit.checks` on each component and on the whole plugin.

The contracts (every method, what it must return, the check that enforces it) are in miars'
docs, "Hooks" (docs/hooks.md); the guide is "Writing plugins" (docs/plugins.md).
"""
