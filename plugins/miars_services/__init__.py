"""Built-in service models: what the recommendation service shows users who are not members.

``popular`` is the CCS'21 paper's service: non-members (and any account the model was not
trained on) get the k most popular items they do not know. ``foldin`` is how deployed services
treat new or logged-out users: the same trained model recommends from the account's own
history, without retraining (item-kNN: history x similarity; matrix factorization: a user
vector fitted with its own loss against the frozen item factors).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from miars_core.components import Component
from miars_core.errors import MiarsError
from miars_core.hookspecs import hookimpl
from miars_core.params import Interval
from miars_core.ranking import top_k_popular
from miars_core.types import Interactions

__version__ = "0.1.0"


class PopularService(Component):
    """Non-members get the k most popular items they do not know (Zhang et al., CCS 2021: the paper's service)."""

    def __init__(self):
        pass

    def serve_others(self, fitted, train: Interactions, histories: sp.csr_matrix, k: int, seed: int = 0) -> np.ndarray:
        return top_k_popular(train.item_popularity(), histories, k)


class FoldInService(Component):
    """Everyone gets the trained model's top-k from their own history, without retraining (fold-in, as for new users).

    The threat model of "personalized lists for everyone": the CCS'21 attack then separates
    members from non-members only by what the model memorized, not by popular vs personalized
    lists (see docs/protocol.md, the known confound). Needs a recommender with
    ``recommend_for(histories, k)``: ``item`` (history x item-item similarity), ``lfm`` (user
    vectors fitted with the BPR loss against the frozen item factors) and ``ncf`` (NeuMF's
    user embeddings fitted with its BCE loss against the frozen item side).
    """

    param_constraints = {"steps": Interval(int, 1), "learning_rate": Interval(float, 0, 10, closed="right")}

    def __init__(self, steps: int = 50, learning_rate: float = 0.005):
        self.steps = steps
        self.learning_rate = learning_rate

    def serve_others(self, fitted, train: Interactions, histories: sp.csr_matrix, k: int, seed: int = 0) -> np.ndarray:
        fold = getattr(fitted, "recommend_for", None)
        if fold is not None and _takes_fit_options(fold):
            return fold(histories, k, seed=seed, steps=int(self.steps), learning_rate=float(self.learning_rate))
        if fold is None:
            raise MiarsError(f"recommender {type(fitted).__name__} cannot serve new users from their history (no "
                             "recommend_for); use --service popular, or a recommender that folds in (item, lfm, ncf)")
        return fold(histories, k, seed=seed)


def _takes_fit_options(method) -> bool:
    """Whether a third-party ``recommend_for`` accepts ``steps`` / ``learning_rate`` (or ``**kwargs``)."""
    import inspect

    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    names = {p.name for p in params}
    return {"steps", "learning_rate"} <= names or any(p.kind is p.VAR_KEYWORD for p in params)


@hookimpl
def register_services(register):
    register("popular", PopularService)
    register("foldin", FoldInService)
