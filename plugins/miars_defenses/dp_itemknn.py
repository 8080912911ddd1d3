"""A defense on training: ``dp-itemknn``, item-item cosine kNN from noised co-occurrence counts."""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import Interval, Options, OrNone  # noqa: F401 - param_constraints
from miars_core.contracts.state import csr_arrays, csr_from_arrays
from miars_core.contracts.types import Interactions, random_row_ranks
from miars_core.science.ranking import top_k_excluding

from . import _params

#: Largest dense (item rows x items) block of the co-occurrence matrix held at once (float32).
MAX_BLOCK_ELEMENTS = 1 << 23

#: Items per noise tile: each pair of tiles draws its noise from its own seeded generator.
NOISE_TILE = 256


def bound_per_user(matrix: sp.csr_matrix, max_per_user: int, seed: int) -> sp.csr_matrix:
    """Each row keeps at most ``max_per_user`` of its entries, drawn uniformly without replacement (seeded)."""
    m = sp.csr_matrix(matrix, copy=True)
    m.sum_duplicates()
    rows, rank = random_row_ranks(m, seed)
    keep = rank < max_per_user
    out = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], m.indices[keep])), shape=m.shape)
    return out


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest noise scale of the Gaussian mechanism that is (epsilon, delta)-DP (analytic; Balle & Wang, ICML 2018).

    The mechanism with L2 sensitivity ``D`` and noise ``N(0, s^2)`` is (eps, delta)-DP iff
    ``Phi(D/(2s) - eps s/D) - e^eps Phi(-D/(2s) - eps s/D) <= delta``; the left side decreases
    in ``s``, so bisection (in log space) finds the smallest ``s``.
    """
    from scipy.special import log_ndtr, ndtr

    def excess(s: float) -> float:
        a, b = sensitivity / (2 * s), epsilon * s / sensitivity
        return ndtr(a - b) - math.exp(epsilon + log_ndtr(-a - b)) - delta

    lo, hi = sensitivity, sensitivity
    while excess(hi) > 0:
        hi *= 2
    while excess(lo) <= 0 and lo > 1e-12 * sensitivity:
        lo /= 2
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    return hi


#: What the guarantee covers, what the service adds outside it, and what is public (``privacy_``).
COVERS = (
    "the released item-item similarity and the noisy item counts",
    "every list computed from them and the list owner's own history (members' lists, fold-in lists)",
)
OUTSIDE = (
    "the non-member popular list of the `popular` service and the cold-start list (an account with no "
    "history): exact item counts over the members' data, computed by the service, not by this defense",
    "a member's own list leaves out the items she knows: it shows her own history to whoever sees it",
)
PUBLIC = (
    "the item catalogue",
    "the number of members (sets the default delta)",
)


class DPItemKNN(Component):
    """Item-based kNN on differentially private item co-occurrence counts, each user's contribution bounded (McSherry & Mironov, KDD 2009).

    F. McSherry and I. Mironov, "Differentially Private Recommender Systems: Building Privacy
    into the Netflix Prize Contenders" (KDD 2009): release item-item statistics with noise
    calibrated to one user's bounded influence, then build the recommender from them. Here:

    1. each member keeps at most ``max_per_user`` interactions, drawn with the seed;
    2. the symmetric item co-occurrence matrix ``C = X^T X`` (its diagonal: the item counts) is
       released once, upper triangle and diagonal, with noise on *every* entry (zeros too).
       One user changes at most ``m (m + 1) / 2`` of those entries by 1 (``m = max_per_user``),
       so the L1 sensitivity is ``m (m + 1) / 2`` (``mechanism="laplace"``: Laplace noise of
       scale ``L1 / epsilon``, pure epsilon-DP, ``delta = 0``) and the L2 sensitivity is
       ``sqrt(m (m + 1) / 2)`` (``mechanism="gaussian"``, the default: the analytic Gaussian
       mechanism of Balle & Wang, ICML 2018, at ``delta``, default ``1 / (n ln n)`` for ``n``
       members, well below ``1 / n``: :func:`miars_defenses._params.default_delta`);
    3. post-processing only: noisy pair counts below ``threshold`` noise standard deviations
       become 0 — without this, pure noise on the millions of zero pairs poses as strong
       similarity between rare items; the default sets it so that about one pure-noise pair in
       all survives (``sqrt(2 ln P)`` for Gaussian, ``ln P / sqrt 2`` for Laplace noise, ``P`` the
       number of pairs) —, item counts are raised to at least that floor (and 1), cosine
       similarity ``C_ij / (sqrt(C_ii C_jj) + shrink)``, the ``neighbors`` most similar
       items of each item kept (``neighbors`` defaults to the wrapped ItemKNN's ``k``), and a
       member's scores are her history times that sparse similarity (like RecBole's ItemKNN).

    The guarantee is **user-level** (adding or removing one member with all her interactions)
    for the released similarity and noisy item counts; serving a member uses only her own
    history on top of them. The item catalogue and the number of members are public.
    **Outside the guarantee**: under the ``popular`` service, non-members' lists and the
    cold-start list (an account with no history) come from the *exact* item counts of the
    members' data, computed by the service, not by this defense; ``privacy_["outside"]`` says
    so in every result.json. Wraps ``item`` / ``recbole:ItemKNN`` only.
    """

    acts_on = "training"
    sweep = {"epsilon": [0.5, 1.0, 5.0, 10.0]}
    #: Recommender names this defense can train (bench-defenses pairs it with these only).
    recommenders = ("item", "recbole:ItemKNN")

    param_constraints = {
        "epsilon": Interval(float, 0, None, closed="neither"), "max_per_user": Interval(int, 1),
        "mechanism": Options(("gaussian", "laplace")), "delta": OrNone(Interval(float, 0, 1, closed="neither")),
        "neighbors": OrNone(Interval(int, 1)), "threshold": OrNone(Interval(float, 0)), "score_batch_size": Interval(int, 1),
    }

    def __init__(self, epsilon: float = 1.0, max_per_user: int = 50, mechanism: str = "gaussian",
                 delta: float | None = None, neighbors: int | None = None, threshold: float | None = None,
                 score_batch_size: int = 512):
        self.epsilon = epsilon
        self.max_per_user = max_per_user
        self.mechanism = mechanism
        self.delta = delta
        self.neighbors = neighbors
        self.threshold = threshold
        self.score_batch_size = score_batch_size

    def _validate(self) -> tuple:
        name = "dp-itemknn"
        eps = _params.number(name, "epsilon", self.epsilon, low=0, low_open=True, example=1.0)
        m = _params.number(name, "max_per_user", self.max_per_user, low=1, integer=True, example=50)
        mech = _params.choice(name, "mechanism", self.mechanism, ("gaussian", "laplace"))
        delta = _params.number(name, "delta", self.delta, low=0, high=1, low_open=True, high_open=True,
                               example=1e-5, allow_none=True)
        neighbors = _params.number(name, "neighbors", self.neighbors, low=1, integer=True, example=100, allow_none=True)
        threshold = _params.number(name, "threshold", self.threshold, low=0, example=5.0, allow_none=True)
        batch = _params.number(name, "score_batch_size", self.score_batch_size, low=1, integer=True, example=512)
        return eps, m, mech, delta, neighbors, threshold, batch

    def fit(self, recommender, members: Interactions, seed: int = 0) -> "_FittedKNN":
        eps, m, mech, delta, neighbors, threshold, batch = self._validate()
        if getattr(recommender, "model", None) != "ItemKNN":
            raise MiarsError(
                f"dp-itemknn trains item-based kNN only ({', '.join(self.recommenders)}), not "
                f"{type(recommender).__name__}; for lfm / ncf use dp-sgd"
            )
        start = time.perf_counter()
        neighbors = int(neighbors if neighbors is not None else getattr(recommender, "k", 100))
        shrink = float(getattr(recommender, "shrink", 0.0) or 0.0)
        n_users, n_items = members.matrix.shape
        neighbors = min(neighbors, max(n_items - 1, 1))
        x = bound_per_user(members.matrix, m, seed)
        l1 = m * (m + 1) / 2
        if mech == "laplace":
            delta, scale = 0.0, l1 / eps
        else:
            delta = _params.default_delta(n_users) if delta is None else delta
            scale = gaussian_sigma(eps, delta, math.sqrt(l1))
        std = scale * math.sqrt(2.0) if mech == "laplace" else scale
        if threshold is None:  # about one pure-noise pair above the threshold among all n_items^2 / 2
            pairs = max(n_items * (n_items + 1) / 2, 2.0)
            threshold = math.log(pairs) / math.sqrt(2.0) if mech == "laplace" else math.sqrt(2.0 * math.log(pairs))
        w, noisy_counts = _noisy_cosine_knn(x, scale, mech, neighbors, shrink, seed, floor=threshold * std)
        self.privacy_ = {
            "epsilon": eps, "delta": delta, "level": "user",
            "unit": f"one member with all her interactions (at most {m} counted)",
            "delta_rule": ("pure epsilon-DP" if mech == "laplace" else
                           "given" if self.delta is not None else "1 / (n ln n), n = members"),
            "covers": list(COVERS), "outside": list(OUTSIDE), "public": list(PUBLIC),
            "mechanism": f"{mech} noise on item co-occurrence counts (McSherry & Mironov, KDD 2009)",
            "max_per_user": m, "neighbors": neighbors, "noise_scale": scale, "noise_std": std,
            "threshold": threshold,
            "sensitivity": l1 if mech == "laplace" else math.sqrt(l1), "params": self.get_params(),
        }
        fitted = _FittedKNN(w, sp.csr_matrix(members.matrix), batch, popularity=noisy_counts)
        fitted.fit_info_ = {"defense": "dp-itemknn", "fit_seconds": round(time.perf_counter() - start, 3),
                            "kept_interactions": int(x.nnz), "interactions": int(members.matrix.nnz), **self.privacy_}
        return fitted

    def set_state(self, recommender, arrays, record) -> "_FittedKNN":
        """The model :meth:`fit` built, back from what its ``get_state`` saved (no noise is drawn again)."""
        return _FittedKNN.from_state(arrays, record)


def _noise_block(seed: int, i: int, j: int, shape: tuple[int, int], mechanism: str, scale: float) -> np.ndarray:
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x6B6E6E, i, j])
    if mechanism == "laplace":
        return rng.laplace(0.0, scale, size=shape).astype(np.float32)
    return (rng.standard_normal(size=shape, dtype=np.float32) * np.float32(scale))


def _noisy_cosine_knn(x: sp.csr_matrix, scale: float, mechanism: str, neighbors: int, shrink: float,
                      seed: int, floor: float = 0.0) -> sp.csr_matrix:
    """Sparse (items x items) top-``neighbors`` cosine similarity of the noised co-occurrence of ``x``.

    Noise is symmetric and fixed by the seed alone: the item range is cut into tiles of
    :data:`NOISE_TILE` items, tile pair (a, b), a <= b, has its own generator, entry (i, j) with
    i <= j gets one draw and (j, i) reuses it. Rows are processed in blocks of whole tiles, so
    only one block row of dense counts exists at a time and the block size changes nothing.
    Post-processing: noisy pair counts below ``floor`` become 0, noisy item counts are raised
    to ``max(floor, 1)``.
    """
    n_items = x.shape[1]
    t = NOISE_TILE
    n_tiles = -(-n_items // t)
    b = max(1, MAX_BLOCK_ELEMENTS // max(n_items, 1) // t) * t
    xc = sp.csc_matrix(x)
    xt = sp.csr_matrix(x.T)

    def tile(a: int, c: int) -> np.ndarray:
        shape = (min(t, n_items - a * t), min(t, n_items - c * t))
        if a < c:
            return _noise_block(seed, a, c, shape, mechanism, scale)
        if a > c:
            return tile(c, a).T
        z = _noise_block(seed, a, a, shape, mechanism, scale)
        return np.triu(z) + np.triu(z, 1).T

    def noise_rows(s: int, e: int) -> np.ndarray:
        return np.concatenate([np.concatenate([tile(a, c) for c in range(n_tiles)], axis=1)
                               for a in range(s // t, -(-e // t))], axis=0)

    counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)
    noisy_counts = counts + np.concatenate([np.diag(tile(a, a)) for a in range(n_tiles)])
    norm = np.sqrt(np.maximum(noisy_counts, max(floor, 1.0)))
    rows, cols, vals = [], [], []
    for s in range(0, n_items, b):
        e = min(s + b, n_items)
        block = np.asarray((xt[s:e] @ xc).todense(), dtype=np.float32)  # (block items, all items) co-occurrence
        block += noise_rows(s, e)
        block[block < floor] = 0.0
        np.maximum(block, 0.0, out=block)
        block /= norm[s:e, None] * norm[None, :] + np.float32(shrink + 1e-6)
        block[np.arange(e - s), np.arange(s, e)] = 0.0  # an item is not its own neighbour
        top = np.argpartition(-block, neighbors - 1, axis=1)[:, :neighbors]
        v = np.take_along_axis(block, top, axis=1)
        target = np.repeat(np.arange(s, e), neighbors)
        keep = v.ravel() > 0
        rows.append(top.ravel()[keep])  # W[i, j] = sim(i, j) for the neighbours i of item j (RecBole's layout:
        cols.append(target[keep])  # a user's score for j sums over her items among j's neighbours)
        vals.append(v.ravel()[keep])
    w = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items))
    return w, noisy_counts


class _FittedKNN:
    """A fitted kNN: ``recommend(k)`` scores members' histories against the similarity ``w_``.

    Ties (above all the many items with score 0 when noise erased most similarities) are broken
    by the released noisy item counts ``popularity``: a term below 1e-6, post-processing only.
    """

    def __init__(self, w: sp.csr_matrix, train: sp.csr_matrix, score_batch_size: int = 512, popularity=None):
        self.w_ = w
        self.train_ = train
        self.score_batch_size = score_batch_size
        pop = np.zeros(w.shape[0]) if popularity is None else np.asarray(popularity, dtype=np.float64)
        span = pop.max() - pop.min() if len(pop) else 0.0
        self.prior_ = (1e-6 * (pop - pop.min()) / span if span > 0 else np.zeros_like(pop)).astype(np.float32)

    def get_state(self):
        """The private similarity, tie-break and training rows as arrays (the recommender state contract)."""
        return ({**csr_arrays("w", self.w_), **csr_arrays("train", self.train_), "prior": self.prior_},
                {"n_items": int(self.w_.shape[0]), "train_shape": list(self.train_.shape),
                 "score_batch_size": int(self.score_batch_size), "fit_info": self.fit_info_})

    @classmethod
    def from_state(cls, arrays, record) -> "_FittedKNN":
        n = int(record["n_items"])
        out = cls(csr_from_arrays(arrays, "w", (n, n)), csr_from_arrays(arrays, "train", tuple(record["train_shape"])),
                  int(record["score_batch_size"]))
        prior = np.asarray(arrays["prior"])
        if prior.shape != (n,):
            raise ValueError(f"the stored tie-break has shape {prior.shape}, expected ({n},)")
        out.prior_ = prior
        out.fit_info_ = dict(record["fit_info"])
        return out

    def recommend(self, k: int) -> np.ndarray:
        def rows(index: np.ndarray) -> np.ndarray:
            return np.asarray((self.train_[index] @ self.w_).todense(), dtype=np.float32) + self.prior_[None, :]

        return top_k_excluding(rows, self.train_, k, batch_size=self.score_batch_size)

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        """Fold-in: accounts it was not trained on are scored from their histories against the private similarity."""
        return self.new_accounts().recommend_for(histories, k, seed=seed)

    def new_accounts(self) -> "_KNNFoldIn":
        """What serves accounts it was not trained on: the private similarity and tie-break only (no training rows)."""
        return _KNNFoldIn(self.w_, self.prior_, self.score_batch_size)


class _KNNFoldIn:
    """New accounts scored from their histories against a (private) item-item similarity."""

    __slots__ = ("w", "prior", "score_batch_size")

    def __init__(self, w: sp.csr_matrix, prior: np.ndarray, score_batch_size: int):
        self.w, self.prior, self.score_batch_size = w, prior, score_batch_size

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        h = sp.csr_matrix(histories, dtype=np.float32)

        def rows(index: np.ndarray) -> np.ndarray:
            return np.asarray((h[index] @ self.w).todense(), dtype=np.float32) + self.prior[None, :]

        return top_k_excluding(rows, h, k, batch_size=self.score_batch_size)
