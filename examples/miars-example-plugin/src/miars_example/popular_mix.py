"""The popular-mix defense: blur personalized lists with popular items."""

from __future__ import annotations

import numpy as np

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import Interval
from miars_core.contracts.types import ServiceContext


class PopularMix(Component):
    """Replace the tail of members' lists with popular unseen items (illustrative, not from a paper).

    A simple defense written for this example plugin; it is not taken from the literature
    and comes with no privacy guarantee. It targets the membership inference attack of
    Zhang et al., "Membership Inference Attacks Against Recommender Systems" (CCS 2021),
    which tells members (served personalized lists) from non-members (served popular
    items) by how their lists relate to their interactions. Every member keeps the first
    ``k - round(rate * k)`` items of her personalized list; the remaining slots get the most
    popular items (``context.popular``) she neither knows nor already has in her list.
    Non-members' lists are left as they are. A member for whom too few such popular items
    exist keeps her list unchanged. Deterministic: ``seed`` is unused.
    """

    #: Checked by miars before the defense is built: a bad value is a one-line error.
    param_constraints = {"rate": Interval(float, 0, 1), "chunk_size": Interval(int, 1)}
    acts_on = "lists"
    sweep = {"rate": [0.1, 0.2, 0.5]}

    def __init__(self, rate: float = 0.2, chunk_size: int = 1024):
        self.rate = rate
        self.chunk_size = chunk_size

    def apply(self, recommendations: np.ndarray, context: ServiceContext, seed: int = 0) -> np.ndarray:
        if not 0.0 <= float(self.rate) <= 1.0:
            raise MiarsError(f"popular-mix: rate must be between 0 and 1, got {self.rate}")
        recs = np.asarray(recommendations)
        if recs.ndim != 2:
            raise ValueError(f"recommendations must be a 2-d array (users x k), got shape {recs.shape}")
        out = recs.astype(np.int64, copy=True)
        k = out.shape[1]
        n_tail = int(np.floor(float(self.rate) * k + 0.5))
        members = np.flatnonzero(np.asarray(context.is_member, dtype=bool))
        popular = np.asarray(context.popular, dtype=np.int64)
        if n_tail == 0 or len(members) == 0 or len(popular) == 0:
            return out
        keep = k - n_tail
        matrix = context.interactions.matrix
        for start in range(0, len(members), int(self.chunk_size)):
            rows = members[start : start + int(self.chunk_size)]
            excluded = matrix[rows].toarray() > 0  # items the member knows ...
            excluded[np.arange(len(rows))[:, None], out[rows, :keep]] = True  # ... or keeps
            ok = ~excluded[:, popular]  # popular candidates, most popular first
            rank = np.cumsum(ok, axis=1)
            enough = rank[:, -1] >= n_tail
            r, c = np.nonzero(ok & (rank <= n_tail) & enough[:, None])
            out[rows[r], keep + rank[r, c] - 1] = popular[c]
        return out
