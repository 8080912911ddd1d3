"""The Python API: every ``miars`` command as a function, for notebooks and scripts.

::

    from miars_core import api

    run = api.attack(dataset="ml-100k", target="item", top_k=20, out="runs/one")
    run.metrics["roc_auc"]; run.paths["result.json"]; run.to_pandas()

    grid = api.grid(target=["item", "lfm"], shadow=["item", "lfm"], seed=[0, 1, 2], out="runs/3x3")
    grid.to_pandas().query("metric == 'roc_auc'").pivot_table(index="target", columns="shadow", values="value")

Each function takes the options of its command, by the same names (the flag without ``--``,
``-`` written ``_``: ``--top-k`` is ``top_k``, ``--target-param`` is ``target_param``) and with
the same defaults, and checks them with the command's own code: a bad value raises the
command's one-line :class:`~miars_core.contracts.errors.MiarsError`, and so does an unknown
option (with a did-you-mean), never a bare ``TypeError``. The command line calls these
functions (:mod:`miars_core.cli` adds the printing), so a result from Python is the result of
the command.

Values: a list option (``grid(target=...)``, ``seed=...``) takes a list, a single value, or the
command line's comma-separated text (``"item,lfm"``); a ``*_param`` option takes a dict
(``target_param={"epochs": 5}``; grids: ``{"lfm": {"epochs": 5}}`` for one component, or
flat for all of them; ``defense_param`` values are lists to sweep) or the command line's
``KEY=VALUE`` strings. Functions return a result object (:class:`AttackRun`,
:class:`GridRun`, :class:`AuditRun`) holding the paths written and ``.to_pandas()``: a long
table, one row per cell, attacker and metric (:data:`COLUMNS`).

Heavy modules (numpy, torch, pandas) load only inside the functions, so importing this module
is as cheap as ``miars --help``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import itertools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .contracts.errors import MiarsError
from .contracts.params import parse_value

__all__ = ["attack", "grid", "bench_defenses", "audit_dp", "report", "load", "AttackRun", "GridRun", "AuditRun",
           "COLUMNS", "result_rows"]

#: The columns of every ``to_pandas()`` table, in order. ``attacker`` is ``attack`` for an
#: undefended cell, ``defense_aware`` / ``defense_unaware`` for a defended one, and empty for the
#: rows that are not an attacker's: ``utility:<metric>`` (the target members' lists on their
#: held-out items, defended when there is a defense), ``new_accounts:<metric>`` (the same of the
#: target non-members' lists, the service's new accounts; absent from results written before it),
#: ``privacy:epsilon`` / ``privacy:delta`` (a DP defense's claim; ``dp_level`` says its unit, record or user) and ``cost:seconds`` (the
#: defended service's fit plus the defense).
COLUMNS = ("cell", "dataset", "shadow_dataset", "target", "shadow", "defense", "defense_params", "service",
           "featurizer", "attack", "top_k", "seed", "control", "dp_level", "attacker", "metric", "value")


# -- options: the command line's names and checks --------------------------------------------------
def _options(fn: Callable) -> Callable:
    """Check a call's options before ``fn`` runs: unknown names (with a did-you-mean), missing required
    ones and flags that are not booleans raise :class:`MiarsError`, never a TypeError."""
    sig = inspect.signature(fn)
    names = list(sig.parameters)
    positional = [n for n, p in sig.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    required = [n for n, p in sig.parameters.items() if p.default is p.empty]
    flags = [n for n, p in sig.parameters.items() if isinstance(p.default, bool)]
    where = f"miars_core.api.{fn.__name__}"

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if len(args) > len(positional):
            raise MiarsError(f"{where}() takes its options by name, e.g. {where}({names[0]}=...); got {len(args)} "
                             "positional values")
        given = dict(zip(positional, args))
        for name, value in kwargs.items():
            if name not in names:
                hint = difflib.get_close_matches(name.lstrip("-").replace("-", "_"), names, n=1, cutoff=0.6)
                did = f" (did you mean {hint[0]}?)" if hint else ""
                raise MiarsError(f"No such option: {name}{did}; {where} takes: {', '.join(names)}")
            if name in given:
                raise MiarsError(f"{where}() got option {name} twice")
            given[name] = value
        for name in required:
            if name not in given:
                raise MiarsError(f"Missing option {name}: {where}() needs {name}=... (the command's --{name.replace('_', '-')})")
        for name in flags:
            if name in given and not isinstance(given[name], bool):
                raise MiarsError(f"--{name.replace('_', '-')} {given[name]!r} is not a flag; pass {name}=True or "
                                 f"{name}=False")
        return fn(**given)

    return call


def _expand(path: Optional[str]) -> Optional[str]:
    """``~`` and ``~user`` expanded, as a shell would have (also in ``--opt=~/x`` forms); paths as text."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    return os.path.expanduser(path) if isinstance(path, str) and path.startswith("~") else path


