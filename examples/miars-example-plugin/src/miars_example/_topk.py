"""Row-wise top-k selection with a deterministic tie-break (vectorized numpy)."""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int, rank: np.ndarray | None = None) -> np.ndarray:
    """Column indices of the ``k`` largest scores of every row, best first, as int64.

    Equal scores are ordered by ``rank`` (lower first; default: lower column index first),
    so the result does not depend on how ``np.argpartition`` happens to order ties.
    ``scores`` may hold ``-inf`` (never chosen unless a row has fewer than ``k`` finite values).
    """
    scores = np.asarray(scores)
    n_rows, n_cols = scores.shape
    if not 1 <= k <= n_cols:
        raise ValueError(f"k must be between 1 and {n_cols}, got {k}")
    # Reorder the columns by tie-break rank: among equal scores, the lower position wins.
    perm = np.arange(n_cols) if rank is None else np.argsort(rank, kind="stable")
    s = scores[:, perm]
    rows = np.arange(n_rows)
    # The k-th largest value of each row (argpartition: linear time, ties in no fixed order).
    kth = np.argpartition(-s, k - 1, axis=1)[:, k - 1]
    threshold = s[rows, kth][:, None]
    above = s > threshold
    tied = s == threshold
    need = k - above.sum(axis=1, keepdims=True)
    take = above | (tied & (np.cumsum(tied, axis=1) <= need))
    # Exactly k columns per row are taken; nonzero lists them row by row, positions ascending.
    r, pos = np.nonzero(take)
    pos = pos.reshape(n_rows, k)
    values = s[r, pos.ravel()].reshape(n_rows, k)
    order = np.argsort(-values, axis=1, kind="stable")  # stable: ties keep tie-break order
    return perm[np.take_along_axis(pos, order, axis=1)].astype(np.int64)
