"""The stage graph of one attack cell, declared: every stage, its inputs, and what its key covers.

One cell is one :class:`~miars_core.engine.config.AttackConfig`. Each stage below is one function
declared with :meth:`GRAPH.stage <miars_core.engine.graph.Graph.stage>`: its parameters after
``(cell, node)`` are its inputs (other stages, by name), ``covers`` says what its key holds
besides the inputs' keys, and one walker (:class:`~miars_core.engine.graph.Walker`) reads, checks,
computes, stores and times them all. In the order data flows::

    stage      inputs                         key covers (besides the inputs' keys)
    ---------  -----------------------------  -------------------------------------------------------------
    load       -                              file content (sha256) or name + data dir; loader version
    split      load                           split mode, min interactions, seed("split")          [grid task]
    part*      split                          the part's name; the utility hold-out (fraction, seed("holdout-<part>"))
    model      part                           recommender name, all its hyperparameters and version, seed(part);
                                              under a data or training defense also the defense (name,
                                              hyperparameters, version, seed("defense-<part>")): the fitted model
    serve      model, part                    top-k, the service (name, hyperparameters, version); a service that reads
                                              user attributes: the file's sha256: the lists [grid task]
    defend     serve, part                    a defense acting on lists: name, hyperparameters, version,
                                              seed("defense-<part>")
    vectors    split                          featurizer name, hyperparameters, version, seed("featurizer")
    features   vectors, serve or defend, part nothing else
    attack     features of shadow and target  attack name, hyperparameters, version, seed("attack"); query
                                              attacks: the budget; interaction attacks: seed("pairs-target");
                                              an attack or service that reads user attributes: the file's sha256
    adversary* split (side), split (target),  the shadow recommender (name, hyperparameters, version), --seed;
               model (shadow)                 its training length is the shadow model's (shadow_length)
    reference  adversary                      the index: reference model number i (a family, asked for lazily)
    candidates* part, model (shadow)          the shadow recommender (name, hyperparameters, version), --seed
    online_reference  candidates              the index: online reference model i, on a random half of the part's
                                              users (a family, asked for lazily: online lira)
    metrics    attack                         not stored: milliseconds

    * derived: kept in memory only; its key flows into the keys of the stages that read it.

**Shadow lengths** (``--shadow-lengths``, :mod:`~miars_core.engine.lengths`): ``Node.index`` > 0 on a
shadow ``model``, ``serve``, ``defend`` or ``features`` node is a training length in epochs; its model
key covers the shadow recommender with ``epochs`` set to it (the key of a cell given ``--shadow-param
epochs=N``, so the fit is shared). The attack's key covers the option; it asks for every length's
features while it computes (``auto``: around the shadow model's own length, known only once it is
fitted) and its record lists their indices, from which :meth:`Cell.graph` lists their stages.

Every key is the sha256 of a JSON record of those fields plus :data:`STAGES_VERSION` and a hash
of the core modules that compute stages, so changed code never reads a stale output. Each
stage's output is a set of arrays plus a JSON record (:mod:`miars_core.engine.store`), never a pickle.
The shadow part may come from another dataset than the target part (``shadow_dataset``, the
paper's dataset transfer): each side then has its own load, split and item vectors.

**Fitted models are stage outputs.** The ``model`` stage stores a fitted recommender (or the model
a training defense fitted) through the recommender state contract
(:mod:`miars_core.contracts.state`: ``get_state`` / ``set_state``), with the data it was trained
on; the model key holds neither top-k nor the service, so a popular and a fold-in cell, or two
lengths of list, share one fit, and query access and interaction labels read the stored model
instead of fitting again. A model without the contract is stored as a marker and fitted again in
each process that needs it (the lists it serves are then checked against the stored ones).
Reference models (``view.reference(i)``) are the ``reference`` stage, keyed by the adversary's
data, the shadow recommender, its shadow model, --seed and the index: shared by every cell that trains the same
ones. They train for the shadow model's automatically chosen length (:func:`shadow_length`): the adversary
selects a length once, on its own shadow, instead of once per reference model.

Components keep their plugin contracts (a recommender only fits and recommends): this module
does the caching around them. Seeds are those of miars v0, so results did not change.

**The utility hold-out is the users' future.** With ``utility_holdout`` = f > 0, a seeded share
f of *every* user's interactions in the shadow and the target part (members and non-members
alike, :func:`~miars_core.science.utility.holdout`, seed("holdout-<part>")) is removed from the part
before any stage sees it: :meth:`Cell.part` returns the rest (the visible history), which is
what the service trains on and knows, and what the adversary sees (views, features, histories
of query attacks, interaction pairs). :meth:`Cell.future` keeps the removed interactions; only
the target members' rows are read, to score utility. Without a hold-out the parts are the
split's, unchanged.

**Adding a stage** is one declaration here: a function, its inputs, what its key covers, the
timing it counts under, and a check of its output read back (see docs/engine.md).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from ..contracts.components import get_params
from ..contracts.defenses import acts_on
from ..contracts.errors import MiarsError
from ..contracts.seeds import stage_seed
from ..contracts.state import check_state
from ..contracts.types import Interactions, Part, ServiceContext, Split, random_row_ranks
from ..science.metrics import membership_metrics
from ..science.protocol import split_dataset
from ..science.ranking import check_k
from ..science.service import Fitted, Served, fit_model, popularity_order, serve_fitted, stage_threads
from ..science.service import defend as apply_defense
from ..science.threat import (AdversaryView, OnlineReferences, QueryAccess, ReferenceModels, decision_threshold,
                              fit_online_reference, fit_reference, level_of, require_budget, threat_of)
from ..science.utility import holdout, list_signal, utility_metrics
from .config import shown
from .codecs import (_csr_problem, _finite_problem, _flags_problem, _index_problem, interactions_from_arrays,  # noqa: F401
                     interactions_problem, interactions_to_arrays, learned_state, split_from_arrays, split_problem,
                     split_to_arrays)
from .graph import Clock, Graph, Node, Unusable, Walker, compute, on_device, read
from .lengths import auto_lengths, check_shadow_lengths
from .keys import (STAGE_MODULES, STAGES_VERSION, _entry_version, component_version, core_version,  # noqa: F401
                   dataset_identity, digest, file_fingerprint)
from .store import MemoryStore, Output

#: Timing names reported in result.json (those of miars v0, plus the reference models and the warm-up).
TIMING = {"load": "load", "split": "split", "serve:shadow": "shadow_recommender", "serve:target": "target_recommender",
          "defend": "defense", "vectors": "featurize", "features": "featurize", "attack": "attack",
          "reference": "reference_models", "online_reference": "reference_models"}

#: The family stages an attack asks for lazily, and the attack record's list of the keys it read from each.
FAMILIES = {"reference": "references", "online_reference": "online_references"}

#: Every stage of a cell, declared below.
GRAPH = Graph()


# -- edges -----------------------------------------------------------------------------------------
def _split_of(cell, node: Node) -> Node:
    return Node("split", node.part)


def _part_of(cell, node: Node) -> Node:
    return Node("part", node.part)


def _lists_of(cell, node: Node) -> Node:
    """The node whose output is the lists ``node.part``'s users see, with or without the defense."""
    return cell.lists_node(node.part, node.defended, node.index)


# -- the stages -------------------------------------------------------------------------------------
@GRAPH.stage(covers=lambda cell, node: {"dataset": cell.dataset_id(node.part)}, timing=lambda node: "load",
             message=lambda cell, node: f"loading {cell.dataset_of(node.part)}",
             check=lambda cell, node, out: interactions_problem(out.arrays),
             decode=lambda cell, node, out: interactions_from_arrays(out.arrays))
def load(cell, node):
    from .datasets import load_named

    data = load_named(cell.dataset_of(node.part), cell.config.data_dir, cell.config.download, cell.plugins)
    return interactions_to_arrays(data), {"users": data.n_users, "items": data.n_items,
                                          "interactions": data.n_interactions}


@GRAPH.stage(inputs={"data": lambda cell, node: Node("load", node.part)},
             covers=lambda cell, node: {"mode": cell.config.split, "min_interactions": cell.config.min_interactions,
                                        "seed": stage_seed(cell.config.seed, "split")},
             timing=lambda node: "split", task=True,
             message=lambda cell, node: f"splitting {cell.dataset_of(node.part)} into shadow / target / vectorization",
             check=lambda cell, node, out: split_problem(out.arrays),
             decode=lambda cell, node, out: split_from_arrays(out.arrays))
def split(cell, node, data: Interactions):
    c = cell.config
    s = split_dataset(data, mode=c.split, min_interactions=c.min_interactions, seed=stage_seed(c.seed, "split"))
    return split_to_arrays(s), {"summary": s.summary(),
                                "dataset": {"users": data.n_users, "items": data.n_items,
                                            "interactions": data.n_interactions}}


@GRAPH.stage(inputs={"split": _split_of}, stored=False,
             covers=lambda cell, node: {"part": node.part, **cell.holdout_record(node.part)})
