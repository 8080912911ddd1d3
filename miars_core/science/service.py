"""The recommendation service of the paper: members get personalized lists, non-members popular ones."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from ..contracts.components import get_params
from ..contracts.defenses import acts_on
from ..contracts.errors import MiarsError, PluginError, format_traceback
from ..contracts.types import Part, ServiceContext
from .ranking import check_k, top_k_popular
from .utility import utility_metrics


@dataclass
class Served:
    """The lists one part's users see, plus what is worth reporting about how they were made."""

    lists: np.ndarray  # (users of the part, k) item columns, rows aligned with part.interactions
    context: ServiceContext
    report: dict = field(default_factory=dict)
    #: The fitted recommender and the members' data it was trained on (kept in memory, never stored):
    #: what query access (:class:`~miars_core.science.threat.QueryAccess`) asks.
    fitted: Any = field(default=None, repr=False)
    train: Any = field(default=None, repr=False)


class PopularServer:
    """The paper's service for accounts the model was not trained on: the k most popular items they do not know.

    With ``attributes_cold_start`` (a fitted :class:`~miars_core.science.attributes.AttributeColdStart`),
    the most popular items of the account's attribute group instead (``attributes``: one row of
    codes per account; None: unknown, the global list)."""

    __slots__ = ("popularity", "k", "attributes_cold_start")

    def __init__(self, popularity: np.ndarray, k: int, attributes_cold_start: Any = None):
        self.popularity = np.asarray(popularity).copy()
        self.k = int(k)
        self.attributes_cold_start = attributes_cold_start

    @property
    def cold_start(self) -> str:
        """``attributes`` when this server serves by attribute groups, else ``popular``."""
        return "attributes" if self.attributes_cold_start is not None else "popular"

    def __call__(self, histories, attributes: np.ndarray | None = None) -> np.ndarray:
        if self.attributes_cold_start is None:
            return top_k_popular(self.popularity, histories, self.k)
        return self.attributes_cold_start.recommend(histories, attributes, self.k)


class NewAccountServer:
    """Serves accounts the model was not trained on: ``server(histories) -> (accounts, k)`` item columns, validated.

    Holds only ``serve``, what the service plugin's ``new_accounts`` returned (for the
    built-in services: the item popularity, or the fitted model's item side), and names.
    Query access (:class:`~miars_core.science.threat.QueryAccess`) keeps nothing else of the service.
    """

    __slots__ = ("_serve", "k", "who", "recommender", "_service_type")

    def __init__(self, serve: Callable[[Any], np.ndarray], k: int, who: str, recommender: str | None = None,
                 service_type: type | None = None):
        self._serve = serve
        self.k = int(k)
        self.who = who
        #: ``recommender 'X' (plugin 'Y')``: named when a failure comes from its ``recommend_for`` / ``new_accounts``
        self.recommender = recommender
        self._service_type = service_type  # a class, never the service's state

    @property
    def ordered(self) -> bool:
        """Whether the server reads histories in order (a sequential model's): it is then handed histories whose
        values are each item's position (:meth:`~miars_core.contracts.types.Interactions.ordered_matrix`), not 0/1."""
        return bool(getattr(self._serve, "ordered", False))

    @property
    def cold_start(self) -> str:
        """``attributes`` when the server serves accounts without history by their attributes (it is then handed
        them, with each account's attribute codes); ``popular`` otherwise (query access serves them the popular list)."""
        return "attributes" if getattr(self._serve, "cold_start", "popular") == "attributes" else "popular"

    def __call__(self, histories, attributes: np.ndarray | None = None) -> np.ndarray:
        extra = {"attributes": attributes} if attributes is not None and self.cold_start == "attributes" else {}
        raw = _call_serving(self._serve, self.who, "serving new accounts", self.recommender, self._service_type,
                            histories, **extra)
        return check_lists(raw, (histories.shape[0], self.k), histories, self.who)


def uses_attributes(service: Any) -> bool:
    """Whether ``service`` reads user attributes (its ``uses_attributes``, e.g. ``cold_start=attributes``)."""
    return bool(getattr(service, "uses_attributes", False)) if service is not None else False


