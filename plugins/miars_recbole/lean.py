"""A lean data path for RecBole's model classes, auto training length, and a sparse ItemKNN.

RecBole's ``TrainDataLoader`` builds every batch in Python (pandas-backed ``Interaction`` slices,
per-batch negative sampling with a Python rejection loop). Here the members' interactions live in
two torch tensors; every epoch is one ``randperm``, one vectorized negative draw for all
interactions (uniform over the items seen in training, re-drawn while the user knows the item,
as RecBole's uniform sampler does) and a loop of tensor slices fed to the RecBole model's own
``calculate_loss`` with Adam, as RecBole's trainer would. The model objects are RecBole's classes
(``BPR``, ``NeuMF``), built from a small stand-in for RecBole's ``Dataset`` that answers the
questions their constructors ask (``num(field)``, ``inter_matrix()``).

``epochs=None`` (auto): :func:`select_epochs` holds out a seeded share of every member's own
interactions, trains on the rest, measures recall@k of the held-out items every few epochs, stops
after ``patience`` evaluations without improvement (or at ``max_epochs``), and returns the epoch
with the best recall. The caller then trains a fresh model on all interactions for that many epochs.
With ``eval_subsample`` (``ncf``'s default: 500 of the up to 2,000 eval users) the curve is measured
on a subsample and the best ``confirm`` epochs of it are re-scored on every eval user (kept weights),
the best of those chosen: the same lengths and recall as scoring everyone at every evaluation on the
ml-1m pairs (benchmarks/selection.py) for a fraction of the scoring.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.errors import MiarsError

#: RecBole models trained through the lean path (others go through RecBole's own trainer).
LEAN_MODELS = ("BPR", "NeuMF")

#: Defaults of the auto-epochs criterion (override any with ``selection={...}``).
SELECTION_DEFAULTS = {
    "metric": "recall@k on held-out member interactions",
    "holdout": 0.2,  # share of each member's interactions held out (users with >= 5 interactions)
    "k": 100,  # recall@k (capped for small catalogues)
    "eval_every": 2,  # epochs between evaluations
    "patience": 4,  # evaluations without improvement before stopping
    "min_delta": 0.002,  # relative improvement that counts
    "max_epochs": 300,
    "eval_users": 2000,  # at most this many held-out users are scored (seeded sample)
    "eval_subsample": None,  # score only this many of them at each evaluation (None: all), then ...
    "confirm": 3,  # ... re-score the best this many epochs of that curve on all eval users (snapshots)
}

#: Batch size and learning rate the per-model base learning rates were tuned at (ml-1m).
BASE_BATCH = 4096


def auto_batch_size(n_interactions: int) -> int:
    """Batch size for ``n_interactions`` training pairs: at least ~32 steps per epoch on small data.

    A power of two in [128, 4096] so that an epoch has >= 32 optimizer steps; above ~1M pairs the
    batch grows (up to 16,384) so that an epoch stays near 256 steps. ml-1m-sized parts keep 4,096.
    """
    n = max(1, int(n_interactions))
    batch = 2 ** int(math.floor(math.log2(max(1, n / 32))))
    batch = min(BASE_BATCH, max(128, batch))
    if n > BASE_BATCH * 256:
        batch = min(16384, max(batch, 2 ** int(math.floor(math.log2(n / 256)))))
    return batch


def scaled_learning_rate(base_lr: float, batch_size: int) -> float:
    """Adam's square-root scaling rule: lr = base_lr * sqrt(batch / 4096)."""
    return float(base_lr) * math.sqrt(batch_size / BASE_BATCH)


# --------------------------------------------------------------------------------------------
# data
@dataclass
class LeanData:
    """Members' interactions as RecBole internal ids (0 is padding), plus the maps back to rows/columns."""

    user: Any  # torch.LongTensor, one per interaction
    item: Any
    keys: Any  # sorted user * n_items + item, for "does the user know this item?"
    n_users: int  # including padding, as RecBole's dataset.num()
    n_items: int
    user_rb: np.ndarray  # internal id of each training row (0 = no interactions)
    item_cols: np.ndarray  # global column of each internal item id (index 0 = padding)
    matrix: sp.csr_matrix  # internal users x internal items


