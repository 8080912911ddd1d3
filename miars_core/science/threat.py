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
  target user on average: budget x target users in all) and both numbers go into result.json.
* :class:`ReferenceModels` -- ``reference(index)``: query access to models the adversary
  trains on its own data.
* :class:`OnlineReferences` -- ``online_reference(index)``: query access to models the adversary
  trains on random halves of the part's users (the candidates it tests, whose histories it
  knows), and ``trained(index)``: which of them each was trained on (online LiRA).

An attack declares what it needs with the class attribute ``threat``: ``"features"`` (the
default: ``fit(X, y, seed)``, ``decision_function(X)``), ``"lists"`` or ``"queries"``
(``fit(shadow_view, seed)``, ``decision_function(target_view)``). Only ``"queries"`` attacks
are given query access. The engine scores the target once: ``decision_function`` is called
once per view and the predictions are ``scores > decision_threshold(attack)``
(:func:`decision_threshold`); an attack's own ``predict`` is never called by the engine.

What the target's objects hold: the view's arrays (histories, lists, features, item vectors,
the adversary's popularity, pairs), a :class:`QueryAccess` holding only the service's
new-account server (for the built-in services and recommenders: the item popularity and the
model's item side) and the item popularity, and :class:`ReferenceModels` holding only the
adversary's own data. No membership label, no members' training matrix, no fitted model and
nothing that refers back to the engine's cell is reachable from them
(``tests/test_threats.py`` walks every reference). Python cannot stop an attack from
importing the engine's modules; the isolation is of the objects handed over, not a sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from ..contracts.errors import MiarsError
from ..contracts.types import Interactions, ServiceContext
from .ranking import top_k_popular

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


def decision_threshold(attack: Any) -> float:
    """The score above which ``attack`` calls a user a member: its learned ``decision_threshold_``, 0.0 without one.

    Every built-in attack folds its threshold into ``decision_function`` (member iff score
    > 0) and so has none; an attack that keeps a threshold outside its scores sets
    ``decision_threshold_`` in ``fit``. Predictions are ``scores > decision_threshold(attack)``.
    """
    value = getattr(attack, "decision_threshold_", 0.0)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise MiarsError(f"attack {type(attack).__name__} has decision_threshold_={value!r}; it must be a finite number "
                         "(the score above which a user is called a member)")
    return float(value)


def require_budget(attack: Any, budget: int, name: str) -> None:
    """Refuse, in one line, a query attack given a budget too small for it (before any work).

    Every query attack needs a budget of at least 1; an attack that declares how many queries
    per target user it will ask (``queries_per_user``, an int attribute or property, e.g. ``lira``)
    needs at least that many.
    """
    if threat_of(attack) != "queries":
        return
    if budget < 1:
        raise MiarsError(f"--query-budget {budget}: attack {name!r} queries the target service (threat 'queries') and a "
                         "budget of 0 allows no query; give --query-budget >= 1 (queries per target user on average), "
                         "or an attack without queries")
    need = getattr(attack, "queries_per_user", None)
    if need is not None and budget < int(need):
        raise MiarsError(f"--query-budget {budget}: attack {name!r} asks {int(need)} queries per target user (its "
                         f"'queries' parameter); give --query-budget >= {int(need)} or --attack-param queries={budget}")


def threat_of(attack: Any) -> str:
    """The threat model an attack declares (``features`` when it says nothing)."""
    threat = getattr(attack, "threat", "features")
    if threat not in THREATS:
        raise MiarsError(f"attack {type(attack).__name__} declares threat={threat!r}; allowed: {', '.join(THREATS)}")
    return threat


class QueryAccess:
    """Black-box access to a recommendation service: ``recommend(histories)`` returns each account's top-k.

    Each row of ``histories`` is a fresh account with that history. It is served like every
    account the model was not trained on, by ``server`` (``histories -> lists``: the service's
    new-account server, :func:`miars_core.science.service.new_account_server`); an account with no
    history gets the popular top-k by ``popularity`` (cold start). ``defense`` (a list defense)
    then rewrites the answers as it would a non-member's list. ``budget`` bounds the number of
    accounts (queries) in all; ``used_`` counts them. Build it with :meth:`of` from a service
    and a fitted model: it keeps neither the model nor its training data.
    """

    def __init__(self, server: Callable[[sp.csr_matrix], np.ndarray], popularity: np.ndarray, k: int, *,
                 defense: Any = None, defense_seed: int = 0, budget: int | None = None, name: str = "target"):
        from .service import NewAccountServer

        self._server = server if isinstance(server, NewAccountServer) else NewAccountServer(server, k, f"the {name} service")
        self._popularity = np.asarray(popularity).copy()
        self._defense = defense
        self._defense_seed = int(defense_seed)
        self.k = int(k)
        self.n_items = int(len(self._popularity))
        self.budget = budget
        self.name = name
        self.used_ = 0
        self.calls_ = 0

    @classmethod
    def of(cls, service: Any, fitted: Any, train: Interactions, k: int, *, seed: int = 0, defense: Any = None,
           defense_seed: int = 0, budget: int | None = None, name: str = "target",
           attributes: Any = None) -> "QueryAccess":
        """Query access to ``service`` serving new accounts from ``fitted`` (trained on ``train``).

        Keeps only what the service's ``new_accounts`` returns (see :mod:`miars_services`) and the
        item popularity of ``train`` (the cold-start list), not ``fitted`` nor ``train``.
        ``attributes`` (:class:`~miars_core.science.attributes.UserAttributes`): handed to a service
        that reads them (``cold_start=attributes``) as the codes of ``train``'s users.
        """
        from .service import new_account_server

        return cls(new_account_server(service, fitted, train, k, seed, attributes=attributes), train.item_popularity(),
                   k, defense=defense, defense_seed=defense_seed, budget=budget, name=name)

    @property
    def cold_start(self) -> str:
        """What the service gives an account without history: ``attributes`` (the most popular items of its
        attribute group: pass ``attributes=`` to :meth:`recommend`) or ``popular`` (the popular list)."""
        return self._server.cold_start

    def recommend(self, histories: sp.spmatrix | np.ndarray, attributes: np.ndarray | None = None) -> np.ndarray:
        """Top-k item columns (best first) for each row of ``histories`` (accounts x items).

        Any non-zero value is an interaction. A sequential service reads the values as the order of
        the account's history (positions or times, ascending; ties by item column); every other
        service sees 0/1. ``attributes`` (accounts x attribute columns, integer codes as in
        ``view.attributes``, 0 = unknown): the accounts' attributes, read by a service whose
        :attr:`cold_start` is ``attributes``; ignored by the others.
        """
        from .service import Served, defend

        h = sp.csr_matrix(histories, dtype=np.float64, copy=True)
        if h.shape[1] != self.n_items:
            raise MiarsError(f"a query to the {self.name} service has {h.shape[1]} item columns; the service has "
                             f"{self.n_items}")
        h.eliminate_zeros()  # an explicit 0 is no interaction (the caller's matrix is never modified: copied above)
        h.sum_duplicates()
        if not np.isfinite(h.data).all():
            raise MiarsError(f"a query to the {self.name} service has non-finite values; a history is 0/1, or "
                             "positions / times for a sequential service")
        ordered = h.copy() if self._server.ordered else None
        h = h.astype(np.float32)
        h.data[:] = 1.0
        n = h.shape[0]
        by_attributes = self._server.cold_start == "attributes"
        if attributes is not None:
            attributes = np.asarray(attributes)
            if attributes.ndim != 2 or attributes.shape[0] != n or attributes.dtype.kind not in "iu":
                raise MiarsError(f"a query to the {self.name} service has attributes of shape {attributes.shape} "
                                 f"({attributes.dtype}) for {n} accounts; pass one row of integer codes per account")
        if self.budget is not None and self.used_ + n > self.budget:
            raise MiarsError(f"the attack asked the {self.name} service {self.used_ + n} queries, over its budget of "
                             f"{self.budget}; raise --query-budget or lower the attack's queries")
        lists = np.empty((n, self.k), dtype=np.int64)
        empty = np.diff(h.indptr) == 0 if not by_attributes else np.zeros(n, dtype=bool)  # the server's own cold start
        if empty.any():
            lists[empty] = top_k_popular(self._popularity, h[empty], self.k)
        if (~empty).any():
            codes = attributes[~empty] if attributes is not None and by_attributes else None
            lists[~empty] = self._server((ordered if ordered is not None else h)[~empty], codes)
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


def reference_tag(index: int) -> str:
    """The seed tag of reference model number ``index`` (``reference``, ``reference-1``, ...)."""
    return "reference" if index == 0 else f"reference-{index}"


def fit_reference(data: Interactions, n_users: int, min_interactions: int, seed: int, index: int,
                  recommender: Any, recommender_name: str):
    """Fit reference model number ``index``: the recommender on a seeded sample of the adversary's ``data``.

    The sample: ``n_users`` users (at most) among those of ``data`` with at least
    ``min_interactions`` interactions, drawn with seed(``reference[-index]``); the fit uses the
    same seed. Returns the fit (:class:`~miars_core.science.service.Fitted`) and the sampled rows.
    """
    from ..contracts.seeds import stage_seed
    from ..contracts.types import Part
    from .service import fit_model

    tag = reference_tag(index)
    rows = reference_rows(data, n_users, min_interactions, seed, index)
    part = Part("reference", data.rows(rows), np.ones(len(rows), dtype=bool))
    return fit_model(part, recommender, recommender_name, stage_seed(seed, tag)), rows


def reference_rows(data: Interactions, n_users: int, min_interactions: int, seed: int, index: int) -> np.ndarray:
    """The rows of ``data`` reference model ``index`` is trained on (see :func:`fit_reference`)."""
    from ..contracts.seeds import stage_seed

    counts = np.diff(data.matrix.indptr)
    eligible = np.flatnonzero(counts >= min_interactions)
    n = min(len(eligible), int(n_users))
    if n < 2:
        raise MiarsError(f"the vectorization part has {len(eligible)} users with >= {min_interactions} "
                         "interactions: too few to train a reference model; use a larger dataset")
    rng = np.random.default_rng(stage_seed(seed, reference_tag(index)))
    return np.sort(rng.choice(eligible, size=n, replace=False))


def online_reference_tag(index: int) -> str:
    """The seed tag of online reference model number ``index``."""
    return f"online-reference-{index}"


def online_rows(n_users: int, seed: int, index: int) -> np.ndarray:
    """The candidates (rows of the part) online reference model ``index`` is trained on: a random half.

    Models come in complementary pairs: model 2j trains on a seeded random half of the part's
    users, model 2j + 1 on the other half, so after an even number of models every user was in
    exactly half of them (with an odd number, in one more or one fewer). A part of an odd number
    of users leaves one user out of both models of a pair.
    """
    from ..contracts.seeds import stage_seed

    order = np.random.default_rng(stage_seed(seed, f"online-reference-pair-{index // 2}")).permutation(int(n_users))
    half = int(n_users) // 2
    return np.sort(order[:half] if index % 2 == 0 else order[half:2 * half])


def fit_online_reference(data: Interactions, seed: int, index: int, recommender: Any, recommender_name: str):
    """Fit online reference model ``index``: the recommender on half of the candidates ``data`` (:func:`online_rows`).

    Returns the fit (:class:`~miars_core.science.service.Fitted`) and the rows of ``data`` it was trained on.
    """
    from ..contracts.seeds import stage_seed
    from ..contracts.types import Part
    from .service import fit_model

    rows = online_rows(data.n_users, seed, index)
    part = Part("reference", data.rows(rows), np.ones(len(rows), dtype=bool))
    return fit_model(part, recommender, recommender_name, stage_seed(seed, online_reference_tag(index))), rows


class OnlineReferences:
    """``online_reference(index)``: query access to a reference model trained on half of *this part's* users.

    The online setting of LiRA (Carlini et al., S&P 2022): the adversary knows the candidates
    whose membership it tests (the part's users and their known histories, the very histories
    its queries are made of), but not which of them the service trained on. It trains the
    shadow recommender on random halves of the candidates (:func:`online_rows`: complementary
    pairs, so each user is *in* half of the models and *out* of the others), serves each like
    the target, and asks them the same queries. ``trained(index)`` says which rows of the view
    model ``index`` was trained on (the adversary drew them). ``fit(index)``, when given,
    returns the fit instead (the engine's ``online_reference`` stage). Holds the candidates'
    known histories (what the view holds anyway), nothing of the labels or the target's fit.
    """

    def __init__(self, data: Interactions, k: int, seed: int, make_recommender: Callable[[], Any],
                 recommender_name: str, make_service: Callable[[], Any], fit: Callable[[int], Any] | None = None,
                 progress: Callable[[str], None] | None = None, attributes: Any = None):
        self._data = data
        self._attributes = attributes
        self._k = int(k)
        self._seed = int(seed)
        self._make_recommender = make_recommender
        self._recommender_name = recommender_name
        self._make_service = make_service
        self._fit = fit
        self._progress = progress
        self._built: dict[int, QueryAccess] = {}
        self.seconds_ = 0.0

    @property
    def n_users(self) -> int:
        return int(self._data.n_users)

    def trained(self, index: int) -> np.ndarray:
        """Which candidates (rows of the view) online reference model ``index`` was trained on (bool per row)."""
        mask = np.zeros(self.n_users, dtype=bool)
        mask[online_rows(self.n_users, self._seed, int(index))] = True
        return mask

    def __call__(self, index: int = 0) -> QueryAccess:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise MiarsError(f"view.online_reference(index): index must be an integer >= 0, got {index!r}")
        index = int(index)
        if index not in self._built:
            import time

            from ..contracts.seeds import stage_seed

            start = time.perf_counter()
            if self._fit is not None:
                fitted = self._fit(index)
            else:
                if self._progress:
                    self._progress(f"training online reference model {index} on half of the candidates")
                fitted, _ = fit_online_reference(self._data, self._seed, index, self._make_recommender(),
                                                 self._recommender_name)
            self._built[index] = QueryAccess.of(self._make_service(), fitted.model, fitted.train, self._k,
                                                seed=stage_seed(self._seed, f"{online_reference_tag(index)}-query"),
                                                name="online reference", attributes=self._attributes)
            self.seconds_ += time.perf_counter() - start
        return self._built[index]


class ReferenceModels:
    """``reference(index=0)``: query access to reference model number ``index``, which the adversary trains on its own data.

    Each model is the shadow recommender fitted on ``data`` (the adversary's own data, the
    vectorization part) restricted to users with at least ``min_interactions`` interactions and
    sampled (seeded per index) to ``n_users`` users (the service's training set's size and
    filter), then served by a fresh ``make_service()`` like the target (:func:`fit_reference`).
    ``fit(index)``, when given, returns that fit (a :class:`~miars_core.science.service.Fitted`)
    instead, e.g. read from the engine's stage store; it must hold nothing but the adversary's
    data. Models are built on first use and kept; ``seconds_`` sums the time spent building
    them here. Holds nothing of the shadow or target parts. ``attributes``
    (:class:`~miars_core.science.attributes.UserAttributes`, when the cell has them): the users'
    attributes, for a service that reads them and for :meth:`cold_start`.
    """

    def __init__(self, data: Interactions, n_users: int, min_interactions: int, k: int, seed: int,
                 make_recommender: Callable[[], Any], recommender_name: str, make_service: Callable[[], Any],
                 progress: Callable[[str], None] | None = None, fit: Callable[[int], Any] | None = None,
                 attributes: Any = None):
        self._data = data
        self._attributes = attributes
        self._cold_start: Any = None
        self._n_users = int(n_users)
        self._min_interactions = int(min_interactions)
        self._k = int(k)
        self._seed = int(seed)
        self._make_recommender = make_recommender
        self._recommender_name = recommender_name
        self._make_service = make_service
        self._progress = progress
        self._fit = fit
        self._built: dict[int, QueryAccess] = {}
        self.seconds_ = 0.0

    def __call__(self, index: int = 0) -> QueryAccess:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise MiarsError(f"view.reference(index): index must be an integer >= 0, got {index!r}")
        index = int(index)
        if index not in self._built:
            self._built[index] = self._build(index)
        return self._built[index]

    def cold_start(self, attributes: np.ndarray) -> np.ndarray:
        """What the adversary's own cold start by attributes serves an account without history: for each row of
        ``attributes`` (codes as in ``view.attributes``), the top-k of the most popular items among the
        adversary's users (its data, every user) with the same attribute values, by the rule of the built-in
        services' ``cold_start=attributes`` (:class:`~miars_core.science.attributes.AttributeColdStart`, the
        service's ``min_group``). No model is trained: a cold start reads no history. Needs attributes."""
        from .attributes import MIN_GROUP, AttributeColdStart

        if self._attributes is None:
            raise MiarsError("view.reference.cold_start needs user attributes and the cell has none; add "
                             "--user-attributes PATH")
        if self._cold_start is None:
            min_group = getattr(self._make_service(), "min_group", MIN_GROUP)
            self._cold_start = AttributeColdStart(int(min_group)).fit(
                self._data.matrix, self._attributes.for_users(self._data.user_ids))
        codes = np.asarray(attributes)
        return self._cold_start.recommend(sp.csr_matrix((len(codes), self._data.n_items), dtype=np.float32), codes,
                                          self._k)

    def _build(self, index: int) -> QueryAccess:
        import time

        from ..contracts.seeds import stage_seed
        from .ranking import check_k

        tag = reference_tag(index)
        start = time.perf_counter()
        if self._fit is not None:
            fitted = self._fit(index)
            check_k(self._k, fitted.train.matrix, who="reference users")
        else:
            if self._progress:
                self._progress("training a reference model on the adversary's own data (the vectorization part)")
            rows = reference_rows(self._data, self._n_users, self._min_interactions, self._seed, index)
            check_k(self._k, self._data.matrix[rows], who="reference users")
            fitted, _ = fit_reference(self._data, self._n_users, self._min_interactions, self._seed, index,
                                      self._make_recommender(), self._recommender_name)
        access = QueryAccess.of(self._make_service(), fitted.model, fitted.train, self._k,
                                seed=stage_seed(self._seed, f"{tag}-query"), name="reference", attributes=self._attributes)
        self.seconds_ += time.perf_counter() - start
        return access


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
    #: data; each index is another model (its own sample of that data and its own seed): :class:`ReferenceModels`.
    reference: Callable[..., QueryAccess] | None = None
    #: The same histories in order, when the data has one: each entry's value is the item's 1-based position in
    #: the user's sequence (same pattern as ``histories``). A query whose values are positions is read in
    #: that order by a sequential service (:meth:`QueryAccess.recommend`).
    sequences: sp.csr_matrix | None = None
    #: ``online_reference(index)``: query access to a model trained on a random half of *these* users (the
    #: candidates), ``online_reference.trained(index)`` the rows it was trained on: :class:`OnlineReferences`.
    online_reference: OnlineReferences | None = None
    #: Interaction-level attacks (``level = "interaction"``): (n_pairs, 2) rows of (user row, item column)
    #: taken from the users' histories; was each pair in the training data?
    pairs: np.ndarray | None = None
    #: Whether each pair was in the recommender's training data: on the shadow part only.
    pair_labels: np.ndarray | None = None
    #: (users x attribute columns) integer codes of the users' attributes (``--user-attributes``; 0 = unknown),
    #: given to attacks that declare ``uses_attributes = True`` when the cell has attributes; None otherwise.
    attributes: np.ndarray | None = None
    #: The names of the attribute columns (``gender``, ``age``, ...), aligned with ``attributes``' columns.
    attribute_columns: tuple[str, ...] | None = None

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
