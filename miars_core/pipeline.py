"""The attack, end to end: dataset -> split -> recommenders -> featurizer -> attack -> metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .contracts.errors import MiarsError
from .contracts.params import AnyOf, Constraint, Flag, Interval, Mapping, Options, OrNone, Text
from .contracts.plugins import Plugins, get_plugins
from .science.protocol import SPLIT_MODES
from .store import Store
from .contracts.types import Interactions, Split


#: What each setting of a cell may be, with an example value: the one declaration that
#: :meth:`AttackConfig.validate`, the grid's flags and its TOML keys (:mod:`miars_core.grid`) are
#: checked against, by type and range, before any work.
SETTINGS: dict[str, tuple[Constraint, Any]] = {
    "dataset": (Text(), "ml-100k"),
    "shadow_dataset": (OrNone(Text()), "ml-1m"),
    "data_dir": (OrNone(Text()), "~/data"),
    "download": (Flag(), True),
    "target": (Text(), "item"),
    "shadow": (OrNone(Text()), "lfm"),
    "featurizer": (Text(), "center-diff"),
    "attack": (Text(), "mlp"),
    "defense": (OrNone(Text()), "popularity-randomization"),
    "service": (Text(), "popular"),
    "top_k": (Interval(int, 1), 100),
    "seed": (Interval(int, 0, 2**32 - 1), 0),
    "split": (Options(SPLIT_MODES), "interactions"),
    "min_interactions": (Interval(int, 1), 20),
    # 0: no hold-out; below 1%, no member of usual size holds out a single interaction (round(share x n) = 0)
    "utility_holdout": (AnyOf((Interval(float, 0.01, 0.9), Options((0,)))), 0.2),
    "query_budget": (Interval(int, 0), 5),
    **{f"{kind}_params": (Mapping(), {"epochs": 5})
       for kind in ("target", "shadow", "featurizer", "attack", "defense", "service")},
}


def flag_of(setting: str) -> str:
    """The command-line flag of a setting (``top_k`` -> ``--top-k``, ``target_params`` -> ``--target-param``)."""
    name = setting[:-1] if setting.endswith("_params") else setting
    return "--" + name.replace("_", "-")


def shown(value: Any) -> str:
    """A value as an error message quotes it: repr, at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "..." + text[-15:]


@dataclass
class AttackConfig:
    """Everything needed to rerun one attack (written to result.json as ``config``)."""

    dataset: str = "ml-100k"
    shadow_dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    target: str = "item"
    shadow: str | None = None  # None: the target's algorithm (same-algorithm attack)
    featurizer: str = "center-diff"
    attack: str = "mlp"
    defense: str | None = None
    service: str = "popular"
    top_k: int = 100
    seed: int = 0
    split: str = "interactions"
    min_interactions: int = 20
    utility_holdout: float = 0.0
    query_budget: int = 5  # queries per target user an attack of threat "queries" may ask the target service
    target_params: dict[str, Any] = field(default_factory=dict)
    shadow_params: dict[str, Any] = field(default_factory=dict)
    featurizer_params: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, Any] = field(default_factory=dict)
    defense_params: dict[str, Any] = field(default_factory=dict)
    service_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "AttackConfig":
        """Reject impossible plain values before any component is built or data is read (fills the default shadow)."""
        self.shadow = self.shadow or self.target
        for name, (rule, example) in SETTINGS.items():
            value = getattr(self, name)
            problem = rule.problem(value)
            if problem is not None:
                flag = flag_of(name)
                shown_example = f"{flag} {example}" if not name.endswith("_params") else f"{flag} epochs=5"
                raise MiarsError(f"{flag} {shown(value)} {problem}; it must be {rule.describe()}, e.g. {shown_example}")
        if self.defense_params and not self.defense:
            keys = ", ".join(f"{k}={shown(v)}" for k, v in sorted(self.defense_params.items()))
            raise MiarsError(f"--defense-param {keys} is given without a defense, so nothing would use it; add "
                             "--defense NAME (`miars list defense`) or drop --defense-param")
        return self


