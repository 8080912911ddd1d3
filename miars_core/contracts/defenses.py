"""The defense contract: where a defense acts, and serving members under any kind of defense.

A defense is a :class:`~miars_core.contracts.components.Component` with a class attribute ``acts_on``:

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
    "user", ``mechanism``, and its parameters; the built-ins add ``covers``, ``outside`` and
    ``public``: what the guarantee covers, what the service adds outside it, what is public).
    ``miars audit-dp`` (:mod:`miars_core.engine.audit`) measures a lower bound on that epsilon.

Every defense also declares ``sweep: dict[str, list]``, its documented parameter sweep (>= 3
values of its main parameter), which ``miars bench-defenses`` runs by default.

:func:`miars_core.science.service.serve` fits the recommender under a ``data`` or ``training`` defense
(or none) and serves the members' lists, never with an item the member knows (also the items a
``data`` defense dropped from training); the engine gives such a fit its own cache key, and runs
a ``lists`` defense as its own stage afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import MiarsError
from .types import Interactions

__all__ = ["ACTS_ON", "acts_on", "privacy_of"]

#: The points of action of a defense, in the order data flows through the service.
ACTS_ON = ("data", "training", "lists")


def acts_on(defense: Any) -> str:
    """Where ``defense`` (an instance or a factory) acts: ``"lists"`` when it does not say."""
    where = getattr(defense, "acts_on", "lists")
    if where not in ACTS_ON:
        name = getattr(defense, "__name__", type(defense).__name__)
        raise MiarsError(f"defense {name}: acts_on must be one of {', '.join(ACTS_ON)}, got {where!r}")
    return where


def privacy_of(defense: Any) -> dict | None:
    """The ``privacy_`` record a ``training`` defense set when it fit (None for other defenses)."""
    value = getattr(defense, "privacy_", None)
    return dict(value) if isinstance(value, dict) else None
