"""The component contracts: what each kind and variant of component must offer, as typing Protocols.

One protocol per kind and variant (a recommender that folds in, a defense on the data, an
attack with query access, ...). Each names the hook that registers it (``hook``), what selects
the variant (``selected_by``) and the conformance check of :mod:`miars_core.kit.checks` that
enforces it (``check``). ``docs/hooks.md`` is generated from them and from the hook
specifications (:func:`miars_core.docgen.contract_reference`); a test fails when a hook, a
protocol or one of its methods lacks its documentation.

The protocols are duck-typed contracts, scikit-learn style, not base classes: a component
never has to subclass them (``Component`` of :mod:`miars_core.contracts.components` gives
``get_params`` and a ``repr``). Type checkers can use them (``def f(r: Recommender)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

if TYPE_CHECKING:  # names for annotations only (strings at run time)
    import numpy as np
    import scipy.sparse as sp

    from .types import Interactions, ServiceContext


# --------------------------------------------------------------------------- every kind

class ComponentContract(Protocol):
    """What every component keeps (scikit-learn conventions).

    ``__init__`` only stores its hyperparameters, each as an attribute of the same name: no
    validation, no work, no attribute ending in ``_``; ``factory(**obj.get_params())`` rebuilds an
    equivalent component (``Component`` gives ``get_params``). ``fit`` returns ``self`` and puts
    learned state in attributes ending in ``_``. All randomness comes from the ``seed`` argument:
    the same seed gives identical output. Inputs are never modified in place. The first line of
    the class docstring is the summary of ``miars list <kind>``. Bad user input raises
    ``MiarsError`` with one line. Allowed hyperparameter values may be declared in a class
    attribute ``param_constraints`` (:mod:`miars_core.contracts.params`).
    """

    hook: ClassVar[str] = ""
    selected_by: ClassVar[str] = "every component"
    check: ClassVar[str] = "check_init"

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters given to ``__init__``, by name (optional: read from the signature when absent)."""


# --------------------------------------------------------------------------- datasets

class Dataset(Protocol):
    """A data set of implicit feedback: who interacted with what."""

    hook: ClassVar[str] = "register_datasets"
    selected_by: ClassVar[str] = "every dataset"
    check: ClassVar[str] = "check_dataset"

    def load(self, data_dir: str | None = None, download: bool = False) -> "Interactions":
        """A binary users x items CSR matrix with the original ids (``Interactions.from_pairs(users, items)``
        builds one and collapses repeated pairs). Look for the file in ``data_dir``; touch the network
        only when ``download`` is true; raise ``MiarsError`` naming the file and ``--data-dir`` when it is missing."""


# --------------------------------------------------------------------------- recommenders

class Recommender(Protocol):
    """A target or shadow recommender: trained on the members, serves each its top-k."""

    hook: ClassVar[str] = "register_recommenders"
    selected_by: ClassVar[str] = "every recommender"
    check: ClassVar[str] = "check_recommender"

    #: Optional, set by ``fit``: what training did (epochs run, final loss, ...), reported in result.json;
    #: a non-finite float there fails the run (the training diverged).
    fit_info_: dict[str, Any]

    def fit(self, train: "Interactions", seed: int = 0) -> "Recommender":
        """Train on the members' interactions (rows: members; columns: every item of the data set, some
        with no interaction at all); return ``self``."""

    def recommend(self, k: int) -> "np.ndarray":
        """int64 ``(train.n_users, k)``: item columns, best first, ``k`` distinct items per row, none of them in
        that user's training row."""


class FoldInRecommender(Recommender, Protocol):
    """A recommender that serves accounts it was not trained on from their own history (fold-in).

    The ``foldin`` service calls it: ``recommend_for`` serves non-members (and, with
    ``members="foldin"``, members) like new accounts, and query attacks' fresh accounts. A
    failure inside it, or lists that break the contract, name the recommender and its plugin.
    """

    selected_by: ClassVar[str] = "a recommender with recommend_for (optional)"

    def recommend_for(self, histories: "sp.csr_matrix", k: int, seed: int = 0) -> "np.ndarray":
        """int64 ``(histories.shape[0], k)``: each row's top-k from that history alone (a new account), none of its
        known items, without retraining; same seed, same lists. May accept ``steps`` and ``learning_rate``
        (the ``foldin`` service then passes its own) or ``**kwargs``."""

    def new_accounts(self) -> "NewAccountSide":
        """Optional: an object with the same ``recommend_for`` (same lists) that holds only the item side of the
        model (item vectors, item-item similarities), never the members' data or vectors; query access keeps it
        and nothing else of the model."""

    def foldin_solvers(self) -> "tuple[str, ...] | None":
        """Optional, known before fitting: the ``foldin`` service's ``solver`` values it folds in with (e.g.
        ``("auto", "ridge", "gradient")``); ``None`` when there is no user vector to solve (history x similarity).
        A recommender that does not say is refused ``solver=ridge`` before any data is read."""


