"""Recommendation utility of served lists: a seeded per-user hold-out and Recall / NDCG / HR at k.

A defense is a trade: the leakage it removes against the recommendation quality it costs. The
quality is measured the usual way for implicit feedback: hold out part of each user's
interactions as her future (:func:`holdout`; every user of both parts, so that members and
non-members look alike to the adversary), serve the lists, and count how many of the members'
held-out items the lists find (:func:`utility_metrics`). :func:`list_signal` is the no-signal
check: do lists find a user's unseen items better than random items would? All vectorised.

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

from ..contracts.errors import MiarsError
from ..contracts.types import Interactions, binary_csr, ordered_csr, random_row_ranks

__all__ = ["holdout", "list_signal", "utility_metrics"]

#: A list carries no signal when it hits its reference items at most this many times as often as chance...
NO_SIGNAL_LIFT = 1.5
#: ...and chance expects at least this many hits (fewer: too little evidence to judge either way).
NO_SIGNAL_MIN_EXPECTED = 20.0


def holdout(interactions: Interactions, fraction: float = 0.2, seed: int = 0) -> tuple[Interactions, sp.csr_matrix]:
    """Split each user's interactions into kept and held-out ones (her future), seeded.

    A user with ``n`` interactions holds out ``min(n - 1, round(fraction * n))`` of them,
    drawn uniformly without replacement, so she keeps at least one. Returns ``(kept, heldout)``:
    ``kept`` has the same users, items and ids as ``interactions``; ``heldout`` is the binary
    CSR matrix (same shape) of the held-out interactions. Disjoint, and their sum is
    ``interactions.matrix``. The engine applies it to every user of the shadow and the target
    part before any stage sees them (:mod:`miars_core.engine.stages`).
    """
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0 or not np.isfinite(fraction):
        raise MiarsError(f"holdout fraction must be in [0, 1), got {fraction}; e.g. 0.2")
    m = sp.csr_matrix(interactions.matrix, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    counts = np.diff(m.indptr)
    rows, rank = random_row_ranks(m, seed)
    n_out = np.minimum(np.maximum(counts - 1, 0), np.rint(fraction * counts).astype(np.int64))
    out = rank < n_out[rows]
    held = binary_csr(rows[out], m.indices[out], m.shape)
    if interactions.order is None:
        train = binary_csr(rows[~out], m.indices[~out], m.shape)
        return Interactions(train, interactions.user_ids, interactions.item_ids), held
    # the kept interactions keep their order (the matrix was canonical: ``order`` is aligned with m's entries)
    train, order = ordered_csr(rows[~out], m.indices[~out], np.asarray(interactions.order)[~out], m.shape)
    return Interactions(train, interactions.user_ids, interactions.item_ids, order), held


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


def list_signal(lists: np.ndarray, known: sp.spmatrix, reference: sp.spmatrix | np.ndarray) -> dict:
    """Do ``lists`` find ``reference`` items more often than random items the users do not know would?

    ``lists`` (users x k item columns) are scored against ``reference``: a (users x items)
    matrix of each user's own items the service never saw (her interactions in another part,
    or her future), or one weight per item shared by every user (e.g. its popularity in data
    the service never saw). ``hits`` = sum over users and listed items of the reference
    weight; ``expected_by_chance`` = the same sum for ``k`` items drawn uniformly from the
    *catalogue* (items some row of ``known`` has, i.e. what the service trained on) minus the
    items the user knows; ``lift`` = hits / chance. ``no_signal`` is True when
    ``lift <= NO_SIGNAL_LIFT`` with at least ``NO_SIGNAL_MIN_EXPECTED`` expected hits.
    Vectorised: sparse products, no loop over users.
    """
    lists = np.asarray(lists, dtype=np.int64)
    known = sp.csr_matrix(known, dtype=np.float64)
    n, k = lists.shape
    catalog = (np.asarray(known.sum(axis=0)).ravel() > 0).astype(np.float64)
    n_unknown = catalog.sum() - np.asarray(known @ catalog).ravel()
    if isinstance(reference, np.ndarray) and reference.ndim == 1:
        weight = reference.astype(np.float64)
        hits = float(weight[lists].sum()) if lists.size else 0.0
        reachable = float(weight @ catalog) - np.asarray(known @ (weight * catalog)).ravel()
    else:
        ref = sp.csr_matrix(reference, dtype=np.float64)
        rows = np.repeat(np.arange(n), k)
        hits = float(np.asarray(ref[rows, lists.ravel()]).sum()) if lists.size else 0.0
        reachable = np.asarray(ref @ catalog).ravel() - np.asarray(ref.multiply(known) @ catalog).ravel()
    chance = float((k * reachable / np.maximum(n_unknown, 1)).sum())
    return {"hits": round(hits, 6), "expected_by_chance": round(chance, 2),
            "lift": round(hits / chance, 3) if chance > 0 else None,
            "no_signal": bool(chance >= NO_SIGNAL_MIN_EXPECTED and hits <= NO_SIGNAL_LIFT * chance)}
