"""Recommendation utility of served lists: a seeded per-user hold-out and Recall / NDCG / HR at k.

A defense is a trade: the leakage it removes against the recommendation quality it costs. The
quality is measured the usual way for implicit feedback: hold out part of each member's
interactions from training (:func:`holdout`), serve the lists, and count how many held-out
items the lists find (:func:`utility_metrics`). Both are vectorised (no loop over users).

Definitions (binary relevance; ``L_u`` = the first ``k`` items served to user ``u``,
``T_u`` = her held-out items, ``h_u = |L_u ∩ T_u|``; users with ``T_u`` empty are excluded
from every mean, and their number is reported as ``users``):

* ``recall@k`` = mean over users of ``h_u / |T_u|``;
* ``ndcg@k`` = mean of ``DCG_u / IDCG_u`` with ``DCG_u = sum_{j=1..k} [L_u[j] in T_u] / log2(j + 1)``
  and ``IDCG_u = sum_{j=1..min(|T_u|, k)} 1 / log2(j + 1)`` (ranks ``j`` from 1);
* ``hr@k`` (hit rate) = share of users with ``h_u >= 1``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import MiarsError
from .types import Interactions, binary_csr, random_row_ranks

__all__ = ["holdout", "utility_metrics"]


def holdout(members: Interactions, fraction: float = 0.2, seed: int = 0) -> tuple[Interactions, sp.csr_matrix]:
    """Split each member's interactions into training and held-out ones, seeded.

    A member with ``n`` interactions holds out ``min(n - 1, round(fraction * n))`` of them,
    drawn uniformly without replacement, so she keeps at least one training interaction.
    Returns ``(train, heldout)``: ``train`` has the same users, items and ids as ``members``;
    ``heldout`` is the binary CSR matrix (same shape) of the held-out interactions. Disjoint,
    and their sum is ``members.matrix``.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0 or not np.isfinite(fraction):
        raise MiarsError(f"holdout fraction must be in [0, 1), got {fraction}; e.g. 0.2")
    m = sp.csr_matrix(members.matrix, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    counts = np.diff(m.indptr)
    rows, rank = random_row_ranks(m, seed)
    n_out = np.minimum(np.maximum(counts - 1, 0), np.rint(fraction * counts).astype(np.int64))
    out = rank < n_out[rows]
    train = binary_csr(rows[~out], m.indices[~out], m.shape)
    held = binary_csr(rows[out], m.indices[out], m.shape)
    return Interactions(train, members.user_ids, members.item_ids), held


def utility_metrics(lists: np.ndarray, heldout: sp.spmatrix, k: int) -> dict:
    """``recall@k``, ``ndcg@k``, ``hr@k`` of ``lists`` (users x >= k item columns) against ``heldout``.

    Row ``u`` of ``lists`` is scored against row ``u`` of ``heldout``; see the module docstring
    for the exact definitions. ``users`` is the number of users with held-out items (0 gives
    NaN metrics).
    """
    lists = np.asarray(lists)
    heldout = sp.csr_matrix(heldout)
    k = int(k)
    if lists.ndim != 2 or lists.shape[0] != heldout.shape[0]:
        raise ValueError(f"lists of shape {lists.shape} do not match held-out rows {heldout.shape}")
    if not 1 <= k <= lists.shape[1]:
        raise ValueError(f"k must be in [1, {lists.shape[1]}], got {k}")
    top = lists[:, :k].astype(np.int64)
    n_users = top.shape[0]
    n_rel = np.diff(heldout.indptr)
    # Relevance of every (user, position): is the listed item in the user's held-out row?
    # Encode (row, item) pairs as one int64 key and look them up in the sorted held-out keys.
    held_keys = np.repeat(np.arange(n_users, dtype=np.int64), n_rel) * heldout.shape[1] + heldout.indices
    held_keys.sort()
    list_keys = np.arange(n_users, dtype=np.int64)[:, None] * heldout.shape[1] + top
    pos = np.searchsorted(held_keys, list_keys)
    rel = (pos < len(held_keys)) & (held_keys[np.minimum(pos, max(len(held_keys) - 1, 0))] == list_keys) if len(held_keys) else np.zeros(top.shape, bool)
    users = n_rel > 0
    name = f"@{k}"
    if not users.any():
        return {f"recall{name}": float("nan"), f"ndcg{name}": float("nan"), f"hr{name}": float("nan"), "users": 0}
    hits = rel.sum(axis=1)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (rel * discount[None, :]).sum(axis=1)
    idcg = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_rel, k)]
    return {
        f"recall{name}": float(np.mean(hits[users] / n_rel[users])),
        f"ndcg{name}": float(np.mean(dcg[users] / idcg[users])),
        f"hr{name}": float(np.mean(hits[users] > 0)),
        "users": int(users.sum()),
    }