@dataclass
class AttackResult:
    """Metrics, timings and provenance of one run; ``artifacts`` holds arrays for export (not JSON)."""

    config: AttackConfig
    metrics: dict
    timings: dict
    split: dict
    recommenders: dict
    components: dict
    versions: dict
    attackers: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict, repr=False)
    cache: dict = field(default_factory=dict, repr=False)
    cell: dict | None = None
    utility: dict | None = None
    queries: dict | None = None
    interaction: dict | None = None

    def to_json(self) -> dict:
        out = {
            "metrics": self.metrics,
            "timings": self.timings,
            "config": asdict(self.config),
            "split": self.split,
            "recommenders": self.recommenders,
            "components": self.components,
            "versions": self.versions,
        }
        if self.attackers:
            out["attackers"] = self.attackers
        if self.utility is not None:
            out["utility"] = self.utility
        if self.queries:
            out["queries"] = self.queries
        if self.interaction:
            out["interaction"] = self.interaction
        if self.cell is not None:
            out["cell"] = self.cell
        return out


Progress = Callable[[str], None]


DATASET_SUFFIXES = (".gz", ".tsv", ".csv", ".inter", ".dat", ".txt")


def dataset_file(name: str, registry) -> Path | None:
    """The file ``--dataset`` names, or None for a registered dataset; a path that is no file fails in one line."""
    if name in registry.entries:
        return None
    path = Path(name).expanduser()
    if not (path.exists() or "/" in name or name.endswith(DATASET_SUFFIXES)):
        return None
    if not path.is_file():
        raise MiarsError(f"--dataset {name!r}: no such file; pass an existing file or one of: {', '.join(registry.names())}")
    return path


def load_named(name: str, data_dir: str | None, download: bool, plugins: Plugins) -> Interactions:
    """Load a registered dataset by name, or an interactions file by path."""
    registry = plugins.registry("dataset")
    path = dataset_file(name, registry)
    if path is not None:
        dataset = registry.create("file", path=str(path))
    else:
        dataset = registry.create(name)
    data = dataset.load(data_dir=Path(data_dir).expanduser() if data_dir else None, download=download)
    if data.n_interactions == 0:
        raise MiarsError(f"dataset {name!r} holds no interactions; check the file")
    return data


def load_dataset(config: AttackConfig, plugins: Plugins) -> Interactions:
    """Load ``config.dataset``: a registered name, or the path of an interactions file."""
    return load_named(config.dataset, config.data_dir, config.download, plugins)


def run_attack(config: AttackConfig, plugins: Plugins | None = None, progress: Progress | None = None,
               store: Store | None = None) -> AttackResult:
    """Run the CCS'21 attack described by ``config`` and return its result (same seed, same metrics).

    The run is one cell of the stage graph (:mod:`miars_core.stages`); ``store`` keeps stage
    outputs (a :class:`~miars_core.store.DiskStore` reuses them across runs; default: this run only).
    """
    from .stages import Cell

    plugins = plugins or get_plugins()
    config.validate()
    cell = Cell(config, plugins, store, progress)  # builds every component: bad names fail here
    return cell_result(cell)