def new_account_server(service: Any, fitted: Any, train: Any, k: int, seed: int,
                       recommender: str | None = None, attributes: Any = None) -> NewAccountServer:
    """How ``service`` serves accounts ``fitted`` was not trained on, as a :class:`NewAccountServer`.

    A service with ``new_accounts(fitted, train, k, seed)`` returns a callable ``histories ->
    lists`` that keeps only what serving new accounts needs, never the members' data (both
    built-in services do). Without it, the service's ``serve_others`` is called with the fitted
    model and the training data, which the callable then holds (a third-party service's
    choice; docs/threats.md says what that means for isolation). ``service`` None: the paper's
    popular top-k. ``attributes`` (a :class:`~miars_core.science.attributes.UserAttributes`): handed to a
    service that :func:`uses_attributes` as the codes of ``train``'s users (``new_accounts(...,
    attributes=codes)``); other services never see it.
    """
    if service is None:  # the paper's service
        return NewAccountServer(PopularServer(train.item_popularity(), k), k, "the popular service")
    who = _who("service", type(service).__name__, service)
    if recommender is None:
        recommender = _who("recommender", type(fitted).__name__, fitted)
    make = getattr(service, "new_accounts", None)
    if make is not None:
        extra = {"attributes": attributes.for_users(train.user_ids) if attributes is not None else None} \
            if uses_attributes(service) else {}
        serve = _call_serving(make, who, "new_accounts", recommender, type(service), fitted, train, k, seed=seed,
                              **extra)
        if not callable(serve):
            raise MiarsError(f"{who} new_accounts returned {type(serve).__name__}; it must return a callable "
                             "histories -> lists")
    else:
        serve = functools.partial(service.serve_others, fitted, train, k=k, seed=seed)
    return NewAccountServer(serve, k, who, recommender, type(service))


def members_mode(service: Any) -> str:
    """How ``service`` serves members: ``trained`` (the model's own top-k, the default) or ``foldin`` (as a new
    account with the member's known history)."""
    mode = getattr(service, "members", "trained") if service is not None else "trained"
    if mode not in ("trained", "foldin"):
        raise MiarsError(f"service {type(service).__name__} declares members={mode!r}; allowed: trained, foldin")
    return mode


def popularity_order(part: Part) -> np.ndarray:
    """Item columns from most to least popular among the part's members (ties: lower column first)."""
    pop = part.members.item_popularity()
    return np.argsort(-pop, kind="stable")


def _who(kind: str, name: str, component: Any) -> str:
    """``recommender 'userknn' (plugin 'example')``: the component and the plugin that provided it."""
    plugin = type(component).__module__.split(".")[0]
    try:
        from ..contracts.plugins import get_plugins

        registry = get_plugins().registry(kind)
        if name in registry.entries or ":" in name:
            plugin = registry.get(name).plugin
        else:  # a class name: find the entry that builds it
            found = [e for e in registry.entries.values() if e.factory is type(component)]
            if found:
                name, plugin = found[0].name, found[0].plugin
    except Exception:  # noqa: BLE001 - a name outside the installed plugins (tests, notebooks)
        pass
    return f"{kind} {name!r} (plugin {plugin!r})"


class BadLists(MiarsError):
    """Served lists that break the contract (:func:`check_lists`): wrong type or shape, invalid, repeated or known items."""


def check_lists(lists: Any, shape: tuple[int, int], known, who: str, what: str = "returned") -> np.ndarray:
    """Validate served lists: an integer array of ``shape``, valid item columns, no repeat within a
    row, no item the user already knows; return them as int64, or raise a one-line :class:`BadLists`."""
    arr = np.asarray(lists) if not isinstance(lists, np.ndarray) else lists
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.kind == "f" and arr.size and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            detail = "float item indices"
        else:
            detail = f"values of dtype {arr.dtype}"
        raise BadLists(f"{who} {what} {detail}; it must return an integer array of item column indices")
    if arr.shape != shape:
        raise BadLists(f"{who} {what} lists of shape {arr.shape}, expected {shape} (one row of k items per user)")
    arr = arr.astype(np.int64, copy=False)
    if arr.size == 0:
        return arr
    n_items = known.shape[1]
    if arr.size and (arr.min() < 0 or arr.max() >= n_items):
        bad = int(arr[(arr < 0) | (arr >= n_items)][0])
        raise BadLists(f"{who} {what} item index {bad}, outside the valid columns 0..{n_items - 1}")
    if arr.shape[1] > 1:
        s = np.sort(arr, axis=1)
        dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if len(dup):
            raise BadLists(f"{who} {what} a list that repeats an item (row {int(dup[0])}); each list needs k distinct items")
    rows = np.repeat(np.arange(arr.shape[0]), arr.shape[1])
    seen = np.asarray(known[rows, arr.ravel()]).ravel() > 0
    if seen.any():
        row = int(rows[np.flatnonzero(seen)[0]])
        raise BadLists(f"{who} {what} an item the user already knows (row {row}); lists must exclude known items")
    return arr


