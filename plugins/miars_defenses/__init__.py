"""Built-in defenses, one or more at each point of action of the service (see miars_core.contracts.defenses).

lists: ``popularity-randomization`` (Zhang et al., CCS 2021), ``list-noise``, ``rank-shuffle``;
data: ``subsample``; training: ``dp-itemknn`` (McSherry & Mironov, KDD 2009), ``dp-sgd`` (opacus).
"""

from __future__ import annotations

import numpy as np

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.params import Interval
from miars_core.contracts.types import ServiceContext

from . import _params

__version__ = "0.1.0"


class PopularityRandomization(Component):
    """Serve non-members k items drawn at random from the top k/ratio popular items (Zhang et al., CCS'21).

    The pool is the ``k / ratio`` most popular items the user does not know (ratio 0.1: top 1,000
    for k = 100, as the authors' data); members keep their personalized lists.
    """

    param_constraints = {"ratio": Interval(float, 0, 1, closed="right")}
    acts_on = "lists"
    sweep = {"ratio": [0.05, 0.1, 0.2, 0.5]}

    def __init__(self, ratio: float = 0.1):
        self.ratio = ratio

    def catalogue_problem(self, n_items: int, k: int) -> str | None:
        """Why this ratio cannot serve top-``k`` lists from a catalogue of ``n_items`` items (None: it may).

        The pool of ``round(k / ratio)`` popular items must fit in the catalogue (minus what a
        user knows, which only the split tells: a pool that fits here can still fail a cell).
        """
        pool = int(round(k / float(self.ratio)))
        if pool <= n_items:
            return None
        return (f"needs a pool of {pool:,} popular items for top-{k} lists, but the catalogue has {n_items:,} items; "
                f"use ratio >= {k / n_items:.3g} or a smaller --top-k")

    def apply(self, recommendations: np.ndarray, context: ServiceContext, seed: int = 0) -> np.ndarray:
        ratio = _params.number("popularity-randomization", "ratio", self.ratio, low=0, high=1, low_open=True, example=0.1)
        recs = np.array(recommendations, dtype=np.int64, copy=True)
        k = recs.shape[1]
        rows = np.flatnonzero(~context.is_member)
        if len(rows) == 0:
            return recs
        pool = int(round(k / ratio))
        known = context.interactions.matrix[rows]
        most_known = int(np.diff(known.indptr).max())
        candidates = context.popular[: pool + most_known]  # enough to find `pool` unknown ones per user
        if pool > len(context.popular) - most_known:
            raise MiarsError(
                f"popularity-randomization needs a pool of {pool} popular items per user but only "
                f"{len(context.popular) - most_known} are available; raise --defense-param ratio or lower --top-k"
            )
        is_known = np.asarray(known[:, candidates].todense(), dtype=bool)
        in_pool = ~is_known & (np.cumsum(~is_known, axis=1) <= pool)
        rng = np.random.default_rng(seed)
        keys = rng.random(in_pool.shape)
        keys[~in_pool] = np.inf
        chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]
        chosen = np.take_along_axis(chosen, np.take_along_axis(keys, chosen, axis=1).argsort(axis=1), axis=1)
        recs[rows] = candidates[chosen]
        return recs


@hookimpl
def register_defenses(register):
    from .dp_itemknn import DPItemKNN
    from .dp_sgd import DPSGD
    from .lists import ListNoise, RankShuffle
    from .subsample import Subsample

    register("popularity-randomization", PopularityRandomization)
    register("list-noise", ListNoise)
    register("rank-shuffle", RankShuffle)
    register("subsample", Subsample)
    register("dp-itemknn", DPItemKNN)
    register("dp-sgd", DPSGD)
