"""Defenses that rewrite the served lists: ``list-noise`` and ``rank-shuffle``."""

from __future__ import annotations

import numpy as np

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import Interval, Options, OrNone  # noqa: F401 - param_constraints
from miars_core.contracts.types import ServiceContext

from . import _params

#: Users processed at once (bounds the dense users x candidates blocks).
CHUNK = 1024


class ListNoise(Component):
    """Replace each served item with probability p by a random popular unknown item, for every user (randomized response, Warner 1965).

    The randomized-response idea (S. L. Warner, "Randomized response: a survey technique for
    eliminating evasive answer bias", JASA 1965) applied to the served lists, against the attack
    of Zhang et al. (CCS 2021): every position of every served list — members' and
    non-members' alike, so noise alone does not tell the groups apart — is replaced
    independently with probability ``p`` by an item drawn uniformly, without replacement, from
    the ``pool`` most popular items (``context.popular``) that the user does not know and
    that are not in her list. Kept items keep their rank. ``pool`` defaults to ``10 * k``.
    ``p = 0`` serves the lists unchanged; ``p = 1`` replaces every position. No formal
    privacy guarantee (the kept items are still the model's).
    """

    acts_on = "lists"
    sweep = {"p": [0.1, 0.3, 0.5]}

    param_constraints = {"p": Interval(float, 0, 1), "pool": OrNone(Interval(int, 1))}

    def __init__(self, p: float = 0.3, pool: int | None = None):
        self.p = p
        self.pool = pool

    def apply(self, recommendations: np.ndarray, context: ServiceContext, seed: int = 0) -> np.ndarray:
        p = _params.number("list-noise", "p", self.p, low=0, high=1, example=0.3)
        recs = np.array(recommendations, dtype=np.int64, copy=True)
        n_users, k = recs.shape
        pool = _params.number("list-noise", "pool", self.pool, low=1, integer=True, example=10 * k, allow_none=True)
        pool = 10 * k if pool is None else pool
        rng = np.random.default_rng(seed)
        replace = rng.random(recs.shape) < p
        if not replace.any():
            return recs
        popular = np.asarray(context.popular, dtype=np.int64)
        matrix = context.interactions.matrix
        for start in range(0, n_users, CHUNK):
            rows = np.arange(start, min(start + CHUNK, n_users))
            need = replace[rows].sum(axis=1)
            if not need.any():
                continue
            known = matrix[rows]
            most = int(np.diff(known.indptr).max()) if len(rows) else 0
            candidates = popular[: pool + most + k]  # enough to find `pool` eligible items per user
            col = np.full(matrix.shape[1], -1, dtype=np.int64)
            col[candidates] = np.arange(len(candidates))
            excluded = np.asarray(known[:, candidates].todense(), dtype=bool)
            r, c = np.nonzero(col[recs[rows]] >= 0)
            excluded[r, col[recs[rows]][r, c]] = True  # items already in the list
            eligible = ~excluded & (np.cumsum(~excluded, axis=1) <= pool)
            short = np.flatnonzero(eligible.sum(axis=1) < need)
            if len(short):
                raise MiarsError(
                    f"list-noise: user row {rows[short[0]]} has only {int(eligible[short[0]].sum())} unknown popular "
                    f"items outside her list to draw {int(need[short[0]])} from; raise --defense-param pool"
                )
            keys = rng.random(eligible.shape)
            keys[~eligible] = np.inf
            order = np.argsort(keys, axis=1, kind="stable")[:, : max(int(need.max()), 1)]
            rr, cc = np.nonzero(replace[rows])
            slot = np.cumsum(replace[rows], axis=1)[rr, cc] - 1  # j-th replaced position of the row takes draw j
            recs[rows[rr], cc] = candidates[order[rr, slot]]
        return recs


class RankShuffle(Component):
    """Serve the same top-k items shuffled within windows of ranks, for every user (removes the rank weights of Zhang et al., CCS 2021).

    The attack of Zhang et al., "Membership Inference Attacks Against Recommender Systems"
    (CCS 2021) weights each recommended item by its rank; this output-perturbation defense
    (not itself from a paper: the issue-6 benchmark's rank-removal control) takes that signal away
    while serving exactly the same items: the list is cut into consecutive windows of
    ``window`` ranks (1-``window``, ``window``+1-2``window``, ...) and each window is shuffled
    independently, for members and non-members alike. ``window = 1`` changes nothing;
    ``window >= k`` shuffles the whole list.
    """

    acts_on = "lists"
    sweep = {"window": [5, 20, 100]}

    param_constraints = {"window": Interval(int, 1)}

    def __init__(self, window: int = 100):
        self.window = window

    def apply(self, recommendations: np.ndarray, context: ServiceContext, seed: int = 0) -> np.ndarray:
        window = _params.number("rank-shuffle", "window", self.window, low=1, integer=True, example=20)
        recs = np.array(recommendations, dtype=np.int64, copy=True)
        n_users, k = recs.shape
        keys = np.random.default_rng(seed).random(recs.shape) + (np.arange(k) // window)[None, :]
        return np.take_along_axis(recs, np.argsort(keys, axis=1, kind="stable"), axis=1)
