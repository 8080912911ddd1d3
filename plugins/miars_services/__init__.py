"""Built-in service models: what the recommendation service shows users who are not members.

``popular`` is the CCS'21 paper's service: non-members (and any account the model was not
trained on) get the k most popular items they do not know. ``foldin`` is how deployed services
treat new or logged-out users: the same trained model recommends from the account's own
history, without retraining (item-kNN: history x similarity; matrix factorization: a user
vector fitted with its own loss against the frozen item factors).

A service has ``serve_others(fitted, train, histories, k, seed)`` (the lists of accounts the
model was not trained on) and may have ``new_accounts(fitted, train, k, seed)``: a callable
``histories -> lists`` that holds only what serving new accounts needs (the item popularity,
the model's item side), never the members' data. Query access to a service
(:class:`miars_core.science.threat.QueryAccess`) keeps that callable and nothing else of the model.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.params import Interval, Options
from miars_core.contracts.types import Interactions
from miars_core.science.service import PopularServer

__version__ = "0.1.0"


class PopularService(Component):
    """Non-members get the k most popular items they do not know (Zhang et al., CCS 2021: the paper's service)."""

    def __init__(self):
        pass

    def serve_others(self, fitted, train: Interactions, histories: sp.csr_matrix, k: int, seed: int = 0) -> np.ndarray:
        return self.new_accounts(fitted, train, k, seed)(histories)

    def new_accounts(self, fitted, train: Interactions, k: int, seed: int = 0) -> PopularServer:
        """New accounts get the popular top-k: the server holds the item popularity among the members only."""
        return PopularServer(train.item_popularity(), k)


class FoldInService(Component):
    """Everyone gets the trained model's top-k from their own history, without retraining (fold-in, as for new users).

    The threat model of "personalized lists for everyone": the CCS'21 attack then separates
    members from non-members only by what the model memorized, not by popular vs personalized
    lists (see docs/protocol.md, the known confound). Needs a recommender with
    ``recommend_for(histories, k)``: ``item`` (history x item-item similarity), ``lfm`` (user
    vectors fitted with the BPR loss against the frozen item factors) and ``ncf`` (NeuMF's
    user embeddings fitted with its BCE loss against the frozen item side).

    ``members``: how members are served. ``trained`` (the default, what a deployed service
    does): their trained user vectors (lfm, ncf) or their trained rows (item). ``foldin``:
    like a new account, folded in from their own known history, so members and non-members
    go through exactly the same mechanism and only the item side (what the model learned from
    the members) differs; result.json then reports ``members_foldin_overlap``, the share of a
    member's trained top-k that the folded-in list keeps (docs/threats.md, the mechanism gap).
    ``steps`` and ``learning_rate``: the Adam fit of a folded-in user vector (lfm, ncf).
    """

    param_constraints = {"steps": Interval(int, 1), "learning_rate": Interval(float, 0, 10, closed="right"),
                         "members": Options(("trained", "foldin"))}

    def __init__(self, steps: int = 50, learning_rate: float = 0.005, members: str = "trained"):
        self.steps = steps
        self.learning_rate = learning_rate
        self.members = members

    def serve_others(self, fitted, train: Interactions, histories: sp.csr_matrix, k: int, seed: int = 0) -> np.ndarray:
        return self.new_accounts(fitted, train, k, seed)(histories)

    def new_accounts(self, fitted, train: Interactions, k: int, seed: int = 0) -> "FoldInServer":
        """New accounts folded in by the model's item side (``fitted.new_accounts()``; the fitted model itself when a
        third-party recommender has no such method)."""
        side = fitted.new_accounts() if callable(getattr(fitted, "new_accounts", None)) else fitted
        fold = getattr(side, "recommend_for", None)
        if fold is None:
            raise MiarsError(f"recommender {type(fitted).__name__} cannot serve new users from their history (no "
                             "recommend_for); use --service popular, or a recommender that folds in (item, lfm, ncf)")
        options = {"steps": int(self.steps), "learning_rate": float(self.learning_rate)} if _takes_fit_options(fold) else {}
        return FoldInServer(side, k, seed, options)


class FoldInServer:
    """``histories -> top-k``: new accounts folded in by ``side.recommend_for`` (the model's item side)."""

    __slots__ = ("side", "k", "seed", "options")

    def __init__(self, side, k: int, seed: int, options: dict):
        self.side = side
        self.k = int(k)
        self.seed = int(seed)
        self.options = dict(options)

    @property
    def ordered(self) -> bool:
        """A sequential model's side reads histories in order (values = positions): query access and the service
        hand it ordered histories."""
        return bool(getattr(self.side, "sequential", False))

    def __call__(self, histories: sp.csr_matrix) -> np.ndarray:
        return self.side.recommend_for(histories, self.k, seed=self.seed, **self.options)


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