def cell_result(cell) -> AttackResult:
    """Compute (or read) every stage of ``cell`` and assemble its :class:`AttackResult`."""
    from .stages import cell_metrics

    config = cell.config
    attackers = cell_metrics(cell)
    outputs = cell.attackers()
    main = "defended" if config.defense else "undefended"
    named = {"undefended": "defense_unaware", "defended": "defense_aware"}
    shadow_split, target_split = cell.split_output("shadow").meta, cell.split_output("target").meta
    summary = {"shadow": shadow_split["summary"]["shadow"], "target": target_split["summary"]["target"],
               "vectorization": target_split["summary"]["vectorization"], "items": target_split["summary"]["items"]}
    split_info = {"mode": config.split, "min_interactions": config.min_interactions, **summary,
                  "dataset": target_split["dataset"]}
    if config.utility_holdout > 0:  # the users' future, removed from both parts before anything saw them
        split_info["holdout"] = {"fraction": config.utility_holdout,
                                 **{p: {"held_out": int(cell.future(p).nnz), "visible": cell.part(p).interactions.n_interactions}
                                    for p in ("shadow", "target")}}
    if config.shadow_dataset:
        split_info["shadow_dataset"] = {**shadow_split["dataset"], "vectorization": shadow_split["summary"]["vectorization"],
                                        "items": shadow_split["summary"]["items"]}
    components = {
        "featurizer": {"name": config.featurizer, "params": cell._ids["featurizer"]["params"]},
        "attack": {"name": config.attack, "params": cell._ids["attack"]["params"]},
        "defense": {"name": config.defense, "params": cell._ids["defense"]["params"]} if config.defense else None,
        "service": {"name": config.service, "params": cell._ids["service"]["params"]},
    }
    timings = cell.stage_seconds()
    timings = {k: timings[k] for k in _TIMING_ORDER if k in timings}
    timings["total"] = round(sum(timings.values()), 3)
    artifacts = _LazyArtifacts({
        "split": lambda: cell.visible_split() if not config.shadow_dataset else _transfer_split(cell),
        "target_part": lambda: cell.part("target"),
        "shadow_lists": lambda: cell.lists("shadow", bool(config.defense)),
        "target_lists": lambda: cell.lists("target", bool(config.defense)),
        "item_vectors": lambda: getattr(cell.featurizer("target"), "item_vectors_", None),
        "scores": lambda: outputs[main].arrays["scores"],
        "attacker_scores": lambda: {named[k] if config.defense else "attack": o.arrays["scores"] for k, o in outputs.items()},
    })

    def by_attacker(record: str) -> dict | None:
        """A record the attack stage wrote (query use, interaction metrics), by attacker; None if none did."""
        out = {named[k] if config.defense else "attack": o.meta[record] for k, o in outputs.items() if record in o.meta}
        return out or None

    return AttackResult(
        config=config,
        metrics=attackers[main],
        timings=timings,
        split=split_info,
        recommenders={"shadow": cell.report("shadow"), "target": {**cell.report("target"), "utility": cell.signal()}},
        components=components,
        versions=versions(cell.plugins),
        attackers={named[k]: v for k, v in attackers.items()} if config.defense else {},
        artifacts=artifacts,
        cache={"computed": dict(cell.computed), "cached": sorted(set(cell.hits) - set(cell.computed))},
        utility=cell.utility(),
        queries=by_attacker("queries"),
        interaction=by_attacker("interaction"),
    )


_TIMING_ORDER = ("load", "split", "shadow_recommender", "target_recommender", "defense", "featurize", "attack")

def _transfer_split(cell) -> Split:
    raise MiarsError("--export-miars is not available for a dataset-transfer run (shadow and target items differ); "
                     "drop --export-miars or --shadow-dataset")


class _LazyArtifacts(dict):
    """Arrays for export and scores.tsv, read from the stage outputs only when asked for."""

    def __init__(self, loaders: dict[str, Callable[[], Any]]):
        super().__init__()
        self._loaders = loaders

    def __missing__(self, key: str) -> Any:
        if key not in self._loaders:
            raise KeyError(key)
        value = self[key] = self._loaders[key]()
        return value

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


def versions(plugins: Plugins) -> dict:
    """Versions of miars, its plugins and the numeric stack, for result.json."""
    import importlib.metadata as md

    from . import __version__

    out: dict[str, Any] = {"miars": __version__}
    for dist in ("recbole", "torch", "numpy", "scipy", "scikit-learn", "pluggy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    out["plugins"] = {name: {"version": info.version, "status": info.status} for name, info in sorted(plugins.info.items())
                      if not info.status.startswith("blocked")}  # a blocked plugin took no part in the run
    return out
