"""Built-in service models: what the recommendation service shows users who are not members.

``popular`` is the CCS'21 paper's service: non-members (and any account the model was not
trained on) get the k most popular items they do not know. ``foldin`` is how deployed services
treat new or logged-out users: the same trained model recommends from the account's own
history, without retraining (item-kNN: history x similarity; matrix factorization: a user
vector solved in closed form (ridge) or fitted with its own loss against the frozen item
factors).

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
from miars_core.science.attributes import MIN_GROUP, AttributeColdStart
from miars_core.science.service import PopularServer

__version__ = "0.2.0"

#: The cold-start rules of the built-in services (``--service-param cold_start=...``).
COLD_STARTS = ("popular", "attributes")


class _ColdStart:
    """``cold_start`` and ``min_group``, shared by the built-in services (docs/threats.md, cold start by attributes)."""

    cold_start = "popular"

    @property
    def uses_attributes(self) -> bool:
        """Whether the service reads user attributes (``cold_start=attributes``): the engine then hands
        ``new_accounts`` the members' attribute codes and each account's, and keys the lists by the file."""
        return self.cold_start == "attributes"

    def _cold_start(self, train: Interactions, attributes) -> AttributeColdStart | None:
        """The cold start by attributes fitted on the members (None with ``cold_start=popular``)."""
        if not self.uses_attributes:
            return None
        if attributes is None:
            raise MiarsError("--service-param cold_start=attributes needs user attributes and none were given; add "
                             "--user-attributes PATH (user id, then attribute columns) or use "
                             "--service-param cold_start=popular")
        return AttributeColdStart(int(self.min_group)).fit(train.matrix, attributes)


class PopularService(_ColdStart, Component):
    """Non-members get the k most popular items they do not know (Zhang et al., CCS 2021: the paper's service).

    ``cold_start``: ``popular`` (the default, the paper's service): everyone the model was not
    trained on gets the popular list among the members. ``attributes``: the most popular items
    among the members with the same attribute values (``--user-attributes``), at the finest
    group of at least ``min_group`` members, falling back to coarser groups, then to everyone
    (:class:`~miars_core.science.attributes.AttributeColdStart`); an account whose attributes are
    unknown gets the global list.
    """

    param_constraints = {"cold_start": Options(COLD_STARTS), "min_group": Interval(int, 2)}

    def __init__(self, cold_start: str = "popular", min_group: int = MIN_GROUP):
        self.cold_start = cold_start
        self.min_group = min_group

    def serve_others(self, fitted, train: Interactions, histories: sp.csr_matrix, k: int, seed: int = 0) -> np.ndarray:
        return self.new_accounts(fitted, train, k, seed)(histories)

    def new_accounts(self, fitted, train: Interactions, k: int, seed: int = 0, attributes=None) -> PopularServer:
        """New accounts get the popular top-k: the server holds the item popularity among the members only (and,
        with ``cold_start=attributes``, the item rankings of the members' attribute groups; ``attributes``: the
        members' codes, rows aligned with ``train``)."""
        return PopularServer(train.item_popularity(), k, self._cold_start(train, attributes))


class FoldInService(_ColdStart, Component):
    """Everyone gets the trained model's top-k from their own history, without retraining (fold-in, as for new users).

    The threat model of "personalized lists for everyone": the CCS'21 attack then separates
    members from non-members only by what the model memorized, not by popular vs personalized
    lists (see docs/protocol.md, the known confound). Needs a recommender with
    ``recommend_for(histories, k)``: ``item`` (history x item-item similarity), ``lfm`` (user
    vectors solved by ridge regression on, or fitted with the BPR loss against, the frozen item
    factors) and ``ncf`` (NeuMF's user embeddings fitted with its BCE loss against the frozen
    item side).

    ``members``: how members are served. ``trained`` (the default, what a deployed service
    does): their trained user vectors (lfm, ncf) or their trained rows (item). ``foldin``:
    like a new account, folded in from their own known history, so members and non-members
    go through exactly the same mechanism and only the item side (what the model learned from
    the members) differs; result.json then reports ``members_foldin_overlap``, the share of a
    member's trained top-k that the folded-in list keeps (docs/threats.md, the mechanism gap).
    ``solver``: how a folded-in user vector is found (lfm, ncf; item has none to find):
    ``ridge``, the closed form against the frozen BPR factors (penalty ``reg``, relative to the
    factors' mean eigenvalue); ``gradient``, ``steps`` Adam steps at ``learning_rate`` on the
    model's own loss (BPR, NeuMF); ``auto`` (the default), the closed form where the model has
    one (lfm) and the gradient fit otherwise (ncf). ``ridge`` asked of a model without a closed
    form (ncf) is refused before any work (:meth:`check_recommender`).
    ``cold_start``: what an account *without history* gets (a fresh account, an empty query):
    ``popular`` (the default), the popular list among the members; ``attributes``, the most
    popular items among the members with the same attribute values (``--user-attributes``),
    falling back to coarser groups below ``min_group`` members, then to everyone, as
    :class:`PopularService` does. Accounts with a history are folded in either way.
    """

    param_constraints = {"steps": Interval(int, 1), "learning_rate": Interval(float, 0, 10, closed="right"),
                         "members": Options(("trained", "foldin")), "solver": Options(("auto", "ridge", "gradient")),
                         "reg": Interval(float, 0, 1e6, closed="right"), "cold_start": Options(COLD_STARTS),
                         "min_group": Interval(int, 2)}

    def __init__(self, steps: int = 50, learning_rate: float = 0.005, members: str = "trained", solver: str = "auto",
                 reg: float = 10.0, cold_start: str = "popular", min_group: int = MIN_GROUP):
        self.steps = steps
        self.learning_rate = learning_rate
        self.members = members
        self.solver = solver
        self.reg = reg
        self.cold_start = cold_start
        self.min_group = min_group

    def check_recommender(self, recommender, name: str) -> None:
        """Refuse, in one line and before any work, a closed-form fold-in of a recommender without one.

        A recommender says which solvers it can fold in with by ``foldin_solvers()`` (``None``:
        nothing to solve, e.g. ItemKNN's history x similarity); one that does not say is refused
        ``solver=ridge`` (its own ``recommend_for`` decides how it folds in otherwise)."""
        if self.solver != "ridge":
            return
        declared = getattr(recommender, "foldin_solvers", None)
        solvers = declared() if callable(declared) else ()
        if solvers is None or "ridge" in solvers:
            return
        why = getattr(recommender, "foldin_no_closed_form", None)
        reason = why() if callable(why) else "it declares no closed-form fold-in (foldin_solvers)"
        allowed = ", ".join(dict.fromkeys(["auto", *(s for s in solvers if s != "ridge")]))
        raise MiarsError(f"--service-param solver=ridge: recommender {name!r} has no closed-form fold-in ({reason}); "
                         f"solvers allowed for it: {allowed}; use --service-param solver=auto")

    def serve_others(self, fitted, train: Interactions, histories: sp.csr_matrix, k: int, seed: int = 0) -> np.ndarray:
        return self.new_accounts(fitted, train, k, seed)(histories)

    def new_accounts(self, fitted, train: Interactions, k: int, seed: int = 0, attributes=None) -> "FoldInServer":
        """New accounts folded in by the model's item side (``fitted.new_accounts()``; the fitted model itself when a
        third-party recommender has no such method); with ``cold_start=attributes``, accounts without history get
        their attribute group's list (``attributes``: the members' codes, rows aligned with ``train``)."""
        side = fitted.new_accounts() if callable(getattr(fitted, "new_accounts", None)) else fitted
        fold = getattr(side, "recommend_for", None)
        if fold is None:
            raise MiarsError(f"recommender {type(fitted).__name__} cannot serve new users from their history (no "
                             "recommend_for); use --service popular, or a recommender that folds in (item, lfm, ncf)")
        options = {"steps": int(self.steps), "learning_rate": float(self.learning_rate), "solver": str(self.solver),
                   "reg": float(self.reg)}
        accepted = _fit_options(fold)
        if self.solver == "ridge" and "solver" not in accepted:
            raise MiarsError(f"--service-param solver=ridge: recommender {type(fitted).__name__} folds in by its own "
                             "recommend_for, which takes no solver; use --service-param solver=auto")
        return FoldInServer(side, k, seed, {key: value for key, value in options.items() if key in accepted},
                            self._cold_start(train, attributes))


class FoldInServer:
    """``histories -> top-k``: new accounts folded in by ``side.recommend_for`` (the model's item side); with a cold
    start by attributes, accounts without history get their attribute group's popular list."""

    __slots__ = ("side", "k", "seed", "options", "attributes_cold_start")

    def __init__(self, side, k: int, seed: int, options: dict, attributes_cold_start: AttributeColdStart | None = None):
        self.side = side
        self.k = int(k)
        self.seed = int(seed)
        self.options = dict(options)
        self.attributes_cold_start = attributes_cold_start

    @property
    def cold_start(self) -> str:
        """``attributes`` when this server serves accounts without history itself (by their attributes)."""
        return "attributes" if self.attributes_cold_start is not None else "popular"

    @property
    def ordered(self) -> bool:
        """A sequential model's side reads histories in order (values = positions): query access and the service
        hand it ordered histories."""
        return bool(getattr(self.side, "sequential", False))

    def __call__(self, histories: sp.csr_matrix, attributes: np.ndarray | None = None) -> np.ndarray:
        if self.attributes_cold_start is None:
            return self.side.recommend_for(histories, self.k, seed=self.seed, **self.options)
        h = sp.csr_matrix(histories)
        empty = np.diff(h.indptr) == 0
        out = np.empty((h.shape[0], self.k), dtype=np.int64)
        if empty.any():
            codes = None if attributes is None else np.asarray(attributes)[empty]
            out[empty] = self.attributes_cold_start.recommend(h[empty], codes, self.k)
        if (~empty).any():
            out[~empty] = self.side.recommend_for(h[~empty], self.k, seed=self.seed, **self.options)
        return out


def _fit_options(method) -> set:
    """The fold-in options (``steps``, ``learning_rate``, ``solver``, ``reg``) a ``recommend_for`` accepts by name
    (all of them with ``**kwargs``); ``steps`` and ``learning_rate`` go together or not at all."""
    import inspect

    names = {"steps", "learning_rate", "solver", "reg"}
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return names
    accepted = names & {p.name for p in params}
    return accepted if {"steps", "learning_rate"} <= accepted else accepted - {"steps", "learning_rate"}


@hookimpl
def register_services(register):
    register("popular", PopularService)
    register("foldin", FoldInService)