def part(cell, node, split: Split) -> tuple[Part, sp.csr_matrix | None]:
    """The part as the service and the adversary know it (without its future), and its future (None without a hold-out)."""
    p, f = getattr(split, node.part), cell.config.utility_holdout
    if f <= 0:
        return p, None
    visible, held = holdout(p.interactions, f, stage_seed(cell.config.seed, f"holdout-{node.part}"))
    if node.part == "target" and held[p.is_member].nnz == 0:  # every utility number would be NaN
        raise MiarsError(f"--utility-holdout {f} holds out no interaction of any target member (each holds out "
                         f"round({f} x her interactions), at most n - 1); raise it, e.g. --utility-holdout 0.2")
    return Part(p.name, visible, p.is_member), held


def _model_covers(cell, node: Node) -> dict:
    # node.index: a shadow length (--shadow-lengths), in the recommender's epochs: the key of --shadow-param epochs=N
    rec = {"recommender": cell.component_id(cell.recommender_role(node.part, node.index)),
           "seed": stage_seed(cell.config.seed, node.part)}
    if node.defended:  # a data or training defense: another fit
        rec.update(defense=cell.component_id("defense"), defense_seed=stage_seed(cell.config.seed, f"defense-{node.part}"))
    return rec


def _model_message(cell, node: Node) -> str:
    under = f" under defense {cell.config.defense}" if node.defended else ""
    length = f" for {node.index} epochs" if node.index else ""
    return f"training {node.part} recommender {cell.specs[f'recommender:{node.part}'][0]}{length}{under}"


@GRAPH.stage(inputs={"part": _part_of}, covers=_model_covers, timing=lambda node: f"serve:{node.part}",
             message=_model_message, check=lambda cell, node, out: cell.model_problem(node, out),
             decode=lambda cell, node, out: cell.restore_model(node, out))
def model(cell, node, part):
    """Fit the part's recommender on its members (under a data or training defense): the fitted model, stored."""
    fitted = cell.fit(node.part, node.defended, node.index)
    arrays, meta = model_output(fitted, f"recommender {cell.specs[f'recommender:{node.part}'][0]!r}",
                                cell.model_versions(node))
    return arrays, meta, fitted


def model_output(fitted: Fitted, who: str, versions: dict) -> tuple[dict[str, np.ndarray], dict]:
    """A fit as a stage output: the training matrix, the model's state (``state.<name>`` arrays) or a marker."""
    m = sp.csr_matrix(fitted.train.matrix)
    arrays: dict[str, np.ndarray] = {"train_indptr": m.indptr, "train_indices": m.indices}
    get = getattr(fitted.model, "get_state", None)
    state = check_state(get(), who) if callable(get) else None
    meta: dict[str, Any] = {"report": fitted.report, "versions": versions, "storable": state is not None}
    if state is not None:
        arrays.update({f"state.{name}": value for name, value in state[0].items()})
        meta["state"] = state[1]
    return arrays, meta


def _model_arrays_problem(out: Output, n_rows: int, n_items: int) -> tuple[str, str] | None:
    meta = out.meta
    if not isinstance(meta.get("report"), dict) or not isinstance(meta.get("storable"), bool) or (
            meta["storable"] and not isinstance(meta.get("state"), dict)):
        return "meta.json", "holds no valid model record"
    bad = _csr_problem(out.arrays, "train", n_rows, n_items)
    if bad:
        return bad
    for name, arr in out.arrays.items():
        if name.startswith("state.") and arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            return name, "holds non-finite values"
    return None


def _restore(out: Output, versions: dict, make: Callable[[dict[str, np.ndarray], dict], Any], train: Interactions) -> Fitted | None:
    """The fit a ``model`` or ``reference`` output holds (None: a marker, fit again in this process)."""
    if not out.meta["storable"]:
        return None
    if out.meta.get("versions") != versions:
        raise Unusable(f"was stored by another version of its components ({out.meta.get('versions')}, now {versions})")
    state = {name[6:]: arr for name, arr in out.arrays.items() if name.startswith("state.")}
    try:
        fitted = make(state, out.meta["state"])
    except Exception as exc:  # noqa: BLE001 - any refusal of set_state: computed again, in one line
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise Unusable(f"cannot be restored ({type(exc).__name__}: {text})") from None
    if fitted is None:
        raise Unusable("cannot be restored (set_state returned None)")
    return Fitted(fitted, train, out.meta["report"])


@GRAPH.stage(inputs={"model": lambda cell, node: Node("model", node.part, node.defended, node.index), "part": _part_of},
             covers=lambda cell, node: {"k": cell.config.top_k, "service": cell.component_id("service"),
                                        **cell.attributes_record("service")},
             timing=lambda node: f"serve:{node.part}", task=True,
             before=lambda cell, node: check_k(cell.config.top_k, cell.part(node.part).interactions.matrix,
                                               who=f"{node.part} users"),
             message=lambda cell, node: f"serving the {node.part} part's users ({cell.config.service} service)",
             check=lambda cell, node, out: cell.lists_problem(node.part, out))
def serve(cell, node, model, part):
    """Members get the fitted model's top-k, everyone else what the service serves new accounts."""
    fitted = model if model is not None else cell.fitted(node.part, node.defended, agree=False, index=node.index)
    p, future = part
    held = future[p.is_member] if future is not None and node.part == "target" else None  # utility: target members
    s = serve_fitted(p, fitted, cell.config.top_k, stage_seed(cell.config.seed, node.part), heldout=held,
                     service=cell.create("service"), attributes=cell.attributes_for("service"))
    model_seconds = cell.walker.output(Node("model", node.part, node.defended, node.index)).meta.get("seconds", 0.0)
    return {"lists": s.lists}, {"report": s.report, "model_seconds": model_seconds}


@GRAPH.stage(inputs={"lists": lambda cell, node: Node("serve", node.part, False, node.index), "part": _part_of},
             covers=lambda cell, node: {"defense": cell.component_id("defense"),
                                        "seed": stage_seed(cell.config.seed, f"defense-{node.part}")},
             timing=lambda node: "defend",
             message=lambda cell, node: f"applying defense {cell.config.defense} to the {node.part} part",
             check=lambda cell, node, out: cell.lists_problem(node.part, out))
def defend(cell, node, lists: Output, part):
    p, future = part
    context = ServiceContext(p.interactions, p.is_member, popularity_order(p), cell.config.top_k)
    out = apply_defense(Served(lists.arrays["lists"], context), cell.create("defense"),
                 stage_seed(cell.config.seed, f"defense-{node.part}"))
    if node.part != "target" or future is None:
        return {"lists": out}, {}
    members = p.is_member
    return {"lists": out}, {"utility": utility_metrics(out[members], future[members], cell.config.top_k)}


def _vectors_problem(cell, node, out: Output) -> tuple[str, str] | None:
    if not isinstance(out.meta.get("plain", {}), dict):
        return "meta.json", "has no valid learned state"
    for name, arr in out.arrays.items():
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            return name, "holds non-finite values"
    return None


def _vectors_decode(cell, node, out: Output) -> Any:
    if not out.meta.get("storable"):
        return None  # learned state that is not arrays: fitted again in each process that needs it
    f = cell.create("featurizer")
    for name, value in {**out.arrays, **out.meta.get("plain", {})}.items():
        setattr(f, name, value)
    return f


@GRAPH.stage(inputs={"split": _split_of},
             covers=lambda cell, node: {"featurizer": cell.component_id("featurizer"),
                                        "seed": stage_seed(cell.config.seed, "featurizer")},
             timing=lambda node: "vectors",
             message=lambda cell, node: (f"fitting featurizer {cell.config.featurizer} on the {node.part} side's "
                                         "vectorization part"),
             check=_vectors_problem, decode=_vectors_decode)
def vectors(cell, node, split: Split):
    """The featurizer fitted on the side's vectorization part; its learned state (attributes ending in ``_``) stored."""
    f = cell.fit_featurizer(split.vectorization)
    state = learned_state(f)
    if state is None:
        return {}, {"storable": False}, f
    return state[0], {"storable": True, "plain": state[1]}, f


@GRAPH.stage(inputs={"featurizer": lambda cell, node: Node("vectors", node.part), "lists": _lists_of, "part": _part_of},
             timing=lambda node: "features", message=lambda cell, node: f"featurizing the {node.part} part",
             check=lambda cell, node, out: _finite_problem(out.arrays.get("X"), "X",
                                                           (cell.part(node.part).interactions.n_users, -1)))
def features(cell, node, featurizer, lists: Output, part):
    featurizer = featurizer if featurizer is not None else cell.featurizer(node.part)
    interactions = part[0].interactions
    with stage_threads():
        x = np.asarray(featurizer.transform(interactions, lists.arrays["lists"]), dtype=np.float32)
    name = cell.config.featurizer
    if x.ndim != 2 or x.shape[0] != interactions.n_users:
        raise MiarsError(f"featurizer {name!r} returned features of shape {x.shape}, expected one row per user "
                         f"({interactions.n_users}, d)")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise MiarsError(f"featurizer {name!r} produced non-finite features (NaN or infinity) for {bad} of "
                         f"{x.shape[0]} {node.part} users: the run is broken; check its parameters and inputs")
    return {"X": x}, {}


