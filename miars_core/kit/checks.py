"""Conformance checks for plugin authors: does a component keep its contract?

Each ``check_*`` function builds the component from its factory (a class, or any callable
that takes hyperparameters as keyword arguments), runs it on a tiny seeded synthetic data
set and raises :class:`AssertionError` with a message naming the broken rule. They take
well under a second for numpy components, so they belong in a plugin's own test suite::

    # tests/test_conformance.py of your plugin
    from miars_core.kit import checks
    from my_plugin.recommender import MyRecommender
    from my_plugin.defense import MyDefense
    import my_plugin

    def test_recommender():
        checks.check_recommender(MyRecommender)                  # default hyperparameters
        checks.check_recommender(MyRecommender, n_factors=8)     # or chosen ones

    def test_defense():
        checks.check_defense(MyDefense, rate=0.5)

    def test_everything_the_plugin_registers():
        checks.check_plugin(my_plugin)   # every registered component, default params
        # or, where a default does not fit 40 users x 60 items:
        # checks.check_plugin(my_plugin, params={"my-featurizer": {"dim": 8}})

What is checked, for every kind: ``factory(**params)`` works; ``__init__`` sets no
attribute ending in ``_`` (learned state is set by ``fit``); ``get_params()`` returns the
given hyperparameters and ``factory(**get_params())`` rebuilds the component; ``fit``
returns ``self``; the same seed gives identical output; inputs are not modified in place.
Then, per kind:

* recommender: ``recommend(k)`` is an int64 array of shape ``(n_users, k)`` of valid item
  columns, ``k`` distinct items per row, none of them in the user's training row
  (training data has items nobody interacted with, like a real member part);
* defense: ``apply`` keeps the shape, returns int64 valid item columns, distinct per row;
* featurizer: ``transform`` returns a finite float32 ``(n_users, d)`` array, ``d`` fixed;
* attack: ``decision_function`` returns finite float64 scores of shape ``(n,)``; the
  engine calls it once per view and predicts ``scores > decision_threshold_`` (0 when the
  attack has no such attribute), so an attack that also defines ``predict`` must agree:
  ``predict(X) == (decision_function(X) > threshold)``; on easily separable data members
  score higher than non-members (the sign convention);
* dataset: ``load(data_dir, download=False)`` returns a binary :class:`Interactions`;
* a recommender (or a training defense's fitted model) with the optional state contract
  (``get_state`` / ``set_state``, :mod:`miars_core.contracts.state`): its state is arrays of
  numbers plus a JSON record, and a model stored (through ``.npy`` bytes without pickle and JSON
  text, as the stage store writes them) and loaded on a fresh component serves the same lists,
  to members (``recommend``) and to new accounts (``recommend_for``, ``new_accounts``)
  (:func:`check_state`; :func:`check_recommender` runs it when ``get_state`` is defined).
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from ..contracts.components import get_params
from ..contracts.types import Interactions, ServiceContext, binary_csr

__all__ = [
    "make_interactions",
    "check_init",
    "check_recommender",
    "check_defense",
    "check_featurizer",
    "check_service",
    "check_attack",
    "check_view_attack",
    "check_isolation",
    "reachable",
    "check_dataset",
    "check_plugin",
    "check_list_defense",
    "check_data_defense",
    "check_training_defense",
    "check_state",
]

N_USERS = 40
N_ITEMS = 60
K = 10


def make_interactions(n_users: int = N_USERS, n_items: int = N_ITEMS, seed: int = 0, n_empty_items: int = 4) -> Interactions:
    """A tiny seeded binary user x item data set with some structure.

    Users belong to two taste groups (preferring the first or second half of the items),
    every user has 5 to 15 interactions, and the last ``n_empty_items`` items have none, as
    happens to the members' part of a real split.
    """
    rng = np.random.default_rng(seed)
    live = n_items - n_empty_items
    group = np.arange(n_users) % 2
    pref = np.where(np.arange(live)[None, :] < live // 2, 1 - group[:, None], group[:, None])
    weight = rng.random((n_users, live)) * (1.0 + 2.0 * pref)
    counts = rng.integers(5, 16, size=n_users)
    order = np.argsort(-weight, axis=1, kind="stable")
    rows = np.repeat(np.arange(n_users), counts)
    cols = np.concatenate([order[u, : counts[u]] for u in range(n_users)])
    return Interactions(
        binary_csr(rows, cols, (n_users, n_items)),
        np.array([f"u{u}" for u in range(n_users)]),
        np.array([f"i{i}" for i in range(n_items)]),
    )


# --------------------------------------------------------------------------- helpers


def _name(factory: Callable[..., Any]) -> str:
    return getattr(factory, "__qualname__", None) or getattr(factory, "__name__", None) or repr(factory)


def _snapshot(data: Interactions) -> tuple:
    m = data.matrix
    return (m.shape, m.indptr.copy(), m.indices.copy(), m.data.copy())


def _assert_unchanged(data: Interactions, snap: tuple, who: str, what: str) -> None:
    m = data.matrix
    same = (
        m.shape == snap[0]
        and np.array_equal(m.indptr, snap[1])
        and np.array_equal(m.indices, snap[2])
        and np.array_equal(m.data, snap[3])
    )
    assert same, f"{who} modified its input {what} in place; work on a copy"


def _assert_item_lists(out: Any, shape: tuple[int, int], n_items: int, who: str) -> None:
    assert isinstance(out, np.ndarray), f"{who} must return a numpy array, got {type(out).__name__}"
    assert out.shape == shape, f"{who} returned shape {out.shape}, expected {shape}"
    assert out.dtype == np.int64, f"{who} returned dtype {out.dtype}, expected int64 item column indices"
    if out.size:
        lo, hi = int(out.min()), int(out.max())
        assert lo >= 0 and hi < n_items, f"{who} returned item indices in [{lo}, {hi}]; valid columns are 0..{n_items - 1}"
        s = np.sort(out, axis=1)
        dup = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        assert len(dup) == 0, f"{who} repeats an item within a list (rows {dup[:5].tolist()}); each row needs distinct items"


def _build(factory: Callable[..., Any], params: dict[str, Any]) -> Any:
    try:
        return factory(**params)
    except Exception as exc:
        raise AssertionError(f"{_name(factory)}(**{params!r}) failed: {type(exc).__name__}: {exc}") from exc


def check_init(factory: Callable[..., Any], /, **params: Any) -> Any:
    """Check the scikit-learn ``__init__`` rules and ``get_params``; return a new instance."""
    who = _name(factory)
    obj = _build(factory, params)
    learned = sorted(a for a in vars(obj) if a.endswith("_") and not a.startswith("__")) if hasattr(obj, "__dict__") else []
    assert not learned, f"{who}.__init__ sets learned-state attributes {learned}; only fit may set attributes ending in '_'"
    try:
        got = get_params(obj)
    except Exception as exc:
        raise AssertionError(f"{who}.get_params() failed: {type(exc).__name__}: {exc}") from exc
    assert isinstance(got, dict), f"{who}.get_params() must return a dict, got {type(got).__name__}"
    for key, value in params.items():
        assert key in got, f"{who}.get_params() lacks {key!r}; __init__ must store each hyperparameter as a same-named attribute"
        assert got[key] is value or _equal(got[key], value), (
            f"{who}.get_params()[{key!r}] is {got[key]!r} but {value!r} was given; __init__ must store hyperparameters unchanged"
        )
    if inspect.isclass(factory):
        sig = inspect.signature(factory.__init__)
        missing = [
            n for n, p in sig.parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and not hasattr(obj, n)
        ]
        assert not missing, f"{who}.__init__ does not store {missing} as same-named attributes, so get_params() misses them"
    try:
        clone = factory(**got)
    except Exception as exc:
        raise AssertionError(f"{who}(**get_params()) failed, so the component cannot be cloned: {type(exc).__name__}: {exc}") from exc
    again = get_params(clone)
    assert set(again) == set(got) and all(_equal(again[k], got[k]) for k in got), (
        f"{who}(**get_params()).get_params() is {again!r}, expected {got!r}"
    )
    return obj


def _equal(a: Any, b: Any) -> bool:
    try:
        eq = a == b
        return bool(np.all(eq)) if isinstance(eq, np.ndarray) else bool(eq)
    except Exception:
        return a is b


def _fit(obj: Any, who: str, *args: Any, seed: int) -> None:
    assert callable(getattr(obj, "fit", None)), f"{who} has no fit method"
    ret = obj.fit(*args, seed=seed)
    assert ret is obj, f"{who}.fit must return self, returned {type(ret).__name__}"


# --------------------------------------------------------------------------- kinds


def check_recommender(factory: Callable[..., Any], /, **params: Any) -> None:
    """Check a recommender factory (``fit(train, seed)``, ``recommend(k)``) on synthetic data."""
    who = _name(factory)
    train = make_interactions()
    snap = _snapshot(train)
    rec = check_init(factory, **params)
    _fit(rec, who, train, seed=0)
    _assert_unchanged(train, snap, f"{who}.fit", "interactions")
    assert callable(getattr(rec, "recommend", None)), f"{who} has no recommend method"
    info = getattr(rec, "fit_info_", None)
    assert info is None or isinstance(info, dict), f"{who}.fit_info_ must be a dict when present, got {type(info).__name__}"
    shape = (train.n_users, K)
    out = rec.recommend(K)
    _assert_item_lists(out, shape, train.n_items, f"{who}.recommend({K})")
    rows = np.repeat(np.arange(train.n_users), K)
    seen = np.asarray(train.matrix[rows, out.ravel()]).ravel() > 0
    assert not seen.any(), (
        f"{who}.recommend recommends training items (user rows {np.unique(rows[seen])[:5].tolist()}); "
        "mask each user's known items"
    )
    one = rec.recommend(1)
    _assert_item_lists(one, (train.n_users, 1), train.n_items, f"{who}.recommend(1)")
    again = _build(factory, params)
    _fit(again, who, train, seed=0)
    assert np.array_equal(again.recommend(K), out), f"{who}: two fits with seed=0 recommend differently; use the seed for all randomness"
    if callable(getattr(rec, "get_state", None)):
        _check_stored(rec, who, lambda arrays, record: _build(factory, params).set_state(arrays, record))


def check_state(factory: Callable[..., Any], /, **params: Any) -> None:
    """Check a recommender's state contract: ``get_state()`` after ``fit`` gives arrays plus a JSON record (or
    None: "cannot be stored"), and ``set_state`` on a fresh component gives a model serving the same lists.

    The state goes through ``.npy`` bytes (no pickle) and JSON text first, as the stage store writes it.
    """
    who = _name(factory)
    rec = _build(factory, params)
    _fit(rec, who, make_interactions(), seed=0)
    assert callable(getattr(rec, "get_state", None)), f"{who} has no get_state method (the state contract is optional)"
    _check_stored(rec, who, lambda arrays, record: _build(factory, params).set_state(arrays, record))


def _round_trip(arrays: dict, record: dict) -> tuple[dict, dict]:
    """A state as the stage store gives it back: each array through .npy bytes without pickle, the record through JSON."""
    import io
    import json

    out = {}
    for name, value in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        buf.seek(0)
        out[name] = np.load(buf, allow_pickle=False)
    return out, json.loads(json.dumps(record, allow_nan=False))


def _check_stored(fitted: Any, who: str, restore: Callable[[dict, dict], Any]) -> None:
    """``fitted``'s state, stored and loaded by ``restore(arrays, record)``, serves what ``fitted`` serves."""
    from ..contracts.errors import MiarsError
    from ..contracts.state import check_state as valid_state

    assert callable(getattr(fitted, "get_state", None)), f"{who}: the fitted model has no get_state"
    try:
        state = valid_state(fitted.get_state(), who)
    except MiarsError as exc:
        raise AssertionError(str(exc)) from None
    if state is None:  # "this fit cannot be stored": the engine fits it again where needed
        return
    arrays, record = _round_trip(*state)
    restored = restore(arrays, record)
    assert restored is not None and callable(getattr(restored, "recommend", None)), (
        f"{who}: set_state must return the fitted model (usually self), got {type(restored).__name__}")
    assert np.array_equal(np.asarray(restored.recommend(K)), np.asarray(fitted.recommend(K))), (
        f"{who}: a model stored with get_state and loaded with set_state serves other lists to members")
    new = make_interactions(seed=3).matrix[:8]
    for name, serve in (("recommend_for", lambda m: m.recommend_for(new, K, seed=1)),
                        ("new_accounts", lambda m: m.new_accounts().recommend_for(new, K, seed=1))):
        if callable(getattr(fitted, name, None)):
            assert np.array_equal(np.asarray(serve(restored)), np.asarray(serve(fitted))), (
                f"{who}: a model stored with get_state and loaded with set_state serves other lists to new accounts "
                f"({name})")


