"""The stage graph of one attack cell: every stage, its inputs, and what its cache key covers.

One cell is one :class:`~miars_core.engine.config.AttackConfig`. Its stages, in the order data flows::

    stage     inputs                                  key covers (besides the inputs' keys)
    -------   -------------------------------------   ------------------------------------------------
    load      dataset name or file                    file content (sha256) or name + data dir; loader version
    split     load                                    split mode, min interactions, seed("split")
    serve     split, part (shadow | target)           recommender name, all its hyperparameters and version,
                                                      top-k, seed(part)     -- fit on members + serve lists;
                                                      with a data or training defense also the defense
                                                      (name, hyperparameters, version, seed): another fit;
                                                      with a utility hold-out its fraction, seed("holdout-<part>")
    defend    serve                                   a defense acting on lists: name, hyperparameters,
                                                      version, seed("defense-<part>")
    vectors   split (vectorization part)              featurizer name, hyperparameters, version, seed("featurizer")
    features  vectors, serve or defend                the utility hold-out (fraction, seed), if any: the histories
    attack    features of shadow and of target        attack name, hyperparameters, version, seed("attack")
    metrics   attack                                  not stored: milliseconds

Every key is the sha256 of a JSON record of those fields plus :data:`STAGES_VERSION` and a hash
of the core modules that compute stages, so changed code never reads a stale output. Each
stage's output is a set of arrays plus a JSON record (:mod:`miars_core.engine.store`), never a pickle.
The shadow part may come from another dataset than the target part (``shadow_dataset``, the
paper's dataset transfer): each side then has its own load, split and item vectors.

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
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from ..contracts.components import get_params
from ..contracts.defenses import acts_on
from ..contracts.errors import MiarsError
from ..contracts.seeds import stage_seed
from ..contracts.types import Interactions, Part, ServiceContext, Split, random_row_ranks
from ..kit.torch_utils import use_device
from ..science.metrics import membership_metrics
from ..science.protocol import split_dataset
from ..science.service import Served, defend, popularity_order, serve, stage_threads
from ..science.threat import (AdversaryView, QueryAccess, ReferenceModels, decision_threshold, level_of,
                              require_budget, threat_of)
from ..science.utility import holdout, list_signal, utility_metrics
from .store import MemoryStore, Output

#: Bump when a stage's computation changes in a way the module hash below would not see.
STAGES_VERSION = "1"

#: Core modules whose code decides stage outputs, under miars_core (their source is hashed into every key).
STAGE_MODULES = ("engine.stages", "science.protocol", "science.service", "science.ranking", "contracts.types",
                 "contracts.seeds", "engine.store", "science.utility", "contracts.defenses", "science.threat")

#: Timing names reported in result.json (those of miars v0).
TIMING = {"load": "load", "split": "split", "serve:shadow": "shadow_recommender", "serve:target": "target_recommender",
          "defend": "defense", "vectors": "featurize", "features": "featurize", "attack": "attack"}


# -- keys ----------------------------------------------------------------------------------------
def digest(record: Any) -> str:
    """sha256 of a JSON record (sorted keys): the content address of a stage output."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _source_hash(package_dir: str) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(package_dir).rglob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def core_version() -> str:
    """Version of the stage code: miars' version plus a hash of the modules in :data:`STAGE_MODULES`."""
    from .. import __version__

    here = Path(__file__).resolve().parents[1]  # miars_core/
    h = hashlib.sha256()
    for name in STAGE_MODULES:
        h.update((here / f"{name.replace('.', '/')}.py").read_bytes())
    return f"{__version__}+{STAGES_VERSION}.{h.hexdigest()[:16]}"


def component_version(factory: Callable[..., Any], plugin_version: str) -> str:
    """A component's version: its plugin's version plus a hash of the source of its package."""
    module = getattr(factory, "__module__", None) or getattr(getattr(factory, "func", None), "__module__", "")
    import importlib
    import sys

    top = (module or "").split(".")[0]
    mod = sys.modules.get(top) or (importlib.import_module(top) if top else None)
    files = getattr(mod, "__path__", None) or ([str(Path(mod.__file__).parent)] if getattr(mod, "__file__", None) else [])
    return f"{plugin_version}+{_source_hash(files[0])}" if files else plugin_version


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return _file_sha256(str(p), st.st_size, st.st_mtime_ns)