@dataclass
class Fitted:
    """A fitted model, the data it was trained on and what is worth reporting about the fit.

    The engine's ``model`` stage stores it (the model through the recommender state contract,
    :mod:`miars_core.contracts.state`); serving (:func:`serve_fitted`), query access and
    interaction labels read it.
    """

    #: What ``fit`` returned: the fitted recommender, or the model a training defense fitted.
    model: Any
    #: The members' data the model was trained on (after a data defense, the defended data).
    train: Any
    #: ``name``, ``params``, ``fit_info``; under a data or training defense ``trained_interactions`` and ``privacy``.
    report: dict = field(default_factory=dict)


def fit_model(part: Part, recommender: Any, name: str, seed: int, defense: Any = None, defense_seed: int = 0) -> Fitted:
    """Fit ``recommender`` on the part's members (under a data or training defense): the first half of :func:`serve`.

    A ``data`` defense rewrites the members' training data first; a ``training`` defense fits
    the recommender its own way (``defense.fit(recommender, members, seed)``). Non-finite
    training losses in ``fit_info_`` fail the run.
    """
    who = _who("recommender", name, recommender)
    point = acts_on(defense) if defense is not None else None
    seen = part.members
    train = seen
    with stage_threads():
        if point == "data":
            dwho = _who("defense", type(defense).__name__, defense)
            train = _call(defense.apply_data, dwho, "apply_data", seen, seed=defense_seed)
            if train.matrix.shape != seen.matrix.shape or train.n_interactions == 0:
                raise MiarsError(f"{dwho} apply_data returned a {train.matrix.shape} matrix with {train.n_interactions} "
                                 f"interactions; it must keep the members' {seen.matrix.shape} shape and some interactions")
        if point == "training":
            dwho = _who("defense", type(defense).__name__, defense)
            fitted = _call(defense.fit, dwho, "fit", recommender, train, seed=defense_seed)
        else:
            fitted = _call(recommender.fit, who, "fit", train, seed=seed)
    info = dict(getattr(fitted, "fit_info_", {}) or {})
    for key, value in info.items():
        if isinstance(value, float) and not np.isfinite(value):
            raise MiarsError(f"{who} reports {key}={value} after training: the training diverged; "
                             "lower its learning_rate (or check its other parameters)")
    report: dict = {"name": name, "params": get_params(recommender), "fit_info": info}
    if point in ("data", "training"):
        report["trained_interactions"] = int(train.n_interactions)
        privacy = getattr(defense, "privacy_", None)
        if privacy:
            report["privacy"] = dict(privacy)
    return Fitted(fitted, train, report)


def serve(part: Part, recommender: Any, name: str, k: int, seed: int, defense: Any = None, defense_seed: int = 0,
          heldout: sp.spmatrix | None = None, service: Any = None, attributes: Any = None) -> Served:
    """Fit ``recommender`` on the part's members; members get its top-k, non-members what ``service`` serves new accounts.

    :func:`fit_model` then :func:`serve_fitted` (the engine stores the fit between the two).
    A ``data`` defense rewrites the members' training data first; a ``training`` defense fits
    the recommender its own way (``defense.fit(recommender, members, seed)``). Members' lists
    never hold an item the member knows, even one a data defense left out of training.
    ``part`` holds what the service knows of its users. ``heldout`` (members x items, rows
    aligned with ``part.members``) is the members' future: interactions the service never saw
    (:func:`miars_core.science.utility.holdout`, applied to the whole part before serving); the
    report's ``utility`` says how well the members' lists find them (Recall / NDCG / HR at k).
    ``service`` decides the non-members' lists (:func:`new_account_server`; default: the popular
    top-k) and, with ``members="foldin"``, the members' too: each member is then served like a
    new account with its known (training) history, and the report's ``members_foldin_overlap``
    is the mean share of a member's trained top-k that its folded-in list keeps.
    The lists are validated (:func:`check_lists`); a failure names the recommender and its
    plugin. Non-finite training losses in ``fit_info_`` fail the run.
    """
    check_k(k, part.interactions.matrix, who=f"{part.name} users")
    fitted = fit_model(part, recommender, name, seed, defense=defense, defense_seed=defense_seed)
    return serve_fitted(part, fitted, k, seed, heldout=heldout, service=service, attributes=attributes)