def check_defense(factory: Callable[..., Any], /, **params: Any) -> None:
    """Check a defense factory (``apply(recommendations, context, seed)``) on synthetic lists.

    Dispatches on ``acts_on`` (see :func:`check_list_defense`, :func:`check_data_defense`,
    :func:`check_training_defense`); a list defense that declares no ``sweep`` gets the list contract only.
    """
    routed = _defense_route(factory)
    if routed is not None:
        return routed(factory, **params)
    who = _name(factory)
    data = make_interactions(seed=1)
    n_users, n_items = data.n_users, data.n_items
    rng = np.random.default_rng(1)
    is_member = np.zeros(n_users, dtype=bool)
    is_member[rng.permutation(n_users)[: n_users // 2]] = True
    known = data.matrix.toarray() > 0
    popularity = known[is_member].sum(axis=0)
    popular = np.lexsort((np.arange(n_items), -popularity)).astype(np.int64)
    # Members: random unseen items (a stand-in for personalized lists); non-members: popular unseen items.
    noise = np.where(known, np.inf, rng.random((n_users, n_items)))
    personal = np.argsort(noise, axis=1, kind="stable")[:, :K]
    pop_rank = np.empty(n_items, dtype=np.int64)
    pop_rank[popular] = np.arange(n_items)
    pop_key = np.where(known, n_items + pop_rank[None, :], pop_rank[None, :])
    pop_lists = np.argsort(pop_key, axis=1, kind="stable")[:, :K]
    recs = np.where(is_member[:, None], personal, pop_lists).astype(np.int64)
    context = ServiceContext(interactions=data, is_member=is_member.copy(), popular=popular.copy(), k=K)
    before = recs.copy()
    snap = _snapshot(data)
    obj = check_init(factory, **params)
    assert callable(getattr(obj, "apply", None)), f"{who} has no apply method"
    out = obj.apply(recs, context, seed=0)
    assert np.array_equal(recs, before), f"{who}.apply modified the recommendations in place; return a new array"
    _assert_unchanged(data, snap, f"{who}.apply", "context.interactions")
    assert np.array_equal(context.is_member, is_member) and np.array_equal(context.popular, popular), (
        f"{who}.apply modified the context in place"
    )
    _assert_item_lists(out, recs.shape, n_items, f"{who}.apply")
    again = _build(factory, params).apply(recs.copy(), context, seed=0)
    assert np.array_equal(np.asarray(again), out), f"{who}: two applies with seed=0 differ; use the seed for all randomness"


def check_featurizer(factory: Callable[..., Any], /, **params: Any) -> None:
    """Check a featurizer factory (``fit(vectorization, seed)``, ``transform(interactions, recs)``)."""
    who = _name(factory)
    vectorization = make_interactions(seed=2)
    data = make_interactions(seed=3)
    rng = np.random.default_rng(3)
    known = data.matrix.toarray() > 0
    recs = np.argsort(np.where(known, np.inf, rng.random(known.shape)), axis=1, kind="stable")[:, :K].astype(np.int64)
    snap_v, snap_d, recs_before = _snapshot(vectorization), _snapshot(data), recs.copy()
    obj = check_init(factory, **params)
    _fit(obj, who, vectorization, seed=0)
    _assert_unchanged(vectorization, snap_v, f"{who}.fit", "vectorization interactions")
    assert callable(getattr(obj, "transform", None)), f"{who} has no transform method"
    out = obj.transform(data, recs)
    _assert_unchanged(data, snap_d, f"{who}.transform", "interactions")
    assert np.array_equal(recs, recs_before), f"{who}.transform modified the recommendations in place"
    assert isinstance(out, np.ndarray), f"{who}.transform must return a numpy array, got {type(out).__name__}"
    assert out.ndim == 2 and out.shape[0] == data.n_users and out.shape[1] >= 1, (
        f"{who}.transform returned shape {out.shape}, expected ({data.n_users}, d) with d >= 1"
    )
    assert out.dtype == np.float32, f"{who}.transform returned dtype {out.dtype}, expected float32"
    assert np.isfinite(out).all(), f"{who}.transform returned non-finite features"
    few = data.rows(np.arange(7))
    part = obj.transform(few, recs[:7])
    assert isinstance(part, np.ndarray) and part.shape == (7, out.shape[1]), (
        f"{who}.transform on 7 users returned shape {getattr(part, 'shape', None)}, expected (7, {out.shape[1]}); "
        "the feature dimension must not depend on the number of users"
    )
    again = _build(factory, params)
    _fit(again, who, vectorization, seed=0)
    assert np.array_equal(again.transform(data, recs), out), f"{who}: two fits with seed=0 give different features"


def check_attack(factory: Callable[..., Any], /, **params: Any) -> None:
    """Check an attack-model factory (``fit(X, y, seed)``, ``decision_function(X)``, ``predict(X)``).

    An attack that declares ``threat = "lists"`` or ``"queries"`` is checked on adversary
    views instead (:func:`check_view_attack`).
    """
    from ..science.threat import threat_of

    if threat_of(_build(factory, params)) != "features":
        return check_view_attack(factory, **params)
    who = _name(factory)
    rng = np.random.default_rng(4)
    n, d = 200, 8
    y = np.zeros(n, dtype=bool)
    y[rng.permutation(n)[: n // 2]] = True
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[:, :2] += np.where(y[:, None], 1.5, -1.5).astype(np.float32)  # easily separable
    X_before, y_before = X.copy(), y.copy()
    obj = check_init(factory, **params)
    _fit(obj, who, X, y, seed=0)
    assert np.array_equal(X, X_before) and np.array_equal(y, y_before), f"{who}.fit modified X or y in place"
    assert callable(getattr(obj, "decision_function", None)), f"{who} has no decision_function method"
    scores = obj.decision_function(X)
    assert isinstance(scores, np.ndarray), f"{who}.decision_function must return a numpy array, got {type(scores).__name__}"
    assert scores.shape == (n,), f"{who}.decision_function returned shape {scores.shape}, expected ({n},)"
    assert scores.dtype == np.float64, f"{who}.decision_function returned dtype {scores.dtype}, expected float64"
    assert np.isfinite(scores).all(), f"{who}.decision_function returned non-finite scores"
    _check_predict(obj, who, X, scores)
    assert scores[y].mean() > scores[~y].mean(), (
        f"{who}: on easily separable data members score lower than non-members; "
        "decision_function must be higher for members (y=1)"
    )
    again = _build(factory, params)
    _fit(again, who, X, y.astype(np.int64), seed=0)  # 0/1 labels must work like bool ones
    assert np.array_equal(again.decision_function(X), scores), (
        f"{who}: two fits with seed=0 (bool and 0/1 labels) score differently; use the seed for all randomness"
    )


def _check_predict(obj: Any, who: str, data: Any, scores: np.ndarray) -> None:
    """The engine's predictions ``scores > decision_threshold_`` equal the attack's own ``predict``, if it has one."""
    from ..science.threat import decision_threshold

    try:
        threshold = decision_threshold(obj)
    except Exception as exc:  # noqa: BLE001 - the check's message
        raise AssertionError(f"{who}: {exc}") from None
    if not callable(getattr(obj, "predict", None)):
        return
    pred = np.asarray(obj.predict(data))
    n = len(scores)
    assert pred.shape == (n,) and pred.dtype == bool, f"{who}.predict must return a bool array of shape ({n},), got {pred.dtype} {pred.shape}"
    assert np.array_equal(pred, scores > threshold), (
        f"{who}.predict differs from decision_function > {threshold:g} (its decision_threshold_, 0 without one): the "
        "engine predicts from the scores, so predict must agree")


def _views(seed: int = 5, n: int = 80, n_items: int = 60, k: int = 6):
    """A shadow and a target view where members' lists come from their own taste and non-members' are popular."""
    from ..science.threat import AdversaryView, QueryAccess

    rng = np.random.default_rng(seed)
    clusters = 4
    taste = rng.integers(0, clusters, size=n)
    item_cluster = np.arange(n_items) % clusters
    vectors = np.eye(clusters)[item_cluster] + 0.05 * rng.normal(size=(n_items, clusters))
    rows, cols, lists = [], [], np.empty((n, k), dtype=np.int64)
    is_member = np.zeros(n, dtype=bool)
    is_member[rng.permutation(n)[: n // 2]] = True
    popular = np.arange(n_items)
    for u in range(n):  # a fixture of 80 users: clarity over speed
        own = np.flatnonzero(item_cluster == taste[u])
        seen = rng.choice(own, size=6, replace=False)
        rows += [u] * len(seen)
        cols += list(seen)
        pool = np.setdiff1d(own, seen) if is_member[u] else np.setdiff1d(popular, seen)
        lists[u] = pool[:k]
    histories = binary_csr(np.array(rows), np.array(cols), (n, n_items))

    class _Popular:
        def serve_others(self, fitted, train, histories, k, seed=0):
            from ..science.ranking import top_k_popular

            return top_k_popular(train.item_popularity(), histories, k)

    train = Interactions(histories, np.arange(n), np.arange(n_items))

    coo = histories.tocoo()
    pairs = np.column_stack([coo.row, coo.col]).astype(np.int64)

    def view(labels: bool) -> AdversaryView:
        access = QueryAccess.of(_Popular(), None, train, k, budget=None if labels else 6 * n)
        return AdversaryView(histories=histories, lists=lists.copy(), k=k, features=None, item_vectors=vectors,
                             popular=popular, popularity=np.asarray(histories.sum(axis=0)).ravel(),
                             labels=is_member.copy() if labels else None, query=access,
                             reference=lambda index=0: QueryAccess.of(_Popular(), None, train, k), pairs=pairs.copy(),
                             pair_labels=is_member[pairs[:, 0]] if labels else None)

    return view(True), view(False), is_member


def check_view_attack(factory: Callable[..., Any], /, **params: Any) -> None:
    """Check an attack of threat ``lists`` or ``queries``: ``fit(shadow_view, seed)``, ``decision_function(view)``.

    Scores are finite float64, one per user (per pair of ``view.pairs`` for ``level =
    "interaction"``); one ``decision_function`` call stays within the target's budget (the
    engine scores a view once); ``predict``, if defined, equals ``decision_function >
    decision_threshold_`` (checked on a fresh view, so a ``predict`` that scores again is not
    charged to the first view's budget); the same seed gives the same scores; the target view
    carries no labels; for ``lists`` attacks, members (personalized lists) score higher than
    non-members (the popular list) on average, except for controls (class attribute
    ``control = True``: a rule meant to read chance on a sound protocol).
    """
    from ..science.threat import threat_of

    from ..science.threat import level_of

    who = _name(factory)
    shadow, target, is_member = _views()
    obj = check_init(factory, **params)
    threat = threat_of(obj)
    _fit(obj, who, shadow, seed=0)
    scores = np.asarray(obj.decision_function(target))
    n = len(target.pairs) if level_of(obj) == "interaction" else target.n_users
    assert scores.shape == (n,), f"{who}.decision_function returned shape {scores.shape}, expected ({n},)"
    assert scores.dtype == np.float64 and np.isfinite(scores).all(), f"{who}.decision_function must return finite float64 scores"
    if threat == "queries":
        assert target.query.used_ <= target.query.budget, f"{who} asked more queries than its budget"
    else:
        assert target.query.used_ == 0, f"{who} declares threat 'lists' but queried the service"
        assert getattr(obj, "control", False) or scores[is_member].mean() > scores[~is_member].mean(), (
            f"{who}: members (personalized lists) score lower than non-members (popular list); "
            "decision_function must be higher for members")
    _check_predict(obj, who, _views()[1], scores)
    again = _build(factory, params)
    _fit(again, who, _views()[0], seed=0)
    assert np.array_equal(np.asarray(again.decision_function(_views()[1])), scores), (
        f"{who}: two fits with seed=0 score differently; use the seed for all randomness")


_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), type(Ellipsis), range, slice)


def reachable(*roots: Any, limit: int = 2_000_000):
    """Every object reachable from ``roots`` through instance state, each once (an iterator).

    Follows instance attributes (``__dict__`` and ``__slots__``), the items and keys of lists,
    tuples, sets and dicts, bound methods' ``__self__`` and ``__func__``, functions' closure
    cells, defaults and ``__dict__``, ``functools.partial``'s function, arguments and keywords,
    and numpy arrays' ``base``. Not followed: classes, modules and module globals (a
    function's ``__globals__``), which an attack can reach anyway by importing. Raises
    ``AssertionError`` past ``limit`` objects.
    """
    import functools
    import types

    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _LEAVES) or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        assert len(seen) <= limit, f"more than {limit} objects reachable; raise limit"
        yield obj
        if isinstance(obj, np.ndarray):
            if obj.base is not None:
                stack.append(obj.base)
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        if isinstance(obj, (types.MethodType, types.BuiltinMethodType)):
            stack.append(getattr(obj, "__self__", None))
            stack.append(getattr(obj, "__func__", None))
        if isinstance(obj, types.FunctionType):
            stack.extend(cell.cell_contents for cell in (obj.__closure__ or ()) if _cell_filled(cell))
            stack.extend(obj.__defaults__ or ())
            stack.extend((obj.__kwdefaults__ or {}).values())
        if isinstance(obj, functools.partial):
            stack.append(obj.func)
            stack.extend(obj.args)
            stack.extend(obj.keywords.values())
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            stack.append(state)
        for klass in type(obj).__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                    stack.append(getattr(obj, name))


def _cell_filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty closure cell
        return False
    return True


def _as_array(obj: Any) -> np.ndarray | None:
    """``obj`` as a numpy array when it is one or a torch tensor (else None)."""
    if isinstance(obj, np.ndarray):
        return obj
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach") and hasattr(obj, "numpy"):
        try:
            return obj.detach().cpu().numpy()
        except (RuntimeError, TypeError):
            return None
    return None


def check_isolation(*roots: Any, is_member: np.ndarray | None, train: Any, forbidden: Any = (),
                    forbidden_types: tuple[type, ...] = ()) -> int:
    """Nothing reachable from ``roots`` (what an attack receives on the target part) holds membership or training data.

    Fails when a reachable array (numpy or torch) equals ``is_member`` (as 0/1 values) or the
    members' row indices, a reachable sparse or dense matrix equals ``train`` (the members'
    training matrix) or has exactly its number of interactions (the same data re-indexed, as a
    RecBole model holds it), or one of the ``forbidden`` objects (the fitted model, the engine's
    cell, ...) or an instance of ``forbidden_types`` is reachable. Returns how many objects were walked (:func:`reachable` says what
    is followed). ``is_member`` None: no labels to look for.
    """
    y = np.asarray(is_member if is_member is not None else np.zeros(0)).astype(bool)
    rows = np.flatnonzero(y)
    train = sp.csr_matrix(train)
    banned = {id(x): x for x in forbidden}
    walked = 0
    for obj in reachable(*roots):
        walked += 1
        if id(obj) in banned or isinstance(obj, forbidden_types):
            raise AssertionError(f"a {type(obj).__name__} the attack must not reach is reachable from what it receives")
        if sp.issparse(obj):
            if obj.nnz == train.nnz:
                raise AssertionError(f"a sparse matrix {obj.shape} with exactly the members' {train.nnz} training "
                                     "interactions is reachable")
            continue
        arr = _as_array(obj)
        if arr is None or arr.dtype == object:
            continue
        if len(y) and arr.ndim == 1 and len(arr) == len(y) and np.isin(arr, (0, 1)).all() and np.array_equal(arr.astype(bool), y):
            raise AssertionError(f"an array equal to the target's membership labels is reachable ({arr.dtype})")
        if len(y) and arr.ndim == 1 and len(arr) == len(rows) and np.array_equal(arr, rows):
            raise AssertionError("an array equal to the target members' row indices is reachable")
        if arr.shape == train.shape and np.array_equal(arr != 0, train.toarray() != 0):
            raise AssertionError("a dense array equal to the members' training matrix is reachable")
    return walked


def check_dataset(factory: Callable[..., Any], /, data_dir: Any = None, **params: Any) -> Interactions:
    """Check a dataset factory: ``load(data_dir, download=False)`` gives binary Interactions.

    The data must be available without a download (embedded, cached or in ``data_dir``).
    Returns the loaded data for further checks of your own.
    """
    who = _name(factory)
    obj = check_init(factory, **params)
    assert callable(getattr(obj, "load", None)), f"{who} has no load method"
    data = obj.load(data_dir, download=False)
    assert isinstance(data, Interactions), f"{who}.load must return miars_core.contracts.types.Interactions, got {type(data).__name__}"
    m = data.matrix
    assert sp.issparse(m) and m.format == "csr", f"{who}.load: matrix must be a scipy CSR matrix, got {type(m).__name__}"
    assert data.n_users > 0 and data.n_items > 0 and m.nnz > 0, f"{who}.load returned an empty data set {m.shape}"
    assert np.all(m.data == 1), f"{who}.load: the matrix must be binary (1.0 per interaction, duplicates collapsed)"
    assert len(np.unique(data.user_ids)) == data.n_users, f"{who}.load: user_ids are not unique"
    assert len(np.unique(data.item_ids)) == data.n_items, f"{who}.load: item_ids are not unique"
    return data


def check_service(factory: Callable[..., Any], /, **params: Any) -> None:
    """Check a service model (``serve_others(fitted, train, histories, k, seed)``) with a fold-in-capable stand-in model."""
    who = _name(factory)
    train = make_interactions(seed=4)
    others = make_interactions(seed=5)
    fitted = _FoldInPopular().fit(train)
    snap_t, snap_o = _snapshot(train), _snapshot(others)
    obj = check_init(factory, **params)
    assert callable(getattr(obj, "serve_others", None)), f"{who} has no serve_others method"
    out = obj.serve_others(fitted, train, others.matrix, K, seed=0)
    _assert_unchanged(train, snap_t, f"{who}.serve_others", "the training interactions")
    _assert_unchanged(others, snap_o, f"{who}.serve_others", "the non-members' histories")
    _assert_item_lists(out, (others.n_users, K), others.n_items, f"{who}.serve_others")
    known = others.matrix.toarray() > 0
    assert not known[np.arange(others.n_users)[:, None], out].any(), f"{who}.serve_others served an item the user knows"
    again = _build(factory, params).serve_others(fitted, train, others.matrix, K, seed=0)
    assert np.array_equal(again, out), f"{who}: the same seed gives different lists"
    if callable(getattr(obj, "new_accounts", None)):
        server = obj.new_accounts(fitted, train, K, seed=0)
        assert callable(server), f"{who}.new_accounts must return a callable histories -> lists"
        assert np.array_equal(np.asarray(server(others.matrix)), out), (
            f"{who}.new_accounts(...)(histories) serves other lists than serve_others")
        try:
            check_isolation(server, is_member=None, train=train.matrix, forbidden=[fitted, train])
        except AssertionError as exc:
            raise AssertionError(f"{who}.new_accounts holds the members' data: {exc}; keep only what serving new "
                                 "accounts needs (popularity, the model's item side)") from None


class _FoldInPopular:
    """A stand-in fitted model that can serve new accounts (``recommend_for``; ``new_accounts()``: popularity only)."""

    def fit(self, train, seed=0):
        self.pop_ = train.item_popularity()
        self.known_ = train.matrix
        return self

    def recommend(self, k):
        from ..science.ranking import top_k_popular

        return top_k_popular(self.pop_, self.known_, k)

    def recommend_for(self, histories, k, seed=0):
        return self.new_accounts().recommend_for(histories, k, seed)

    def new_accounts(self) -> "_PopularSide":
        return _PopularSide(self.pop_.copy())


class _PopularSide:
    """What :class:`_FoldInPopular` needs to serve new accounts: the popularity."""

    def __init__(self, popularity: np.ndarray):
        self.popularity = popularity

    def recommend_for(self, histories, k, seed=0):
        from ..science.ranking import top_k_popular

        return top_k_popular(self.popularity, histories, k)


_CHECKS = {
    "recommender": check_recommender,
    "defense": check_defense,
    "featurizer": check_featurizer,
    "attack": check_attack,
    "service": check_service,
}


def check_plugin(
    plugin: ModuleType | object,
    *,
    params: dict[str, dict[str, Any]] | None = None,
    kinds: tuple[str, ...] = tuple(_CHECKS),
    skip: tuple[str, ...] = (),
) -> list[str]:
    """Run the checks on every component ``plugin`` registers.

    Components are built with their default hyperparameters, or with ``params[name]``
    where given (e.g. a smaller dimension that fits the 40 x 60 synthetic data).

    ``plugin`` is the plugin module (or object) with ``@hookimpl`` functions; it is loaded
    alone, without the installed plugins. Datasets are not loaded (they may need files):
    call :func:`check_dataset` for them. Names behind a namespace (``prefix:Name``) are not
    enumerated: check a few with ``check_*(registry.get("prefix:Name").factory)``.
    ``skip`` lists names not to check. Returns the
    ``kind:name`` strings checked, and fails if a registered component breaks its contract.
    """
    from ..contracts.plugins import build, new_plugin_manager, register_plugin

    pm = new_plugin_manager()
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    info: dict = {}
    register_plugin(pm, plugin, name, info)
    registries = build(pm, info).registries
    assert info[name].status == "loaded", f"plugin {name!r} did not register cleanly: {info[name].status}"
    done = []
    for kind in kinds:
        check = _CHECKS[kind]
        for entry in registries[kind].entries.values():
            if entry.name in skip:
                continue
            try:
                check(entry.factory, **(params or {}).get(entry.name, {}))
            except AssertionError as exc:
                raise AssertionError(f"{kind} {entry.name!r} of plugin {name!r}: {exc}") from exc
            done.append(f"{kind}:{entry.name}")
    return done


# --------------------------------------------------------------------------- defenses at every point of action
#
# A defense declares where it acts (``acts_on``: "lists", the default, "data" or "training"; see
# miars_core.contracts.defenses) and its documented parameter sweep (``sweep``). ``check_defense`` routes
# here on ``acts_on``; a list defense without a ``sweep`` keeps the list contract alone (defenses
# written before the sweep existed), every other defense gets the full check of its kind:
#
# * declarations: the docstring cites its paper (a year such as 2021 or CCS'21) or says it is
#   "not from a paper"; ``sweep`` is a dict of hyperparameter -> list, one of them with >= 3
#   distinct values, and every swept value builds the component;
# * the contract of its kind (shape, valid and distinct items, nothing known, input untouched,
#   same seed -> same output), for the given parameters and for every swept value;
# * bad parameters: NaN for each numeric swept parameter, plus the caller's ``bad_params``,
#   raise MiarsError with a one-line message that names the parameter;
# * training defenses: ``fit`` returns a fitted recommender and sets ``privacy_`` (epsilon,
#   delta, level "record" or "user", mechanism), and an unsupported recommender is a MiarsError.

import contextvars
import math
import re

_CITATION = re.compile(r"\b(19|20)\d\d\b|'\d\d\b|not (taken )?from (a|the) (paper|literature)", re.I)
_BASE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("miars_checks_base_only", default=False)

#: Synthetic catalogue large enough for the sweeps of list defenses (pools of 20 * k popular items).
N_ITEMS_SWEEP = 600


def defense_kind(factory: Callable[..., Any]) -> str:
    """``acts_on`` of a defense factory or instance: "lists" (also when missing), "data" or "training"."""
    from ..contracts.defenses import ACTS_ON

    where = getattr(factory, "acts_on", "lists")
    assert where in ACTS_ON, f"{_name(factory)}.acts_on must be one of {ACTS_ON}, got {where!r}"
    return where


def _defense_route(factory: Callable[..., Any]) -> Callable[..., Any] | None:
    if _BASE_ONLY.get():
        return None
    kind = defense_kind(factory)
    if kind == "lists" and getattr(factory, "sweep", None) is None:
        return None
    return {"lists": check_list_defense, "data": check_data_defense, "training": check_training_defense}[kind]


def _check_declarations(factory: Callable[..., Any], obj: Any, params: dict[str, Any]) -> dict[str, list]:
    who = _name(factory)
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{who} has no docstring; its first line is the summary of `miars list defense`"
    assert _CITATION.search(doc), (
        f"{who}'s docstring cites no paper (no year like 2021 or CCS'21); cite it, or say the defense is not from a paper"
    )
    sweep = getattr(obj, "sweep", None)
    assert isinstance(sweep, dict) and sweep, f"{who}.sweep must be a non-empty dict {{parameter: [values, ...]}}, got {sweep!r}"
    known = get_params(obj)
    for key, values in sweep.items():
        assert key in known, f"{who}.sweep names {key!r}, which is not a hyperparameter of {who} ({sorted(known)})"
        assert isinstance(values, (list, tuple)) and len(values) >= 1, f"{who}.sweep[{key!r}] must be a list of values"
    assert any(len({repr(v) for v in values}) >= 3 for values in sweep.values()), (
        f"{who}.sweep must give >= 3 distinct values of its main parameter, got {sweep!r}"
    )
    for key, values in sweep.items():
        for value in values:
            check_init(factory, **{**params, key: value})
    return {k: list(v) for k, v in sweep.items()}


def _check_bad_params(factory: Callable[..., Any], params: dict[str, Any], sweep: dict[str, list],
                      bad_params: Any, run: Callable[[Any], Any]) -> None:
    from ..contracts.errors import MiarsError

    who = _name(factory)
    cases = [dict(b) for b in bad_params]
    for key, values in sweep.items():
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            cases.append({key: float("nan")})
    for bad in cases:
        obj = factory(**{**params, **bad})
        try:
            run(obj)
        except MiarsError as exc:
            msg = str(exc)
            assert "\n" not in msg.strip(), f"{who} with {bad!r}: the error must be one line, got {msg!r}"
            assert any(key in msg for key in bad), f"{who} with {bad!r}: the error must name the parameter, got {msg!r}"
            continue
        except Exception as exc:  # noqa: BLE001 - the point is which exception
            raise AssertionError(f"{who} with {bad!r} raised {type(exc).__name__}: {exc}; raise miars_core.contracts.errors.MiarsError") from exc
        raise AssertionError(f"{who} accepted the bad parameters {bad!r}; validate them at the start and raise MiarsError")


def _list_case(n_items: int = N_ITEMS, seed: int = 1) -> tuple[np.ndarray, ServiceContext, Interactions]:
    """Lists and context like those of :func:`check_defense`: members personal, non-members popular."""
    data = make_interactions(n_items=n_items, seed=seed)
    n_users = data.n_users
    rng = np.random.default_rng(seed)
    is_member = np.zeros(n_users, dtype=bool)
    is_member[rng.permutation(n_users)[: n_users // 2]] = True
    known = data.matrix.toarray() > 0
    popularity = known[is_member].sum(axis=0)
    popular = np.lexsort((np.arange(n_items), -popularity)).astype(np.int64)
    personal = np.argsort(np.where(known, np.inf, rng.random((n_users, n_items))), axis=1, kind="stable")[:, :K]
    pop_rank = np.empty(n_items, dtype=np.int64)
    pop_rank[popular] = np.arange(n_items)
    pop_lists = np.argsort(np.where(known, n_items + pop_rank[None, :], pop_rank[None, :]), axis=1, kind="stable")[:, :K]
    recs = np.where(is_member[:, None], personal, pop_lists).astype(np.int64)
    return recs, ServiceContext(interactions=data, is_member=is_member, popular=popular, k=K), data


def _check_list_apply(obj: Any, who: str, recs: np.ndarray, context: ServiceContext, factory, params) -> np.ndarray:
    before, snap = recs.copy(), _snapshot(context.interactions)
    out = obj.apply(recs, context, seed=0)
    assert np.array_equal(recs, before), f"{who}.apply modified the recommendations in place; return a new array"
    _assert_unchanged(context.interactions, snap, f"{who}.apply", "context.interactions")
    _assert_item_lists(out, recs.shape, context.interactions.n_items, f"{who}.apply")
    rows = np.repeat(np.arange(recs.shape[0]), recs.shape[1])
    seen = np.asarray(context.interactions.matrix[rows, out.ravel()]).ravel() > 0
    assert not seen.any(), f"{who}.apply serves items the user knows (rows {np.unique(rows[seen])[:5].tolist()})"
    again = _build(factory, params).apply(recs.copy(), context, seed=0)
    assert np.array_equal(np.asarray(again), out), f"{who}: two applies with seed=0 differ; use the seed for all randomness"
    return out


def check_list_defense(factory: Callable[..., Any], /, *, bad_params: Any = (), **params: Any) -> None:
    """Check a defense acting on the served lists (``acts_on = "lists"``, ``apply(recs, context, seed)``).

    The list contract of :func:`check_defense` (plus: no served item is known to its user), the
    declarations (paper cited, ``sweep`` with >= 3 values), the contract again for every swept
    value on a larger catalogue, and one-line MiarsErrors for NaN swept parameters and for each
    dict in ``bad_params`` (e.g. ``[{"p": 1.5}, {"p": -0.1}]``).
    """
    who = _name(factory)
    assert defense_kind(factory) == "lists", f"{who}.acts_on is {defense_kind(factory)!r}, not 'lists'"
    obj = check_init(factory, **params)
    sweep = _check_declarations(factory, obj, params)
    token = _BASE_ONLY.set(True)
    try:
        check_defense(factory, **params)
    finally:
        _BASE_ONLY.reset(token)
    recs, context, _ = _list_case()
    _check_list_apply(obj, who, recs, context, factory, params)
    big_recs, big_context, _ = _list_case(n_items=N_ITEMS_SWEEP)
    for key, values in sweep.items():
        for value in values:
            p = {**params, key: value}
            _check_list_apply(_build(factory, p), f"{who}({key}={value!r})", big_recs, big_context, factory, p)
    _check_bad_params(factory, params, sweep, bad_params, lambda o: o.apply(recs.copy(), context, seed=0))


def _check_data_apply(obj: Any, who: str, members: Interactions, factory, params) -> Interactions:
    snap = _snapshot(members)
    out = obj.apply_data(members, seed=0)
    _assert_unchanged(members, snap, f"{who}.apply_data", "members")
    assert isinstance(out, Interactions), f"{who}.apply_data must return miars_core.contracts.types.Interactions, got {type(out).__name__}"
    m = out.matrix
    assert sp.issparse(m) and m.format == "csr", f"{who}.apply_data: matrix must be a scipy CSR matrix"
    assert m.shape == members.matrix.shape, f"{who}.apply_data returned shape {m.shape}, expected {members.matrix.shape} (same users and items)"
    assert np.array_equal(out.user_ids, members.user_ids) and np.array_equal(out.item_ids, members.item_ids), (
        f"{who}.apply_data changed the user or item ids; keep the same users and items, in the same order"
    )
    assert m.nnz == 0 or np.all(m.data == 1), f"{who}.apply_data: the matrix must be binary (1.0 per interaction)"
    empty = np.flatnonzero(np.diff(m.indptr) == 0)
    assert len(empty) == 0, f"{who}.apply_data left members {empty[:5].tolist()} without interactions; keep >= 1 each or raise MiarsError"
    again = _build(factory, params).apply_data(members, seed=0)
    assert (again.matrix != m).nnz == 0, f"{who}: two apply_data with seed=0 differ; use the seed for all randomness"
    return out


def check_data_defense(factory: Callable[..., Any], /, *, bad_params: Any = (), **params: Any) -> None:
    """Check a defense acting on the training data (``acts_on = "data"``, ``apply_data(members, seed)``).

    ``apply_data`` returns binary CSR Interactions with the same users, items and ids, every
    member keeping >= 1 interaction, input untouched, same seed -> same data; plus the
    declarations, every swept value, and one-line MiarsErrors for bad parameters.
    """
    who = _name(factory)
    assert defense_kind(factory) == "data", f"{who}.acts_on is {defense_kind(factory)!r}, not 'data'"
    obj = check_init(factory, **params)
    assert callable(getattr(obj, "apply_data", None)), f"{who} has no apply_data method"
    sweep = _check_declarations(factory, obj, params)
    members = make_interactions(seed=5)
    _check_data_apply(obj, who, members, factory, params)
    for key, values in sweep.items():
        for value in values:
            p = {**params, key: value}
            _check_data_apply(_build(factory, p), f"{who}({key}={value!r})", members, factory, p)
    _check_bad_params(factory, params, sweep, bad_params, lambda o: o.apply_data(members, seed=0))


class _MostPopular:
    """A stand-in recommender a training defense may not support (no ``model`` attribute)."""

    def get_params(self):
        return {}

    def fit(self, train, seed=0):
        self.known_ = train.matrix
        self.pop_ = train.item_popularity()
        return self

    def recommend(self, k):
        from ..science.ranking import top_k_popular

        return top_k_popular(self.pop_, self.known_, k)


def _recommender_for(factory: Callable[..., Any], recommender: Any) -> list[tuple[str, Callable[[], Any]]]:
    """(label, builder) of the recommenders to wrap: the given one, else the defense's ``recommenders``."""
    if recommender is not None:
        if callable(recommender) and not hasattr(recommender, "fit"):
            return [(_name(recommender), recommender)]
        import copy

        return [(type(recommender).__name__, lambda: copy.deepcopy(recommender))]
    names = getattr(factory, "recommenders", None)
    if not names:
        return [("most-popular stand-in", _MostPopular)]
    from ..contracts.plugins import get_plugins

    plugins = get_plugins()
    out = []
    for name in names:
        if ":" in name:
            continue  # namespaced aliases resolve to the same classes; check the plain names
        out.append((name, lambda name=name: plugins.create("recommender", name)))
    return out or [(names[0], lambda: plugins.create("recommender", names[0]))]


def _check_privacy(obj: Any, who: str) -> dict:
    privacy = getattr(obj, "privacy_", None)
    assert isinstance(privacy, dict), f"{who}.fit must set privacy_ (a dict), got {type(privacy).__name__}"
    for key in ("epsilon", "delta", "level", "mechanism"):
        assert key in privacy, f"{who}.privacy_ lacks {key!r}; it needs epsilon, delta, level and mechanism"
    eps, delta = privacy["epsilon"], privacy["delta"]
    assert isinstance(eps, (int, float)) and eps > 0 and not math.isnan(eps), f"{who}.privacy_['epsilon'] must be > 0, got {eps!r}"
    assert isinstance(delta, (int, float)) and 0 <= delta < 1, f"{who}.privacy_['delta'] must be in [0, 1), got {delta!r}"
    assert privacy["level"] in ("record", "user"), f"{who}.privacy_['level'] must be 'record' or 'user', got {privacy['level']!r}"
    assert isinstance(privacy["mechanism"], str) and privacy["mechanism"], f"{who}.privacy_['mechanism'] must name the mechanism"
    for key in ("covers", "outside", "public"):  # optional: what the guarantee covers, what it leaves out, what is public
        if key in privacy:
            value = privacy[key]
            assert isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value), (
                f"{who}.privacy_[{key!r}] must be a list of sentences, got {value!r}")
    return privacy


def _check_training_fit(obj: Any, who: str, build_rec: Callable[[], Any], members: Interactions, factory, params,
                        repeat: bool = True) -> np.ndarray:
    snap = _snapshot(members)
    fitted = obj.fit(build_rec(), members, seed=0)
    _assert_unchanged(members, snap, f"{who}.fit", "members")
    assert fitted is not None and callable(getattr(fitted, "recommend", None)), (
        f"{who}.fit must return a fitted recommender with recommend(k), got {type(fitted).__name__}"
    )
    _check_privacy(obj, who)
    out = np.asarray(fitted.recommend(K))
    _assert_item_lists(out, (members.n_users, K), members.n_items, f"{who}: fitted.recommend({K})")
    rows = np.repeat(np.arange(members.n_users), K)
    seen = np.asarray(members.matrix[rows, out.ravel()]).ravel() > 0
    assert not seen.any(), f"{who}: the fitted recommender recommends training items (rows {np.unique(rows[seen])[:5].tolist()})"
    if repeat:
        again = _build(factory, params).fit(build_rec(), members, seed=0).recommend(K)
        assert np.array_equal(np.asarray(again), out), f"{who}: two fits with seed=0 recommend differently; use the seed"
    if callable(getattr(fitted, "get_state", None)):  # the state contract: defense.set_state(recommender, arrays, record)
        assert callable(getattr(obj, "set_state", None)), (
            f"{who}: its fitted model has get_state but the defense has no set_state(recommender, arrays, record)")
        _check_stored(fitted, who, lambda arrays, record: _build(factory, params).set_state(build_rec(), arrays, record))
    return out


def check_training_defense(factory: Callable[..., Any], /, *, recommender: Any = None, bad_params: Any = (),
                           **params: Any) -> None:
    """Check a defense acting on training (``acts_on = "training"``, ``fit(recommender, members, seed)``).

    Wraps ``recommender`` (a factory or an instance; default: each plain name in the defense's
    ``recommenders`` attribute, else a most-popular stand-in) and checks: the fitted object's
    ``recommend(k)`` lists (int64, valid, distinct, none known), ``privacy_`` (epsilon > 0,
    delta in [0, 1), level "record" or "user", mechanism), members untouched, same seed -> same
    lists, the declarations, every swept value, one-line MiarsErrors for bad parameters, and a
    MiarsError when a defense that declares ``recommenders`` is asked to wrap another one.
    Training is real: expect seconds per fit for torch models.
    """
    from ..contracts.errors import MiarsError

    who = _name(factory)
    assert defense_kind(factory) == "training", f"{who}.acts_on is {defense_kind(factory)!r}, not 'training'"
    obj = check_init(factory, **params)
    assert callable(getattr(obj, "fit", None)), f"{who} has no fit method"
    sweep = _check_declarations(factory, obj, params)
    members = make_interactions(seed=6)
    builders = _recommender_for(factory, recommender)
    for label, build_rec in builders:
        _check_training_fit(obj, f"{who} on {label}", build_rec, members, factory, params)
    label, build_rec = builders[0]
    for key, values in sweep.items():
        for value in values:
            p = {**params, key: value}
            _check_training_fit(_build(factory, p), f"{who}({key}={value!r}) on {label}", build_rec, members, factory, p,
                                repeat=False)
    _check_bad_params(factory, params, sweep, bad_params, lambda o: o.fit(build_rec(), members, seed=0))
    if getattr(factory, "recommenders", None) and recommender is None:
        try:
            _build(factory, params).fit(_MostPopular(), members, seed=0)
        except MiarsError as exc:
            assert "\n" not in str(exc).strip(), f"{who}: the unsupported-recommender error must be one line"
        else:
            raise AssertionError(f"{who} declares recommenders={factory.recommenders!r} but accepted another recommender; "
                                 "raise MiarsError naming the supported ones")
