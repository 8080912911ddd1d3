"""Data types that flow between stages: interactions, parts of a split, service context."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True, eq=False)
class Interactions:
    """A binary user x item matrix (CSR, float32) with the original user and item ids.

    Row ``u`` belongs to user ``user_ids[u]``, column ``i`` to item ``item_ids[i]``.

    ``order`` (optional): one finite float64 per stored entry of ``matrix``, aligned with
    ``matrix.indices`` (canonical CSR: sorted column indices, no duplicates), holding when the
    interaction happened (a timestamp or an explicit position). Only the order *within a user*
    matters: her sequence is her items sorted by ``order``, ties broken by item column
    (:func:`sequence_positions`). None: the data carries no order (sequential recommenders refuse it).
    """

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    order: np.ndarray | None = None

    def __post_init__(self) -> None:
        n_users, n_items = self.matrix.shape
        if len(self.user_ids) != n_users or len(self.item_ids) != n_items:
            raise ValueError(
                f"ids do not match the matrix: {len(self.user_ids)} user ids, {len(self.item_ids)} item ids "
                f"for a {n_users} x {n_items} matrix"
            )
        if self.order is not None:
            order = np.asarray(self.order)
            if order.shape != (self.matrix.nnz,):
                raise ValueError(f"order has shape {order.shape}; it needs one value per interaction ({self.matrix.nnz})")
            if order.dtype.kind not in "iuf" or not np.isfinite(order).all():
                raise ValueError("order must hold finite numbers (a timestamp or position per interaction)")
            if not self.matrix.has_canonical_format:
                raise ValueError("order is aligned with a canonical CSR matrix (sorted indices, no duplicates)")

    @classmethod
    def from_pairs(cls, users, items, order=None) -> "Interactions":
        """Build from parallel arrays of original user and item ids; repeated pairs count once.

        ``order`` (optional, parallel to ``users``): each interaction's time or position; a
        repeated pair keeps its earliest value.
        """
        users = np.asarray(users)
        items = np.asarray(items)
        user_ids, u = np.unique(users, return_inverse=True)
        item_ids, i = np.unique(items, return_inverse=True)
        shape = (len(user_ids), len(item_ids))
        if order is None:
            return cls(binary_csr(u, i, shape), user_ids, item_ids)
        matrix, kept = ordered_csr(u, i, np.asarray(order, dtype=np.float64), shape)
        return cls(matrix, user_ids, item_ids, kept)

    @property
    def has_order(self) -> bool:
        return self.order is not None

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    @property
    def n_interactions(self) -> int:
        return int(self.matrix.nnz)

    def user_counts(self) -> np.ndarray:
        return np.diff(self.matrix.indptr)

    def item_popularity(self) -> np.ndarray:
        """Number of users who interacted with each item."""
        return np.bincount(self.matrix.indices, minlength=self.n_items)

    def rows(self, index: np.ndarray) -> "Interactions":
        """The sub-matrix of the given user rows, over the same items (their order too)."""
        index = np.asarray(index, dtype=np.int64)
        if self.order is None:
            return Interactions(self.matrix[index], self.user_ids[index], self.item_ids)
        m = canonical(self.matrix)
        picked = _row_entries(m.indptr, index)
        counts = np.diff(m.indptr)[index]
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(m.indptr.dtype)
        sub = sp.csr_matrix((m.data[picked], m.indices[picked], indptr), shape=(len(index), m.shape[1]))
        return Interactions(sub, self.user_ids[index], self.item_ids, np.asarray(self.order)[picked])

    def ordered_matrix(self) -> sp.csr_matrix:
        """The matrix with each entry's 1-based position in its user's sequence as its value (needs order).

        What a sequential recommender is handed as histories: every value > 0, so ``> 0`` still
        tests "the user knows the item"; :func:`sequences` reads the items back in order.
        """
        if self.order is None:
            raise ValueError("these interactions carry no order")
        m = canonical(self.matrix)
        return sp.csr_matrix((sequence_positions(m, self.order) + 1.0, m.indices.copy(), m.indptr.copy()), shape=m.shape)


def random_row_ranks(matrix: sp.csr_matrix, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """For each stored entry of a CSR matrix: its row and a seeded random rank within that row.

    Ranks 0..n-1 in every row of n entries, uniformly shuffled (one random key per entry, sorted
    within rows): keeping the entries with ``rank < m`` samples m of them without replacement.
    """
    counts = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(len(counts)), counts)
    keys = np.random.default_rng(seed).random(len(rows))
    order = np.lexsort((keys, rows))  # rows ascending, random order inside each row
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(len(rows)) - matrix.indptr[rows[order]]
    return rows, rank


def canonical(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """``matrix`` as a CSR with sorted column indices and no duplicates (the layout ``order`` is aligned with)."""
    m = matrix if sp.isspmatrix_csr(matrix) else sp.csr_matrix(matrix)
    if not m.has_canonical_format:
        m = m.copy()
        m.sum_duplicates()
    return m


def _row_entries(indptr: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Positions in a CSR's data of every entry of the rows ``index``, row after row."""
    starts, counts = indptr[index], np.diff(indptr)[index]
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return (np.arange(total) + offsets).astype(np.int64)


