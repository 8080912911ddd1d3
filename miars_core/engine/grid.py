"""Grid specifications: the cross product of lists of datasets, recommenders, defenses, top-k and seeds.

A grid comes from command-line flags, a TOML file (``--config``), or both (flags win). Each
point of the cross product is one cell, an :class:`~miars_core.engine.config.AttackConfig`, named by
a readable slug plus a hash of its whole configuration.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..contracts.errors import MiarsError
from ..contracts.params import (Anything, Constraint, Flag, Interval, ListOf, Mapping, OrNone, Table, Text, find_problem,
                                parse_value)
from ..kit.torch_utils import check_device
from .config import SETTINGS, AttackConfig, flag_of, shown
from .stages import digest

NONE_DEFENSE = "none"
#: Control recommenders (``--controls`` adds them as targets): what they stand for in reports.
CONTROLS = {"random": "random items", "pop": "popular items"}


def is_control(target: str) -> bool:
    """Whether a target recommender is a control (its lists carry no membership signal by construction)."""
    return target in CONTROLS

#: Cells a grid may have before it is refused (``--max-cells`` / ``max_cells`` raises it): a typo
#: such as ``--seed 0,1,2000`` must not start computing for days.
MAX_CELLS = 2_000


@dataclass
class GridSpec:
    """Lists to cross; ``shadow=None`` pairs each target with itself (same-algorithm cells)."""

    dataset: list[str] = field(default_factory=lambda: ["ml-100k"])
    shadow_dataset: list[str | None] = field(default_factory=lambda: [None])
    target: list[str] = field(default_factory=lambda: ["item"])
    shadow: list[str] | None = None
    featurizer: list[str] = field(default_factory=lambda: ["center-diff"])
    attack: list[str] = field(default_factory=lambda: ["mlp"])
    defense: list[str | None] = field(default_factory=lambda: [None])
    service: list[str] = field(default_factory=lambda: ["popular"])
    top_k: list[int] = field(default_factory=lambda: [100])
    seed: list[int] = field(default_factory=lambda: [0])
    split: str = "interactions"
    min_interactions: int = 20
    utility_holdout: float = 0.0
    query_budget: int = 5
    #: None: one shadow per cell; ``"auto"`` or epochs: one shadow per length (``--shadow-lengths``, engine/lengths.py).
    shadow_lengths: Any = None
    data_dir: str | None = None
    #: A file of user attributes, the same for every cell (``--user-attributes``).
    user_attributes: str | None = None
    download: bool = False
    #: Where torch stages run (``auto``, ``cpu``, ``cuda``, ``cuda:N``): a run option, in no cell id nor stage key.
    device: str = "auto"
    #: ``{name or "*": {key: value}}`` for each component kind; defense values are lists to sweep.
    target_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    shadow_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    featurizer_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    service_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    defense_params: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    #: ``{defense: [recommenders]}``: cross that defense only with these targets (training defenses
    #: that can train only some recommenders); other defenses cross with every target.
    defense_targets: dict[str, list[str]] = field(default_factory=dict)
    #: Add the control recommenders (:data:`CONTROLS`) as targets, crossed with everything like any target.
    controls: bool = False
    #: Cells left out, each ``{dataset, defense, defense_params, top_k, reason}`` (a default sweep
    #: value that cannot run on that dataset's catalogue; ``miars bench-defenses`` fills it) or
    #: ``{target, shadow, reason}`` (a sequential target crossed with a general shadow:
    #: :meth:`refused_pairs`); the report shows the reasons.
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def check(self) -> "GridSpec":
        """Refuse, in one line naming the flag or key, any value of the wrong type or range, an empty
        list or sweep, parameters for a component the grid does not select, and a defense that
        applies to none of the targets. Nothing requested is dropped silently."""
        for f in fields(self):
            rule, example = GRID_RULES[f.name]
            found = find_problem(rule, getattr(self, f.name))
            if found is not None:
                raise MiarsError(_flag_error(f.name, *found, example))
        self._check_selected()
        check_device(self.device)  # cuda without a usable GPU: refused before any work
        return self

    def _shadows(self, target: str) -> list[str]:
        return self.shadow if self.shadow is not None else [target]

    def _check_selected(self) -> None:
        defenses = [d for d in self.defense if d not in (None, NONE_DEFENSE)]
        shown_defenses = ", ".join(d or NONE_DEFENSE for d in self.defense)
        selected = {
            "target_params": ("target", self.target), "shadow_params": ("shadow", self.shadow or self.target),
            "featurizer_params": ("featurizer", self.featurizer), "attack_params": ("attack", self.attack),
            "service_params": ("service", self.service), "defense_params": ("defense", defenses),
        }
        for key, (kind, names) in selected.items():
            flag = flag_of(key)
            for name, params in getattr(self, key).items():
                if not params:
                    continue
                first = next(iter(params))
                if name == "*":
                    if not names:  # only defenses can be none
                        raise MiarsError(f"{flag} {first}=... is given but no defense is selected (--defense {shown_defenses}), "
                                         f"so nothing would use it; add --defense NAME (`miars list defense`) or drop {flag}")
                    continue
                if name not in names:
                    listed = shown_defenses if kind == "defense" else ", ".join(names)
                    default = " (each target is its own shadow)" if kind == "shadow" and self.shadow is None else ""
                    raise MiarsError(f"{flag} {name}.{first}=... is for {kind} {name!r}, which the grid does not select "
                                     f"(--{kind} {listed}{default}); add {name} to --{kind} or drop the parameter")
        for name in self.defense_targets:
            if name not in defenses:
                raise MiarsError(f"defense_targets names defense {name!r}, which the grid does not select (--defense "
                                 f"{shown_defenses}); add it to --defense or drop it from defense_targets")
        for name in defenses:
            allowed = self.defense_targets.get(name)
            if allowed is not None and not any(t in allowed and s in allowed for t in self.target for s in self._shadows(t)):
                shadows = "" if self.shadow is None else f" and --shadow {', '.join(self.shadow)}"
                raise MiarsError(f"--defense {name} applies to none of the grid's recommenders: it works only with "
                                 f"{', '.join(allowed)} (as target and shadow), and the grid has --target "
                                 f"{', '.join(self.target)}{shadows}; add one of them to --target or drop {name} from --defense")

    def size(self) -> int:
        """How many cells :meth:`configs` gives (before ``skipped``), counted without building them."""
        per_pair = 0
        for defense in self.defense:
            if defense in (None, NONE_DEFENSE):
                combos, allowed = 1, None
            else:
                combos = math.prod(len(v) for v in _scoped(self.defense_params, defense).values())
                allowed = self.defense_targets.get(defense)
            pairs = sum(1 for t in self.target for s in self._shadows(t)
                        if allowed is None or (t in allowed and s in allowed))
            per_pair += combos * pairs
        return per_pair * math.prod(len(getattr(self, k)) for k in
                                    ("dataset", "shadow_dataset", "service", "top_k", "featurizer", "attack", "seed"))

    def check_size(self, max_cells: int = MAX_CELLS) -> int:
        """The number of cells; a :class:`MiarsError` when it exceeds ``max_cells``, naming the longest list."""
        n = self.size()
        if n > max_cells:
            lists = {k: len(v) for k, v in ((k, getattr(self, k)) for k in LIST_KEYS) if isinstance(v, list)}
            longest = max(lists, key=lists.get)
            raise MiarsError(f"the grid has {n:,} cells, more than the limit of {max_cells:,} (the longest list is "
                             f"{flag_of(longest)} with {lists[longest]:,} values); check the lists for a typo, or raise "
                             f"the limit with --max-cells {n}")
        return n

    def check_components(self, plugins=None) -> None:
        """Build each distinct component of the grid once, so a bad name or hyperparameter fails in one
        line before planning (however many cells there are)."""
        from ..contracts.plugins import get_plugins
        from ..science.threat import require_budget

        plugins = plugins or get_plugins()
        shadows = self.shadow if self.shadow is not None else self.target
        for kind, names, params in (("recommender", self.target, self.target_params), ("recommender", shadows, self.shadow_params),
                                    ("featurizer", self.featurizer, self.featurizer_params),
                                    ("attack", self.attack, self.attack_params), ("service", self.service, self.service_params)):
            for name in dict.fromkeys(names):
                component = plugins.create(kind, name, **_scoped(params, name))
                if kind == "attack":  # a query attack with a budget of no query: refused before any folder is made
                    require_budget(component, self.query_budget, name)
        if self.shadow_lengths is not None:  # a shadow without epochs, an attack not trained on features: refused now
            from ..science.threat import level_of, threat_of
            from .lengths import check_shadow_lengths

            for name in dict.fromkeys(self.attack):
                component = plugins.create("attack", name, **_scoped(self.attack_params, name))
                for shadow in dict.fromkeys(shadows):
                    check_shadow_lengths(self.shadow_lengths,
                                         plugins.create("recommender", shadow, **_scoped(self.shadow_params, shadow)),
                                         shadow, threat_of(component), level_of(component), name)
        for service in dict.fromkeys(self.service):  # a service that cannot serve a recommender (check_recommender)
            check = getattr(plugins.create("service", service, **_scoped(self.service_params, service)),
                            "check_recommender", None)
            if callable(check):
                for name, params in dict.fromkeys([*((n, "t") for n in self.target), *((n, "s") for n in shadows)]):
                    scoped = _scoped(self.target_params if params == "t" else self.shadow_params, name)
                    check(plugins.create("recommender", name, **scoped), name)
        for defense, dparams in self._defenses():
            if defense is not None:
                plugins.create("defense", defense, **dparams)

    def refused_pairs(self, plugins=None) -> list[dict[str, Any]]:
        """The (target, shadow) pairs no cell can run: a sequential target with a general shadow.

        A grid crossing sequential and general recommenders (``--target recbole:SASRec,lfm --shadow
        recbole:SASRec,lfm``) leaves those pairs out with their reason instead of failing their
        cells: the shadow imitates the target's service, so a sequential target's shadow must be
        sequential (docs/sequential.md). A general target with a sequential shadow runs. Every
        pair refused: the one-line refusal of a single cell.
        """
        from ..contracts.plugins import get_plugins
        from .datasets import is_sequential

        plugins = plugins or get_plugins()
        kinds: dict[tuple[str, bool], bool] = {}

        def sequential(name: str, side: bool) -> bool:
            if (name, side) not in kinds:
                params = _scoped(self.target_params if side else self.shadow_params, name, is_control(name))
                kinds[name, side] = is_sequential(plugins.create("recommender", name, **params))
            return kinds[name, side]

        targets = list(self.target) + ([c for c in CONTROLS if c not in self.target] if self.controls else [])
        pairs = [(t, s) for t in targets for s in self._shadows(t)]
        refused = [{"target": t, "shadow": s,
                    "reason": f"target {t} with shadow {s}: a sequential target needs a sequential shadow "
                              "(the shadow imitates the target's service)"}
                   for t, s in pairs if sequential(t, True) and not sequential(s, False)]
        if refused and len(refused) == len(pairs):
            t, s = refused[0]["target"], refused[0]["shadow"]
            raise MiarsError(f"target {t!r} is a sequential recommender but shadow {s!r} is not: the shadow imitates "
                             f"the target's service, so it must be sequential too (e.g. --shadow {t})")
        return refused

    def _skips(self, config: AttackConfig) -> bool:
        for s in self.skipped:
            if "target" in s and "shadow" in s:
                if s["target"] == config.target and s["shadow"] == config.shadow:
                    return True
                continue
            if (s.get("dataset") is not None and s["dataset"] in (config.dataset, config.shadow_dataset)
                    and s.get("defense") == config.defense
                    and s.get("defense_params") == config.defense_params and s.get("top_k") == config.top_k):
                return True
        return False

    def configs(self) -> list[AttackConfig]:
        """Every cell of the grid, in a stable order (datasets, recommenders, defenses, top-k, seeds)."""
        self.check()
        targets = list(self.target) + ([c for c in CONTROLS if c not in self.target] if self.controls else [])
        out = []
        for dataset, shadow_dataset, target in itertools.product(self.dataset, self.shadow_dataset, targets):
            for shadow in self._shadows(target):
                for defense, dparams in self._defenses():
                    allowed = self.defense_targets.get(defense or "")
                    if allowed is not None and (target not in allowed or shadow not in allowed):
                        continue
                    for service, top_k, featurizer, attack, seed in itertools.product(
                            self.service, self.top_k, self.featurizer, self.attack, self.seed):
                        out.append(AttackConfig(
                            dataset=dataset, shadow_dataset=shadow_dataset if shadow_dataset != dataset else None,
                            data_dir=self.data_dir, user_attributes=self.user_attributes, download=self.download,
                            target=target, shadow=shadow,
                            featurizer=featurizer, attack=attack, defense=defense, service=service,
                            service_params=_scoped(self.service_params, service), top_k=int(top_k), seed=int(seed),
                            split=self.split, min_interactions=int(self.min_interactions),
                            utility_holdout=float(self.utility_holdout), query_budget=int(self.query_budget),
                            shadow_lengths=self.shadow_lengths if not isinstance(self.shadow_lengths, list)
                            else list(self.shadow_lengths),
                            target_params=_scoped(self.target_params, target, is_control(target)),
                            shadow_params=_scoped(self.shadow_params, shadow, is_control(shadow)),
                            featurizer_params=_scoped(self.featurizer_params, featurizer),
                            attack_params=_scoped(self.attack_params, attack),
                            defense_params=dparams, device=self.device,
                        ))  # every value was checked by check() with the same rules
        if self.skipped:
            out = [c for c in out if not self._skips(c)]
        ids = [cell_id(c) for c in out]
        if len(set(ids)) != len(ids):
            raise MiarsError("the grid lists the same cell twice; remove repeated values from the lists")
        return out

    def _defenses(self) -> list[tuple[str | None, dict]]:
        out: list[tuple[str | None, dict]] = []
        for defense in self.defense:
            if defense in (None, NONE_DEFENSE):
                out.append((None, {}))
                continue
            sweep = _scoped(self.defense_params, defense)
            keys = sorted(sweep)
            for values in itertools.product(*(sweep[k] for k in keys)):
                out.append((defense, dict(zip(keys, values))))
        return out


def _scoped(params: dict[str, dict[str, Any]], name: str, own_only: bool = False) -> dict[str, Any]:
    """Parameters for component ``name``: those given for every component ("*") then its own
    (``own_only``: its own alone; a control recommender takes no parameter meant for the real ones)."""
    return {**({} if own_only else params.get("*", {})), **params.get(name, {})}


# -- cell names ----------------------------------------------------------------------------------
def cell_record(config: AttackConfig) -> dict:
    """What result.json's ``cell`` holds: the fields a report groups and labels cells by."""
    return {
        "id": cell_id(config),
        "dataset": config.dataset,
        "shadow_dataset": config.shadow_dataset or config.dataset,
        "target": config.target,
        "shadow": config.shadow,
        "defense": config.defense or NONE_DEFENSE,
        "defense_params": dict(config.defense_params),
        "service": config.service,
        "top_k": config.top_k,
        "seed": config.seed,
        "featurizer": config.featurizer,
        "attack": config.attack,
        "control": is_control(config.target),
    }


