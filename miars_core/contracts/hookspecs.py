"""Hook specifications: every way a plugin extends miars.

Each hook receives a ``register`` callback. A plugin calls it once per component it
provides; the callback files the component under its name in the registry of its kind.
Built-in components are registered through these same hooks, from plugins loaded through
the same ``miars`` entry-point group as third-party ones.

Component contracts (duck-typed, scikit-learn style: ``__init__`` only stores
hyperparameters, ``fit`` returns ``self``, learned state ends in ``_``) are documented in
``docs/plugins.md`` and checked by :mod:`miars_core.kit.checks`.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT_NAME = "miars"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: ``register(name, factory)``: ``factory(**params)`` builds the component.
Register = Callable[[str, Callable[..., Any]], None]
#: ``register(kind, prefix, resolve, choices)``: names ``prefix:rest`` go to ``resolve(rest)``.
RegisterNamespace = Callable[[str, str, Callable[[str], Callable[..., Any]], Callable[[], list[str]]], None]


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset loaders: ``register(name, factory)``; ``factory().load(data_dir, download)`` returns Interactions."""


@hookspec
def register_recommenders(register: Register) -> None:
    """Register recommenders: ``register(name, factory)``; instances ``fit(train, seed)`` and ``recommend(k)``."""


@hookspec
def register_featurizers(register: Register) -> None:
    """Register featurizers: ``register(name, factory)``; instances ``fit(vectorization, seed)`` and ``transform(interactions, recommendations)``."""


@hookspec
def register_attacks(register: Register) -> None:
    """Register attack models: ``register(name, factory)``; instances ``fit(X, y, seed)`` and ``decision_function(X)``.

    The engine calls ``decision_function`` once per part and calls a user a member when the
    score is above the attack's ``decision_threshold_`` (0 without one); ``predict`` is optional.
    """


@hookspec
def register_defenses(register: Register) -> None:
    """Register defenses: ``register(name, factory)``; instances ``apply(recommendations, context, seed)``."""


@hookspec
def register_services(register: Register) -> None:
    """Register service models: ``register(name, factory)``; instances ``serve_others(fitted, train, histories, k, seed)``.

    ``new_accounts(fitted, train, k, seed)`` returns the callable ``histories -> lists`` that
    query access keeps: it must hold no members' data (``miars_core.kit.checks.check_service``).
    """


@hookspec
def register_namespaces(register: RegisterNamespace) -> None:
    """Register a name prefix such as ``recbole:`` that resolves ``prefix:rest`` names of one kind on demand."""