class StatefulRecommender(Recommender, Protocol):
    """A recommender whose fitted model can be stored and loaded: the engine then never fits it again.

    The state contract (:mod:`miars_core.contracts.state`; Writing plugins, "The recommender
    state contract"): the fitted model as arrays plus a JSON record, never a pickle. The engine
    stores it as the ``model`` stage, which query access, fold-in services, reference models,
    defense benchmarks and reruns read instead of fitting again.
    """

    selected_by: ClassVar[str] = "a recommender with get_state and set_state (optional)"
    check: ClassVar[str] = "check_state"

    def get_state(self) -> "tuple[dict[str, np.ndarray], dict] | None":
        """On the fitted object (what ``fit`` returned): ``(arrays, record)``, arrays of numbers, booleans or strings
        (no ``dtype=object``) by name and a plain-JSON record (no NaN); ``None``: this fit cannot be stored (the
        engine fits it again where needed)."""

    def set_state(self, arrays: "dict[str, np.ndarray]", record: dict) -> "StatefulRecommender":
        """On a fresh, unfitted component with the same hyperparameters: return a fitted object that serves exactly
        what the stored one did (``recommend``, ``recommend_for``, ``new_accounts``); raise when the state does
        not fit it (another library version, ...): the engine says so in one line and fits again."""


class NewAccountSide(Protocol):
    """What ``FoldInRecommender.new_accounts()`` returns: the model's item side, able to serve new accounts."""

    hook: ClassVar[str] = "register_recommenders"
    selected_by: ClassVar[str] = "returned by a recommender's new_accounts()"
    check: ClassVar[str] = "check_recommender"

    def recommend_for(self, histories: "sp.csr_matrix", k: int, seed: int = 0) -> "np.ndarray":
        """The same lists as the recommender's ``recommend_for``, from the item side alone."""


# --------------------------------------------------------------------------- featurizers

class Featurizer(Protocol):
    """Turns a user's interactions and served list into the attack's feature row."""

    hook: ClassVar[str] = "register_featurizers"
    selected_by: ClassVar[str] = "every featurizer"
    check: ClassVar[str] = "check_featurizer"

    #: Optional, set by ``fit``: (items x d) item vectors, handed to list and query attacks as ``view.item_vectors``.
    item_vectors_: "np.ndarray"

    def fit(self, vectorization: "Interactions", seed: int = 0) -> "Featurizer":
        """Learn item representations from the vectorization part (never the shadow or target part); return ``self``."""

    def transform(self, interactions: "Interactions", recommendations: "np.ndarray") -> "np.ndarray":
        """A finite float32 ``(n_users, d)`` array, one row per user of ``interactions``; ``d`` is fixed by ``fit``
        (it does not depend on the number of users)."""


# --------------------------------------------------------------------------- attacks

class FeatureAttack(Protocol):
    """The membership classifier on the featurizer's rows (the CCS'21 attack's MLP)."""

    hook: ClassVar[str] = "register_attacks"
    selected_by: ClassVar[str] = 'threat = "features" (the default)'
    check: ClassVar[str] = "check_attack"

    #: What the attack reads: its default, ``"features"``, needs no declaration.
    threat: ClassVar[str] = "features"
    #: Optional, set by ``fit``: users scoring above it are called members (0 when absent).
    decision_threshold_: float

    def fit(self, X: "np.ndarray", y: "np.ndarray", seed: int = 0) -> "FeatureAttack":
        """Learn from the shadow part's features ``X`` and labels ``y`` (bool or 0/1, 1 = member); return ``self``."""

    def decision_function(self, X: "np.ndarray") -> "np.ndarray":
        """Finite float64 scores ``(n,)``, higher = more likely a member. The engine calls it once per part and
        predicts ``scores > decision_threshold_`` (0 without one)."""

    def predict(self, X: "np.ndarray") -> "np.ndarray":
        """Optional (the engine never calls it): the bool array ``decision_function(X) > decision_threshold_``."""