def serve_fitted(part: Part, fit: Fitted, k: int, seed: int, heldout: sp.spmatrix | None = None,
                 service: Any = None, attributes: Any = None) -> Served:
    """Serve the part's users from a fitted model: the second half of :func:`serve` (see there).

    ``seed`` is the fit's seed (the service's fold-in of new accounts draws from it). ``attributes``
    (:class:`~miars_core.science.attributes.UserAttributes`): the users' attributes, handed to a service
    that :func:`uses_attributes` (members' and non-members' codes); other services never see them.
    """
    check_k(k, part.interactions.matrix, who=f"{part.name} users")
    fold_members = members_mode(service) == "foldin"
    members = np.flatnonzero(part.is_member)
    others = np.flatnonzero(~part.is_member)
    fitted, train = fit.model, fit.train
    who = _who("recommender", fit.report.get("name", type(fitted).__name__), fitted)
    seen = part.members
    with stage_threads():
        member_lists = _unknown_top_k(fitted, train.matrix, seen.matrix, k, who)
    popularity = train.item_popularity()
    popular = np.argsort(-popularity, kind="stable")
    server = new_account_server(service, fitted, train, k, seed, recommender=who, attributes=attributes)
    codes = attributes.for_users(part.interactions.user_ids) if attributes is not None and uses_attributes(service) \
        else None
    if server.ordered and part.interactions.has_order:  # a sequential model reads each account's history in order
        ordered = part.interactions.ordered_matrix()
        known_others, known_members = ordered[others], ordered[members]
    else:
        known_others, known_members = part.interactions.matrix[others], seen.matrix
    with stage_threads():
        other_lists = _served_new(server, known_others, fitted, who, seed, None if codes is None else codes[others]) \
            if len(others) else np.empty((0, k), dtype=np.int64)
        folded = _served_new(server, known_members, fitted, who, seed, None if codes is None else codes[members]) \
            if fold_members and len(members) else None
    report = {key: fit.report[key] for key in ("name", "params", "fit_info") if key in fit.report}
    if folded is not None:  # members served as new accounts: how much of their trained list they keep
        kept = (member_lists[:, :, None] == folded[:, None, :]).any(axis=2).mean()
        report.update(members_served="foldin", members_foldin_overlap=round(float(kept), 4))
        member_lists = folded
    lists = np.empty((part.interactions.n_users, k), dtype=np.int64)
    lists[members] = member_lists
    lists[others] = other_lists
    overlap = np.isin(member_lists, popular[:k]).mean() if len(members) else 0.0
    report["members_popular_overlap"] = round(float(overlap), 4)
    if heldout is not None:
        report["utility"] = utility_metrics(member_lists, heldout, k)
    report.update({key: value for key, value in fit.report.items() if key not in report})
    return Served(lists, ServiceContext(part.interactions, part.is_member, popular, k), report, fitted, train)