def _attack_covers(cell, node: Node) -> dict:
    c = cell.config
    rec: dict[str, Any] = {"attack": cell.component_id("attack"), "seed": stage_seed(c.seed, "attack")}
    if cell.threat == "queries":  # query access: the budget, and the reference models' data
        rec.update(query_budget=c.query_budget, reference=cell.key("split", "shadow"))
    if cell.level == "interaction":
        rec.update(pairs_seed=stage_seed(c.seed, "pairs-target"))
    rec.update(cell.attributes_record("attack"))
    if c.shadow_lengths is not None:  # trained on the shadow features of every length (engine/lengths.py)
        rec.update(shadow_lengths=c.shadow_lengths)
    return rec


@GRAPH.stage(inputs={"shadow": lambda cell, node: Node("features", "shadow", node.defended, cell.base_index("shadow")),
                     "target": lambda cell, node: Node("features", "target", bool(cell.config.defense))},
             covers=_attack_covers, timing=lambda node: "attack",
             message=lambda cell, node: f"training attack {cell.config.attack}",
             check=lambda cell, node, out: cell.attack_problem(out))
def attack(cell, node, shadow: Output, target: Output):
    return cell.attack_outcome(node.defended, shadow.arrays["X"], target.arrays["X"])


@dataclass(frozen=True)
class Adversary:
    """What the adversary trains reference models with: its own data (a vectorization part), the target's
    member count, and the shadow recommender's factory. Nothing of the shadow or target parts."""

    data: Interactions
    n_users: int
    min_interactions: int
    seed: int
    make_recommender: Callable[[], Any]
    recommender_name: str
    versions: dict
    #: What the reference models take from the shadow model (:func:`shadow_length`): ``{"epochs": n}`` or ``{}``.
    length: dict = dataclasses.field(default_factory=dict)


def shadow_length(report: dict) -> dict:
    """The training length the adversary's reference models reuse: its shadow model's, when chosen automatically.

    The adversary selects a length once, on its shadow (``epochs`` left to the auto criterion), and
    trains every reference model for that many epochs instead of selecting again per model (the
    selection is about two thirds of an auto-length BPR fit). Returns ``{"epochs": n}`` to pass to
    the recommender, or ``{}`` (a recommender without an auto length, or one given explicitly).
    """
    params, info = report.get("params") or {}, report.get("fit_info") or {}
    run = info.get("epochs_run")
    if ("epochs" in params and (params["epochs"] is None or str(params["epochs"]).lower() == "auto")
            and info.get("epochs") == "auto" and isinstance(run, int) and not isinstance(run, bool) and run >= 1):
        return {"epochs": run}
    return {}


def _shadow_model(cell, node: Node) -> Node:
    """The adversary's own (undefended) shadow model: its length is the reference models' (:func:`shadow_length`)."""
    return Node("model", "shadow")


def _adversary_factory(cell) -> tuple[str, dict, dict]:
    name, params = cell.specs["recommender:shadow"]
    length = shadow_length(cell.walker.output(_shadow_model(cell, None)).meta.get("report") or {})
    return name, {**params, **length}, length


@GRAPH.stage(inputs={"split": _split_of, "members": lambda cell, node: Node("split", "target"),
                     "shadow_model": _shadow_model}, stored=False,
             covers=lambda cell, node: {"recommender": cell.component_id("recommender:shadow"), "seed": cell.config.seed})
def adversary(cell, node, split: Split, members: Split, shadow_model) -> Adversary:
    name, params, length = _adversary_factory(cell)
    return Adversary(split.vectorization, int(members.target.is_member.sum()), cell.config.min_interactions,
                     cell.config.seed, functools.partial(cell.plugins.create, "recommender", name, **params), name,
                     {"recommender": cell.component_id("recommender:shadow")["version"]}, length)


def _reference_problem(ctx: Adversary, node, out: Output) -> tuple[str, str] | None:
    rows = out.arrays.get("rows")
    bad = _index_problem(rows, "rows", ctx.data.n_users, (-1,))
    if bad:
        return bad
    return _model_arrays_problem(out, len(rows), ctx.data.n_items)


def _reference_decode(ctx: Adversary, node, out: Output) -> Fitted | None:
    train = ctx.data.rows(out.arrays["rows"])
    return _restore(out, ctx.versions, lambda arrays, record: ctx.make_recommender().set_state(arrays, record), train)


@GRAPH.stage(inputs={"adversary": lambda cell, node: Node("adversary", node.part)}, family=True,
             timing=lambda node: "reference", check=_reference_problem, decode=_reference_decode,
             message=lambda ctx, node: f"training reference model {node.index} on the adversary's own data")
def reference(ctx, node, adversary: Adversary):
    """Reference model number ``node.index`` (:func:`~miars_core.science.threat.fit_reference`). Runs against the
    adversary's context, never the cell: an attack asks for it, and reaches nothing else through it."""
    fitted, rows = fit_reference(adversary.data, adversary.n_users, adversary.min_interactions, adversary.seed,
                                 node.index, adversary.make_recommender(), adversary.recommender_name)
    arrays, meta = model_output(fitted, f"recommender {adversary.recommender_name!r}", adversary.versions)
    arrays["rows"] = rows
    return arrays, meta, fitted


@GRAPH.stage(inputs={"part": _part_of, "shadow_model": _shadow_model}, stored=False,
             covers=lambda cell, node: {"recommender": cell.component_id("recommender:shadow"), "seed": cell.config.seed})
def candidates(cell, node, part, shadow_model) -> Adversary:
    """What online reference models are trained on: the part's users as the adversary knows them (their visible
    histories, the candidates whose membership it tests), the shadow recommender's factory at its shadow's length.
    No labels."""
    name, params, length = _adversary_factory(cell)
    data = part[0].interactions
    return Adversary(data, data.n_users // 2, 0, cell.config.seed,
                     functools.partial(cell.plugins.create, "recommender", name, **params), name,
                     {"recommender": cell.component_id("recommender:shadow")["version"]}, length)


@GRAPH.stage(inputs={"candidates": lambda cell, node: Node("candidates", node.part)}, family=True,
             timing=lambda node: "online_reference", check=_reference_problem, decode=_reference_decode,
             message=lambda ctx, node: f"training online reference model {node.index} on half of the candidates")
def online_reference(ctx, node, candidates: Adversary):
    """Online reference model ``node.index`` (:func:`~miars_core.science.threat.fit_online_reference`): the shadow
    recommender on a random half of the part's users. Runs against the candidates' context, never the cell."""
    fitted, rows = fit_online_reference(candidates.data, candidates.seed, node.index, candidates.make_recommender(),
                                        candidates.recommender_name)
    arrays, meta = model_output(fitted, f"recommender {candidates.recommender_name!r}", candidates.versions)
    arrays["rows"] = rows
    return arrays, meta, fitted


class FamilyRunner:
    """Member ``index`` of a family stage (reference models), read from or computed into the store, on demand.

    Holds the stage, a store scoped to that stage, the family's key record, its context (what its
    input gave: for reference models the adversary's own data), the cell's clock, and a list the
    keys it used go into: no cell. Calling it returns the member's value.
    """

    __slots__ = ("_stage", "_store", "_base", "_context", "_clock", "_progress", "_computed", "_device", "keys",
                 "seconds")

    def __init__(self, stage, store, base: dict, context: Any, clock: Clock, progress, computed: dict, keys: list,
                 device: str | None = None):
        self._stage, self._store, self._base, self._context = stage, store, base, context
        self._clock, self._progress, self._computed = clock, progress, computed
        self._device = device  # the run's device: members are fitted and restored there (a run option, in no key)
        self.keys = keys
        self.seconds = 0.0

    def __call__(self, index: int) -> Any:
        stage, ctx = self._stage, self._context
        node = Node(stage.name, "", False, int(index))
        key = digest({**self._base, "index": int(index)})
        if key not in self.keys:
            self.keys.append(key)
        (name,) = stage.inputs
        found = read(self._store, stage, key, ctx, node, self._device)
        if found is not None and found[1] is not None:
            return found[1]
        if self._progress and stage.message:
            self._progress(stage.message(ctx, node))
        start = time.perf_counter()
        if found is None:
            _, value, _ = compute(self._store, stage, key, self._clock, lambda: stage.compute(ctx, node, **{name: ctx}),
                                  self._device)
            timing = stage.time_name(node)
            self._computed[timing] = round(self._computed.get(timing, 0.0) + time.perf_counter() - start, 3)
        else:  # stored as a marker: this model cannot be stored, fit it again here
            with on_device(self._device):
                value = stage.compute(ctx, node, **{name: ctx})[2]
        self.seconds += time.perf_counter() - start
        return value