class ListAttack(Protocol):
    """An attack that reads the adversary's view of a part: histories, served lists, features, item vectors."""

    hook: ClassVar[str] = "register_attacks"
    selected_by: ClassVar[str] = 'threat = "lists"'
    check: ClassVar[str] = "check_view_attack"

    #: Declared: the attack gets ``AdversaryView`` objects instead of feature rows.
    threat: ClassVar[str] = "lists"
    #: Optional: ``True`` for a rule meant to read chance on a sound protocol (the checks then do not ask
    #: members to score higher).
    control: ClassVar[bool]
    #: Optional, set by ``fit``: users scoring above it are called members (0 when absent).
    decision_threshold_: float

    def fit(self, shadow_view: Any, seed: int = 0) -> "ListAttack":
        """Learn from the shadow part's ``AdversaryView`` (``miars_core.science.threat``), which alone carries
        ``labels``; choose orientation and threshold here, never from the target; return ``self``."""

    def decision_function(self, view: Any) -> "np.ndarray":
        """Finite float64 scores, one per user of the target's ``AdversaryView`` (no labels), higher = member;
        called once per view."""

    def predict(self, view: Any) -> "np.ndarray":
        """Optional: ``decision_function(view) > decision_threshold_``."""


class QueryAttack(ListAttack, Protocol):
    """An attack with black-box query access to the service: fresh accounts, counted against a budget."""

    selected_by: ClassVar[str] = 'threat = "queries"'

    #: Declared: the target view also carries query access (``view.query``) and reference models.
    threat: ClassVar[str] = "queries"

    def decision_function(self, view: Any) -> "np.ndarray":
        """As a list attack's, and the view also offers ``view.query.recommend(histories)`` (each row a fresh
        account, counted against ``--query-budget`` x target users; over it fails in one line) and
        ``view.reference(index=0)`` (query access to reference models the adversary trains on its own data).
        One call must stay within the budget."""


class InteractionAttack(ListAttack, Protocol):
    """An attack on (user, item) pairs: was this interaction in the training data? (threat lists or queries)."""

    selected_by: ClassVar[str] = 'level = "interaction" (with threat "lists" or "queries")'

    #: Declared: membership of (user, item) pairs instead of users (``"user"``, the default).
    level: ClassVar[str] = "interaction"

    def decision_function(self, view: Any) -> "np.ndarray":
        """Finite float64 scores, one per row of ``view.pairs`` ((user row, item column) pairs from the users'
        histories; ``view.pair_labels`` on the shadow view only). The engine reports pair metrics and derives
        user scores (the mean over a user's pairs)."""


# --------------------------------------------------------------------------- defenses

class DefenseDeclarations(Protocol):
    """What every defense declares besides its methods."""

    hook: ClassVar[str] = "register_defenses"
    selected_by: ClassVar[str] = "every defense with acts_on or sweep"
    check: ClassVar[str] = "check_defense"

    #: Where it acts: ``"lists"`` (the default), ``"data"`` or ``"training"``.
    acts_on: ClassVar[str]
    #: Its documented parameter sweep, >= 3 values of its main parameter (``miars bench-defenses`` runs it).
    sweep: ClassVar[dict[str, list]]

    def catalogue_problem(self, n_items: int, k: int) -> "str | None":
        """Optional: a one-line reason why these parameters cannot serve top-``k`` lists from ``n_items`` items
        (the grid asks before any work), None when they can."""


class ListDefense(DefenseDeclarations, Protocol):
    """A defense that rewrites every served list (members' and non-members')."""

    selected_by: ClassVar[str] = 'acts_on = "lists" (the default)'
    check: ClassVar[str] = "check_list_defense"

    def apply(self, recommendations: "np.ndarray", context: "ServiceContext", seed: int = 0) -> "np.ndarray":
        """Lists of the same shape and dtype (int64): valid item columns, distinct per row, none the user knows.
        ``context``: the part's ``interactions``, ``is_member``, ``popular`` (item columns by popularity among
        members) and ``k``. Validate parameters first (``MiarsError`` naming the parameter)."""


class DataDefense(DefenseDeclarations, Protocol):
    """A defense that rewrites the members' training data before the recommender is fit."""

    selected_by: ClassVar[str] = 'acts_on = "data"'
    check: ClassVar[str] = "check_data_defense"

    def apply_data(self, members: "Interactions", seed: int = 0) -> "Interactions":
        """The ``Interactions`` the recommender is fit on: same users, items, ids and shape, binary CSR; may drop
        (or add) interactions; every member keeps >= 1. Members are still never served an item they know."""