def _unknown_top_k(fitted: Any, trained, known, k: int, who: str) -> np.ndarray:
    """``fitted.recommend`` lists cut to ``k`` items the users do not know (asks for more if needed), validated."""
    n = known.shape[0]
    raw = _call(fitted.recommend, who, "recommend", k)
    if known.nnz == trained.nnz:
        return check_lists(raw, (n, k), known, who)
    lists = check_lists(raw, (n, k), trained, who)
    is_known = np.asarray(known[np.repeat(np.arange(n), k), lists.ravel()]).reshape(n, k) > 0
    if not is_known.any():
        return lists
    # Items left out of training but known to the user: ask for enough more and drop them.
    extra = int(np.diff(known.indptr).max() - np.diff(trained.indptr).min())
    width = min(k + extra, known.shape[1] - int(np.diff(trained.indptr).max()))
    wider = check_lists(_call(fitted.recommend, who, "recommend", width), (n, width), trained, who)
    is_known = np.asarray(known[np.repeat(np.arange(n), width), wider.ravel()]).reshape(n, width) > 0
    if (width - is_known.sum(axis=1)).min() < k:
        raise MiarsError(f"{who} cannot serve {k} unknown items to every member after the defense removed "
                         "training data; lower --top-k")
    order = np.argsort(is_known, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(wider, order, axis=1)


def _call(method, who: str, what: str, *args, _blame=None, **kwargs):
    """Call a component's method; anything but a MiarsError becomes one line naming the component.

    The line is a :class:`~miars_core.contracts.errors.PluginError` that keeps the original
    traceback (``MIARS_DEBUG=1`` prints it; a grid cell's error.json holds it). ``_blame(exc)``
    may name another component instead: ``(who, what)``, or None to keep the caller's.
    """
    try:
        return method(*args, **kwargs)
    except MiarsError:
        raise
    except MemoryError:
        raise MiarsError(f"{who} ran out of memory in {what}; use a smaller dataset or smaller model parameters") from None
    except Exception as exc:  # noqa: BLE001 - the component's bug or refusal, named
        raise _named(exc, *((_blame(exc) if _blame else None) or (who, what))) from exc


def _named(exc: Exception, who: str, what: str) -> PluginError:
    """``exc`` raised by ``who``'s ``what`` as one line, with its traceback kept."""
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    hint = "; the training diverged: lower its learning_rate" if "loss" in text.lower() and "nan" in text.lower() else ""
    return PluginError(f"{who} failed in {what}: {type(exc).__name__}: {text}{hint}", format_traceback(exc))


#: Methods of a recommender that a service calls to serve new accounts (fold-in).
FOLD_IN_METHODS = ("recommend_for", "new_accounts")


def _call_serving(method, who: str, what: str, recommender: str | None, service_type: type | None, *args, **kwargs):
    """:func:`_call` for a service serving new accounts: an exception raised inside the recommender's
    ``recommend_for`` or ``new_accounts`` (which the service called) names the recommender and its
    plugin, and the service that called it; any other names the service."""
    def blame(exc):
        inside = _fold_in_frame(exc, service_type) if recommender else None
        return (recommender, f"{inside} (called by {who} {what})") if inside else None

    return _call(method, who, what, *args, _blame=blame, **kwargs)


def _fold_in_frame(exc: BaseException, service_type: type | None) -> str | None:
    """The recommender method (``recommend_for`` / ``new_accounts``) ``exc`` was raised inside, if any.

    The innermost frame of the traceback running one of :data:`FOLD_IN_METHODS` decides: the
    service's own ``new_accounts`` (``self`` an instance of ``service_type``) is the service's.
    """
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        if frame.f_code.co_name in FOLD_IN_METHODS:
            owner = frame.f_locals.get("self")
            if service_type is not None and isinstance(owner, service_type):
                return None
            return frame.f_code.co_name
    return None


def _served_new(server: NewAccountServer, histories, fitted: Any, who: str, seed: int,
                attributes: np.ndarray | None = None) -> np.ndarray:
    """``server(histories)``; lists that break the contract are blamed on the recommender when its own
    ``recommend_for`` breaks it on the same histories (the service only passed them on)."""
    try:
        return server(histories, attributes)
    except BadLists as exc:
        blame = _fold_in_problem(fitted, histories, server.k, seed, who)
        if blame is None:
            raise
        raise BadLists(f"{blame}; {server.who} serves new accounts with it") from exc


def _fold_in_problem(fitted: Any, histories, k: int, seed: int, who: str) -> str | None:
    """The contract problem of ``fitted``'s own fold-in (``new_accounts().recommend_for`` or
    ``recommend_for``) on ``histories``, as a line naming the recommender; None when it serves valid lists."""
    try:
        side = fitted.new_accounts() if callable(getattr(fitted, "new_accounts", None)) else fitted
        fold = getattr(side, "recommend_for", None)
        if fold is None:
            return None
        raw = fold(histories, k, seed=seed)
    except Exception:  # noqa: BLE001 - a diagnosis only: the service's error stands
        return None
    try:
        check_lists(raw, (histories.shape[0], k), histories, who, "recommend_for returned")
    except BadLists as exc:
        return str(exc)
    return None


def defend(served: Served, defense: Any, seed: int, name: str | None = None) -> np.ndarray:
    """The lists after ``defense`` rewrote them (validated like a recommender's, naming the defense).

    A defended list never holds an item the service knows the user has (the part's interactions).
    """
    name = name or getattr(defense, "name", None) or type(defense).__name__
    who = _who("defense", name, defense)
    with stage_threads():
        out = _call(defense.apply, who, "apply", served.lists.copy(), served.context, seed=seed)
    return check_lists(out, served.lists.shape, served.context.interactions.matrix, who)


def stage_threads():
    """Limit the BLAS/OpenMP pools of numpy, scipy and plugins to torch's thread count for one stage.

    Without it a plugin's numpy BLAS pool and torch's pool each take every core and fight
    (threadpoolctl); the limits are restored when the stage ends.
    """
    from contextlib import nullcontext

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency, but never fatal
        return nullcontext()
    import sys

    torch = sys.modules.get("torch")
    n = torch.get_num_threads() if torch is not None else None
    return threadpool_limits(limits=n, user_api="blas") if n else nullcontext()
