"""The defense contract: where a defense acts, and serving members under any kind of defense.

A defense is a :class:`~miars_core.components.Component` with a class attribute ``acts_on``:

``"lists"`` (the default when the attribute is missing: every pre-existing defense)
    ``apply(recommendations, context, seed) -> np.ndarray``: rewrites the served lists
    (``(n_users, k)`` int item columns, same shape, distinct items per row, none the user knows).
``"data"``
    ``apply_data(members, seed) -> Interactions``: the training data the recommender is fit on
    (same users, items and shape; may drop interactions; every member keeps >= 1).
``"training"``
    ``fit(recommender, members, seed) -> fitted``: trains in place of ``recommender.fit``; the
    returned object has ``recommend(k)`` (``(n_members, k)`` int item columns, best first, none
    known) and the defense then holds ``privacy_`` (``epsilon``, ``delta``, ``level`` "record" or
    "user", ``mechanism``, and its parameters).

Every defense also declares ``sweep: dict[str, list]``, its documented parameter sweep (>= 3
values of its main parameter), which ``miars bench-defenses`` runs by default.

:func:`serve_members` is the one call site the service needs: it fits the recommender under a
``data`` or ``training`` defense (or none) and returns the members' lists, never with an item the
member knows — also the items a ``data`` defense dropped from training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import MiarsError
from .types import Interactions

__all__ = ["ACTS_ON", "acts_on", "fit_under_defense", "recommend_unknown", "serve_members", "privacy_of"]

#: The points of action of a defense, in the order data flows through the service.
ACTS_ON = ("data", "training", "lists")


def acts_on(defense: Any) -> str:
    """Where ``defense`` (an instance or a factory) acts: ``"lists"`` when it does not say."""
    where = getattr(defense, "acts_on", "lists")
    if where not in ACTS_ON:
        name = getattr(defense, "__name__", type(defense).__name__)
        raise MiarsError(f"defense {name}: acts_on must be one of {', '.join(ACTS_ON)}, got {where!r}")
    return where


def fit_under_defense(recommender: Any, members: Interactions, seed: int, defense: Any = None) -> tuple[Any, sp.csr_matrix]:
    """Fit ``recommender`` on ``members`` under ``defense``; return ``(fitted, training matrix)``.

    ``data``: the recommender is fit on ``defense.apply_data(members, seed)`` (checked: same
    shape, every member keeps an interaction). ``training``: ``defense.fit(recommender,
    members, seed)`` replaces the fit. ``lists`` or no defense: a plain ``recommender.fit``.
    The training matrix is what the fitted object masks when it recommends.
    """
    where = acts_on(defense) if defense is not None else None
    if where == "data":
        train = defense.apply_data(members, seed=seed)
        if not isinstance(train, Interactions) or train.matrix.shape != members.matrix.shape:
            raise ValueError(f"defense {type(defense).__name__}.apply_data must return Interactions of shape "
                             f"{members.matrix.shape}, got {getattr(getattr(train, 'matrix', None), 'shape', type(train).__name__)}")
        if members.n_users and (np.diff(sp.csr_matrix(train.matrix).indptr) == 0).any():
            raise MiarsError(f"defense {type(defense).__name__} left a member without any training interaction")
        fitted = recommender.fit(train, seed=seed) or recommender
        return fitted, sp.csr_matrix(train.matrix)
    if where == "training":
        fitted = defense.fit(recommender, members, seed=seed)
        if fitted is None or not callable(getattr(fitted, "recommend", None)):
            raise ValueError(f"defense {type(defense).__name__}.fit must return a fitted recommender with recommend(k)")
        return fitted, sp.csr_matrix(members.matrix)
    fitted = recommender.fit(members, seed=seed) or recommender
    return fitted, sp.csr_matrix(members.matrix)


def recommend_unknown(fitted: Any, train: sp.spmatrix, known: sp.spmatrix, k: int) -> np.ndarray:
    """``fitted``'s top-``k`` per member, skipping items in ``known`` that ``train`` did not mask.

    When the training matrix is ``known`` (no ``data`` defense) this is ``fitted.recommend(k)``.
    Otherwise it asks for ``k + d`` items, ``d`` the most known-but-untrained items of any
    member, and keeps each row's first ``k`` unknown ones (order kept).
    """
    train, known = sp.csr_matrix(train), sp.csr_matrix(known)
    extra = known - known.multiply(train > 0)
    extra.eliminate_zeros()
    d = int(np.diff(extra.indptr).max()) if extra.shape[0] else 0
    if d == 0:
        return np.asarray(fitted.recommend(k), dtype=np.int64)
    most_train = int(np.diff(train.indptr).max())
    n = min(k + d, known.shape[1] - most_train)
    lists = np.asarray(fitted.recommend(n), dtype=np.int64)
    n_users, n_items = known.shape
    keys = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(extra.indptr)) * n_items + extra.indices
    keys.sort()
    list_keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + lists
    pos = np.minimum(np.searchsorted(keys, list_keys), len(keys) - 1)
    ok = keys[pos] != list_keys
    if (ok.sum(axis=1) < k).any():
        raise MiarsError(f"cannot serve {k} unknown items to every member: some know too many of the {n_items} items; lower --top-k")
    order = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # first k unknown items, in rank order
    return np.take_along_axis(lists, order, axis=1)


def serve_members(recommender: Any, members: Interactions, k: int, seed: int, defense: Any = None,
                  known: sp.spmatrix | None = None) -> tuple[np.ndarray, Any]:
    """Members' top-``k`` lists under ``defense`` (any kind; ``lists`` defenses act later, on all users).

    ``known`` (default ``members.matrix``) is what each member must never be served. Leave the
    default when ``members`` is the training part of :func:`miars_core.utility.holdout`: the
    held-out items must stay servable, since utility counts how many the lists find.
    Returns ``(lists, fitted)``; ``privacy_of(defense)`` then holds a training defense's guarantee.
    """
    fitted, train = fit_under_defense(recommender, members, seed, defense)
    known = sp.csr_matrix(members.matrix) if known is None else sp.csr_matrix(known)
    return recommend_unknown(fitted, train, known, k), fitted


def privacy_of(defense: Any) -> dict | None:
    """The ``privacy_`` record a ``training`` defense set when it fit (None for other defenses)."""
    value = getattr(defense, "privacy_", None)
    return dict(value) if isinstance(value, dict) else None