def index_members(train: sp.csr_matrix) -> LeanData:
    """Map rows with interactions to internal user ids 1.., items seen in training to 1.."""
    import torch

    train = sp.csr_matrix(train)
    counts = np.diff(train.indptr)
    present_rows = np.flatnonzero(counts > 0)
    present_items = np.flatnonzero(np.bincount(train.indices, minlength=train.shape[1]) > 0)
    user_rb = np.zeros(train.shape[0], dtype=np.int64)
    user_rb[present_rows] = np.arange(1, len(present_rows) + 1)
    item_rb = np.zeros(train.shape[1], dtype=np.int64)
    item_rb[present_items] = np.arange(1, len(present_items) + 1)
    item_cols = np.zeros(len(present_items) + 1, dtype=np.int64)
    item_cols[1:] = present_items
    rows = np.repeat(np.arange(train.shape[0]), counts)
    u = user_rb[rows]
    i = item_rb[train.indices]
    n_users, n_items = len(present_rows) + 1, len(present_items) + 1
    keys = np.sort(u * n_items + i)
    matrix = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(n_users, n_items))
    return LeanData(torch.from_numpy(u), torch.from_numpy(i), torch.from_numpy(keys), n_users, n_items,
                    user_rb, item_cols, matrix)


class StandInDataset:
    """What RecBole general models ask of their ``dataset`` argument in ``__init__``."""

    def __init__(self, data: LeanData, uid_field: str = "user_id", iid_field: str = "item_id"):
        self.data = data
        self.uid_field = uid_field
        self.iid_field = iid_field

    def num(self, field: str) -> int:
        if field == self.uid_field:
            return self.data.n_users
        if field == self.iid_field:
            return self.data.n_items
        raise MiarsError(f"the lean RecBole data path knows only {self.uid_field} and {self.iid_field}, not {field!r}")

    def inter_matrix(self, form: str = "coo", value_field: str | None = None):
        return self.data.matrix.asformat(form)


def known(data: LeanData, users, items):
    """Bool tensor: does each (internal user, internal item) pair occur in training?"""
    import torch

    q = users * data.n_items + items
    pos = torch.searchsorted(data.keys, q).clamp_(max=len(data.keys) - 1)
    return data.keys[pos] == q


def sample_negatives(data: LeanData, users, gen, max_rounds: int = 100):
    """One uniform negative item per user entry, never an item the user knows (RecBole's uniform sampler)."""
    import torch

    neg = torch.randint(1, data.n_items, users.shape, generator=gen)
    todo = torch.nonzero(known(data, users, neg)).squeeze(1)
    for _ in range(max_rounds):
        if len(todo) == 0:
            break
        neg[todo] = torch.randint(1, data.n_items, (len(todo),), generator=gen)
        todo = todo[known(data, users[todo], neg[todo])]
    return neg


# --------------------------------------------------------------------------------------------
# model and training
def recbole_config(model_name: str, overrides: dict, seed: int, device: str | None = None):
    """RecBole ``Config`` for ``model_name`` without any data on disk, on ``device`` (default: the stage's,
    :func:`miars_core.kit.torch_utils.current_device`)."""
    from recbole.config import Config

    from miars_core.kit.torch_utils import current_device

    from .settings import FIXED as _FIXED
    from .settings import for_device

    cfg = {**_FIXED, **overrides, **for_device(device or current_device()), "seed": int(seed),
           "data_path": "miars-lean-unused", "checkpoint_dir": "miars-lean-unused"}
    try:
        return Config(model=model_name, dataset="members", config_dict=cfg)
    except (ValueError, KeyError, AttributeError) as exc:
        raise MiarsError(f"RecBole rejected model {model_name!r} or its settings: {exc}") from None


def build_model(model_name: str, config, data: LeanData, seed: int):
    """RecBole's own model class, built on the stand-in dataset with RecBole's seeding, on ``config["device"]``.

    Its parameters are initialised on the CPU (the same numbers on every device), then moved.
    """
    from recbole.utils import get_model, init_seed

    init_seed(int(seed), True)
    return get_model(model_name)(config, StandInDataset(data, config["USER_ID_FIELD"], config["ITEM_ID_FIELD"])).to(config["device"])


