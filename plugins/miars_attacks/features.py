"""Item vectors from the vectorization part and the paper's center-difference user features."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import Interval
from miars_core.contracts.types import Interactions


def item_vectors(matrix: sp.csr_matrix, dim: int, seed: int = 0) -> np.ndarray:
    """Item factors of a truncated SVD of the binary user x item matrix: ``V * sqrt(S)``, (items x dim).

    Items nobody interacted with get the zero vector. Seeded randomized SVD in float32, so
    reproducible. BLAS runs on one thread here: on a busy machine OpenBLAS's spinning threads made
    this stage 10-30x slower (benchmarks/README.md), and one thread is at the floor of its products.
    """
    from sklearn.utils.extmath import randomized_svd
    from threadpoolctl import threadpool_limits

    limit = min(matrix.shape) - 1
    if dim < 1 or dim > limit:
        raise MiarsError(f"item vector dim {dim} is impossible for a {matrix.shape[0]} x {matrix.shape[1]} "
                         f"vectorization part; use a dim between 1 and {limit}")
    with threadpool_limits(limits=1, user_api="blas"):
        _, s, vt = randomized_svd(matrix.astype(np.float32), n_components=dim, n_iter=7, random_state=seed)
    vectors = (vt.T * np.sqrt(s)).astype(np.float32)
    # Fix each component's sign (largest |entry| positive) so results do not depend on the solver's choice.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(dim)])
    signs[signs == 0] = 1
    return vectors * signs


def rank_weights(k: int) -> np.ndarray:
    """Weight of rank j (0-based) in a k-long list: (k - j) / (k (k + 1) / 2); they sum to 1."""
    j = np.arange(k, dtype=np.float64)
    return ((k - j) / (k * (k + 1) / 2)).astype(np.float32)


class CenterDiff(Component):
    """Mean vector of a user's items minus the rank-weighted mean of their recommendations (Zhang et al., CCS'21).

    Item vectors come from a rank-``dim`` SVD of the vectorization part; both means are sparse
    matrix products, so all users are featurized at once.
    """

    param_constraints = {"dim": Interval(int, 1)}

    def __init__(self, dim: int = 100):
        self.dim = dim

    def fit(self, vectorization: Interactions, seed: int = 0) -> "CenterDiff":
        if vectorization.n_interactions == 0:
            raise MiarsError("the vectorization part is empty; use a larger dataset")
        self.item_vectors_ = item_vectors(vectorization.matrix, int(self.dim), seed)
        return self

    def transform(self, interactions: Interactions, recommendations: np.ndarray) -> np.ndarray:
        vectors = self.item_vectors_
        n_users, n_items = interactions.matrix.shape
        recs = np.asarray(recommendations, dtype=np.int64)
        if recs.ndim != 2 or recs.shape[0] != n_users:
            raise ValueError(f"recommendations have shape {recs.shape}, expected ({n_users}, k)")
        if n_items != vectors.shape[0]:
            raise ValueError(f"interactions have {n_items} items, item vectors {vectors.shape[0]}")
        counts = np.maximum(interactions.user_counts(), 1).astype(np.float32)
        history = (interactions.matrix @ vectors) / counts[:, None]
        k = recs.shape[1]
        weights = sp.csr_matrix(
            (np.tile(rank_weights(k), n_users), recs.ravel(), np.arange(0, n_users * k + 1, k)),
            shape=(n_users, n_items),
        )  # a repeated item would add its weights, as in the authors' sum
        served = weights @ vectors
        return np.asarray(history - served, dtype=np.float32)