#: AttackConfig fields that say how a cell runs, not what it computes: no cell id covers them.
RUN_OPTIONS = ("device",)


@functools.lru_cache(maxsize=1)
def _defaults() -> dict:
    return asdict(AttackConfig())


def cell_id(config: AttackConfig) -> str:
    """A folder name: a readable slug (dataset, target, shadow, defense, k, seed) plus a config hash.

    The hash covers every setting that differs from :class:`AttackConfig`'s defaults, plus the
    names, so a setting added to miars later (at its default) does not rename existing cells.
    Run options (:data:`RUN_OPTIONS`: the device) are not settings of the result: a grid computed on
    the CPU is resumed on a GPU in the same folder, cell for cell.
    """
    defaults = _defaults()
    always = ("dataset", "target", "shadow", "seed", "top_k")
    record = {k: v for k, v in ((f.name, getattr(config, f.name)) for f in fields(config))
              if k not in RUN_OPTIONS and (k in always or v != defaults.get(k))}
    h = digest(record)[:10]

    def slug(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")[:40]

    data = Path(config.dataset).name.split(".")[0] if "/" in config.dataset else config.dataset
    if config.shadow_dataset:
        shadow_data = Path(config.shadow_dataset).name.split(".")[0] if "/" in config.shadow_dataset else config.shadow_dataset
        data = f"{shadow_data}-to-{data}"
    defense = config.defense or NONE_DEFENSE
    if config.defense_params:
        defense += "-" + "-".join(f"{k}{v}" for k, v in sorted(config.defense_params.items()))
    parts = [data, config.target, config.shadow, defense, f"k{config.top_k}", f"s{config.seed}"]
    if config.service != "popular":
        parts.insert(4, config.service)
    return "_".join(slug(p) for p in parts) + "_" + h


# -- parsing flags and TOML ----------------------------------------------------------------------
def split_list(text: str) -> list[str]:
    """Split ``a,b,[1,2],"c,d"`` on the commas that are not inside brackets or quotes."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return [x for x in out if x]


def parse_list_flag(values: list[str] | None, flag: str, kind: type = str) -> list[Any] | None:
    """A repeatable, comma-separated flag (``--seed 0,1,2``) as a list; None when not given."""
    if not values:
        return None
    out: list[Any] = []
    for value in values:
        for item in split_list(value):
            if kind is int:
                try:
                    out.append(int(item))
                except ValueError:
                    raise MiarsError(f"{flag} {item!r} is not an integer; pass e.g. {flag} 0,1,2") from None
            else:
                out.append(None if item == NONE_DEFENSE and flag == "--defense" else item)
    if not out:
        raise MiarsError(f"{flag} is empty; pass at least one value")
    return out


def parse_scoped_params(values: list[str] | None, flag: str, sweep: bool = False) -> dict[str, dict[str, Any]]:
    """``[NAME.]KEY=VALUE`` flags; with ``sweep``, VALUE is a comma-separated list of values."""
    out: dict[str, dict[str, Any]] = {}
    for item in values or []:
        lhs, sep, raw = item.partition("=")
        if not sep or not lhs.strip():
            raise MiarsError(f"{flag} {item!r} is not [NAME.]KEY=VALUE; write e.g. {flag} ratio=0.05,0.1")
        name, dot, key = lhs.strip().rpartition(".")
        name, key = name.strip(), key.strip()
        if (dot and not name) or not key:
            part = "the component name before the dot" if dot and not name else "the key"
            raise MiarsError(f"{flag} {item!r}: {part} is empty; write {flag} KEY=VALUE (every component) or "
                             f"{flag} NAME.KEY=VALUE (one), e.g. {flag} lfm.epochs=5")
        name = name if dot else "*"
        value = [parse_value(v, f"{flag} {lhs}=...") for v in split_list(raw)] if sweep else parse_value(raw, f"{flag} {lhs}=...")
        if sweep and not value:
            raise MiarsError(f"{flag} {item!r} has no values; write e.g. {flag} {key}=0.05,0.1")
        out.setdefault(name, {})[key] = value
    return out


#: Grid keys that are lists to cross (a TOML file may give a single value).
LIST_KEYS = ("dataset", "shadow_dataset", "target", "shadow", "featurizer", "attack", "defense", "service", "top_k", "seed")
PARAM_KEYS = ("target_params", "shadow_params", "featurizer_params", "attack_params", "defense_params", "service_params")
#: TOML keys that are run options, not part of the grid (the command line pops them).
TOML_OPTIONS: dict[str, tuple[Constraint, Any]] = {"max_cells": (Interval(int, 1), 20_000)}


def _grid_rules() -> dict[str, tuple[Constraint, Any]]:
    """Each :class:`GridSpec` key's rule and example, derived from the cell settings
    (:data:`miars_core.engine.config.SETTINGS`): a list key holds at least one valid setting; a
    ``*_params`` key is a table of ``NAME = {KEY = VALUE}`` (``defense_params`` values are
    non-empty lists to sweep); ``defense_targets`` maps defenses to non-empty recommender lists."""
    rules: dict[str, tuple[Constraint, Any]] = {}
    for key in LIST_KEYS:
        rule, example = SETTINGS[key]
        if isinstance(rule, OrNone) and key not in ("shadow_dataset", "defense"):  # None only means something there
            rule = rule.inner
        rules[key] = (ListOf(rule, min_len=1), [example])
    rules["shadow"] = (OrNone(rules["shadow"][0]), ["lfm"])
    for key in ("split", "min_interactions", "utility_holdout", "query_budget", "data_dir", "user_attributes",
                "shadow_lengths", "download", "device"):
        rules[key] = SETTINGS[key]
    for key in PARAM_KEYS:
        sweep = key == "defense_params"
        rules[key] = (Table(Table(ListOf(Anything(), min_len=1) if sweep else Anything())),
                      "popularity-randomization.ratio=0.05,0.1" if sweep else "lfm.epochs=5")
    rules["defense_targets"] = (Table(ListOf(Text(), min_len=1)), "dp-sgd = [\"lfm\", \"ncf\"]")
    rules["skipped"] = (ListOf(Mapping()), [])
    rules["controls"] = (Flag(), True)
    return rules


GRID_RULES = _grid_rules()
assert set(GRID_RULES) == {f.name for f in fields(GridSpec)}, "every grid key needs a rule"


def _flag_error(key: str, path: str, value: Any, problem: str, rule: Constraint, example: Any) -> str:
    """A one-line error for a grid value given as a flag (or through the Python API)."""
    flag = flag_of(key) if key not in ("defense_targets", "skipped") else key
    if key in PARAM_KEYS:
        where = f"{flag} {path.replace('*.', '')}={shown(value)}" if path else f"{flag} {shown(value)}"
        return f"{where} {problem}; it must be {rule.describe()}, e.g. {flag} {example}"
    if key in LIST_KEYS and isinstance(example, list):
        example = ",".join(str(e) for e in example)
    inner = f" {path}" if path else ""
    must = "" if problem.startswith("has element") else f"; it must be {rule.describe()}"
    return f"{flag}{inner} {shown(value)} {problem}{must}, e.g. {flag} {example}"


def _toml_example(key: str, example: Any) -> str:
    """An example line of a grid TOML file for ``key``."""
    if key == "defense_params":
        return "[defense_params.popularity-randomization] ratio = [0.05, 0.1]"
    if key in PARAM_KEYS:
        return f"[{key}.lfm] epochs = 5"
    if key == "defense_targets":
        return '[defense_targets] dp-sgd = ["lfm", "ncf"]'
    return f"{key} = {json.dumps(example)}"


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a grid file: the flags' names with underscores (lists or single values, ``*_params`` tables)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    p = Path(path).expanduser()
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise MiarsError(f"--config {str(p)!r}: no such file; pass the path of a grid TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MiarsError(f"--config {str(p)!r} cannot be read ({exc}); pass a readable TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise MiarsError(f"--config {str(p)!r} is not valid TOML ({exc}); fix the file") from None
    keys = {**{k: v for k, v in GRID_RULES.items() if k != "skipped"}, **TOML_OPTIONS}
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise MiarsError(f"--config {str(p)!r}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(keys))}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in LIST_KEYS and not isinstance(value, list):
            value = [value]
        elif key in PARAM_KEYS and isinstance(value, dict):  # flat KEY = VALUE: for every component ("*")
            flat = {k: v for k, v in value.items() if not isinstance(v, dict)}
            value = {**({"*": flat} if flat else {}), **{k: v for k, v in value.items() if isinstance(v, dict)}}
            if key == "defense_params":
                value = {n: {k: (v if isinstance(v, list) else [v]) for k, v in d.items()} for n, d in value.items()}
        rule, example = keys[key]
        found = find_problem(rule, value, key)
        if found is not None:
            path, bad, problem, inner = found
            path = path.replace(".*.", ".")
            shown_example = _toml_example(key, example)
            must = "" if problem.startswith("has element") else f"; it must be {inner.describe()}"
            raise MiarsError(f"--config {str(p)!r}: {path} = {shown(bad)} {problem}{must}, e.g. {shown_example}; fix the file")
        if key == "defense":
            value = [None if v == NONE_DEFENSE else v for v in value]
        out[key] = value
    return out


# -- what a dataset's catalogue cannot serve ------------------------------------------------------
def catalogue_problems(spec: GridSpec, plugins=None) -> list[dict[str, Any]]:
    """Defense settings the grid asks for that cannot run on a dataset's catalogue, one record each.

    A defense declares it with a method ``catalogue_problem(n_items, k)`` returning a one-line
    reason or None (Popularity Randomization's pool of ``k / ratio`` popular items cannot be
    larger than the catalogue). Each dataset of a cell (target and shadow side) is read once to
    count its items; nothing is written. Records: ``{dataset, defense, defense_params, top_k, reason}``.
    """
    from ..contracts.plugins import get_plugins
    from .datasets import load_named

    plugins = plugins or get_plugins()
    registry = plugins.registry("defense")
    checked = [(d, p) for d, p in spec._defenses()
               if d is not None and callable(getattr(registry.get(d).factory, "catalogue_problem", None))]
    if not checked:
        return []
    out: list[dict[str, Any]] = []
    datasets = list(dict.fromkeys([*spec.dataset, *(d for d in spec.shadow_dataset if d)]))
    for dataset in datasets:
        n_items = load_named(dataset, spec.data_dir, spec.download, plugins).n_items
        for defense, params in checked:
            component = registry.create(defense, **params)
            for k in spec.top_k:
                reason = component.catalogue_problem(n_items, int(k))
                if reason:
                    out.append({"dataset": dataset, "defense": defense, "defense_params": dict(params), "top_k": int(k),
                                "reason": f"{defense} {', '.join(f'{a}={b}' for a, b in sorted(params.items()))} on "
                                          f"{Path(dataset).name if '/' in dataset else dataset}: {reason}"})
    return out
