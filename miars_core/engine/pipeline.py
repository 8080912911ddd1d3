"""The attack, end to end: dataset -> split -> recommenders -> featurizer -> attack -> metrics."""

from __future__ import annotations

from typing import Any, Callable

from ..contracts.errors import MiarsError
from ..contracts.plugins import Plugins, get_plugins
from ..contracts.types import Split
from .config import SETTINGS, AttackConfig, AttackResult, flag_of, shown  # noqa: F401 - the Python API's names
from .datasets import DATASET_SUFFIXES, dataset_file, load_dataset, load_named  # noqa: F401 - importable from here too
from .store import Store

Progress = Callable[[str], None]


def run_attack(config: AttackConfig, plugins: Plugins | None = None, progress: Progress | None = None,
               store: Store | None = None) -> AttackResult:
    """Run the CCS'21 attack described by ``config`` and return its result (same seed, same metrics).

    The run is one cell of the stage graph (:mod:`miars_core.engine.stages`); ``store`` keeps stage
    outputs (a :class:`~miars_core.engine.store.DiskStore` reuses them across runs; default: this run only).
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

    def query_use() -> dict | None:
        """Query use in one layout with and without a defense: the headline attacker's at the top, every
        attacker's under ``attackers`` (``attack``; or ``defense_aware`` and ``defense_unaware``)."""
        found = by_attacker("queries")
        if not found:
            return None
        headline = found.get("defense_aware" if config.defense else "attack") or next(iter(found.values()))
        return {**headline, "attackers": found}

    return AttackResult(
        config=config,
        metrics=attackers[main],
        timings=timings,
        split=split_info,
        recommenders={"shadow": {**cell.report("shadow"), **shadow_lengths(cell, outputs[main])},
                      "target": {**cell.report("target"), "utility": cell.signal()}},
        components=components,
        versions={**versions(cell.plugins), "device": device_record(cell)},
        attackers={named[k]: v for k, v in attackers.items()} if config.defense else {},
        artifacts=artifacts,
        cache={"computed": dict(cell.computed), "cached": sorted(set(cell.hits) - set(cell.computed))},
        utility=utility_block(cell),
        queries=query_use(),
        interaction=by_attacker("interaction"),
        attack_record=by_attacker("record"),
        attributes=cell.attributes_report(),
    )


def utility_block(cell) -> dict | None:
    """result.json's ``utility``: the target members' numbers (:meth:`Cell.utility`, from the stage records) and,
    beside them in ``undefended`` and ``defended``, ``new_accounts``: the same metrics on the target NON-members'
    lists against their own held-out items (the service's new accounts: the popular list, fold-in lists, ...).

    ``new_accounts`` is derived here, at assembly, from the stored lists (the ``serve`` / ``defend`` outputs,
    one row per user of the part) and the derived hold-out (:meth:`Cell.future`), never from a stage record:
    a stage stored before it existed gives the same number as a fresh one, and no stage key changed (this
    module is not one :data:`~miars_core.engine.keys.STAGE_MODULES` hashes). ``{"users": 0}`` alone when no
    non-member holds anything out (no NaN).
    """
    out = cell.utility()
    if out is None:
        return None
    future = cell.future("target")
    others = ~cell.part("target").is_member
    for side, block in out.items():
        block["new_accounts"] = new_account_utility(cell.lists("target", side == "defended"), future, others,
                                                    cell.config.top_k)
    return out


def new_account_utility(lists, future, others, k: int) -> dict:
    """Recall / NDCG / HR at ``k`` of ``lists[others]`` on ``future[others]`` (see :func:`utility_metrics`);
    ``{"users": 0}`` when those rows hold nothing out."""
    from ..science.utility import utility_metrics

    scores = utility_metrics(lists[others], future[others], k)
    return scores if scores["users"] else {"users": 0}


def shadow_lengths(cell, attack) -> dict:
    """result.json's ``recommenders.shadow.lengths`` with --shadow-lengths: the lengths asked for, the epochs each
    shadow model was asked to train for and ran, and its seconds (read from the stage records); {} without."""
    record = attack.meta.get("shadow_lengths")
    if not record:
        return {}
    from .graph import Node

    runs, seconds = [], []
    for index in record["indices"]:
        model = cell.walker.output(Node("model", "shadow", False, int(index)))
        runs.append(int((model.meta.get("report") or {}).get("fit_info", {}).get("epochs_run", 0)))
        seconds.append(round(float(model.meta.get("seconds", 0.0)), 3))
    return {"lengths": {"asked": record["asked"], "epochs": list(record["epochs"]), "epochs_run": runs,
                        "fit_seconds": seconds}}


_TIMING_ORDER = ("warmup", "load", "split", "shadow_recommender", "target_recommender", "defense", "featurize", "attack",
                 "reference_models")

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


def device_record(cell) -> dict:
    """result.json's ``versions.device``: the device asked for and the one each torch stage ran on.

    Read from the stages' stored records, so a cell read back from the cache reports where its
    stages were computed; a stage that used no device-aware code (numpy, scipy) is not listed.
    """
    stages = cell.stage_devices()
    stages = {k: stages[k] for k in _TIMING_ORDER if k in stages}
    gpus = cell.gpu_names()
    return {"asked": cell.config.device, "stages": stages, **({"gpus": gpus} if gpus else {})}


def versions(plugins: Plugins) -> dict:
    """Versions of miars, its plugins and the numeric stack, for result.json."""
    import importlib.metadata as md

    from .. import __version__

    out: dict[str, Any] = {"miars": __version__}
    for dist in ("recbole", "torch", "numpy", "scipy", "scikit-learn", "pluggy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    out["plugins"] = {name: {"version": info.version, "status": info.status} for name, info in sorted(plugins.info.items())
                      if not info.status.startswith("blocked")}  # a blocked plugin took no part in the run
    return out