def ordered_csr(rows: np.ndarray, cols: np.ndarray, order: np.ndarray, shape: tuple[int, int]) -> tuple[sp.csr_matrix, np.ndarray]:
    """A binary CSR of the (row, col) pairs and each entry's ``order`` aligned with it (a repeated pair keeps its minimum)."""
    rows, cols, order = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), np.asarray(order, dtype=np.float64)
    key = rows * shape[1] + cols
    sort = np.lexsort((order, key))  # by (row, col), earliest first
    key, order = key[sort], order[sort]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, order = key[first], order[first]
    r, c = key // shape[1], key % shape[1]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=shape[0]))])
    m = sp.csr_matrix((np.ones(len(key), dtype=np.float32), c.astype(np.int32), indptr.astype(np.int32)), shape=shape)
    return m, order


def sequence_positions(matrix: sp.csr_matrix, order: np.ndarray | None = None) -> np.ndarray:
    """For each stored entry of a canonical CSR: its 0-based position in its row's sequence.

    A row's sequence is its entries sorted by ``order`` (default: the matrix's values), ties
    broken by column. A 0/1 matrix without ``order`` thus gives column order.
    """
    m = matrix
    values = np.asarray(m.data if order is None else order, dtype=np.float64)
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(len(counts)), counts)
    sort = np.lexsort((m.indices, values, rows))
    pos = np.empty(len(rows), dtype=np.int64)
    pos[sort] = np.arange(len(rows)) - m.indptr[rows[sort]]
    return pos


def sequences(matrix: sp.csr_matrix) -> list[np.ndarray]:
    """Each row's item columns in sequence order: ascending values (positions or times), ties by column."""
    m = canonical(sp.csr_matrix(matrix))
    pos = sequence_positions(m)
    out = []
    for r in range(m.shape[0]):
        a, b = m.indptr[r], m.indptr[r + 1]
        seq = np.empty(b - a, dtype=np.int64)
        seq[pos[a:b]] = m.indices[a:b]
        out.append(seq)
    return out


def binary_csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A CSR matrix with 1.0 at every (row, col) pair, duplicates collapsed."""
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


@dataclass(frozen=True, eq=False)
class Part:
    """A shadow or target part: its users' interactions (global item index) and membership."""

    name: str
    interactions: Interactions
    is_member: np.ndarray  # bool, one per row

    @property
    def members(self) -> Interactions:
        return self.interactions.rows(np.flatnonzero(self.is_member))

    @property
    def n_members(self) -> int:
        return int(self.is_member.sum())

    def summary(self) -> dict:
        m = self.is_member
        counts = self.interactions.user_counts()
        return {
            "users": int(len(m)),
            "members": int(m.sum()),
            "non_members": int((~m).sum()),
            "interactions": self.interactions.n_interactions,
            "member_interactions": int(counts[m].sum()),
            "non_member_interactions": int(counts[~m].sum()),
        }


@dataclass(frozen=True, eq=False)
class Split:
    """The paper's three disjoint parts, sharing one global item index."""

    shadow: Part
    target: Part
    vectorization: Interactions
    item_ids: np.ndarray

    def summary(self) -> dict:
        return {
            "shadow": self.shadow.summary(),
            "target": self.target.summary(),
            "vectorization": {
                "users": int((self.vectorization.user_counts() > 0).sum()),
                "interactions": self.vectorization.n_interactions,
            },
            "items": int(len(self.item_ids)),
        }


@dataclass(frozen=True, eq=False)
class ServiceContext:
    """What a defense sees when it rewrites the lists a part's users are served.

    ``interactions`` are the part's users (rows) over global items; ``popular`` lists item
    columns from most to least popular among members (the service's training data).
    """

    interactions: Interactions
    is_member: np.ndarray
    popular: np.ndarray
    k: int
