"""The popular-blur defense: obfuscate members' training data with popular items (acts on the data)."""

from __future__ import annotations

import numpy as np

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.types import Interactions, binary_csr


class PopularBlur(Component):
    """Add popular items to each member's training data before the recommender sees it (obfuscation after BlurMe, Weinsberg et al., RecSys 2012).

    In the spirit of BlurMe (U. Weinsberg, S. Bhagat, S. Ioannidis, N. Taft, "BlurMe: Inferring
    and Obfuscating User Gender Based on Ratings", RecSys 2012), which adds ratings to hide a
    private attribute: here the service adds to each member's *training* data
    ``round(rate * n)`` items (``n``: her interactions) drawn at random, with the seed, from the
    ``pool`` most popular items she does not know, so the model learns a blurred, more popular
    version of her. Her own interactions are all kept. A third-party example of a defense that
    acts on the data (``acts_on = "data"``); no formal privacy guarantee.
    """

    acts_on = "data"
    sweep = {"rate": [0.1, 0.25, 0.5]}

    def __init__(self, rate: float = 0.25, pool: int = 200):
        self.rate = rate
        self.pool = pool

    def apply_data(self, members: Interactions, seed: int = 0) -> Interactions:
        rate = float(self.rate) if isinstance(self.rate, (int, float)) and not isinstance(self.rate, bool) else -1.0
        if not 0.0 <= rate <= 10.0:  # NaN fails too
            raise MiarsError(f"popular-blur: rate must be in [0, 10], got {self.rate!r}; e.g. --defense-param rate=0.25")
        if isinstance(self.pool, bool) or not isinstance(self.pool, int) or self.pool < 1:
            raise MiarsError(f"popular-blur: pool must be an integer >= 1, got {self.pool!r}; e.g. --defense-param pool=200")
        m = members.matrix.tocsr()
        counts = np.diff(m.indptr)
        add = np.rint(rate * counts).astype(np.int64)
        candidates = np.argsort(-members.item_popularity(), kind="stable")[: self.pool]
        known = np.asarray(m[:, candidates].todense(), dtype=bool)
        add = np.minimum(add, (~known).sum(axis=1))  # never more than there are unknown candidates
        keys = np.random.default_rng(seed).random(known.shape)
        keys[known] = np.inf
        order = np.argsort(keys, axis=1, kind="stable")
        pick = np.arange(known.shape[1])[None, :] < add[:, None]
        rows = np.repeat(np.arange(m.shape[0]), counts)
        new_rows = np.nonzero(pick)[0]
        new_cols = candidates[order[pick]]
        matrix = binary_csr(np.concatenate([rows, new_rows]), np.concatenate([m.indices, new_cols]), m.shape)
        return Interactions(matrix, members.user_ids, members.item_ids)