@dataclass
class LeanTrainer:
    """Adam over shuffled batches of (user, item, negative) built in torch, RecBole's loss on each."""

    model: Any
    data: LeanData
    model_name: str
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.0
    seed: int = 0
    losses: list = field(default_factory=list)

    def __post_init__(self):
        import torch
        from recbole.utils import InputType

        from miars_core.kit.torch_utils import device_of

        self.gen = torch.Generator().manual_seed(int(self.seed))  # on the CPU: the same draws on every device
        self.device = device_of(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        self.pointwise = self.model.input_type == InputType.POINTWISE
        if self.model.input_type not in (InputType.POINTWISE, InputType.PAIRWISE):
            raise MiarsError(f"{self.model_name}: the lean data path trains pointwise or pairwise models only")

    def epoch(self) -> float:
        import torch
        from recbole.data.interaction import Interaction

        m, d = self.model, self.data
        m.train()
        n = len(d.user)
        perm = torch.randperm(n, generator=self.gen)
        users, items = d.user[perm], d.item[perm]
        negs = sample_negatives(d, users, self.gen)
        users, items, negs = users.to(self.device), items.to(self.device), negs.to(self.device)  # once per epoch
        # RecBole counts a pointwise batch's rows: positives + their negatives.
        step = max(1, self.batch_size // 2) if self.pointwise else self.batch_size
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, n, step):
            u, i, j = users[start : start + step], items[start : start + step], negs[start : start + step]
            if self.pointwise:
                batch = {m.USER_ID: torch.cat([u, u]), m.ITEM_ID: torch.cat([i, j]),
                         m.LABEL: torch.cat([torch.ones(len(u), device=self.device), torch.zeros(len(u), device=self.device)])}
            else:
                batch = {m.USER_ID: u, m.ITEM_ID: i, m.NEG_ITEM_ID: j}
            self.optimizer.zero_grad(set_to_none=True)
            loss = m.calculate_loss(Interaction(batch))
            if isinstance(loss, tuple):
                loss = sum(loss)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        value = float(total)
        if not math.isfinite(value):
            raise MiarsError(f"RecBole {self.model_name}: training loss became {value} in epoch {len(self.losses) + 1}; "
                             "lower learning_rate")
        self.losses.append(value)
        m.eval()
        return value


# --------------------------------------------------------------------------------------------
# auto epochs
def holdout_split(train: sp.csr_matrix, share: float, seed: int, min_count: int = 5) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Hold out floor(share * n) of each user's n >= ``min_count`` interactions, seeded; returns (fit, held)."""
    train = sp.csr_matrix(train, dtype=np.float32)
    counts = np.diff(train.indptr)
    rows = np.repeat(np.arange(train.shape[0]), counts)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(train.nnz), rows))  # random order inside each row
    rank = np.empty(train.nnz, dtype=np.int64)
    rank[order] = np.arange(train.nnz) - train.indptr[rows[order]]
    n_hold = np.where(counts >= min_count, np.floor(share * counts), 0).astype(np.int64)
    held = rank < n_hold[rows]
    build = lambda sel: sp.csr_matrix((train.data[sel], (rows[sel], train.indices[sel])), shape=train.shape)
    return build(~held), build(held)


def heldout_recall(score_rows: Callable, fit: sp.csr_matrix, held: sp.csr_matrix, rows: np.ndarray, k: int) -> float:
    """Share of the held-out items of ``rows`` that lie in their top-k (training items excluded)."""
    from miars_core.science.ranking import top_k_excluding

    lists = top_k_excluding(lambda r: score_rows(rows[r]), fit[rows], k, batch_size=512, scratch=True)
    sub = held[rows]
    hits = np.asarray(sub[np.repeat(np.arange(len(rows)), k), lists.ravel()]).sum()
    return float(hits / max(1, sub.nnz))


@dataclass
class Selection:
    """The outcome of auto epochs: the chosen length and the curve that chose it."""

    epochs: int
    curve: list  # [epoch, recall]
    criterion: dict
    seconds: float
    stopped: str
    scoring_seconds: float = 0.0  # of ``seconds``: scoring the eval users (the rest trains)
    chosen_recall: float | None = None  # held-out recall of the chosen length on every eval user
    confirmed: list | None = None  # [epoch, recall on every eval user] of the confirmed epochs (subsample only)

    def report(self) -> dict:
        out = {"criterion": self.criterion, "curve": self.curve, "chosen_epochs": self.epochs,
               "chosen_recall": self.chosen_recall, "stopped": self.stopped,
               "selection_seconds": round(self.seconds, 3), "selection_scoring_seconds": round(self.scoring_seconds, 3)}
        if self.confirmed is not None:
            out["confirmed"] = self.confirmed
        return out