# -- (de)serialising the data types --------------------------------------------------------------
def _ids(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def _csr_arrays(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {f"{prefix}_indptr": m.indptr, f"{prefix}_indices": m.indices}


def _csr(arrays: dict[str, np.ndarray], prefix: str, n_items: int) -> sp.csr_matrix:
    indptr, indices = arrays[f"{prefix}_indptr"], arrays[f"{prefix}_indices"]
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_items))


def interactions_to_arrays(data: Interactions) -> dict[str, np.ndarray]:
    return {**_csr_arrays("m", data.matrix), "user_ids": _ids(data.user_ids), "item_ids": _ids(data.item_ids)}


def interactions_from_arrays(a: dict[str, np.ndarray]) -> Interactions:
    return Interactions(_csr(a, "m", len(a["item_ids"])), a["user_ids"], a["item_ids"])


def split_to_arrays(split: Split) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"item_ids": _ids(split.item_ids)}
    for part in (split.shadow, split.target):
        out.update(_csr_arrays(part.name, part.interactions.matrix))
        out[f"{part.name}_user_ids"] = _ids(part.interactions.user_ids)
        out[f"{part.name}_is_member"] = part.is_member
    out.update(_csr_arrays("vectorization", split.vectorization.matrix))
    out["vectorization_user_ids"] = _ids(split.vectorization.user_ids)
    return out


def split_from_arrays(a: dict[str, np.ndarray]) -> Split:
    n_items = len(a["item_ids"])

    def inter(name: str) -> Interactions:
        return Interactions(_csr(a, name, n_items), a[f"{name}_user_ids"], a["item_ids"])

    parts = [Part(name, inter(name), a[f"{name}_is_member"].astype(bool)) for name in ("shadow", "target")]
    return Split(parts[0], parts[1], inter("vectorization"), a["item_ids"])


# -- checks of outputs read back (a stage's output must be usable before anything indexes with it) -------
def _index_problem(arr: np.ndarray | None, name: str, upper: int, shape: tuple | None = None) -> tuple[str, str] | None:
    """``arr`` holds integer indices in ``0..upper-1`` (and has ``shape``, -1 meaning any)."""
    if arr is None:
        return name, "is missing"
    if arr.dtype.kind not in "iu":
        return name, f"holds {arr.dtype} values, not integer indices"
    if shape is not None and (arr.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, arr.shape))):
        return name, f"has shape {list(arr.shape)}, expected {[('any' if d == -1 else d) for d in shape]}"
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= upper):
        return name, f"holds indices outside 0..{upper - 1}"
    return None


def _csr_problem(a: dict[str, np.ndarray], prefix: str, n_rows: int, n_items: int) -> tuple[str, str] | None:
    indptr, indices = a.get(f"{prefix}_indptr"), a.get(f"{prefix}_indices")
    bad = _index_problem(indptr, f"{prefix}_indptr", (len(indices) + 1) if indices is not None else 1, (n_rows + 1,))
    if bad:
        return bad
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        return f"{prefix}_indptr", "is not a valid row index of its matrix"
    return _index_problem(indices, f"{prefix}_indices", n_items, (-1,))


def _flags_problem(arr: np.ndarray | None, name: str, n: int) -> tuple[str, str] | None:
    if arr is None:
        return name, "is missing"
    if arr.dtype != np.bool_ or arr.shape != (n,):
        return name, f"holds {arr.dtype} {list(arr.shape)}, expected bool [{n}]"
    return None


def _finite_problem(arr: np.ndarray | None, name: str, shape: tuple) -> tuple[str, str] | None:
    if arr is None:
        return name, "is missing"
    if arr.dtype.kind != "f" or arr.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, arr.shape)):
        return name, f"holds {arr.dtype} {list(arr.shape)}, expected floats of shape {[('any' if d == -1 else d) for d in shape]}"
    if not np.isfinite(arr).all():
        return name, "holds non-finite values"
    return None


