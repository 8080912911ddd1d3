"""Seeded synthetic interactions shaped like MovieLens: power-law item popularity and user activity.

    from miars_core.science.synth import synthetic_interactions
    data = synthetic_interactions(20_000_000, n_users=138_000, n_items=27_000, seed=0)  # ml-20m's shape

Item ``i`` (0 = most popular) is drawn with weight ``(i + offset) ** -item_exponent``; user
activity follows a Pareto law with at least ``min_per_user`` items, scaled so the total is about
``n_interactions`` (capped at ``max_share`` of the catalogue per user). Every user belongs to one of
``n_groups`` taste groups and takes ``own_share`` of their draws from their group's items (items
``g, g + n_groups, ...``, with the same power-law shape), so collaborative filtering has structure
to learn. Repeated draws of a pair count once; the draw is repeated with a larger goal until the
total is within 2% of ``n_interactions`` (or after four draws).
Vectorized: 20M interactions take seconds and about 1 GB.
"""

from __future__ import annotations

import numpy as np

from ..contracts.types import Interactions, binary_csr


def _pareto_counts(rng, n_users: int, target: int, minimum: int, cap: int, alpha: float) -> np.ndarray:
    raw = minimum * (1 + rng.pareto(alpha, n_users))
    counts = np.minimum(raw, cap)
    # Scale the part above the minimum so the total meets the target.
    extra = counts - minimum
    need = target - minimum * n_users
    if need > 0 and extra.sum() > 0:
        counts = minimum + extra * (need / extra.sum())
    return np.clip(np.round(counts), 1, cap).astype(np.int64)


def synthetic_interactions(n_interactions: int, n_users: int, n_items: int, *, seed: int = 0,
                           item_exponent: float = 1.0, offset: float = 10.0, activity_alpha: float = 1.3,
                           min_per_user: int = 20, max_share: float = 0.3, n_groups: int = 20,
                           own_share: float = 0.5) -> Interactions:
    """``n_users`` x ``n_items`` binary interactions, about ``n_interactions`` of them (seeded)."""
    goal = float(n_interactions)
    for _ in range(4):  # repeated pairs collapse: draw again with a larger goal until the total is close
        data = _draw(n_users, n_items, int(goal), seed, item_exponent, offset, activity_alpha, min_per_user,
                     max_share, n_groups, own_share)
        got = data.n_interactions
        if abs(got - n_interactions) <= 0.02 * n_interactions:
            break
        goal *= n_interactions / max(got, 1)
    return data


def _draw(n_users, n_items, goal, seed, item_exponent, offset, activity_alpha, min_per_user, max_share,
          n_groups, own_share) -> Interactions:
    rng = np.random.default_rng(seed)
    cap = max(1, int(max_share * n_items))
    counts = _pareto_counts(rng, n_users, goal, min(min_per_user, cap), cap, activity_alpha)
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    n = len(users)
    # Global draws: inverse CDF of the power law over all items.
    w = (np.arange(n_items) + offset) ** -item_exponent
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    items = np.searchsorted(cdf, rng.random(n), side="right").clip(max=n_items - 1)
    # Own-group draws: rank r inside the group -> item r * n_groups + g.
    group = rng.integers(0, n_groups, n_users)[users]
    per_group = -(-n_items // n_groups)
    gw = (np.arange(per_group) * n_groups + offset) ** -item_exponent
    gcdf = np.cumsum(gw)
    gcdf /= gcdf[-1]
    own = rng.random(n) < own_share
    r = np.searchsorted(gcdf, rng.random(int(own.sum())), side="right")
    own_items = r * n_groups + group[own]
    own_items[own_items >= n_items] = group[own][own_items >= n_items]
    items[own] = own_items
    matrix = binary_csr(users, items, (n_users, n_items))
    return Interactions(matrix, np.arange(n_users), np.arange(n_items))


def sample_users(data: Interactions, n_users: int, max_per_user: int, seed: int = 0) -> Interactions:
    """``n_users`` users drawn at random, each keeping at most ``max_per_user`` random interactions.

    Builds small datasets from a real one (e.g. ml-1m: 2,000 users, <= 50 interactions each).
    """
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(data.n_users, min(n_users, data.n_users), replace=False))
    sub = data.matrix[rows].tocsr()
    counts = np.diff(sub.indptr)
    r = np.repeat(np.arange(len(rows)), counts)
    order = np.lexsort((rng.random(sub.nnz), r))
    rank = np.empty(sub.nnz, dtype=np.int64)
    rank[order] = np.arange(sub.nnz) - sub.indptr[r[order]]
    keep = rank < max_per_user
    m = binary_csr(r[keep], sub.indices[keep], (len(rows), data.n_items))
    used = np.flatnonzero(np.diff(m.tocsc().indptr) > 0)
    return Interactions(m[:, used].tocsr(), data.user_ids[rows], data.item_ids[used])
