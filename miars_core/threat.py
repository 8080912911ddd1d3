"""What an attack may see: the adversary's view of a part, and black-box query access to a service.

The CCS'21 attack sees, per user, the user's interactions and the list the service showed
them. Attacks of other threat models see more, and only through this module:

* :class:`AdversaryView` -- one part's users as the adversary knows them: histories, served
  lists, the cell's features and item vectors, popularity estimated on the adversary's own
  data, membership labels on the shadow part only, and (for query attacks) query access.
* :class:`QueryAccess` -- ``recommend(histories) -> top-k lists``: each row is a fresh account
  with that history, served the way the cell's service serves accounts it was not trained
  on, through the cell's list defense when the attacker faces one. Scores and model internals
  are never exposed. Queries are counted; the target's access has a budget (queries per
  target user) and both numbers go into result.json.

An attack declares what it needs with the class attribute ``threat``: ``"features"`` (the
default: ``fit(X, y, seed)``, ``decision_function(X)``, ``predict(X)``), ``"lists"`` or
``"queries"`` (``fit(shadow_view, seed)``, ``decision_function(target_view)``,
``predict(target_view)``). Only ``"queries"`` attacks are given query access.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from .errors import MiarsError
from .ranking import top_k_popular
from .types import Interactions, ServiceContext

#: What an attack may ask for, from least to most access.
THREATS = ("features", "lists", "queries")


def level_of(attack: Any) -> str:
    """``user`` (membership of users, the default) or ``interaction`` (membership of (user, item) pairs)."""
    level = getattr(attack, "level", "user")
    if level not in ("user", "interaction"):
        raise MiarsError(f"attack {type(attack).__name__} declares level={level!r}; allowed: user, interaction")
    if level == "interaction" and threat_of(attack) == "features":
        raise MiarsError(f"attack {type(attack).__name__}: an interaction-level attack needs threat 'lists' or 'queries'")
    return level


def threat_of(attack: Any) -> str:
    """The threat model an attack declares (``features`` when it says nothing)."""
    threat = getattr(attack, "threat", "features")
    if threat not in THREATS:
        raise MiarsError(f"attack {type(attack).__name__} declares threat={threat!r}; allowed: {', '.join(THREATS)}")
    return threat


class QueryAccess:
    """Black-box access to a recommendation service: ``recommend(histories)`` returns each account's top-k.

    Each row of ``histories`` is a fresh account with that history. It is served like every
    account the model was not trained on (the service plugin's ``serve_others``); an account
    with no history gets the popular top-k (cold start). ``defense`` (a list defense) then
    rewrites the answers as it would a non-member's list. ``budget`` bounds the number of
    accounts (queries) in all; ``used_`` counts them.
    """

    def __init__(self, fitted: Any, train: Interactions, service: Any, k: int, *, defense: Any = None,
                 defense_seed: int = 0, seed: int = 0, budget: int | None = None, name: str = "target"):
        self._fitted = fitted
        self._train = train
        self._service = service
        self._defense = defense
        self._defense_seed = int(defense_seed)
        self._seed = int(seed)
        self.k = int(k)
        self.n_items = int(train.matrix.shape[1])
        self.budget = budget
        self.name = name
        self.used_ = 0
        self.calls_ = 0
        self._popularity = train.item_popularity()

    def recommend(self, histories: sp.spmatrix | np.ndarray) -> np.ndarray:
        """Top-k item columns (best first) for each row of ``histories`` (accounts x items, 0/1)."""
        from .service import _call, _who, check_lists, defend, Served

        h = sp.csr_matrix(histories, dtype=np.float32)
        if h.shape[1] != self.n_items:
            raise MiarsError(f"a query to the {self.name} service has {h.shape[1]} item columns; the service has "
                             f"{self.n_items}")
        h.data[:] = 1.0
        n = h.shape[0]
        if self.budget is not None and self.used_ + n > self.budget:
            raise MiarsError(f"the attack asked the {self.name} service {self.used_ + n} queries, over its budget of "
                             f"{self.budget}; raise --query-budget or lower the attack's queries")
        lists = np.empty((n, self.k), dtype=np.int64)
        empty = np.diff(h.indptr) == 0
        if empty.any():
            lists[empty] = top_k_popular(self._popularity, h[empty], self.k)
        if (~empty).any():
            rows = h[~empty]
            who = _who("service", type(self._service).__name__, self._service)
            raw = _call(self._service.serve_others, who, "serve_others", self._fitted, self._train, rows, self.k,
                        seed=self._seed)
            lists[~empty] = check_lists(raw, (rows.shape[0], self.k), rows, who)
        if self._defense is not None:
            context = ServiceContext(Interactions(h, np.arange(n), np.arange(self.n_items)), np.zeros(n, dtype=bool),
                                     np.argsort(-self._popularity, kind="stable"), self.k)
            lists = defend(Served(lists, context), self._defense, self._defense_seed)
        self.used_ += n
        self.calls_ += 1
        return lists

    def record(self) -> dict:
        """What result.json says about this access: budget and queries used."""
        return {"budget": self.budget, "used": self.used_, "calls": self.calls_}


@dataclass
class AdversaryView:
    """One part's users as the adversary sees them (rows aligned across every field)."""

    #: (users x items) 0/1: the users' interactions known to the adversary.
    histories: sp.csr_matrix
    #: (users x k) item columns each user was served, best first.
    lists: np.ndarray
    k: int
    #: (users x d) the cell's featurizer output for these users.
    features: np.ndarray | None = None
    #: (items x d) item vectors from the adversary's own data (the vectorization part), if the featurizer has them.
    item_vectors: np.ndarray | None = None
    #: Item columns from most to least popular in the adversary's own data (the vectorization part).
    popular: np.ndarray | None = None
    #: Interaction count of each item in the adversary's own data (the vectorization part).
    popularity: np.ndarray | None = None
    #: Membership of each user: on the shadow part (the adversary's own service) only, never on the target.
    labels: np.ndarray | None = None
    #: Query access to the service these users were served by (``threat = "queries"`` only).
    query: QueryAccess | None = None
    #: ``reference(index=0)`` builds query access to a reference model the adversary trained on its own
    #: data; each index is another model (its own sample of that data and its own seed).
    reference: Callable[..., QueryAccess] | None = None
    #: Interaction-level attacks (``level = "interaction"``): (n_pairs, 2) rows of (user row, item column)
    #: taken from the users' histories; was each pair in the training data?
    pairs: np.ndarray | None = None
    #: Whether each pair was in the recommender's training data: on the shadow part only.
    pair_labels: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return int(self.histories.shape[0])

    def require(self, who: str, *fields: str) -> None:
        """Fail in one line when the cell cannot give an attack a field it needs."""
        for name in fields:
            if getattr(self, name) is None:
                raise MiarsError(f"attack {who!r} needs {name.replace('_', ' ')}, which this cell does not provide"
                                 + ("; use a featurizer with item_vectors_ (center-diff)" if name == "item_vectors"
                                    else ""))