def interactions_problem(a: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """What is wrong with a stored ``load`` output (None: usable)."""
    if "user_ids" not in a or "item_ids" not in a:
        return "user_ids" if "user_ids" not in a else "item_ids", "is missing"
    return _csr_problem(a, "m", len(a["user_ids"]), len(a["item_ids"]))


def split_problem(a: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """What is wrong with a stored ``split`` output (None: usable)."""
    if "item_ids" not in a:
        return "item_ids", "is missing"
    n_items = len(a["item_ids"])
    for name in ("shadow", "target", "vectorization"):
        users = a.get(f"{name}_user_ids")
        if users is None:
            return f"{name}_user_ids", "is missing"
        bad = _csr_problem(a, name, len(users), n_items)
        if bad is None and name != "vectorization":
            bad = _flags_problem(a.get(f"{name}_is_member"), f"{name}_is_member", len(users))
        if bad:
            return bad
    return None


def learned_state(component: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """A fitted component's learned state (attributes ending in ``_``) as arrays + JSON, or None.

    None means some learned attribute is neither an array nor a plain value, so the state cannot
    be stored without pickle; the stage is then recomputed in each process that needs it.
    """
    arrays, plain = {}, {}
    for name, value in vars(component).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[name] = value
        elif value is None or isinstance(value, (bool, int, float, str)):
            plain[name] = value
        else:
            return None
    return arrays, plain


# -- the cell ------------------------------------------------------------------------------------
class Cell:
    """One attack cell as a graph of cached stages; each method returns a stage's output.

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
        self.timings: dict[str, float] = {}
        self.devices: dict[str, dict] = {}  # timing name -> the device its torch work ran on (from the stored records)
        self.computed: dict[str, float] = {}  # stage -> seconds computed in this process
        self.hits: list[str] = []
        self.stage: str | None = None  # the stage being computed (named in a failed cell's error)
        self._memo: dict[str, Any] = {}
        self._counted: set[tuple[str, str]] = set()
        self._checked: set[tuple[str, str]] = set()  # outputs read back that passed their check
        self._refit_seconds = 0.0  # fits done again for query access (models are not stored), and reference fits
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
        if c.query_budget < 1:  # a query attack with no query: refused now
            require_budget(self.create("attack"), c.query_budget, c.attack)

    # -- component identities ---------------------------------------------------------------
    def _component_id(self, role: str) -> dict:
        """What identifies a component in keys: its name, every hyperparameter (defaults included), its version."""
        kind, (name, params) = role.split(":")[0], self.specs[role]
        memo = ("component", kind, name, digest(params))
        if memo not in self._shared:
            entry = self.plugins.registry(kind).get(name)
            self._shared[memo] = {"name": name, "params": get_params(self.create(role)),
                                  "version": _entry_version(entry, self.plugins)}
        return self._shared[memo]

    def create(self, role: str) -> Any:
        """A fresh, unfitted component of the cell (``recommender:shadow``, ``featurizer``, ...)."""
        name, params = self.specs[role]
        return self.plugins.create(role.split(":")[0], name, **params)

    def dataset_of(self, side: str) -> str:
        c = self.config
        return (c.shadow_dataset or c.dataset) if side == "shadow" else c.dataset

    # -- keys (no data is read) --------------------------------------------------------------
    def key(self, stage: str, side_or_part: str = "", defended: bool = False) -> str:
        memo_key = f"key:{stage}:{side_or_part}:{defended}"
        if memo_key not in self._memo:
            self._memo[memo_key] = digest(self._key_record(stage, side_or_part, defended))
        return self._memo[memo_key]

    def _key_record(self, stage: str, s: str, defended: bool) -> dict:
        c, seed = self.config, self.config.seed
        rec: dict[str, Any] = {"stage": stage, "core": core_version()}
        if stage == "load":
            memo = ("dataset", self.dataset_of(s), c.data_dir)
            if memo not in self._shared:
                self._shared[memo] = dataset_identity(self.dataset_of(s), c.data_dir, self.plugins)
            rec["dataset"] = self._shared[memo]
        elif stage == "split":
            rec.update(load=self.key("load", s), mode=c.split, min_interactions=c.min_interactions,
                       seed=stage_seed(seed, "split"))
        elif stage == "serve":
            rec.update(split=self.key("split", s), part=s, recommender=self._ids[f"recommender:{s}"], k=c.top_k,
                       seed=stage_seed(seed, s))
            if defended:  # a data or training defense: another fit
                rec.update(defense=self._ids["defense"], defense_seed=stage_seed(seed, f"defense-{s}"))
            rec.update(self._holdout_record(s))
            rec.update(service=self._ids["service"])
        elif stage == "defend":
            rec.update(serve=self.key("serve", s), defense=self._ids["defense"], seed=stage_seed(seed, f"defense-{s}"))
        elif stage == "vectors":
            rec.update(split=self.key("split", s), featurizer=self._ids["featurizer"], seed=stage_seed(seed, "featurizer"))
        elif stage == "features":
            rec.update(vectors=self.key("vectors", s), lists=self.lists_key(s, defended), **self._holdout_record(s))
        elif stage == "attack":
            rec.update(shadow=self.key("features", "shadow", defended), target=self.key("features", "target", bool(c.defense)),
                       attack=self._ids["attack"], seed=stage_seed(seed, "attack"))
            if self.threat == "queries":  # query access: the budget, and the reference model's data
                rec.update(query_budget=c.query_budget, reference=self.key("split", "shadow"))
            if self.level == "interaction":
                rec.update(pairs_seed=stage_seed(seed, "pairs-target"))
        else:
            raise ValueError(f"unknown stage {stage!r}")
        return rec

    def _holdout_record(self, part: str) -> dict:
        """What the utility hold-out adds to the keys of stages that read ``part``'s users (nothing without one)."""
        f = self.config.utility_holdout
        return {"holdout": f, "holdout_seed": stage_seed(self.config.seed, f"holdout-{part}")} if f > 0 else {}

    @property
    def defense_point(self) -> str | None:
        """Where the cell's defense acts (``lists``, ``data``, ``training``), or None without one."""
        if not self.config.defense:
            return None
        return self._once("defense_point", lambda: acts_on(self.create("defense")))

    def lists_key(self, part: str, defended: bool) -> str:
        """Key of the stage whose output is the lists ``part``'s users see (with or without the defense)."""
        if not defended:
            return self.key("serve", part)
        return self.key("defend", part) if self.defense_point == "lists" else self.key("serve", part, True)

    # -- running a stage ---------------------------------------------------------------------
    def _run(self, stage: str, key: str, timing: str, message: str, inputs: Callable[[], tuple],
             compute: Callable[..., tuple[dict, dict]],
             check: Callable[[Output], tuple[str, str] | None] | None = None) -> Output:
        """Read a stage's output, or gather its ``inputs()`` (upstream stages) and ``compute`` it.

        An output read back is checked first (``check``: ids and indices in range, shapes, finite
        values); one that fails is treated as broken (:meth:`DiskStore.reject`) and computed again.
        """
        out = self.store.get(stage, key)
        if out is not None and check is not None and (stage, key) not in self._checked:
            try:
                problem = check(out)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                problem = ("", f"cannot be used ({type(exc).__name__}: {exc})")
            if problem:
                self.store.reject(stage, key, problem[1], problem[0] or None)
                out = None
            else:
                self._checked.add((stage, key))
        if out is None:
            args = inputs()
            self.stage = timing
            if self.progress:
                self.progress(message)
            start = time.perf_counter()
            try:
                with use_device(self.config.device) as device:  # a run option: in no key (kit.torch_utils)
                    arrays, meta = compute(*args)
            except Exception as exc:
                broken = getattr(self.store, "broken", {}).get((stage, key))
                if broken is None:
                    raise
                # the stored output was broken and cannot be computed again: the cell fails naming the file
                line = str(exc) if isinstance(exc, MiarsError) else f"{type(exc).__name__}: {exc}"
                raise MiarsError(f"cached file {broken[0]!r} {broken[1]}, and computing the {stage} stage again failed: "
                                 f"{' '.join(line.split())}") from exc
            meta = {**meta, "seconds": round(time.perf_counter() - start, 3), **device.record()}
            out = self.store.put(stage, key, arrays, meta)
            self.computed[timing] = round(self.computed.get(timing, 0.0) + meta["seconds"], 3)
        else:
            self.hits.append(timing)
        if (stage, key) not in self._counted:  # a stage shared by both sides counts once
            self._counted.add((stage, key))
            name = TIMING[timing]
            self.timings[name] = round(self.timings.get(name, 0.0) + float(out.meta.get("seconds", 0.0)), 3)
            if out.meta.get("device"):
                self.devices[name] = {k: str(out.meta[k]) for k in ("device", "device_name") if out.meta.get(k)}
        return out

    def _once(self, name: str, fn: Callable[[], Any]) -> Any:
        if name not in self._memo:
            self._memo[name] = fn()
        return self._memo[name]

    # -- the stages --------------------------------------------------------------------------
    def data(self, side: str) -> Interactions:
        def compute():
            from .datasets import load_named

            data = load_named(self.dataset_of(side), self.config.data_dir, self.config.download, self.plugins)
            return interactions_to_arrays(data), {"users": data.n_users, "items": data.n_items,
                                                  "interactions": data.n_interactions}

        return self._once(f"data:{side}", lambda: interactions_from_arrays(
            self._run("load", self.key("load", side), "load", f"loading {self.dataset_of(side)}",
                      lambda: (), compute, lambda out: interactions_problem(out.arrays)).arrays))

    def split_output(self, side: str) -> Output:
        c = self.config

        def compute(data: Interactions):
            split = split_dataset(data, mode=c.split, min_interactions=c.min_interactions, seed=stage_seed(c.seed, "split"))
            return split_to_arrays(split), {
                "summary": split.summary(),
                "dataset": {"users": data.n_users, "items": data.n_items, "interactions": data.n_interactions},
            }

        return self._run("split", self.key("split", side), "split",
                         f"splitting {self.dataset_of(side)} into shadow / target / vectorization",
                         lambda: (self.data(side),), compute, lambda out: split_problem(out.arrays))

    def split(self, side: str) -> Split:
        return self._once(f"split:{side}", lambda: split_from_arrays(self.split_output(side).arrays))

    def part(self, part: str) -> Part:
        """The shadow or target part as the service and the adversary know it: without its future (hold-out)."""
        return self._visible(part)[0]

    def future(self, part: str) -> sp.csr_matrix | None:
        """The part's held-out interactions (rows aligned with :meth:`part`), or None without a hold-out."""
        return self._visible(part)[1]

    def _visible(self, part: str) -> tuple[Part, sp.csr_matrix | None]:
        def build():
            p, f = getattr(self.split(part), part), self.config.utility_holdout
            if f <= 0:
                return p, None
            visible, held = holdout(p.interactions, f, stage_seed(self.config.seed, f"holdout-{part}"))
            if part == "target" and held[p.is_member].nnz == 0:  # every utility number would be NaN
                raise MiarsError(f"--utility-holdout {f} holds out no interaction of any target member (each holds out "
                                 f"round({f} x her interactions), at most n - 1); raise it, e.g. --utility-holdout 0.2")
            return Part(p.name, visible, p.is_member), held

        return self._once(f"visible:{part}", build)

    def visible_split(self) -> Split:
        """The target side's split with both parts as :meth:`part` gives them (export, scores.tsv); one dataset only."""
        split = self.split("target")
        if self.config.utility_holdout <= 0:
            return split
        if self.config.shadow_dataset:
            raise MiarsError("a dataset-transfer cell has no single split of both parts")
        return Split(self.part("shadow"), self.part("target"), split.vectorization, split.item_ids)

    def served(self, part: str, defended: bool = False) -> Output:
        """Fit on the part's members and serve everyone; ``defended``: under a data or training defense."""
        name = self.specs[f"recommender:{part}"][0]
        defense = self.create("defense") if defended else None

        def compute(p: Part):
            s = self._serve(p, part, defense)
            return {"lists": s.lists}, {"report": s.report}

        under = f" under defense {self.config.defense}" if defended else ""
        return self._run("serve", self.key("serve", part, defended), f"serve:{part}",
                         f"training {part} recommender {name}{under}", lambda: (self.part(part),), compute,
                         self._lists_check(part))

    def _lists_check(self, part: str) -> Callable[[Output], tuple[str, str] | None]:
        """Stored lists must be one row of ``top_k`` item indices per user of ``part``."""
        def check(out: Output) -> tuple[str, str] | None:
            p = self.part(part)
            return _index_problem(out.arrays.get("lists"), "lists", p.interactions.n_items,
                                  (p.interactions.n_users, self.config.top_k))
        return check

    def _serve(self, p: Part, part: str, defense: Any) -> Served:
        """Fit the part's recommender (under a data or training defense) and serve; the fit is kept in memory."""
        seed, name = self.config.seed, self.specs[f"recommender:{part}"][0]
        future = self.future(part) if part == "target" else None  # utility is scored on the target members only
        s = serve(p, self.create(f"recommender:{part}"), name, self.config.top_k, stage_seed(seed, part),
                  defense=defense, defense_seed=stage_seed(seed, f"defense-{part}"),
                  heldout=future[p.is_member] if future is not None else None, service=self.create("service"))
        self._memo[f"fitted:{part}:{defense is not None}"] = s
        return s

    def access(self, part: str, defended: bool, budget: int | None = None) -> QueryAccess:
        """Query access to the service of ``part`` (with the cell's defense when ``defended``).

        Fitted models are not stored, so a cell whose lists came from the cache fits the
        recommender again (same data, same seed) and checks that it serves the stored lists.
        """
        c = self.config
        under_fit = defended and self.defense_point in ("data", "training")
        key = f"fitted:{part}:{under_fit}"
        stored = self.served(part, under_fit).arrays["lists"]
        if key not in self._memo:
            start = time.perf_counter()
            if self.progress:
                self.progress(f"fitting the {part} recommender again for query access")
            s = self._serve(self.part(part), part, self.create("defense") if under_fit else None)
            self._refit_seconds += time.perf_counter() - start
            agree = float((s.lists == stored).mean())
            if agree < 0.9:
                raise MiarsError(f"the {part} recommender fitted again for query access serves other lists than the "
                                 f"cached ones ({agree:.1%} of positions agree): its training is not deterministic; "
                                 "run with --no-cache")
        s = self._memo[key]
        defense = self.create("defense") if defended and self.defense_point == "lists" else None
        return QueryAccess.of(self.create("service"), s.fitted, s.train, c.top_k, defense=defense,
                              defense_seed=stage_seed(c.seed, f"defense-query-{part}"),
                              seed=stage_seed(c.seed, f"query-{part}"), budget=budget, name=part)

    def references(self, side: str) -> ReferenceModels:
        """The reference models the adversary trains on ``side``'s vectorization part (``view.reference``).

        Each is the shadow recommender fitted on that part restricted to users with at least
        ``min_interactions`` interactions and sampled to as many users as the target part has
        members (the service's training set's size and filter); each index draws its own sample
        and fit seed. One set per dataset: shared by both sides when they share the dataset.
        The object holds the adversary's data and component factories, not this cell.
        """
        def build() -> ReferenceModels:
            c = self.config
            name, params = self.specs["recommender:shadow"]
            service, service_params = self.specs["service"]
            return ReferenceModels(
                self.split(side).vectorization, int(self.part("target").is_member.sum()), c.min_interactions, c.top_k,
                c.seed, functools.partial(self.plugins.create, "recommender", name, **params), name,
                functools.partial(self.plugins.create, "service", service, **service_params), self.progress)

        return self._once(f"references:{self.key('split', side)}", build)

    def reference_access(self, side: str, index: int = 0) -> QueryAccess:
        """Query access to reference model number ``index`` of ``side`` (:meth:`references`)."""
        return self.references(side)(index)

    def _query_seconds(self) -> float:
        """Seconds spent fitting for query access: refits of the cell's recommenders and the reference models."""
        refs = sum(v.seconds_ for k, v in self._memo.items() if k.startswith("references:"))
        return self._refit_seconds + refs

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
            labels=p.is_member.copy() if part == "shadow" else None)
        if threat == "queries":
            budget = c.query_budget * p.interactions.n_users if part == "target" else None
            view.query = self.access(part, defended, budget)
            view.reference = self.references(part)
        if self.level == "interaction":
            view.pairs = self.pairs(part)
            if part == "shadow":
                view.pair_labels = self.pair_labels(part, defended, view.pairs)
        return view

    @property
    def level(self) -> str:
        """``user`` or ``interaction``: what the cell's attack infers membership of."""
        return self._once("level", lambda: level_of(self.create("attack")))

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
        if f"fitted:{part}:{under_fit}" not in self._memo:
            self.access(part, defended)
        train = self._memo[f"fitted:{part}:{under_fit}"].train.matrix
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

    def defended(self, part: str) -> Output:
        def compute(lists: np.ndarray, context: ServiceContext):
            out = defend(Served(lists, context), self.create("defense"), stage_seed(self.config.seed, f"defense-{part}"))
            future = self.future(part) if part == "target" else None
            if future is None:
                return {"lists": out}, {}
            members = self.part(part).is_member
            return {"lists": out}, {"utility": utility_metrics(out[members], future[members], self.config.top_k)}

        return self._run("defend", self.key("defend", part), "defend",
                         f"applying defense {self.config.defense} to the {part} part",
                         lambda: (self.served(part).arrays["lists"], self.context(part)), compute, self._lists_check(part))

    def lists(self, part: str, defended: bool) -> np.ndarray:
        if not defended:
            return self.served(part).arrays["lists"]
        out = self.defended(part) if self.defense_point == "lists" else self.served(part, True)
        return out.arrays["lists"]

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

    def report(self, part: str) -> dict:
        """What result.json says about the recommender of ``part`` (the defended fit, when there is one)."""
        defended = self.defense_point in ("data", "training")
        out = self.served(part, defended)
        # utility on the held-out items is the result's own ``utility`` block, not the recommender's
        report = {**{k: v for k, v in out.meta["report"].items() if k != "utility"}, "fit_seconds": out.meta["seconds"]}
        if defended:
            report["undefended"] = {k: v for k, v in self.served(part).meta["report"].items() if k not in ("params", "utility")}
        return report

    def _fit_featurizer(self, vectorization: Interactions) -> Any:
        f = self.create("featurizer")
        return f.fit(vectorization, seed=stage_seed(self.config.seed, "featurizer")) or f

    def featurizer(self, side: str) -> Any:
        """The featurizer fitted on ``side``'s vectorization part (its learned state is stored)."""

        def load():
            fitted: list[Any] = []

            def compute(vectorization: Interactions):
                f = self._fit_featurizer(vectorization)
                fitted.append(f)
                state = learned_state(f)
                if state is None:
                    return {}, {"storable": False}
                return state[0], {"storable": True, "plain": state[1]}

            def check(out: Output) -> tuple[str, str] | None:
                if not isinstance(out.meta.get("plain", {}), dict):
                    return "meta.json", "has no valid learned state"
                for name, arr in out.arrays.items():
                    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                        return name, "holds non-finite values"
                return None

            out = self._run("vectors", self.key("vectors", side), "vectors",
                            f"fitting featurizer {self.config.featurizer} on the {side} side's vectorization part",
                            lambda: (self.split(side).vectorization,), compute, check)
            if fitted:
                return fitted[0]
            if not out.meta.get("storable"):
                return self._fit_featurizer(self.split(side).vectorization)
            f = self.create("featurizer")
            for name, value in {**out.arrays, **out.meta.get("plain", {})}.items():
                setattr(f, name, value)
            return f

        return self._once(f"featurizer:{side}", load)

    def features(self, part: str, defended: bool) -> np.ndarray:
        def compute(featurizer, interactions: Interactions, lists: np.ndarray):
            with stage_threads():
                x = np.asarray(featurizer.transform(interactions, lists), dtype=np.float32)
            name = self.config.featurizer
            if x.ndim != 2 or x.shape[0] != interactions.n_users:
                raise MiarsError(f"featurizer {name!r} returned features of shape {x.shape}, expected one row per user "
                                 f"({interactions.n_users}, d)")
            if not np.isfinite(x).all():
                bad = int((~np.isfinite(x)).any(axis=1).sum())
                raise MiarsError(f"featurizer {name!r} produced non-finite features (NaN or infinity) for {bad} of "
                                 f"{x.shape[0]} {part} users: the run is broken; check its parameters and inputs")
            return {"X": x}, {}

        return self._run("features", self.key("features", part, defended), "features", f"featurizing the {part} part",
                         lambda: (self.featurizer(part), self.part(part).interactions, self.lists(part, defended)),
                         compute, lambda out: _finite_problem(out.arrays.get("X"), "X",
                                                              (self.part(part).interactions.n_users, -1))).arrays["X"]

    @property
    def threat(self) -> str:
        """What the cell's attack needs: ``features``, ``lists`` or ``queries`` (:mod:`miars_core.science.threat`)."""
        return self._once("threat", lambda: threat_of(self.create("attack")))

    def attack_scores(self, defended_shadow: bool) -> Output:
        c = self.config

        def compute(x_shadow: np.ndarray, y_shadow: np.ndarray, x_target: np.ndarray):
            meta: dict[str, Any] = {}
            seed = stage_seed(c.seed, "attack")
            with stage_threads():
                model = self.create("attack")
                if self.threat == "features":
                    model.fit(x_shadow, y_shadow, seed=seed)
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
            n = self.part("target").interactions.n_users
            if scores.shape != (n,) or predicted.shape != (n,):
                raise MiarsError(f"attack {c.attack!r} returned scores of shape {scores.shape}, expected one per target "
                                 f"user ({n},)")
            if not np.isfinite(scores).all():
                raise MiarsError(f"attack {c.attack!r} produced non-finite scores; check its inputs and parameters")
            return {"scores": scores, "predicted": predicted, **arrays}, meta

        def check(out: Output) -> tuple[str, str] | None:
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

        return self._run("attack", self.key("attack", "", defended_shadow), "attack", f"training attack {c.attack}",
                         lambda: (self.features("shadow", defended_shadow), self.part("shadow").is_member,
                                  self.features("target", bool(c.defense))), compute, check)

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

    # -- all of it -----------------------------------------------------------------------------
    def attackers(self) -> dict[str, Output]:
        """Attack outputs by attacker: ``undefended`` always, ``defended`` with a defense."""
        out = {"undefended": self.attack_scores(False)}
        if self.config.defense:
            out["defended"] = self.attack_scores(True)
        return out

    def graph(self) -> list[tuple[str, str, str]]:
        """Every (stage, timing name, key) of the cell, each key once, in data-flow order."""
        c, out, seen = self.config, [], set()

        def add(stage: str, timing: str, key: str) -> None:
            if key not in seen:
                seen.add(key)
                out.append((stage, timing, key))

        for side in self.SIDES:
            add("load", "load", self.key("load", side))
            add("split", "split", self.key("split", side))
        for part in self.SIDES:
            add("serve", f"serve:{part}", self.key("serve", part))
            if self.defense_point == "lists":
                add("defend", "defend", self.key("defend", part))
            elif c.defense:
                add("serve", f"serve:{part}", self.key("serve", part, True))
        for side in self.SIDES:
            add("vectors", "vectors", self.key("vectors", side))
        add("features", "features", self.key("features", "shadow", False))
        if c.defense:
            add("features", "features", self.key("features", "shadow", True))
        add("features", "features", self.key("features", "target", bool(c.defense)))
        add("attack", "attack", self.key("attack", "", False))
        if c.defense:
            add("attack", "attack", self.key("attack", "", True))
        return out

    def stage_seconds(self) -> dict[str, float]:
        """Seconds each stage took when it was computed (read from the stored records), v0's names."""
        timings: dict[str, float] = {}
        for stage, timing, key in self.graph():
            meta = self.store.meta(stage, key) or {}
            name = TIMING[timing]
            timings[name] = round(timings.get(name, 0.0) + float(meta.get("seconds", 0.0)), 3)
        return timings

    def prepare(self, what: str) -> None:
        """Compute one intermediate stage (``split:<side>`` or ``serve:<part>``) for the grid's scheduler."""
        stage, _, arg = what.partition(":")
        if stage == "split":
            self.split_output(arg)
        elif stage == "serve":
            self.served(arg)
        elif stage == "serve-defended":
            self.served(arg, True)
        else:
            raise ValueError(f"unknown preparation {what!r}")

    def task_keys(self) -> dict[str, str]:
        """Keys of the intermediate stages the grid schedules as their own tasks."""
        keys = {f"split:{side}": self.key("split", side) for side in self.SIDES}
        keys.update({f"serve:{part}": self.key("serve", part) for part in self.SIDES})
        if self.defense_point in ("data", "training"):
            keys.update({f"serve-defended:{part}": self.key("serve", part, True) for part in self.SIDES})
        return keys


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each id of ``wanted`` in ``ids`` (every wanted id is in ``ids``); vectorised."""
    order = np.argsort(ids, kind="stable")
    at = order[np.minimum(np.searchsorted(ids[order], wanted), max(len(ids) - 1, 0))]
    if not np.array_equal(ids[at], wanted):
        raise MiarsError("the target part holds users the vectorization part does not list; the split is inconsistent")
    return at


def dataset_identity(name: str, data_dir: str | None, plugins) -> dict:
    """What identifies a dataset's content: a file's sha256, else the name, data dir and loader version."""
    from .datasets import dataset_file

    registry = plugins.registry("dataset")
    path = dataset_file(name, registry)
    if path is not None:
        return {"file_sha256": file_fingerprint(path), "loader": _entry_version(registry.get("file"), plugins)}
    entry = registry.get(name)
    rec: dict[str, Any] = {"name": name, "loader": _entry_version(entry, plugins)}
    try:  # official datasets can tell which file they would read
        path, _ = entry.factory().locate(data_dir=Path(data_dir).expanduser() if data_dir else None, download=False)
        rec["file_sha256"] = file_fingerprint(path)
    except Exception:  # noqa: BLE001 - no such method, or the file is not there yet (downloaded later)
        rec["data_dir"] = str(Path(data_dir).expanduser().resolve()) if data_dir else None
    return rec


def _entry_version(entry, plugins) -> str:
    info = plugins.info.get(entry.plugin)
    return component_version(entry.factory, f"{entry.plugin}=={info.version if info else ''}")


def cell_metrics(cell: Cell) -> dict[str, dict]:
    """Metrics of every attacker of a cell, computed from the stored scores."""
    y = cell.part("target").is_member
    return {name: membership_metrics(y, out.arrays["scores"], out.arrays["predicted"])
            for name, out in cell.attackers().items()}
