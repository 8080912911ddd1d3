"""The attack, end to end: dataset -> split -> recommenders -> featurizer -> attack -> metrics."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .components import get_params
from .errors import MiarsError
from .metrics import membership_metrics
from .plugins import Plugins, get_plugins
from .protocol import split_dataset
from .seeds import stage_seed
from .service import Served, defend, serve
from .types import Interactions, Split


@dataclass
class AttackConfig:
    """Everything needed to rerun one attack (written to result.json as ``config``)."""

    dataset: str = "ml-100k"
    data_dir: str | None = None
    download: bool = False
    target: str = "item"
    shadow: str = "item"
    featurizer: str = "center-diff"
    attack: str = "mlp"
    defense: str | None = None
    top_k: int = 100
    seed: int = 0
    split: str = "interactions"
    min_interactions: int = 20
    target_params: dict[str, Any] = field(default_factory=dict)
    shadow_params: dict[str, Any] = field(default_factory=dict)
    featurizer_params: dict[str, Any] = field(default_factory=dict)
    attack_params: dict[str, Any] = field(default_factory=dict)
    defense_params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "AttackConfig":
        """Reject impossible plain values before any component is built or data is read."""
        from .protocol import SPLIT_MODES

        if self.split not in SPLIT_MODES:
            raise MiarsError(f"--split {self.split!r} is not valid; choose from: {', '.join(SPLIT_MODES)}")
        if self.top_k < 1:
            raise MiarsError(f"--top-k must be >= 1, got {self.top_k}")
        if self.min_interactions < 1:
            raise MiarsError(f"--min-interactions must be >= 1, got {self.min_interactions}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= 2**32 - 1:
            raise MiarsError(f"--seed must be an integer from 0 to {2**32 - 1} (2**32 - 1), got {self.seed}")
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
        return out


Progress = Callable[[str], None]


class _Timer:
    def __init__(self, progress: Progress | None):
        self.timings: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        if self.progress:
            self.progress(message)
        start = time.perf_counter()
        yield
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


def load_dataset(config: AttackConfig, plugins: Plugins) -> Interactions:
    """Load ``config.dataset``: a registered name, or the path of an interactions file."""
    registry = plugins.registry("dataset")
    name = config.dataset
    data_dir = Path(config.data_dir) if config.data_dir else None
    if name not in registry.entries and (Path(name).exists() or "/" in name or name.endswith((".gz", ".tsv", ".csv", ".inter", ".dat", ".txt"))):
        if not Path(name).is_file():
            raise MiarsError(f"--dataset {name!r}: no such file; pass an existing file or one of: {', '.join(registry.names())}")
        dataset = registry.create("file", path=name)
    else:
        dataset = registry.create(name)
    data = dataset.load(data_dir=data_dir, download=config.download)
    if data.n_interactions == 0:
        raise MiarsError(f"dataset {name!r} holds no interactions; check the file")
    return data


def run_attack(config: AttackConfig, plugins: Plugins | None = None, progress: Progress | None = None) -> AttackResult:
    """Run the CCS'21 attack described by ``config`` and return its result (same seed, same metrics)."""
    plugins = plugins or get_plugins()
    config.validate()
    # Build every component first, so a bad name fails before any data is read.
    shadow_rec = plugins.create("recommender", config.shadow, **config.shadow_params)
    target_rec = plugins.create("recommender", config.target, **config.target_params)
    featurizer = plugins.create("featurizer", config.featurizer, **config.featurizer_params)

    def make_attack():  # a fresh, unfitted model per attacker
        return plugins.create("attack", config.attack, **config.attack_params)

    attack_model = make_attack()
    defense = plugins.create("defense", config.defense, **config.defense_params) if config.defense else None

    timer = _Timer(progress)
    seed = config.seed
    with timer.stage("load", f"loading {config.dataset}"):
        data = load_dataset(config, plugins)
    with timer.stage("split", "splitting into shadow / target / vectorization"):
        split = split_dataset(data, mode=config.split, min_interactions=config.min_interactions,
                              seed=stage_seed(seed, "split"))
    with timer.stage("shadow_recommender", f"training shadow recommender {config.shadow}"):
        shadow = serve(split.shadow, shadow_rec, config.shadow, config.top_k, stage_seed(seed, "shadow"))
    with timer.stage("target_recommender", f"training target recommender {config.target}"):
        target = serve(split.target, target_rec, config.target, config.top_k, stage_seed(seed, "target"))
    shadow_lists = {"undefended": shadow.lists}
    target_lists = target.lists
    if defense is not None:
        with timer.stage("defense", f"applying defense {config.defense}"):
            target_lists = defend(target, defense, stage_seed(seed, "defense-target"))
            shadow_lists["defended"] = defend(shadow, defense, stage_seed(seed, "defense-shadow"))
    with timer.stage("featurize", f"featurizing with {config.featurizer}"):
        featurizer.fit(split.vectorization, seed=stage_seed(seed, "featurizer"))
        x_target = featurizer.transform(split.target.interactions, target_lists)
        x_shadow = {key: featurizer.transform(split.shadow.interactions, lists) for key, lists in shadow_lists.items()}
    attackers: dict[str, dict] = {}
    scores: dict[str, np.ndarray] = {}
    with timer.stage("attack", f"training attack {config.attack}"):
        for key, x in x_shadow.items():
            model = make_attack().fit(x, split.shadow.is_member, seed=stage_seed(seed, "attack"))
            scores[key] = np.asarray(model.decision_function(x_target), dtype=np.float64)
            attackers[key] = membership_metrics(split.target.is_member, scores[key], np.asarray(model.predict(x_target)))
    # The headline is the attacker that knows the service it attacks (shadow served like the target).
    main = "defended" if defense is not None else "undefended"
    named = {"undefended": "defense_unaware", "defended": "defense_aware"}
    return AttackResult(
        config=config,
        metrics=attackers[main],
        timings={**timer.timings, "total": round(sum(timer.timings.values()), 3)},
        split={"mode": config.split, "min_interactions": config.min_interactions, **split.summary(),
               "dataset": {"users": data.n_users, "items": data.n_items, "interactions": data.n_interactions}},
        recommenders={"shadow": shadow.report, "target": target.report},
        components={
            "featurizer": {"name": config.featurizer, "params": get_params(featurizer)},
            "attack": {"name": config.attack, "params": get_params(attack_model)},
            "defense": {"name": config.defense, "params": get_params(defense)} if defense is not None else None,
        },
        versions=versions(plugins),
        attackers={named[k]: v for k, v in attackers.items()} if defense is not None else {},
        artifacts={"split": split, "shadow_lists": shadow_lists.get("defended", shadow.lists),
                   "target_lists": target_lists, "item_vectors": getattr(featurizer, "item_vectors_", None),
                   "scores": scores[main]},
    )


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
    out["plugins"] = {name: {"version": info.version, "status": info.status} for name, info in sorted(plugins.info.items())}
    return out