def _short(path) -> str:
    text = repr(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else repr(path)
    return text if len(text) <= 160 else text[:100] + "..." + text[-50:]


def check_input_path(flag: str, path: Optional[str]) -> None:
    """A path the OS refuses outright (too long, a component that is a file, no permission)."""
    if not path or not isinstance(path, (str, bytes, os.PathLike)):
        return
    try:
        os.stat(path)
    except FileNotFoundError:
        return  # reported later with the valid choices
    except OSError as exc:
        raise MiarsError(f"{flag} {_short(path)} cannot be read ({exc.strerror or exc}); pass another path") from None
    except ValueError as exc:  # e.g. an embedded NUL
        raise MiarsError(f"{flag} {_short(path)} is not a valid path ({exc})") from None


def parse_params(values, flag: str) -> dict:
    """``KEY=VALUE`` pairs; VALUE is read as JSON when it parses (numbers, lists, true), else as text.

    From Python, a dict is taken as it is (keys must be text), and one ``KEY=VALUE`` string as a list of one.
    """
    if values is None:
        return {}
    if isinstance(values, dict):
        bad = [k for k in values if not isinstance(k, str) or not k.strip()]
        if bad:
            raise MiarsError(f"{flag} keys must be non-empty text, got {bad[0]!r}; e.g. {{'epochs': 50}}")
        return dict(values)
    if isinstance(values, str):
        values = [values]
    out: dict = {}
    for item in values:
        if not isinstance(item, str):
            raise MiarsError(f"{flag} {item!r} is not KEY=VALUE; write e.g. {flag} epochs=50 (or pass a dict)")
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MiarsError(f"{flag} {item!r} is not KEY=VALUE; write e.g. {flag} epochs=50")
        key = key.strip()  # a repeated KEY: the last one wins
        out[key] = parse_value(raw, f"{flag} {key}=...")
    return out


def _list_values(values, flag: str) -> Optional[list[str]]:
    """A list option as the command line's repeatable, comma-separated text (None: not given)."""
    if values is None:
        return None
    if isinstance(values, (str, int, float, os.PathLike)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise MiarsError(f"{flag} {values!r} is not a list; pass a list, one value or comma-separated text")
    out = []
    for value in values:
        if value is None and flag == "--defense":
            value = "none"
        if isinstance(value, bool) or not isinstance(value, (str, int, os.PathLike)):
            raise MiarsError(f"{flag} {value!r} is not a name or an integer; pass e.g. {flag} item,lfm")
        out.append(os.fspath(value) if isinstance(value, os.PathLike) else str(value))
    return out


def _scoped(values, flag: str, sweep: bool = False) -> dict[str, dict[str, Any]]:
    """``[NAME.]KEY=VALUE`` strings (the command line's), or a dict: ``{NAME: {KEY: VALUE}}`` for one
    component, ``{KEY: VALUE}`` for all (``sweep``: values are lists to sweep, a single value a list of one)."""
    from .engine.grid import parse_scoped_params

    if values is None:
        return {}
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, dict):
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
            raise MiarsError(f"{flag} {values!r}: pass a dict or [NAME.]KEY=VALUE strings, e.g. {flag} lfm.epochs=5")
        return parse_scoped_params(list(values), flag, sweep)
    flat = {k: v for k, v in values.items() if not isinstance(v, dict)}
    out = {**({"*": flat} if flat else {}), **{k: dict(v) for k, v in values.items() if isinstance(v, dict)}}
    for name, params in out.items():
        for key in params:
            if not isinstance(key, str) or not key.strip():
                raise MiarsError(f"{flag} {name}: keys must be non-empty text, got {key!r}")
    if sweep:
        out = {n: {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in d.items()} for n, d in out.items()}
    return out


def _progress(quiet: bool) -> Optional[Callable[[str], None]]:
    if quiet:
        return None
    from rich.console import Console

    return Console(stderr=True, log_path=False).log


def _note(message: str) -> None:
    """A ``miars: note:`` line on stderr: work left out, and why (shown with quiet too)."""
    try:
        print(f"miars: note: {' '.join(str(message).split())}", file=sys.stderr)
    except (OSError, UnicodeError):
        pass


def _warn(message: str, stacklevel: int = 4) -> None:
    """A Python warning pointing at the caller of the API function (through its option check)."""
    import warnings

    warnings.warn(" ".join(str(message).split()), stacklevel=stacklevel)


# -- attack -------------------------------------------------------------------------------------------
def attack_config(*, dataset="ml-100k", shadow_dataset=None, data_dir=None, download=False, target="item", shadow=None,
                  featurizer="center-diff", attack="mlp", defense=None, service="popular", top_k=100, seed=0,
                  split="interactions", min_interactions=20, target_param=None, shadow_param=None, featurizer_param=None,
                  attack_param=None, defense_param=None, service_param=None, query_budget=5, device="auto",
                  user_attributes=None, shadow_lengths=None):
    """The checked :class:`~miars_core.engine.config.AttackConfig` of ``miars attack``'s options (refused before any work)."""
    from .engine.config import AttackConfig

    dataset, data_dir, shadow_dataset = _expand(dataset), _expand(data_dir), _expand(shadow_dataset)
    user_attributes = _expand(user_attributes)
    check_input_path("--dataset", dataset)
    check_input_path("--data-dir", data_dir)
    check_input_path("--shadow-dataset", shadow_dataset)
    check_input_path("--user-attributes", user_attributes)
    config = AttackConfig(
        dataset=dataset, shadow_dataset=shadow_dataset, data_dir=data_dir, download=download,
        user_attributes=user_attributes, target=target,
        shadow=shadow or target, featurizer=featurizer, attack=attack, defense=defense, top_k=top_k, seed=seed,
        split=split, min_interactions=min_interactions,
        target_params=parse_params(target_param, "--target-param"),
        shadow_params=parse_params(shadow_param, "--shadow-param"),
        featurizer_params=parse_params(featurizer_param, "--featurizer-param"),
        attack_params=parse_params(attack_param, "--attack-param"),
        defense_params=parse_params(defense_param, "--defense-param"),
        service=service, service_params=parse_params(service_param, "--service-param"), query_budget=query_budget,
        device=device, shadow_lengths=_lengths(shadow_lengths),
    ).validate()
    # the attack built now: a bad parameter, or a query attack without queries (or fewer than it asks per
    # target user), is refused before any folder is made
    from .contracts.plugins import get_plugins
    from .science.threat import require_budget

    require_budget(get_plugins().create("attack", config.attack, **config.attack_params), config.query_budget,
                   config.attack)
    return config


def _lengths(value):
    """``--shadow-lengths`` as given (``"auto"``, ``"4,8,16"``, a list or None) -> the setting (checked by validate)."""
    from .engine.lengths import parse_shadow_lengths

    return parse_shadow_lengths(value) if isinstance(value, str) else value


def stage_store(cache: Optional[str], no_cache: bool):
    """The stage store the options ask for: a folder (default under the user cache), or memory only."""
    from .engine.store import DiskStore, MemoryStore, check_cache_dir, default_cache_dir

    if no_cache:
        if cache:
            raise MiarsError("pass either --cache DIR or --no-cache, not both")
        return MemoryStore()
    return DiskStore(check_cache_dir(_expand(cache) or default_cache_dir(), given=bool(cache)))


def write_attack(result, out: Optional[str], export_dir: Optional[str], text: Optional[str] = None) -> dict[str, Any]:
    """Write ``--out`` (result.json, scores.tsv) and ``--export-miars``; return the paths written."""
    from .reports.report import export_miars, write_result

    paths: dict[str, Any] = {}
    if out:
        path = write_result(result, out, text=text)
        paths.update({"out": path.parent, "result.json": path, "scores.tsv": path.parent / "scores.tsv"})
    if export_dir:
        paths["export"] = list(export_miars(result, export_dir))
    return paths


@dataclass
class AttackRun:
    """What :func:`attack` returns: the result, the files written and the warnings."""

    #: The :class:`~miars_core.engine.config.AttackResult` (metrics, timings, split, components, ...).
    result: Any
    #: ``out``, ``result.json``, ``scores.tsv`` (with ``out``), ``export`` (a list, with ``export_miars``).
    paths: dict[str, Any] = field(default_factory=dict)
    #: Broken cache files that were computed again (one line each).
    cache_problems: list[str] = field(default_factory=list)
    #: The warning of a target whose lists carry no signal (the metrics then measure no leak), or None.
    no_signal: Optional[str] = None

    @property
    def warnings(self) -> list[str]:
        """Every warning the command line prints."""
        return [*self.cache_problems, *([self.no_signal] if self.no_signal else [])]

    @property
    def metrics(self) -> dict:
        """The headline metrics (the defense-aware attacker's with a defense)."""
        return self.result.metrics

    @property
    def config(self):
        return self.result.config

    def to_json(self) -> dict:
        """result.json's content."""
        return self.result.to_json()

    def to_pandas(self):
        """A long table: one row per attacker and metric (:data:`COLUMNS`)."""
        from .engine.grid import cell_record

        return _frame(result_rows(self.result.to_json(), cell_record(self.result.config)))


def execute_attack(config, out: Optional[str], export_dir: Optional[str], store, force: bool = False,
                   progress: Optional[Callable[[str], None]] = None) -> tuple[AttackRun, Optional[str]]:
    """Check the outputs can be written, run ``config``, write the outputs; return the run and the one-line
    problem that writing met (None when all was written), so a caller can still show the metrics."""
    from .contracts.plugins import get_plugins
    from .engine.pipeline import cell_result
    from .engine.stages import Cell
    from .reports.report import check_outputs, flag_no_signal, render_result

    cell = Cell(config.validate(), get_plugins(), store, progress)  # builds every component: bad names fail here
    check_outputs(config, out, export_dir, force)  # then the output folders, before any work
    result = cell_result(cell)
    run = AttackRun(result, {}, list(dict.fromkeys(getattr(store, "problems", None) or [])), flag_no_signal(result))
    text = render_result(result)  # refuses NaN / infinity: never a number from a broken run
    try:
        run.paths = write_attack(result, out, export_dir, text)
    except MiarsError as exc:
        return run, str(exc)
    return run, None


@_options
def attack(*, dataset="ml-100k", shadow_dataset=None, data_dir=None, download=False, target="item", shadow=None,
           featurizer="center-diff", attack="mlp", defense=None, service="popular", top_k=100, seed=0,
           split="interactions", min_interactions=20, target_param=None, shadow_param=None, featurizer_param=None,
           attack_param=None, defense_param=None, service_param=None, query_budget=5, out=None, export_miars=None,
           cache=None, no_cache=False, quiet=False, force=False, device="auto", user_attributes=None, shadow_lengths=None) -> AttackRun:
    """``miars attack``: run the CCS'21 membership inference attack end to end; return an :class:`AttackRun`.

    Same options, defaults and checks as the command (``miars attack --help``); ``out`` writes
    result.json and scores.tsv, ``export_miars`` the authors' TSV files. ``quiet`` hides the
    progress lines (stderr). Warnings the command prints are issued as Python warnings too.
    """
    config = attack_config(dataset=dataset, shadow_dataset=shadow_dataset, data_dir=data_dir, download=download,
                           target=target, shadow=shadow, featurizer=featurizer, attack=attack, defense=defense,
                           service=service, top_k=top_k, seed=seed, split=split, min_interactions=min_interactions,
                           target_param=target_param, shadow_param=shadow_param, featurizer_param=featurizer_param,
                           attack_param=attack_param, defense_param=defense_param, service_param=service_param,
                           query_budget=query_budget, device=device, user_attributes=user_attributes, shadow_lengths=shadow_lengths)
    run, problem = execute_attack(config, _expand(out), _expand(export_miars), stage_store(cache, no_cache), force,
                                  _progress(quiet))
    if problem:
        raise MiarsError(problem)
    for line in run.warnings:
        _warn(line)
    return run


# -- grids --------------------------------------------------------------------------------------------
#: Grids at least this large say "planning N cells" before planning (it takes a few seconds per 10,000 cells).
PLANNING_NOTE_CELLS = 500


def grid_spec(*, config=None, dataset=None, shadow_dataset=None, data_dir=None, download=False, target=None,
              shadow=None, featurizer=None, attack=None, defense=None, defense_param=None, service=None,
              service_param=None, target_param=None, shadow_param=None, featurizer_param=None, attack_param=None,
              top_k=None, seed=None, split=None, min_interactions=None, query_budget=None, utility_holdout=None,
              controls=False, max_cells=None, device=None, user_attributes=None, shadow_lengths=None):
    """``miars grid``'s options (a TOML file, then the options over it) as a :class:`~miars_core.engine.grid.GridSpec`
    and the ``max_cells`` limit (given, or the file's)."""
    from .engine.grid import GridSpec, load_toml, parse_list_flag

    values = load_toml(_expand(config)) if config is not None else {}
    max_cells = max_cells if max_cells is not None else values.pop("max_cells", None)
    values.pop("max_cells", None)
    flags = {
        "dataset": parse_list_flag(_list_values(dataset, "--dataset"), "--dataset"),
        "shadow_dataset": parse_list_flag(_list_values(shadow_dataset, "--shadow-dataset"), "--shadow-dataset"),
        "target": parse_list_flag(_list_values(target, "--target"), "--target"),
        "shadow": parse_list_flag(_list_values(shadow, "--shadow"), "--shadow"),
        "featurizer": parse_list_flag(_list_values(featurizer, "--featurizer"), "--featurizer"),
        "attack": parse_list_flag(_list_values(attack, "--attack"), "--attack"),
        "defense": parse_list_flag(_list_values(defense, "--defense"), "--defense"),
        "service": parse_list_flag(_list_values(service, "--service"), "--service"),
        "top_k": parse_list_flag(_list_values(top_k, "--top-k"), "--top-k", int),
        "seed": parse_list_flag(_list_values(seed, "--seed"), "--seed", int),
        "split": split,
        "min_interactions": min_interactions,
        "query_budget": query_budget,
        "shadow_lengths": _lengths(shadow_lengths),
        "utility_holdout": utility_holdout,
        "data_dir": _expand(data_dir),
        "user_attributes": _expand(user_attributes),
        "download": download or None,
        "controls": controls or None,
        "device": device,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    for key, flag, given, sweep in (("defense_params", "--defense-param", defense_param, True),
                                    ("target_params", "--target-param", target_param, False),
                                    ("shadow_params", "--shadow-param", shadow_param, False),
                                    ("featurizer_params", "--featurizer-param", featurizer_param, False),
                                    ("attack_params", "--attack-param", attack_param, False),
                                    ("service_params", "--service-param", service_param, False)):
        if given:
            merged = dict(values.get(key, {}))
            for name, params in _scoped(given, flag, sweep).items():
                merged[name] = {**merged.get(name, {}), **params}
            values[key] = merged
    return GridSpec(**values), max_cells


def bench_spec(*, dataset=None, data_dir=None, target=None, defense=None, defense_param=None, target_param=None,
               attack=None, attack_param=None, service=None, query_budget=5, top_k=None, seed=None,
               utility_holdout=0.2, controls=False, device=None, user_attributes=None, shadow_lengths=None):
    """``miars bench-defenses``'s options as ``(GridSpec, skippable, notes)``: every registered defense at its
    documented sweep by default (one that trains none of the targets is left out, with a note)."""
    from .contracts.plugins import get_plugins
    from .engine.grid import GridSpec, parse_list_flag

    registry = get_plugins().registry("defense")
    asked = parse_list_flag(_list_values(defense, "--defense"), "--defense")
    names = [n for n in (asked or registry.names()) if n is not None]
    targets = parse_list_flag(_list_values(target, "--target"), "--target") or ["item", "lfm", "ncf"]
    overrides = _scoped(defense_param, "--defense-param", sweep=True)
    factories = {name: registry.get(name).factory for name in names}  # an unknown name fails here
    only = {name: list(getattr(f, "recommenders", None) or []) for name, f in factories.items()}
    left_out, notes = [], []
    if not asked:  # every registered defense by default: one that trains none of the targets is left out, saying so
        for name in [n for n in names if only[n] and not set(only[n]) & set(targets) and n not in overrides]:
            names.remove(name)
            left_out.append({"defense": name, "reason": f"{name}: trains only {', '.join(only[name])}, not --target "
                                                        f"{', '.join(targets)}"})
            notes.append(f"left out {left_out[-1]['reason']} (add one of them to --target, or name it with --defense)")
    for name in overrides:
        if name != "*" and name not in names:
            raise MiarsError(f"--defense-param {name}.{next(iter(overrides[name]))}=... is for defense {name!r}, which "
                             f"is not benchmarked (--defense {', '.join(names) or 'none'}); add {name} to --defense or "
                             "drop the parameter")
    for key in overrides.get("*", {}):  # an unscoped KEY: every benchmarked defense that takes KEY
        if not [n for n in names if _takes(factories[n], key)]:
            raise MiarsError(f"--defense-param {key}=...: none of the benchmarked defenses ({', '.join(names) or 'none'}) "
                             f"has a parameter {key!r}; check `miars list defense` or scope it as DEFENSE.{key}=...")
    sweeps: dict[str, dict] = {}
    skippable: set = set()
    for name in names:
        sweep = getattr(factories[name], "sweep", None) or {}
        sweeps[name] = {k: list(v) for k, v in dict(sweep).items()}
        given = {k: v for k, v in overrides.get("*", {}).items() if _takes(factories[name], k)}
        given.update(overrides.get(name, {}))
        if not given:  # only documented sweep values: one the catalogue cannot serve is skipped, not fatal
            keys = sorted(sweeps[name])
            skippable |= {(name, tuple(zip(keys, combo))) for combo in itertools.product(*(sweeps[name][k] for k in keys))}
        sweeps[name].update(given)
    recs = _scoped(target_param, "--target-param")
    spec = GridSpec(
        dataset=parse_list_flag(_list_values(dataset, "--dataset"), "--dataset") or ["ml-100k"],
        data_dir=_expand(data_dir), user_attributes=_expand(user_attributes), target=targets, shadow=None,
        defense=[None, *names], defense_params=sweeps,
        top_k=parse_list_flag(_list_values(top_k, "--top-k"), "--top-k", int) or [100],
        seed=parse_list_flag(_list_values(seed, "--seed"), "--seed", int) or [0, 1, 2],
        target_params=recs, shadow_params=recs, attack_params=_scoped(attack_param, "--attack-param"),
        attack=parse_list_flag(_list_values(attack, "--attack"), "--attack") or ["mlp"],
        service=parse_list_flag(_list_values(service, "--service"), "--service") or ["popular"],
        query_budget=query_budget, utility_holdout=utility_holdout, shadow_lengths=_lengths(shadow_lengths),
        defense_targets={k: v for k, v in only.items() if v and k in names}, skipped=left_out, controls=controls,
        device=device or "auto",
    )
    return spec, skippable, notes


def _takes(factory, key: str) -> bool:
    """Whether a component's factory takes hyperparameter ``key`` (its signature, or its documented sweep)."""
    if key in (getattr(factory, "sweep", None) or {}):
        return True
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return key in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def run_grid(spec, out, cache, no_cache, workers, threads, scheduler, dask_local, report, quiet, max_cells=None,
             skippable=None, command: str = "grid", force: bool = False, notes: Optional[list[str]] = None,
             note: Callable[[str], None] = _note) -> "GridRun":
    """Check everything, then run the grid and write its report; return a :class:`GridRun`.

    In order, before any work: the options and every grid value (type, range, nothing dropped),
    the executor options, the grid's size (``max_cells``), each distinct component (names and
    hyperparameters), the run folder, its report folder and the cache, then (after a "planning"
    line for a large grid) the defense settings each dataset's catalogue cannot serve: those in
    ``skippable`` (default sweep values of ``bench-defenses``) are left out with a note, any
    other one is an error. Notes (``notes``, and those sweep values left out) go to ``note`` only
    once every check passed. Workers start only once every cell is built. Failed cells do not
    raise: the run's ``failed`` names them.
    """
    from rich.console import Console

    from .engine.executors import check_executor_args, make_executor
    from .engine.grid import MAX_CELLS, catalogue_problems
    from .engine.progress import GridProgress
    from .engine.run import run_grid as run
    from .engine.rundir import check_report_dir, claim
    from .engine.store import check_cache_dir, default_cache_dir

    out, cache = _expand(out), _expand(cache)
    if no_cache and cache:
        raise MiarsError("pass either --cache DIR or --no-cache, not both")
    if max_cells is not None and (isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 1):
        raise MiarsError(f"--max-cells must be an integer >= 1, got {max_cells!r}; e.g. --max-cells 5000")
    if not isinstance(out, str) or not out:
        raise MiarsError(f"--out {out!r} is not a folder path; pass e.g. out='runs/grid'")
    check_executor_args(workers, threads, scheduler, dask_local)
    spec.check()
    n = spec.check_size(MAX_CELLS if max_cells is None else max_cells)
    spec.check_components()
    err = Console(stderr=True, quiet=quiet)
    if n >= PLANNING_NOTE_CELLS:
        err.print(f"planning {n:,} cells ...")
    claim(out, command, "--out", force)  # the run folder and its report folder, before any work
    if report:
        check_report_dir(Path(out) / "report", force)
    notes = list(notes or [])
    for problem in spec.refused_pairs():  # a sequential target crossed with a general shadow: left out, listed
        spec.skipped.append(problem)
        notes.append(f"left out {problem['reason']} (the report lists it)")
    for problem in catalogue_problems(spec):
        key = (problem["defense"], tuple(sorted(problem["defense_params"].items())))
        if skippable is None or key not in skippable:
            raise MiarsError(problem["reason"])
        spec.skipped.append(problem)
        notes.append(f"left out {problem['reason']} (a default sweep value: the others run; the report lists it)")
    if not no_cache:  # the last check: it may create the cache folder
        cache = str(check_cache_dir(cache or default_cache_dir(), given=bool(cache)))
    for line in notes:  # only once every check passed, so a refused run prints its error alone
        note(line)
    with GridProgress(err) as progress:
        summary = run(spec, out, cache=None if no_cache else cache,
                      executor=lambda: make_executor(workers, threads, scheduler, dask_local),
                      threads=threads, progress=progress, command=command, force=force)
    err.print(progress.summary_table(summary))
    written = None
    if report:
        from .reports.gridreport import write_report

        written = write_report(summary.run_dir, force)
        err.print(f"wrote {written}")
    return GridRun(Path(summary.run_dir), list(summary.cells), dict(summary.failed), written, notes,
                   summary.wall_seconds)


@_options
def grid(*, config=None, dataset=None, shadow_dataset=None, data_dir=None, download=False, target=None, shadow=None,
         featurizer=None, attack=None, defense=None, defense_param=None, service=None, service_param=None,
         target_param=None, shadow_param=None, featurizer_param=None, attack_param=None, top_k=None, seed=None,
         split=None, min_interactions=None, query_budget=None, utility_holdout=None, controls=False, out,
         cache=None, no_cache=False, workers=None, threads=1, scheduler=None, dask_local=None, no_report=False,
         quiet=False, force=False, max_cells=None, device=None, user_attributes=None, shadow_lengths=None) -> "GridRun":
    """``miars grid``: run a grid of attack cells (cached, resumable) into ``out``, then write its report.

    Same options, defaults and checks as the command (``miars grid --help``): e.g.
    ``grid(target=["item", "lfm", "ncf"], shadow=["item", "lfm", "ncf"], seed=[0, 1, 2], out="runs/3x3")``.
    Returns a :class:`GridRun`; failed cells do not raise (``run.failed``), a Python warning names them.
    """
    spec, max_cells = grid_spec(config=config, dataset=dataset, shadow_dataset=shadow_dataset, data_dir=data_dir,
                                download=download, target=target, shadow=shadow, featurizer=featurizer, attack=attack,
                                defense=defense, defense_param=defense_param, service=service,
                                service_param=service_param, target_param=target_param, shadow_param=shadow_param,
                                featurizer_param=featurizer_param, attack_param=attack_param, top_k=top_k, seed=seed,
                                split=split, min_interactions=min_interactions, query_budget=query_budget,
                                utility_holdout=utility_holdout, controls=controls, max_cells=max_cells,
                                device=device, user_attributes=user_attributes, shadow_lengths=shadow_lengths)
    run = run_grid(spec, out, cache, no_cache, workers, threads, scheduler, dask_local, not no_report, quiet,
                   max_cells, command="grid", force=force)
    run._warn_failed()
    return run


@_options
def bench_defenses(*, dataset=None, data_dir=None, target=None, defense=None, defense_param=None, target_param=None,
                   attack=None, attack_param=None, service=None, query_budget=5, top_k=None, seed=None,
                   utility_holdout=0.2, controls=False, out, cache=None, no_cache=False, workers=None, threads=1,
                   scheduler=None, dask_local=None, no_report=False, quiet=False, force=False,
                   max_cells=None, device=None, user_attributes=None, shadow_lengths=None) -> "GridRun":
    """``miars bench-defenses``: privacy for a static and an adaptive attacker, utility and cost of every defense.

    Same options, defaults and checks as the command (``miars bench-defenses --help``);
    returns a :class:`GridRun` (its report has the defense table and the privacy-utility frontier).
    """
    spec, skippable, notes = bench_spec(dataset=dataset, data_dir=data_dir, target=target, defense=defense,
                                        defense_param=defense_param, target_param=target_param, attack=attack,
                                        attack_param=attack_param, service=service, query_budget=query_budget,
                                        top_k=top_k, seed=seed, utility_holdout=utility_holdout, controls=controls,
                                        device=device, user_attributes=user_attributes, shadow_lengths=shadow_lengths)
    run = run_grid(spec, out, cache, no_cache, workers, threads, scheduler, dask_local, not no_report, quiet,
                   max_cells, skippable, command="bench-defenses", force=force, notes=notes)
    run._warn_failed()
    return run


@dataclass
class GridRun:
    """A run folder (of :func:`grid`, :func:`bench_defenses`, or ``miars-attack --out``) and what it holds."""

    run_dir: Path
    #: Every cell's id (its folder under ``cells/``).
    cells: list[str] = field(default_factory=list)
    #: ``{cell id: one-line error}`` of the cells that failed (their ``error.json`` has the traceback).
    failed: dict[str, str] = field(default_factory=dict)
    #: report.html, when the report was written.
    report: Optional[Path] = None
    #: Notes printed before the run (work left out, and why).
    notes: list[str] = field(default_factory=list)
    wall_seconds: Optional[float] = None

    @property
    def paths(self) -> dict[str, Path]:
        """``run_dir``, ``grid.json``, ``cells``, and ``report`` (report.html) when written."""
        out = {"run_dir": self.run_dir, "grid.json": self.run_dir / "grid.json", "cells": self.run_dir / "cells"}
        if self.report is not None:
            out["report"] = Path(self.report)
        return out

    def records(self) -> list:
        """Every cell's :class:`~miars_core.reports.shared.CellRecord` (finished, failed or missing), sorted by id."""
        from .reports.gridreport import load_cells

        return load_cells(self.run_dir)

    def results(self) -> dict[str, dict]:
        """``{cell id: result.json}`` of the finished cells."""
        return {r.id: r.result for r in self.records() if r.status == "ok"}

    def to_pandas(self):
        """A long table of the finished cells: one row per cell, attacker and metric (:data:`COLUMNS`)."""
        rows: list[dict] = []
        for rec in self.records():
            if rec.status == "ok":
                rows += result_rows(rec.result, rec.cell)
        return _frame(rows)

    def _warn_failed(self) -> None:
        if self.failed:
            first_id, first = next(iter(sorted(self.failed.items())))
            _warn(f"{len(self.failed)} of {len(self.cells)} cells failed (first: {first}); see "
                  f"{self.run_dir}/cells/{first_id}/error.json", stacklevel=5)


@_options
def report(run_dir, *, force=False) -> GridRun:
    """``miars report RUN_DIR``: write RUN_DIR/report/ (tables, plots, report.html); return the run as a :class:`GridRun`."""
    from .reports.gridreport import write_report

    path = write_report(_expand(run_dir), force)
    run = load(run_dir)
    run.report = path
    return run


@_options
def load(run_dir) -> GridRun:
    """The run folder ``run_dir`` (grid, bench-defenses or ``miars-attack --out``) as a :class:`GridRun`; writes nothing."""
    records = GridRun(Path(_expand(run_dir))).records()  # refuses a folder that is not a run folder
    root = Path(_expand(run_dir))
    report_html = root / "report" / "report.html"
    return GridRun(root, [r.id for r in records], {r.id: r.error or r.status for r in records if r.status != "ok"},
                   report_html if report_html.is_file() else None)


# -- audit-dp -----------------------------------------------------------------------------------------
@dataclass
class AuditRun:
    """What :func:`audit_dp` returns: audit.json's record and its path."""

    record: dict
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        from .engine.audit import verdict_line

        return verdict_line(self.record)

    def to_pandas(self):
        """One row per number of the audit (``epsilon_lower``, ``epsilon_claimed``, ``correct``, ...)."""
        r = self.record
        base = {"dataset": r.get("dataset"), "target": r.get("target"), "defense": r.get("defense"),
                "defense_params": _params_text(r.get("defense_params") or {}), "seed": r.get("seed"),
                "dp_level": r.get("level") or ""}
        rows = [{**base, "metric": k, "value": float(v)} for k, v in r.items() if _number(v)]
        import pandas as pd

        return pd.DataFrame(rows, columns=[*base, "metric", "value"])


@_options
def audit_dp(*, dataset="ml-100k", data_dir=None, target, target_param=None, defense, defense_param=None,
             canaries=200, guesses=None, seed=0, out, cache=None, no_cache=False, quiet=False,
             device="auto") -> AuditRun:
    """``miars audit-dp``: a 95% lower bound on a training defense's epsilon from canaries in one run.

    Same options, defaults and checks as the command (``miars audit-dp --help``); returns an
    :class:`AuditRun` (``.record`` is audit.json, ``.verdict`` the line the command prints).
    """
    from .engine import audit

    dataset, data_dir, out = _expand(dataset), _expand(data_dir), _expand(out)
    check_input_path("--dataset", dataset)
    check_input_path("--data-dir", data_dir)
    record = audit.run(dataset, target, defense, target_params=parse_params(target_param, "--target-param"),
                       defense_params=parse_params(defense_param, "--defense-param"), canaries=canaries,
                       guesses=guesses, seed=seed, out=out, data_dir=data_dir, store=stage_store(cache, no_cache),
                       progress=_progress(quiet), device=device)
    return AuditRun(record, {"out": Path(out).expanduser(), audit.OUT_FILE: Path(out).expanduser() / audit.OUT_FILE})


# -- long tables --------------------------------------------------------------------------------------
def _number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def result_rows(result: dict, cell: Optional[dict] = None) -> list[dict]:
    """The long-table rows (:data:`COLUMNS`) of one result.json: each attacker's metrics, the utility of the
    target members' lists and of its new accounts' (non-members'), a DP defense's epsilon and delta, and the
    defended service's cost."""
    from .engine.grid import is_control
    from .reports.defensereport import _cost, _privacy, _scores, _utility
    from .reports.shared import CellRecord

    cell = dict(cell or result.get("cell") or {})
    config = result.get("config") or {}
    for key in ("dataset", "target", "featurizer", "attack", "service", "top_k", "seed"):
        cell.setdefault(key, config.get(key))
    cell.setdefault("shadow", config.get("shadow") or cell.get("target"))
    cell.setdefault("shadow_dataset", config.get("shadow_dataset") or cell.get("dataset"))
    cell.setdefault("defense", config.get("defense") or "none")
    cell.setdefault("defense_params", config.get("defense_params") or {})
    rec = CellRecord(str(cell.get("id", "")), Path("."), cell, "ok", result=result)
    privacy = _privacy(rec)
    base = {"cell": rec.id, "dataset": cell["dataset"], "shadow_dataset": cell["shadow_dataset"],
            "target": cell["target"], "shadow": cell["shadow"], "defense": cell["defense"] or "none",
            "defense_params": _params_text(cell["defense_params"] or {}), "service": cell.get("service") or "popular",
            "featurizer": cell["featurizer"], "attack": cell["attack"], "top_k": cell["top_k"], "seed": cell["seed"],
            "control": bool(cell.get("control", is_control(str(cell["target"])))),
            "dp_level": str(privacy.get("level") or "")}
    defended = base["defense"] != "none" and result.get("attackers")
    attackers = result["attackers"] if defended else {"attack": result.get("metrics") or {}}
    rows = [{**base, "attacker": name, "metric": metric, "value": float(value)}
            for name, metrics in attackers.items() for metric, value in metrics.items() if _number(value)]
    utility = _utility(rec)
    rows += [{**base, "attacker": "", "metric": f"{kind}:{name}", "value": value}
             for kind, block in (("utility", utility), ("new_accounts", utility.get("new_accounts") or {}))
             for name, value in _scores(block).items()]
    rows += [{**base, "attacker": "", "metric": f"privacy:{key}", "value": float(privacy[key])}
             for key in ("epsilon", "delta") if _number(privacy.get(key))]
    cost = _cost(rec)
    if _number(cost):
        rows.append({**base, "attacker": "", "metric": "cost:seconds", "value": float(cost)})
    return rows


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=list(COLUMNS))
