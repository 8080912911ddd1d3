"""Data types that flow between stages: interactions, parts of a split, service context."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True, eq=False)
class Interactions:
    """A binary user x item matrix (CSR, float32) with the original user and item ids.

    Row ``u`` belongs to user ``user_ids[u]``, column ``i`` to item ``item_ids[i]``.
    """

    matrix: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray

    def __post_init__(self) -> None:
        n_users, n_items = self.matrix.shape
        if len(self.user_ids) != n_users or len(self.item_ids) != n_items:
            raise ValueError(
                f"ids do not match the matrix: {len(self.user_ids)} user ids, {len(self.item_ids)} item ids "
                f"for a {n_users} x {n_items} matrix"
            )

    @classmethod
    def from_pairs(cls, users, items) -> "Interactions":
        """Build from parallel arrays of original user and item ids; repeated pairs count once."""
        users = np.asarray(users)
        items = np.asarray(items)
        user_ids, u = np.unique(users, return_inverse=True)
        item_ids, i = np.unique(items, return_inverse=True)
        return cls(binary_csr(u, i, (len(user_ids), len(item_ids))), user_ids, item_ids)

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
        """The sub-matrix of the given user rows, over the same items."""
        index = np.asarray(index, dtype=np.int64)
        return Interactions(self.matrix[index], self.user_ids[index], self.item_ids)


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
