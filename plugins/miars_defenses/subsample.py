"""A defense on the training data: ``subsample``."""

from __future__ import annotations

import numpy as np

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import Interval, Options, OrNone  # noqa: F401 - param_constraints
from miars_core.contracts.types import Interactions, binary_csr, random_row_ranks

from . import _params


def keep_fraction(matrix, fraction: float, seed: int):
    """Boolean mask over ``matrix``'s stored entries (CSR order): a seeded ``fraction`` of each row, >= 1 per non-empty row.

    Row ``u`` with ``n`` entries keeps ``max(1, round(fraction * n))`` of them, chosen uniformly
    without replacement. Vectorised: one random key per entry, ranked within its row.
    """
    counts = np.diff(matrix.indptr)
    rows, rank = random_row_ranks(matrix, seed)
    keep_n = np.maximum(1, np.rint(fraction * counts).astype(np.int64))
    return rank < keep_n[rows]


class Subsample(Component):
    """Train the recommender on a random fraction f of each member's interactions (data minimization; Biega et al., SIGIR 2020).

    Data minimization for recommender systems (A. J. Biega, P. Potash, H. Daume III, F. Diaz,
    M. Finck, "Operationalizing the Legal Principle of Data Minimization for Personalization",
    SIGIR 2020): the service keeps only part of what it knows about each member. Each member
    keeps ``max(1, round(fraction * n))`` of her ``n`` interactions, drawn uniformly with the
    seed; users and items are unchanged. No formal privacy guarantee. The lists served to her
    still exclude every item she knows (the serving side masks the full history).
    """

    acts_on = "data"
    sweep = {"fraction": [0.25, 0.5, 0.75]}

    param_constraints = {"fraction": Interval(float, 0, 1, closed="right")}

    def __init__(self, fraction: float = 0.5):
        self.fraction = fraction

    def apply_data(self, members: Interactions, seed: int = 0) -> Interactions:
        fraction = _params.number("subsample", "fraction", self.fraction, low=0, high=1, low_open=True, example=0.5)
        m = members.matrix.tocsr()
        if m.shape[0] and (np.diff(m.indptr) == 0).any():
            raise MiarsError(f"subsample: member row {int(np.flatnonzero(np.diff(m.indptr) == 0)[0])} has no interaction to keep")
        m = m.copy()
        m.sum_duplicates()
        keep = keep_fraction(m, fraction, seed)
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        return Interactions(binary_csr(rows[keep], m.indices[keep], m.shape), members.user_ids, members.item_ids)