def selection_criterion(train: sp.csr_matrix, overrides: dict | None) -> dict:
    crit = {**SELECTION_DEFAULTS, **(overrides or {})}
    unknown = set(crit) - set(SELECTION_DEFAULTS)
    if unknown:
        raise MiarsError(f"unknown selection setting(s) {sorted(unknown)}; known: {', '.join(SELECTION_DEFAULTS)}")
    for key in ("eval_every", "patience", "max_epochs", "eval_users", "k", "confirm"):
        if int(crit[key]) < 1:
            raise MiarsError(f"selection {key} must be >= 1, got {crit[key]}")
    if crit["eval_subsample"] is not None and int(crit["eval_subsample"]) < 1:
        raise MiarsError(f"selection eval_subsample must be >= 1 or None (every eval user), got {crit['eval_subsample']}")
    return crit


def select_epochs(train: sp.csr_matrix, seed: int, crit: dict,
                  start: Callable[[sp.csr_matrix], tuple],
                  split: Callable[[sp.csr_matrix, float, int], tuple[sp.csr_matrix, sp.csr_matrix]] | None = None) -> Selection:
    """Choose a training length by held-out recall (see the module docstring).

    ``start(fit_matrix)`` builds a fresh model on ``fit_matrix`` and returns ``(train_one_epoch,
    score_rows)`` or ``(train_one_epoch, score_rows, snapshot, restore)``; ``score_rows(rows)``
    scores training rows against all columns, ``snapshot()`` copies the model's weights and
    ``restore(state)`` loads such a copy. With ``eval_subsample`` (and snapshots), each
    evaluation scores a seeded subsample of the eval users and the stop rule reads that curve;
    the ``confirm`` epochs with the best subsample recall (their weights kept) are then scored
    on every eval user and the best of them is chosen, so the chosen length's recall is
    measured as without the subsample (``chosen_recall``, ``confirmed``). ``split(train, share,
    seed) -> (fit, held)`` chooses what is held out (default :func:`holdout_split`: a random
    share of each user's items; sequential models hold out each member's last items).
    """
    t0 = time.perf_counter()
    fit, held = (split or holdout_split)(train, float(crit["holdout"]), seed)
    rows = np.flatnonzero(np.diff(held.indptr) > 0)
    if len(rows) == 0:
        raise MiarsError("auto epochs needs members with >= 5 interactions to hold some out; pass epochs=N")
    rng = np.random.default_rng(seed + 1)
    if len(rows) > int(crit["eval_users"]):
        rows = np.sort(rng.choice(rows, int(crit["eval_users"]), replace=False))
    most = int(np.diff(fit.indptr).max())
    k = max(1, min(int(crit["k"]), (fit.shape[1] - most), max(10, fit.shape[1] // 10)))
    started = start(fit)
    step, score_rows = started[0], started[1]
    snapshot, restore = (started[2], started[3]) if len(started) >= 4 else (None, None)
    sub = rows
    if crit["eval_subsample"] is not None and int(crit["eval_subsample"]) < len(rows) and snapshot is not None:
        sub = np.sort(np.random.default_rng(seed + 2).choice(rows, int(crit["eval_subsample"]), replace=False))
    confirm = int(crit["confirm"]) if len(sub) < len(rows) else 0
    kept: list = []  # (recall on the subsample, epoch, weights): the best ``confirm`` evaluations
    curve: list = []
    scoring = 0.0
    best, best_epoch, since = -1.0, 0, 0
    stopped = "max_epochs"
    every, patience, max_epochs = int(crit["eval_every"]), int(crit["patience"]), int(crit["max_epochs"])
    for epoch in range(1, max_epochs + 1):
        step()
        if epoch % every and epoch != max_epochs:
            continue
        t_score = time.perf_counter()
        recall = heldout_recall(score_rows, fit, held, sub, k)
        scoring += time.perf_counter() - t_score
        curve.append([epoch, round(recall, 5)])
        if confirm and (len(kept) < confirm or recall > kept[-1][0]):
            kept = sorted([*kept, (recall, epoch, snapshot())], key=lambda e: (-e[0], e[1]))[:confirm]
        if recall > best:
            improved = recall > best * (1 + float(crit["min_delta"])) or best <= 0
            best, best_epoch = recall, epoch
            since = 0 if improved else since + 1
        else:
            since += 1
        if since >= patience:
            stopped = "patience"
            break
    criterion = {**crit, "k": k, "eval_users": int(len(rows)), "held_out_interactions": int(held.nnz)}
    chosen_recall = best
    confirmed = None
    if confirm and kept:
        t_score = time.perf_counter()
        confirmed = []
        for _, epoch, state in sorted(kept, key=lambda e: e[1]):
            restore(state)
            confirmed.append([epoch, round(heldout_recall(score_rows, fit, held, rows, k), 5)])
        scoring += time.perf_counter() - t_score
        best_epoch, chosen_recall = max(confirmed, key=lambda e: (e[1], -e[0]))  # the earliest of equals
        criterion["eval_subsample"] = int(len(sub))
    else:  # every eval user at every evaluation: nothing to confirm
        criterion["eval_subsample"] = criterion["confirm"] = None
    return Selection(max(1, best_epoch), curve, criterion, time.perf_counter() - t0, stopped, scoring,
                     round(float(chosen_recall), 5), confirmed)


# --------------------------------------------------------------------------------------------
# sparse ItemKNN
def item_item_topk(matrix: sp.csr_matrix, k: int, shrink: float = 0.0, max_block: int = 1 << 24) -> sp.csc_matrix:
    """RecBole ItemKNN's similarity (cosine with shrink, each item's top-k neighbours, itself excluded).

    Column j holds item j's k most similar items, as RecBole's ``ComputeSimilarity(method="item")``.
    Co-occurrence counts come from sparse products over blocks of columns, and the top-k is one
    ``torch.topk`` per block, so memory is one (items x block) float32 block plus the result.
    """
    import torch

    x = sp.csr_matrix(matrix, dtype=np.float32)
    n = x.shape[1]
    k = min(int(k), n)
    norms = np.sqrt(np.asarray(x.power(2).sum(axis=0), dtype=np.float32).ravel())
    xt = x.T.tocsr()
    xc = x.tocsc()
    block = max(1, min(n, max_block // max(1, n)))
    rows, cols, vals = [], [], []
    for s in range(0, n, block):
        e = min(n, s + block)
        b = e - s
        w = (xt @ xc[:, s:e]).toarray()  # (n, b) co-occurrence counts
        w[np.arange(s, e), np.arange(b)] = 0.0
        w *= 1 / (norms[:, None] * norms[None, s:e] + np.float32(shrink) + np.float32(1e-6))
        top = torch.topk(torch.from_numpy(w), k, dim=0, sorted=False)
        v, idx = top.values.numpy(), top.indices.numpy()
        nz = v != 0
        rows.append(idx[nz])
        cols.append(np.broadcast_to(np.arange(s, e), (k, b))[nz])
        vals.append(v[nz])
    r, c, v = (np.concatenate(a) if a else np.empty(0) for a in (rows, cols, vals))
    return sp.csc_matrix((v.astype(np.float32), (r, c)), shape=(n, n))


_SPARSE_ITEMKNN = None


def sparse_itemknn_class():
    """RecBole's ``ItemKNN`` with the similarity given, no users x items ``pred_mat``: rows scored on demand."""
    global _SPARSE_ITEMKNN
    if _SPARSE_ITEMKNN is not None:
        return _SPARSE_ITEMKNN
    import torch
    from recbole.model.abstract_recommender import GeneralRecommender
    from recbole.model.general_recommender.itemknn import ItemKNN

    class SparseItemKNN(ItemKNN):
        def __init__(self, config, dataset, w):  # noqa: D401 - RecBole signature plus the similarity
            GeneralRecommender.__init__(self, config, dataset)
            self.k = config["k"]
            self.method = "item"
            self.shrink = config["shrink"] if "shrink" in config else 0.0
            self.interaction_matrix = dataset.inter_matrix(form="csr").astype(np.float32)
            self.w = sp.csr_matrix(w)
            self.fake_loss = torch.nn.Parameter(torch.zeros(1))
            self.other_parameter_name = ["w"]

        def _rows(self, users):
            return self.interaction_matrix[np.asarray(users)] @ self.w

        def predict(self, interaction):
            user = interaction[self.USER_ID].cpu().numpy()
            item = interaction[self.ITEM_ID].cpu().numpy()
            rows = self._rows(user)
            return torch.from_numpy(np.asarray(rows[np.arange(len(user)), item]).ravel())

        def full_sort_predict(self, interaction):
            scores = self._rows(interaction[self.USER_ID].cpu().numpy()).toarray()
            return torch.from_numpy(scores.ravel())

    _SPARSE_ITEMKNN = SparseItemKNN
    return SparseItemKNN