# -- the cell ------------------------------------------------------------------------------------
class Cell:
    """One attack cell: its config, its components, and the walker over the declared stages.

    ``store`` holds outputs (a :class:`~miars_core.engine.store.DiskStore` for ``--cache``, a
    :class:`~miars_core.engine.store.MemoryStore` otherwise). Keys are computed without touching data,
    so a cell whose outputs are stored reads only them.
    """

    SIDES = ("shadow", "target")

    def __init__(self, config, plugins, store=None, progress: Callable[[str], None] | None = None,
                 shared: dict | None = None):
        self.config = config.validate()
        #: Identities computed once for all the cells of a grid (components, datasets): planning
        #: 80,000 cells builds each distinct component once, not once per cell.
        self._shared = shared if shared is not None else {}
        self.plugins = plugins
        self.store = store if store is not None else MemoryStore()
        self.progress = progress
        self.walker = Walker(GRAPH, self, self.store, progress, device=self.config.device)
        self._memo: dict[str, Any] = {}
        self._refit_seconds = 0.0  # models fitted again for query access (those that cannot be stored)
        self._reference_keys: list[str] = []
        self._online_keys: list[str] = []
        self._runners: list[FamilyRunner] = []
        c = config
        #: (name, hyperparameters) of every component of the cell, by role.
        self.specs = {
            "recommender:shadow": (c.shadow, c.shadow_params), "recommender:target": (c.target, c.target_params),
            "featurizer": (c.featurizer, c.featurizer_params), "attack": (c.attack, c.attack_params),
            "service": (c.service, c.service_params),
        }
        if c.defense:
            self.specs["defense"] = (c.defense, c.defense_params)
        # Build every component once now, so a bad name or parameter fails before any data is read.
        self._ids = {role: self._component_id(role) for role in self.specs}
        # A service that cannot serve one of the recommenders (a closed-form fold-in asked of a model without one,
        # ``check_recommender``) says so now, in one line, before any data is read (once per distinct pair).
        for side in self.SIDES:
            memo = ("service-check", digest([*self.specs["service"], *self.specs[f"recommender:{side}"]]))
            if memo not in self._shared:
                check = getattr(self.checked("service"), "check_recommender", None)
                if callable(check):
                    check(self.checked(f"recommender:{side}"), self.specs[f"recommender:{side}"][0])
                self._shared[memo] = True
        # a query attack with no query, or fewer than it declares it asks per target user: refused now
        require_budget(self.checked("attack"), c.query_budget, c.attack)
        if c.shadow_lengths is not None:  # a recommender without epochs, or an attack not trained on features: refused
            check_shadow_lengths(c.shadow_lengths, self.checked("recommender:shadow"), c.shadow, self.threat,
                                 self.level, c.attack)
        self._check_order()
        self._check_attributes()

    def _check_order(self) -> None:
        """Sequential recommenders: refused in one line, before any data is read, on a dataset without order, and a
        sequential target with a shadow of another kind (docs/sequential.md)."""
        from .datasets import is_sequential

        kinds = {}
        for side in self.SIDES:  # once per distinct recommender of a grid, as the component identities
            name, params = self.specs[f"recommender:{side}"]
            memo = ("sequential", name, digest(params))
            if memo not in self._shared:
                self._shared[memo] = is_sequential(self.checked(f"recommender:{side}"))
            kinds[side] = self._shared[memo]
        c = self.config
        if getattr(self.checked("attack"), "needs_order", False) is True:  # e.g. query-recall split=prefix
            for side in self.SIDES:
                if self._has_order(side) is False:
                    raise MiarsError(f"attack {c.attack!r} with these parameters reads each user's history in order, "
                                     f"but dataset {self.dataset_of(side)!r} has none (no timestamp or position); use "
                                     "a dataset with times (ml-100k, ml-1m ratings.dat) or the attack's default split")
        if kinds["target"] and not kinds["shadow"]:
            raise MiarsError(f"target {c.target!r} is a sequential recommender but shadow {c.shadow!r} is not: the shadow "
                             "imitates the target's service, so it must be sequential too (e.g. --shadow "
                             f"{c.target})")
        for side in self.SIDES:
            if not kinds[side]:
                continue
            if self._has_order(side) is False:
                name = c.target if side == "target" else c.shadow
                raise MiarsError(f"{side} recommender {name!r} is sequential and needs the order of each user's "
                                 f"interactions, but dataset {self.dataset_of(side)!r} has none (no timestamp or "
                                 "position); use a dataset with times (ml-100k, ml-1m ratings.dat, a file with a "
                                 "time column) or a general recommender")

    def _has_order(self, side: str) -> bool | None:
        """Whether ``side``'s dataset carries an order (:func:`~miars_core.engine.datasets.dataset_has_order`), told
        without loading it, once per dataset for all the cells of a grid."""
        from .datasets import dataset_has_order

        memo = ("order", self.dataset_of(side), self.config.data_dir)
        if memo not in self._shared:
            self._shared[memo] = dataset_has_order(self.dataset_of(side), self.config.data_dir, self.plugins)
        return self._shared[memo]

    # -- what the walker reports ---------------------------------------------------------------
    @property
    def timings(self) -> dict[str, float]:
        return self.walker.timings

    @property
    def computed(self) -> dict[str, float]:
        """Seconds of each stage computed in this process (by timing name)."""
        return self.walker.computed

    @property
    def hits(self) -> list[str]:
        return self.walker.hits

    @property
    def stage(self) -> str | None:
        """The stage being (or last) computed: a failed cell's error names it."""
        return self.walker.current

    # -- component identities ---------------------------------------------------------------
    def _component_id(self, role: str) -> dict:
        """What identifies a component in keys: its name, every hyperparameter (defaults included), its version."""
        kind, (name, params) = role.split(":")[0], self.specs[role]
        memo = ("component", kind, name, digest(params))
        if memo not in self._shared:
            entry = self.plugins.registry(kind).get(name)
            self._shared[memo] = {"name": name, "params": get_params(self.checked(role)),
                                  "version": _entry_version(entry, self.plugins)}
        return self._shared[memo]

    def component_id(self, role: str) -> dict:
        return self._ids[role]

    def recommender_role(self, part: str, index: int = 0) -> str:
        """The role of ``part``'s recommender; with ``index`` > 0 that recommender trained for ``index`` epochs
        (``recommender:shadow@8``: a shadow length, --shadow-lengths), its parameters otherwise unchanged."""
        role = f"recommender:{part}"
        if not index:
            return role
        lengthed = f"{role}@{int(index)}"
        if lengthed not in self.specs:
            name, params = self.specs[role]
            self.specs[lengthed] = (name, {**params, "epochs": int(index)})
            self._ids[lengthed] = self._component_id(lengthed)
        return lengthed

    # -- shadow lengths (--shadow-lengths, engine/lengths.py) -------------------------------------
    def base_index(self, part: str) -> int:
        """The node index of ``part``'s model, lists and features that a cell reports and attacks with: 0 (the
        recommender as given), or with a list of shadow lengths the shadow trained for the first of them."""
        asked = self.config.shadow_lengths
        return int(asked[0]) if part == "shadow" and isinstance(asked, list) else 0

    def shadow_members(self) -> list[tuple[int, int]]:
        """``(epochs, node index)`` of every shadow model a length-robust attack trains on, in order.

        A list gives its lengths. ``auto`` reads the length the shadow model trained for (its
        ``epochs_run``: chosen automatically, or given) and trains at that length times
        :data:`~miars_core.engine.lengths.AUTO_FACTORS`; the shadow model itself is its own length's member
        (an explicit fit for as many epochs is the same fit), so ``auto`` trains two more models, not three.
        """
        asked = self.config.shadow_lengths
        if isinstance(asked, list):
            return [(int(n), int(n)) for n in asked]
        report = self.walker.output(Node("model", "shadow")).meta.get("report") or {}
        own = (report.get("fit_info") or {}).get("epochs_run")
        if not isinstance(own, int) or isinstance(own, bool) or own < 1:
            raise MiarsError(f"--shadow-lengths auto needs the shadow model's training length, but shadow "
                             f"{self.config.shadow!r} reports {own!r} epochs run; give lengths, e.g. "
                             "--shadow-lengths 4,8,16")
        return [(n, 0 if n == own else n) for n in auto_lengths(own)]

    def create(self, role: str) -> Any:
        """A fresh, unfitted component of the cell (``recommender:shadow``, ``featurizer``, ...)."""
        name, params = self.specs[role]
        return self.plugins.create(role.split(":")[0], name, **params)

    def checked(self, role: str) -> Any:
        """One unfitted instance per distinct component of a grid (shared by its cells), only to read its
        parameters and declarations before any work: never fitted, so sharing it is safe."""
        kind, (name, params) = role.split(":")[0], self.specs[role]
        memo = ("instance", kind, name, digest(params))
        if memo not in self._shared:
            self._shared[memo] = self.create(role)
        return self._shared[memo]

    def dataset_of(self, side: str) -> str:
        c = self.config
        return (c.shadow_dataset or c.dataset) if side == "shadow" else c.dataset

    def dataset_id(self, side: str) -> dict:
        memo = ("dataset", self.dataset_of(side), self.config.data_dir)
        if memo not in self._shared:
            self._shared[memo] = dataset_identity(self.dataset_of(side), self.config.data_dir, self.plugins)
        return self._shared[memo]

    # -- user attributes ---------------------------------------------------------------------
    @property
    def service_uses_attributes(self) -> bool:
        """Whether the cell's service reads user attributes (``cold_start=attributes``)."""
        from ..science.service import uses_attributes

        return uses_attributes(self.checked("service"))

    @property
    def attack_uses_attributes(self) -> bool:
        """Whether the cell's attack reads user attributes (it declares ``uses_attributes = True``: reference-rec)."""
        return bool(getattr(self.checked("attack"), "uses_attributes", False))

    def user_attributes(self):
        """The ``--user-attributes`` file as :class:`~miars_core.science.attributes.UserAttributes` (None without
        one); read once per file content for all the cells of a grid."""
        from ..science.attributes import read_attributes

        path = self.config.user_attributes
        if not path:
            return None
        memo = ("attributes", self.attributes_id()["sha256"])
        if memo not in self._shared:
            self._shared[memo] = read_attributes(path)
        return self._shared[memo]

    def attributes_id(self) -> dict:
        """What identifies the attributes in keys: the file's content (sha256) and the reader's version."""
        from ..science.attributes import ATTRIBUTES_VERSION

        path = self.config.user_attributes
        memo = ("attributes-id", path)
        if memo not in self._shared:
            if not Path(path).expanduser().is_file():
                raise MiarsError(f"--user-attributes {path!r}: no such file; pass a file of user id, then attribute "
                                 "columns (a MovieLens users.dat, a RecBole .user file)")
            self._shared[memo] = {"sha256": file_fingerprint(Path(path).expanduser()), "reader": ATTRIBUTES_VERSION}
        return self._shared[memo]

    def attributes_for(self, reader: str):
        """The attributes handed to the ``service`` (when it reads them) or to the ``attack`` stage (when its
        attack or its service reads them: query access, reference models, the view); None otherwise."""
        return self.user_attributes() if self._reads_attributes(reader) else None

    def _reads_attributes(self, reader: str) -> bool:
        """Whether the ``service`` or ``attack`` stage is handed the attributes (a file given, and read there)."""
        return bool(self.config.user_attributes) and (
            self.service_uses_attributes or (reader == "attack" and self.attack_uses_attributes))

    def attributes_record(self, reader: str) -> dict:
        """What the attributes add to the key of a stage that reads them (``service``: serve; ``attack``): the
        file's content, only where :meth:`attributes_for` hands them over; nothing otherwise."""
        return {"user_attributes": self.attributes_id()} if self._reads_attributes(reader) else {}

    def attributes_report(self) -> dict | None:
        """result.json's ``attributes``: the file, its content, columns, and the target dataset's users matched
        (those the file does not list are ``unknown``); None without attributes."""
        if not self.config.user_attributes:
            return None
        table = self.user_attributes()
        report = {"file": self.config.user_attributes, "sha256": self.attributes_id()["sha256"],
                  **table.summary(self.data("target").user_ids)}
        report["used_by"] = [who for who, used in (("service", self.service_uses_attributes),
                                                   ("attack", self.attack_uses_attributes)) if used]
        return report

    def _check_attributes(self) -> None:
        """Refuse, in one line and before any work: ``cold_start=attributes`` without a file; a file that cannot be
        read; a file that matches no user of a side's dataset (its users are read for this, once per file and
        dataset)."""
        from ..science.attributes import check_matches

        c = self.config
        if not c.user_attributes:
            if self.service_uses_attributes:
                raise MiarsError(f"--service-param cold_start=attributes: service {c.service!r} serves accounts "
                                 "without history by their attributes, and no --user-attributes was given; add "
                                 "--user-attributes PATH (user id, then attribute columns) or use --service-param "
                                 "cold_start=popular (allowed: popular, attributes)")
            return
        table = self.user_attributes()
        for side in self.SIDES:
            memo = ("attributes-match", self.attributes_id()["sha256"], self.dataset_of(side), c.data_dir)
            if memo not in self._shared:
                progress, self.walker.progress = self.walker.progress, None  # a check: no progress line before an error
                try:
                    users = self.data(side).user_ids
                finally:
                    self.walker.progress = progress
                self._shared[memo] = check_matches(table, users, c.user_attributes, self.dataset_of(side))

    # -- keys (no data is read) --------------------------------------------------------------
    def key(self, stage: str, side_or_part: str = "", defended: bool = False) -> str:
        """The key of a stage of this cell (``defend`` and ``attack`` as in the stage table above)."""
        return self.walker.key(Node(stage, side_or_part, defended))

    def holdout_record(self, part: str) -> dict:
        """What the utility hold-out adds to the keys of stages that read ``part``'s users (nothing without one)."""
        f = self.config.utility_holdout
        return {"holdout": f, "holdout_seed": stage_seed(self.config.seed, f"holdout-{part}")} if f > 0 else {}

    @property
    def defense_point(self) -> str | None:
        """Where the cell's defense acts (``lists``, ``data``, ``training``), or None without one."""
        if not self.config.defense:
            return None
        return self._once("defense_point", lambda: acts_on(self.create("defense")))

    def lists_node(self, part: str, defended: bool, index: int | None = None) -> Node:
        """The node whose output is the lists ``part``'s users see (with or without the defense); ``index``: the
        shadow length (default :meth:`base_index`)."""
        index = self.base_index(part) if index is None else index
        if not defended:
            return Node("serve", part, False, index)
        return Node("defend", part, False, index) if self.defense_point == "lists" else Node("serve", part, True, index)

    def lists_key(self, part: str, defended: bool) -> str:
        """Key of the stage whose output is the lists ``part``'s users see (with or without the defense)."""
        return self.walker.key(self.lists_node(part, defended))

    def _once(self, name: str, fn: Callable[[], Any]) -> Any:
        if name not in self._memo:
            self._memo[name] = fn()
        return self._memo[name]

    # -- checks of outputs read back ---------------------------------------------------------------
    def lists_problem(self, part: str, out: Output) -> tuple[str, str] | None:
        """Stored lists must be one row of ``top_k`` item indices per user of ``part``."""
        p = self.part(part)
        return _index_problem(out.arrays.get("lists"), "lists", p.interactions.n_items,
                              (p.interactions.n_users, self.config.top_k))

    def model_problem(self, node: Node, out: Output) -> tuple[str, str] | None:
        p = self.part(node.part)
        return _model_arrays_problem(out, p.n_members, p.interactions.n_items)

    def attack_problem(self, out: Output) -> tuple[str, str] | None:
        a, target = out.arrays, self.part("target").interactions
        bad = _finite_problem(a.get("scores"), "scores", (target.n_users,)) or \
            _flags_problem(a.get("predicted"), "predicted", target.n_users)
        if bad or "pair_rows" not in a:
            return bad
        n = len(a["pair_rows"])
        return (_index_problem(a["pair_rows"], "pair_rows", target.n_users, (n,))
                or _index_problem(a.get("pair_items"), "pair_items", target.n_items, (n,))
                or _finite_problem(a.get("pair_scores"), "pair_scores", (n,))
                or _flags_problem(a.get("pair_labels"), "pair_labels", n))

    # -- data --------------------------------------------------------------------------------
    def data(self, side: str) -> Interactions:
        return self.walker.value(Node("load", side))

    def split_output(self, side: str) -> Output:
        return self.walker.output(Node("split", side))

    def split(self, side: str) -> Split:
        return self.walker.value(Node("split", side))

    def part(self, part: str) -> Part:
        """The shadow or target part as the service and the adversary know it: without its future (hold-out)."""
        return self.walker.value(Node("part", part))[0]

    def future(self, part: str) -> sp.csr_matrix | None:
        """The part's held-out interactions (rows aligned with :meth:`part`), or None without a hold-out."""
        return self.walker.value(Node("part", part))[1]

    def visible_split(self) -> Split:
        """The target side's split with both parts as :meth:`part` gives them (export, scores.tsv); one dataset only."""
        split = self.split("target")
        if self.config.utility_holdout <= 0:
            return split
        if self.config.shadow_dataset:
            raise MiarsError("a dataset-transfer cell has no single split of both parts")
        return Split(self.part("shadow"), self.part("target"), split.vectorization, split.item_ids)

    # -- fitted models -------------------------------------------------------------------------
    def fit(self, part: str, defended: bool, index: int = 0) -> Fitted:
        """Fit the part's recommender on its members (under the cell's data or training defense when ``defended``;
        for ``index`` epochs when > 0, a shadow length)."""
        seed = self.config.seed
        return fit_model(self.part(part), self.create(self.recommender_role(part, index)),
                         self.specs[f"recommender:{part}"][0],
                         stage_seed(seed, part), defense=self.create("defense") if defended else None,
                         defense_seed=stage_seed(seed, f"defense-{part}"))

    def model_versions(self, node: Node) -> dict:
        """The versions a stored model was written by (checked again when it is read)."""
        out = {"recommender": self.component_id(f"recommender:{node.part}")["version"]}
        if node.defended and self.defense_point == "training":
            out["defense"] = self.component_id("defense")["version"]
        return out

    def restore_model(self, node: Node, out: Output) -> Fitted | None:
        p = self.part(node.part)
        members = p.members
        train = Interactions(sp.csr_matrix((np.ones(len(out.arrays["train_indices"]), dtype=np.float32),
                                            out.arrays["train_indices"], out.arrays["train_indptr"]),
                                           shape=members.matrix.shape), members.user_ids, members.item_ids)
        recommender = self.create(self.recommender_role(node.part, node.index))
        if node.defended and self.defense_point == "training":
            defense = self.create("defense")
            make = functools.partial(defense.set_state, recommender)
        else:
            make = recommender.set_state
        return _restore(out, self.model_versions(node), lambda arrays, record: make(arrays, record), train)

    def fitted(self, part: str, defended: bool = False, agree: bool = True, index: int | None = None) -> Fitted:
        """The fitted model of ``part`` (under a data or training defense when ``defended``): stored, or fitted again.

        A model without the state contract is stored as a marker; it is fitted again here (same
        data, same seed) and, with ``agree``, checked to serve the stored lists.
        """
        index = self.base_index(part) if index is None else index
        node = Node("model", part, defended, index)
        fitted = self.walker.value(node)
        if fitted is not None:
            return fitted
        if node not in self._memo:
            start = time.perf_counter()
            if self.progress:
                self.progress(f"fitting the {part} recommender again (its fitted model cannot be stored)")
            fitted = self.fit(part, defended, index)
            self._refit_seconds += time.perf_counter() - start
            if agree:
                stored = self.walker.output(Node("serve", part, defended, index)).arrays["lists"]
                p, future = self.walker.value(Node("part", part))
                lists = serve_fitted(p, fitted, self.config.top_k, stage_seed(self.config.seed, part),
                                     service=self.create("service"), attributes=self.attributes_for("service")).lists
                share = float((lists == stored).mean())
                if share < 0.9:
                    raise MiarsError(f"the {part} recommender fitted again for query access serves other lists than "
                                     f"the cached ones ({share:.1%} of positions agree): its training is not "
                                     "deterministic; run with --no-cache")
            self._memo[node] = fitted
        return self._memo[node]

    def served(self, part: str, defended: bool = False) -> Output:
        """The lists of the part's users (``defended``: from the fit under a data or training defense)."""
        return self.walker.output(Node("serve", part, defended, self.base_index(part)))

    def report(self, part: str) -> dict:
        """What result.json says about the recommender of ``part`` (the defended fit, when there is one)."""
        defended = self.defense_point in ("data", "training")
        out = self.served(part, defended)
        # utility on the held-out items is the result's own ``utility`` block, not the recommender's
        seconds = round(float(out.meta["seconds"]) + float(out.meta.get("model_seconds", 0.0)), 3)
        report = {**{k: v for k, v in out.meta["report"].items() if k != "utility"}, "fit_seconds": seconds}
        if defended:
            report["undefended"] = {k: v for k, v in self.served(part).meta["report"].items() if k not in ("params", "utility")}
        return report

    # -- featurizer and features ---------------------------------------------------------------
    def fit_featurizer(self, vectorization: Interactions) -> Any:
        f = self.create("featurizer")
        return f.fit(vectorization, seed=stage_seed(self.config.seed, "featurizer")) or f

    def featurizer(self, side: str) -> Any:
        """The featurizer fitted on ``side``'s vectorization part (its learned state is stored when it can be)."""
        f = self.walker.value(Node("vectors", side))
        if f is None:
            f = self._once(f"featurizer:{self.key('vectors', side)}",
                           lambda: self.fit_featurizer(self.split(side).vectorization))
        return f

    def features(self, part: str, defended: bool, index: int | None = None) -> np.ndarray:
        index = self.base_index(part) if index is None else index
        return self.walker.output(Node("features", part, defended, index)).arrays["X"]

    @property
    def threat(self) -> str:
        """What the cell's attack needs: ``features``, ``lists`` or ``queries`` (:mod:`miars_core.science.threat`)."""
        return self._once("threat", lambda: threat_of(self.create("attack")))

    @property
    def level(self) -> str:
        """``user`` or ``interaction``: what the cell's attack infers membership of."""
        return self._once("level", lambda: level_of(self.create("attack")))

    # -- the attack ----------------------------------------------------------------------------
    def attack_scores(self, defended_shadow: bool) -> Output:
        return self.walker.output(Node("attack", "", defended_shadow))

    def attack_outcome(self, defended_shadow: bool, x_shadow: np.ndarray, x_target: np.ndarray) -> tuple[dict, dict]:
        """The attack stage's computation: fit on the shadow part, score the target once."""
        c = self.config
        meta: dict[str, Any] = {}
        seed = stage_seed(c.seed, "attack")
        with stage_threads():
            model = self.create("attack")
            if self.threat == "features":
                labels = self.part("shadow").is_member
                if c.shadow_lengths is not None:  # every length's features stacked, labels repeated
                    x_shadow, labels, meta["shadow_lengths"] = self._length_features(defended_shadow, x_shadow)
                model.fit(x_shadow, labels, seed=seed)
                target: Any = x_target
            else:
                model.fit(self.view("shadow", defended_shadow, x_shadow, self.threat), seed=seed)
                target = self.view("target", bool(c.defense), x_target, self.threat)
            # Scored once: predictions come from these scores, never from a second pass (which would spend
            # a query attack's budget twice).
            scores = np.asarray(model.decision_function(target), dtype=np.float64)
            threshold = decision_threshold(model)
            predicted = scores > threshold
            arrays: dict[str, np.ndarray] = {}
            if self.level == "interaction":
                scores, predicted, arrays, meta["interaction"] = self._pair_outcome(
                    target, scores, threshold, bool(c.defense))
            if self.threat == "queries":
                meta["queries"] = {"per_target_user": c.query_budget, **target.query.record(),
                                   "target_users": target.n_users,
                                   "refit_seconds": round(self._query_seconds(), 3)}
                meta["queries"].update(_query_record(model, c.attack))
            own = _plain_record(model, c.attack, "record_")  # what the attack says it did (e.g. dl-mia's diagnostics)
            if own:
                meta["record"] = own
        if self.threat == "queries":  # the reference models it read: their seconds count in result.json's timings
            meta["references"] = list(self._reference_keys)
            if self._online_keys:
                meta["online_references"] = list(self._online_keys)
        n = self.part("target").interactions.n_users
        if scores.shape != (n,) or predicted.shape != (n,):
            raise MiarsError(f"attack {c.attack!r} returned scores of shape {scores.shape}, expected one per target "
                             f"user ({n},)")
        if not np.isfinite(scores).all():
            raise MiarsError(f"attack {c.attack!r} produced non-finite scores; check its inputs and parameters")
        return {"scores": scores, "predicted": predicted, **arrays}, meta

    def _length_features(self, defended: bool, x_base: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """The shadow features of every length (:meth:`shadow_members`) stacked, the shadow labels repeated, and
        what the attack record says of them (the lengths; the node indices :meth:`graph` lists their stages by)."""
        members = self.shadow_members()
        base = self.base_index("shadow")
        xs = [x_base if index == base else self.features("shadow", defended, index) for _, index in members]
        labels = np.tile(self.part("shadow").is_member, len(xs))
        record = {"asked": self.config.shadow_lengths, "epochs": [n for n, _ in members],
                  "indices": [index for _, index in members]}
        return np.concatenate(xs, axis=0), labels, record

    def _pair_outcome(self, view: AdversaryView, scores: np.ndarray, threshold: float, defended: bool):
        """Pair scores -> per-user scores (mean over the user's pairs) and the interaction-level metrics."""
        c, pairs = self.config, view.pairs
        predicted = scores > threshold
        if scores.shape != (len(pairs),):
            raise MiarsError(f"attack {c.attack!r} returned {scores.shape} scores for {len(pairs)} pairs; an "
                             "interaction-level attack scores each pair of view.pairs")
        if not np.isfinite(scores).all():
            raise MiarsError(f"attack {c.attack!r} produced non-finite pair scores; check its inputs and parameters")
        labels = self.pair_labels("target", defended, pairs)
        n = view.n_users
        per_user = np.bincount(pairs[:, 0], minlength=n)
        user_scores = np.bincount(pairs[:, 0], weights=scores, minlength=n) / np.maximum(per_user, 1)
        members = self.part("target").is_member[pairs[:, 0]]
        report = {"pairs": int(len(pairs)), "trained_pairs": int(labels.sum())}
        if labels.any() and not labels.all():
            report["all_pairs"] = membership_metrics(labels, scores, predicted)
        held = members & ~labels  # members' pairs left out of training (hold-out, data defense)
        if held.any() and labels[members].any():
            report["members_pairs"] = membership_metrics(labels[members], scores[members], predicted[members])
            report["members_pairs"]["untrained_pairs"] = int(held.sum())
        arrays = {"pair_rows": pairs[:, 0], "pair_items": pairs[:, 1], "pair_scores": scores, "pair_labels": labels}
        return user_scores, user_scores > threshold, arrays, report

    # -- what the adversary sees -----------------------------------------------------------------
    def access(self, part: str, defended: bool, budget: int | None = None) -> QueryAccess:
        """Query access to the service of ``part`` (with the cell's defense when ``defended``), from the stored model."""
        c = self.config
        under_fit = defended and self.defense_point in ("data", "training")
        s = self.fitted(part, under_fit)
        defense = self.create("defense") if defended and self.defense_point == "lists" else None
        return QueryAccess.of(self.create("service"), s.model, s.train, c.top_k, defense=defense,
                              defense_seed=stage_seed(c.seed, f"defense-query-{part}"),
                              seed=stage_seed(c.seed, f"query-{part}"), budget=budget, name=part,
                              attributes=self.attributes_for("attack"))

    def references(self, side: str) -> ReferenceModels:
        """The reference models the adversary trains on ``side``'s vectorization part (``view.reference``).

        Each is the shadow recommender fitted on that part restricted to users with at least
        ``min_interactions`` interactions and sampled to as many users as the target part has
        members (the service's training set's size and filter); each index draws its own sample
        and fit seed. They are the ``reference`` stage: stored, and shared by every cell with
        the same adversary data, shadow recommender and seed. The object holds the adversary's
        data, component factories and a store scoped to reference models, not this cell.
        """
        def build() -> ReferenceModels:
            c = self.config
            ctx = self.walker.value(Node("adversary", side))
            service, service_params = self.specs["service"]
            runner = FamilyRunner(GRAPH["reference"], _scoped(self.store, "reference"),
                                  self.walker.record(Node("reference", side)), ctx, self.walker.clock, self.progress,
                                  self.walker.computed, self._reference_keys, self.walker.device)
            self._runners.append(runner)
            return ReferenceModels(ctx.data, ctx.n_users, c.min_interactions, c.top_k, c.seed, ctx.make_recommender,
                                   ctx.recommender_name,
                                   functools.partial(self.plugins.create, "service", service, **service_params),
                                   self.progress, fit=runner, attributes=self.attributes_for("attack"))

        return self._once(f"references:{self.walker.key(Node('adversary', side))}", build)

    def online_references(self, part: str) -> OnlineReferences:
        """Online reference models of ``part`` (``view.online_reference``): the shadow recommender trained on random
        halves of the part's users, the ``online_reference`` stage (stored, keyed by the part as the adversary knows
        it, the shadow recommender, --seed and the index: shared by every attack, service and target of that part).
        The object holds the candidates' known histories, component factories and a store scoped to these models."""
        def build() -> OnlineReferences:
            c = self.config
            ctx = self.walker.value(Node("candidates", part))
            service, service_params = self.specs["service"]
            runner = FamilyRunner(GRAPH["online_reference"], _scoped(self.store, "online_reference"),
                                  self.walker.record(Node("online_reference", part)), ctx, self.walker.clock,
                                  self.progress, self.walker.computed, self._online_keys)
            self._runners.append(runner)
            return OnlineReferences(ctx.data, c.top_k, c.seed, ctx.make_recommender, ctx.recommender_name,
                                    functools.partial(self.plugins.create, "service", service, **service_params),
                                    fit=runner, progress=self.progress, attributes=self.attributes_for("attack"))

        return self._once(f"online:{self.walker.key(Node('candidates', part))}", build)

    def reference_access(self, side: str, index: int = 0) -> QueryAccess:
        """Query access to reference model number ``index`` of ``side`` (:meth:`references`)."""
        return self.references(side)(index)

    def _query_seconds(self) -> float:
        """Seconds spent in this process fitting for query access: models fitted again (those that cannot be
        stored) and reference models fitted here (0 when they were read from the store)."""
        return self._refit_seconds + sum(runner.seconds for runner in self._runners)

    def view(self, part: str, defended: bool, features: np.ndarray, threat: str) -> AdversaryView:
        """What the adversary sees of ``part`` (labels on the shadow part only)."""
        c, p = self.config, self.part(part)
        featurizer = self.featurizer(part)
        vectors = getattr(featurizer, "item_vectors_", None)
        popularity = np.asarray(self.split(part).vectorization.item_popularity())
        view = AdversaryView(
            histories=p.interactions.matrix, lists=self.lists(part, defended), k=c.top_k, features=features,
            item_vectors=np.asarray(vectors) if vectors is not None else None,
            popular=np.argsort(-popularity, kind="stable"), popularity=popularity,
            labels=p.is_member.copy() if part == "shadow" else None,
            sequences=p.interactions.ordered_matrix() if p.interactions.has_order else None)
        if threat == "queries":
            budget = c.query_budget * p.interactions.n_users if part == "target" else None
            view.query = self.access(part, defended, budget)
            view.reference = self.references(part)
            view.online_reference = self.online_references(part)
        if self.attack_uses_attributes and self.config.user_attributes:
            table = self.user_attributes()
            view.attributes = table.for_users(p.interactions.user_ids)
            view.attribute_columns = table.columns
        if self.level == "interaction":
            view.pairs = self.pairs(part)
            if part == "shadow":
                view.pair_labels = self.pair_labels(part, defended, view.pairs)
        return view

    def pairs(self, part: str) -> np.ndarray:
        """(user row, item column) pairs an interaction-level attack scores: up to the attack's ``pairs`` per user,
        drawn (seeded) from each user's history."""
        per_user = int(get_params(self.create("attack")).get("pairs", 5))
        h = self.part(part).interactions.matrix
        rows, rank = random_row_ranks(h, stage_seed(self.config.seed, f"pairs-{part}"))
        keep = rank < per_user
        return np.column_stack([rows[keep], h.indices[keep]]).astype(np.int64)

    def pair_labels(self, part: str, defended: bool, pairs: np.ndarray) -> np.ndarray:
        """Whether each pair was in the data the part's recommender was trained on (members' rows, after any
        hold-out or data defense)."""
        under_fit = defended and self.defense_point in ("data", "training")
        train = self.fitted(part, under_fit).train.matrix
        is_member = self.part(part).is_member
        position = np.full(len(is_member), -1)
        position[is_member] = np.arange(int(is_member.sum()))
        rows, items = pairs[:, 0], pairs[:, 1]
        labels = np.zeros(len(pairs), dtype=bool)
        m = position[rows] >= 0
        labels[m] = np.asarray(train[position[rows[m]], items[m]]).ravel() > 0
        return labels

    def context(self, part: str) -> ServiceContext:
        p = self.part(part)
        return ServiceContext(p.interactions, p.is_member, popularity_order(p), self.config.top_k)

    # -- lists, utility, the no-signal check -----------------------------------------------------
    def defended(self, part: str) -> Output:
        return self.walker.output(Node("defend", part))

    def lists(self, part: str, defended: bool) -> np.ndarray:
        return self.walker.output(self.lists_node(part, defended)).arrays["lists"]

    def utility(self) -> dict | None:
        """Recall / NDCG / HR of the target members' lists on their held-out items, without and with the defense."""
        f = self.config.utility_holdout
        if f <= 0:
            return None
        out = {"undefended": {"holdout": f, **self.served("target").meta["report"]["utility"]}}
        if self.defense_point == "lists":
            out["defended"] = {"holdout": f, **self.defended("target").meta["utility"]}
        elif self.defense_point:
            out["defended"] = {"holdout": f, **self.served("target", True).meta["report"]["utility"]}
        return out

    def signal(self) -> dict:
        """The no-signal check of the target's lists (those the attack sees): do members' lists find their items?

        ``method`` says what a list is scored against (:func:`~miars_core.science.utility.list_signal`):

        * ``vectorization`` (``--split interactions``): each member's interactions in the
          vectorization part, which the target never saw;
        * ``holdout`` (``--split users`` with a utility hold-out): each member's held-out future;
        * ``popularity`` (``--split users`` without one): the listed items' popularity in the
          vectorization part (other users, never seen by the target), which separates
          random-like lists from trained ones but not personal from popular ones.

        A flagged target (``no_signal``) carries a ``warning``: its lists are about what random
        items would give, so the attack metrics do not measure a leak.
        """
        c = self.config
        p = self.part("target")
        members = p.is_member
        lists = self.lists("target", bool(c.defense))[members]
        known = p.interactions.matrix[members]
        k = lists.shape[1]
        vectorization = self.split("target").vectorization
        if c.split == "interactions":
            method, whose = "vectorization", "their interactions in the vectorization part"
            reference: Any = vectorization.matrix[_positions(vectorization.user_ids, p.interactions.user_ids[members])]
        elif c.utility_holdout > 0:
            method, whose = "holdout", "their held-out items"
            reference = self.future("target")[members]
        else:
            method, whose = "popularity", None
            reference = vectorization.item_popularity()
        out = {"method": method, "lists": "defended" if c.defense else "undefended", **list_signal(lists, known, reference)}
        if float(out["hits"]).is_integer():
            out["hits"] = int(out["hits"])
        if out["no_signal"]:
            found = (f"members' top-{k} hit {out['hits']} of {whose}, about what random items would "
                     f"({out['expected_by_chance']:.0f})" if whose else
                     f"the items of members' top-{k} are about as popular, in data the target never saw, as random "
                     f"items (lift {out['lift']})")
            out["warning"] = (f"the target's lists carry no signal: {found}; the recommender is probably untrained or "
                              "broken, so the attack metrics do not measure a leak")
        return out

    # -- all of it -----------------------------------------------------------------------------
    def attackers(self) -> dict[str, Output]:
        """Attack outputs by attacker: ``undefended`` always, ``defended`` with a defense."""
        out = {"undefended": self.attack_scores(False)}
        if self.config.defense:
            out["defended"] = self.attack_scores(True)
        return out

    def roots(self) -> list[Node]:
        """The nodes a cell's result is made of: its attack(s) and the recommenders it reports (undefended, and
        under a data or training defense the defended fit too)."""
        out = [Node("attack", "", False)] + ([Node("attack", "", True)] if self.config.defense else [])
        out += [Node("serve", part, False, self.base_index(part)) for part in self.SIDES]
        if self.defense_point in ("data", "training"):
            out += [Node("serve", part, True, self.base_index(part)) for part in self.SIDES]
        return out

    def graph(self) -> list[tuple[str, str, str]]:
        """Every stored (stage, timing name, key) of the cell, each key once, in data-flow order (planning,
        timings). Reference models come from what the stored attack records say it used."""
        out, seen = [], set()
        for node in GRAPH.upstream(self, self.roots()):
            stage = GRAPH[node.stage]
            key = self.walker.key(node)
            if stage.stored and key not in seen:
                seen.add(key)
                out.append((stage.name, stage.time_name(node), key))
        for node in self.roots():
            if node.stage != "attack":
                continue
            meta = self.store.meta("attack", self.walker.key(node)) or {}
            lengths = [Node("features", "shadow", node.defended, int(i))
                       for i in (meta.get("shadow_lengths") or {}).get("indices", ())]
            for up in GRAPH.upstream(self, lengths):  # the shadow models of every length (--shadow-lengths)
                key = self.walker.key(up)
                if GRAPH[up.stage].stored and key not in seen:
                    seen.add(key)
                    out.append((up.stage, GRAPH[up.stage].time_name(up), key))
            for stage, field in FAMILIES.items():
                for key in meta.get(field, ()):
                    if key not in seen:
                        seen.add(key)
                        out.append((stage, stage, key))
        return out

    def stage_seconds(self) -> dict[str, float]:
        """Seconds each stage took when it was computed (read from the stored records), v0's names, and the
        one-time warm-up of the processes that computed them (``warmup``)."""
        timings: dict[str, float] = {}
        for stage, timing, key in self.graph():
            meta = (_scoped(self.store, stage) if stage in FAMILIES else self.store).meta(stage, key) or {}
            name = TIMING[timing]
            timings[name] = round(timings.get(name, 0.0) + float(meta.get("seconds", 0.0)), 3)
            if meta.get("warmup"):
                timings["warmup"] = round(timings.get("warmup", 0.0) + float(meta["warmup"]), 3)
        return timings

    def stage_devices(self) -> dict[str, str]:
        """The device each stage's torch work ran on, by v0's timing names, read from the stored records (so a cell
        read from the cache says where its stages were computed); stages that asked for no device are left out.
        Stages of one timing name that ran on different devices list them all (``cpu,cuda:0``)."""
        found: dict[str, list[str]] = {}
        for stage, timing, key in self.graph():
            meta = (_scoped(self.store, "reference") if stage == "reference" else self.store).meta(stage, key) or {}
            if meta.get("device"):
                devices = found.setdefault(TIMING[timing], [])
                if str(meta["device"]) not in devices:
                    devices.append(str(meta["device"]))
        return {name: ",".join(sorted(devices)) for name, devices in found.items()}

    def gpu_names(self) -> dict[str, str]:
        """The name of each GPU a stage of the cell ran on (``{"cuda:0": "NVIDIA H200"}``), from the stored records."""
        out: dict[str, str] = {}
        for stage, _, key in self.graph():
            meta = (_scoped(self.store, "reference") if stage == "reference" else self.store).meta(stage, key) or {}
            if meta.get("device_name"):
                out[str(meta["device"])] = str(meta["device_name"])
        return out

    # -- the grid's tasks --------------------------------------------------------------------------
    def tasks(self) -> dict[str, tuple[str, str, list[str]]]:
        """The stages the grid runs as their own tasks (declared with ``task=True``), by name
        (``split:shadow``, ``serve:target``, ``serve-defended:target``): (stage, key, names of the tasks it needs)."""
        out: dict[str, tuple[str, str, list[str]]] = {}
        nodes = GRAPH.upstream(self, self.roots())
        for node in nodes:
            if GRAPH[node.stage].task:
                needs = [_task_name(up) for up in GRAPH.upstream(self, list(GRAPH.edges(self, node).values()))
                         if GRAPH[up.stage].task]
                out[_task_name(node)] = (node.stage, self.walker.key(node), needs)
        return out

    def task_keys(self) -> dict[str, str]:
        """Keys of the intermediate stages the grid schedules as their own tasks."""
        return {name: key for name, (_, key, _) in self.tasks().items()}

    def prepare(self, what: str) -> None:
        """Compute one task's stage (a name of :meth:`tasks`) for the grid's scheduler."""
        head, _, part = what.partition(":")
        part, _, length = part.partition("@")
        stage, _, defended = head.partition("-")
        if stage not in GRAPH.stages or not GRAPH[stage].task or defended not in ("", "defended") or not (
                length == "" or length.isdigit()):
            raise ValueError(f"unknown preparation {what!r}")
        self.walker.value(Node(stage, part, defended == "defended", int(length or 0)))


def _plain_record(attack: Any, name: str, attribute: str, reserved: frozenset = frozenset()) -> dict:
    """An attack's own record ``attribute`` (a dict of plain JSON values under names not in ``reserved``), {} if none."""
    record = getattr(attack, attribute, None)
    if record is None:
        return {}
    if not isinstance(record, dict) or any(not isinstance(k, str) or k in reserved for k in record) or \
            any(not isinstance(v, (str, int, float, bool, type(None))) for v in record.values()) or \
            any(isinstance(v, float) and not np.isfinite(v) for v in record.values()):
        others = f" under names other than {', '.join(sorted(reserved))}" if reserved else ""
        raise MiarsError(f"attack {name!r} has {attribute}={shown(record)}; it must be a dict of plain values "
                         f"(str, finite number, bool, null){others}")
    return dict(record)


def _query_record(attack: Any, name: str) -> dict:
    """What a query attack reports about how it queried (its ``query_record_``: e.g. reference-rec's
    ``reference_list``), for result.json's ``queries``; JSON values under new names only."""
    return _plain_record(attack, name, "query_record_", frozenset(
        {"per_target_user", "budget", "used", "calls", "target_users", "refit_seconds", "attackers"}))


def _task_name(node: Node) -> str:
    length = f"@{node.index}" if node.index else ""  # a shadow length (--shadow-lengths)
    return f"{node.stage}{'-defended' if node.defended else ''}:{node.part}{length}"


def _scoped(store, stage: str):
    """The store of one stage's outputs (reference models): what an attack may be handed, nothing else."""
    scope = getattr(store, "scope", None)
    return scope(stage) if scope is not None else store


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each id of ``wanted`` in ``ids`` (every wanted id is in ``ids``); vectorised."""
    order = np.argsort(ids, kind="stable")
    at = order[np.minimum(np.searchsorted(ids[order], wanted), max(len(ids) - 1, 0))]
    if not np.array_equal(ids[at], wanted):
        raise MiarsError("the target part holds users the vectorization part does not list; the split is inconsistent")
    return at


def cell_metrics(cell: Cell) -> dict[str, dict]:
    """Metrics of every attacker of a cell, computed from the stored scores."""
    y = cell.part("target").is_member
    return {name: membership_metrics(y, out.arrays["scores"], out.arrays["predicted"])
            for name, out in cell.attackers().items()}
