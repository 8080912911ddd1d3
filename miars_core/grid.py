"""Grid specifications: the cross product of lists of datasets, recommenders, defenses, top-k and seeds.

A grid comes from command-line flags, a TOML file (``--config``), or both (flags win). Each
point of the cross product is one cell, an :class:`~miars_core.pipeline.AttackConfig`, named by
a readable slug plus a hash of its whole configuration.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import MiarsError
from .params import parse_value
from .pipeline import AttackConfig
from .stages import digest

NONE_DEFENSE = "none"
#: Control recommenders (``--controls`` adds them as targets): what they stand for in reports.
CONTROLS = {"random": "random items", "pop": "popular items"}


def is_control(target: str) -> bool:
    """Whether a target recommender is a control (its lists carry no membership signal by construction)."""
    return target in CONTROLS


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
    data_dir: str | None = None
    download: bool = False
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

    def to_json(self) -> dict:
        return asdict(self)

    def configs(self) -> list[AttackConfig]:
        """Every cell of the grid, in a stable order (datasets, recommenders, defenses, top-k, seeds)."""
        if not isinstance(self.controls, bool):
            raise MiarsError(f"controls must be true or false, got {self.controls!r}; e.g. controls = true")
        targets = list(self.target) + ([c for c in CONTROLS if c not in self.target] if self.controls else [])
        out = []
        for dataset, shadow_dataset, target in itertools.product(self.dataset, self.shadow_dataset, targets):
            for shadow in (self.shadow if self.shadow is not None else [target]):
                for defense, dparams in self._defenses():
                    allowed = self.defense_targets.get(defense or "")
                    if allowed is not None and (target not in allowed or shadow not in allowed):
                        continue
                    for service, top_k, featurizer, attack, seed in itertools.product(
                            self.service, self.top_k, self.featurizer, self.attack, self.seed):
                        out.append(AttackConfig(
                            dataset=dataset, shadow_dataset=shadow_dataset if shadow_dataset != dataset else None,
                            data_dir=self.data_dir, download=self.download, target=target, shadow=shadow,
                            featurizer=featurizer, attack=attack, defense=defense, service=service,
                            service_params=_scoped(self.service_params, service), top_k=int(top_k), seed=int(seed),
                            split=self.split, min_interactions=int(self.min_interactions),
                            utility_holdout=float(self.utility_holdout), query_budget=int(self.query_budget),
                            target_params=_scoped(self.target_params, target, is_control(target)),
                            shadow_params=_scoped(self.shadow_params, shadow, is_control(shadow)),
                            featurizer_params=_scoped(self.featurizer_params, featurizer),
                            attack_params=_scoped(self.attack_params, attack),
                            defense_params=dparams,
                        ).validate())
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


def cell_id(config: AttackConfig) -> str:
    """A folder name: a readable slug (dataset, target, shadow, defense, k, seed) plus a config hash.

    The hash covers every setting that differs from :class:`AttackConfig`'s defaults, plus the
    names, so a setting added to miars later (at its default) does not rename existing cells.
    """
    defaults = asdict(AttackConfig())
    always = ("dataset", "target", "shadow", "seed", "top_k")
    record = {k: v for k, v in asdict(config).items() if k in always or v != defaults.get(k)}
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
        name = name if dot else "*"
        value = [parse_value(v, f"{flag} {lhs}=...") for v in split_list(raw)] if sweep else parse_value(raw, f"{flag} {lhs}=...")
        if sweep and not value:
            raise MiarsError(f"{flag} {item!r} has no values; write e.g. {flag} {key}=0.05,0.1")
        out.setdefault(name, {})[key] = value
    return out


LIST_KEYS = {"dataset": str, "shadow_dataset": str, "target": str, "shadow": str, "featurizer": str, "attack": str,
             "defense": str, "service": str, "top_k": int, "seed": int}
PARAM_KEYS = ("target_params", "shadow_params", "featurizer_params", "attack_params", "defense_params", "service_params")


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
    valid = set(LIST_KEYS) | set(PARAM_KEYS) | {f.name for f in fields(GridSpec)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise MiarsError(f"--config {str(p)!r}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in LIST_KEYS:
            values = value if isinstance(value, list) else [value]
            kind = LIST_KEYS[key]
            if not values or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
                raise MiarsError(f"--config {str(p)!r}: {key} must be a {kind.__name__} or a list of them, got {value!r}")
            out[key] = [None if (key == "defense" and v == NONE_DEFENSE) else v for v in values]
        elif key in PARAM_KEYS:
            if not isinstance(value, dict):
                raise MiarsError(f"--config {str(p)!r}: {key} must be a table like [{key}.NAME]")
            flat = {k: v for k, v in value.items() if not isinstance(v, dict)}
            scoped = {"*": flat} if flat else {}
            scoped.update({k: v for k, v in value.items() if isinstance(v, dict)})
            if key == "defense_params":
                scoped = {n: {k: (v if isinstance(v, list) else [v]) for k, v in d.items()} for n, d in scoped.items()}
            out[key] = scoped
        else:
            out[key] = value
    return out