class TrainingDefense(DefenseDeclarations, Protocol):
    """A defense that trains the recommender its own way (differential privacy, ...)."""

    selected_by: ClassVar[str] = 'acts_on = "training"'
    check: ClassVar[str] = "check_training_defense"

    #: Optional: the recommender names it can train (others fail with ``MiarsError`` naming these).
    recommenders: ClassVar[list[str]]
    #: Set by ``fit``: the DP claim, ``epsilon`` (> 0), ``delta`` ([0, 1)), ``level`` (``"record"`` or ``"user"``),
    #: ``mechanism``, its parameters, preferably ``covers``, ``outside`` and ``public`` (lists of sentences).
    privacy_: dict[str, Any]

    def fit(self, recommender: Any, members: "Interactions", seed: int = 0) -> Any:
        """Given the unfitted recommender the user chose and the members, return a fitted object with
        ``recommend(k)`` (int64 ``(n_members, k)``, best first, none known) and set ``privacy_``."""

    def set_state(self, recommender: Any, arrays: "dict[str, np.ndarray]", record: dict) -> Any:
        """Optional, the state contract: when the fitted object ``fit`` returns has ``get_state()``, restore it from
        that state and a fresh unfitted ``recommender`` (``fit``'s arguments minus the data); the restored object
        serves the same lists."""


# --------------------------------------------------------------------------- services

class Service(Protocol):
    """What accounts the recommender was not trained on are served (non-members, query attacks' fresh accounts)."""

    hook: ClassVar[str] = "register_services"
    selected_by: ClassVar[str] = "every service"
    check: ClassVar[str] = "check_service"

    #: Optional: how members are served, ``"trained"`` (the model's own top-k, the default) or ``"foldin"``
    #: (like a new account with their known history).
    members: str

    #: Optional: True when the service reads user attributes (``--user-attributes``; the built-in services with
    #: ``cold_start=attributes``). ``new_accounts`` is then called with ``attributes=`` (int codes, one row per
    #: user of ``train``, 0 = unknown) and its callable with ``(histories, attributes)`` (one row per account),
    #: and the served lists' stage key covers the file; other services are never handed attributes.
    uses_attributes: bool

    def serve_others(self, fitted: Any, train: "Interactions", histories: "sp.csr_matrix", k: int,
                     seed: int = 0) -> "np.ndarray":
        """int64 ``(histories.shape[0], k)``: valid item columns, distinct per row, none the account knows."""

    def new_accounts(self, fitted: Any, train: "Interactions", k: int, seed: int = 0) -> Callable[["sp.csr_matrix"], "np.ndarray"]:
        """Should exist: a callable ``histories -> lists`` serving the same lists as ``serve_others`` that holds only
        what serving new accounts needs (the popularity, the model's item side), never the members' data; query
        access keeps it and nothing else."""

    def check_recommender(self, recommender: Any, name: str) -> None:
        """Optional: raise ``MiarsError`` (one line: the recommender, what it lacks, the allowed values) for a
        recommender this service cannot serve; called for every (service, recommender) pair before any data is
        read and before a grid writes any folder."""


# --------------------------------------------------------------------------- namespaces

class Namespace(Protocol):
    """A family of names resolved on demand (``recbole:BPR``): ``register(kind, prefix, resolve, choices)``."""

    hook: ClassVar[str] = "register_namespaces"
    selected_by: ClassVar[str] = "any kind"
    check: ClassVar[str] = "check_plugin"

    def resolve(self, rest: str) -> Callable[..., Any]:
        """The factory of ``prefix:rest`` (a component of the namespace's kind, with its own contract); may raise
        ``MiarsError`` to refuse a name with the reason. A factory with ``**params`` provides ``get_params``."""

    def choices(self) -> list[str]:
        """The valid ``rest`` names (to validate and suggest close matches)."""


#: Every contract, in the order docs/hooks.md shows them.
PROTOCOLS: tuple[type, ...] = (
    ComponentContract, Dataset, Recommender, FoldInRecommender, NewAccountSide, StatefulRecommender, Featurizer,
    FeatureAttack, ListAttack, QueryAttack, InteractionAttack, DefenseDeclarations, ListDefense, DataDefense,
    TrainingDefense, Service, Namespace,
)
