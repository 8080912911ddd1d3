"""Declarative checks of hyperparameter values (scikit-learn's ``_parameter_constraints`` idea).

A component class declares what each hyperparameter may be::

    class ItemKNN(...):
        param_constraints = {"k": Interval(int, 1), "shrink": Interval(float, 0)}

and :meth:`miars_core.contracts.registry.Registry.create` checks every given value against it before
anything is built or trained, so a bad value is a one-line error that names the component,
the parameter, what is allowed and an example. Independently of any declaration, no value
may be a non-finite number (``NaN``, ``Infinity``), at any depth of a list or dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        x = int(x)
    return f"{x:,}" if _is_int(x) and abs(x) >= 10_000 else str(x)


class Constraint:
    """One rule for a value: ``problem(value)`` returns None when the value is allowed."""

    def problem(self, value: Any) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """An ``int`` or a finite number (``float``) between ``low`` and ``high``.

    ``closed`` says which bounds are allowed: ``"both"`` (default), ``"left"``, ``"right"``
    or ``"neither"``; a bound of None is unbounded.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def problem(self, value: Any) -> str | None:
        if self.kind is int and not _is_int(value):
            return "is not an integer"
        if self.kind is not int and not _is_number(value):
            return "is not a number"
        if not math.isfinite(value):
            return "is not finite"
        lo_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        hi_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return None if lo_ok and hi_ok else "is out of range"

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.closed in ('both', 'left') else '>'} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"{'<=' if self.closed in ('both', 'right') else '<'} {_num(self.high)}")
        return what + (" " + " and ".join(parts) if parts else "")


@dataclass(frozen=True)
class ListOf(Constraint):
    """A list (or tuple) whose every element fits ``item``; at least ``min_len`` long."""

    item: Constraint
    min_len: int = 0

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, (list, tuple)):
            return "is not a list"
        if len(value) < self.min_len:
            return "is empty" if not value else f"has {len(value)} elements"
        for i, v in enumerate(value):
            if self.item.problem(v) is not None:
                return f"has element {i} = {v!r}, not {self.item.describe()}"
        return None

    def describe(self) -> str:
        n = "non-empty " if self.min_len == 1 else ""
        if isinstance(self.item, Anything):
            return f"a {n}list of values" if self.min_len <= 1 else f"a list of at least {self.min_len} values"
        if self.min_len > 1:
            return f"a list of at least {self.min_len} elements, each {self.item.describe()}"
        return f"a {n}list of elements, each {self.item.describe()}"


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values."""

    values: tuple

    def problem(self, value: Any) -> str | None:
        return None if value in self.values else "is not allowed"

    def describe(self) -> str:
        if len(self.values) == 1:
            return repr(self.values[0])
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Mapping(Constraint):
    """A dict with string keys (a JSON object); ``values`` constrains some keys, ``forbidden`` lists
    keys that may not be set (with the reason)."""

    values: dict = field(default_factory=dict)
    forbidden: dict = field(default_factory=dict)

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, dict):
            return "is not a JSON object"
        for key, v in value.items():
            if not isinstance(key, str):
                return f"has a key {key!r} that is not a string"
            if key in self.forbidden:
                return f"sets {key!r}, which {self.forbidden[key]}"
            rule = self.values.get(key)
            if rule is not None and rule.problem(v) is not None:
                return f"has {key}={v!r}, not {rule.describe()}"
        return None

    def describe(self) -> str:
        return 'a JSON object such as {"embedding_size": 64}'


@dataclass(frozen=True)
class OrNone(Constraint):
    """None, or a value that fits ``inner``."""

    inner: Constraint

    def problem(self, value: Any) -> str | None:
        return None if value is None else self.inner.problem(value)

    def describe(self) -> str:
        return self.inner.describe() + " (or null for the default)"


@dataclass(frozen=True)
class AnyOf(Constraint):
    """A value that fits at least one of ``options`` (e.g. an integer or the word "auto")."""

    options: tuple

    def problem(self, value: Any) -> str | None:
        problems = [c.problem(value) for c in self.options]
        return None if any(p is None for p in problems) else problems[0]

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.options)


@dataclass(frozen=True)
class Text(Constraint):
    """A non-empty string (a name, a path); no NUL byte, which no file system accepts."""

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return "is not a string"
        if not value.strip():
            return "is empty"
        if "\x00" in value:
            return "holds a NUL byte"
        return None

    def describe(self) -> str:
        return "a non-empty string"


@dataclass(frozen=True)
class Flag(Constraint):
    """``true`` or ``false`` (never 0/1 or a string)."""

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else "is not true or false"

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Anything(Constraint):
    """Any value (checked later, e.g. a hyperparameter checked by its component)."""

    def problem(self, value: Any) -> str | None:
        return None

    def describe(self) -> str:
        return "any value"


@dataclass(frozen=True)
class Table(Constraint):
    """A dict keyed by non-empty names, each value fitting ``value`` (``[target_params.lfm]`` in TOML).

    :func:`find_problem` descends into it, so an error names the innermost key.
    """

    value: Constraint = Anything()

    def problem(self, value: Any) -> str | None:
        found = find_problem(self, value)
        return None if found is None else found[2]

    def describe(self) -> str:
        if isinstance(self.value, Anything):
            return "a table of KEY = VALUE"
        if isinstance(self.value, Table):
            return "a table of tables"
        return f"a table of NAME = {self.value.describe()}"


def find_problem(rule: Constraint, value: Any, path: str = "") -> tuple[str, Any, str, Constraint] | None:
    """``(path, value, problem, rule)`` of the first part of ``value`` that ``rule`` refuses, else None.

    Tables are searched key by key (``path.key``), so the answer names the innermost key.
    """
    if isinstance(rule, Table):
        if not isinstance(value, dict):
            return path, value, "is not a table", rule
        for key, inner in value.items():
            if not isinstance(key, str) or not key.strip():
                return path, value, f"has an empty name {key!r}", rule
            found = find_problem(rule.value, inner, f"{path}.{key}" if path else key)
            if found is not None:
                return found
        return None
    problem = rule.problem(value)
    return None if problem is None else (path, value, problem, rule)


def non_finite_path(value: Any, path: str = "") -> str | None:
    """Where a NaN or infinity hides inside ``value`` (lists and dicts searched), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "the value"
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = non_finite_path(v, f"{path}[{i}]")
            if found:
                return found
    if isinstance(value, dict):
        for k, v in value.items():
            found = non_finite_path(v, f"{path}[{k!r}]")
            if found:
                return found
    return None


def constraints_of(factory: Any) -> dict[str, Constraint]:
    """The ``param_constraints`` a factory declares (looking through ``functools.partial``)."""
    while hasattr(factory, "func") and hasattr(factory, "keywords"):
        factory = factory.func
    found = getattr(factory, "param_constraints", None)
    return dict(found) if isinstance(found, dict) else {}


def parse_value(raw: str, what: str) -> Any:
    """A command-line value: JSON when it parses (numbers, lists, true, objects), else the text itself.

    ``what`` names the input in the one-line error for a value JSON cannot convert (e.g. an
    integer with more digits than Python reads).
    """
    import json

    from .errors import MiarsError

    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return raw
    except ValueError as exc:
        text = " ".join(str(exc).split())[:120]
        raise MiarsError(f"{what}: the value cannot be read ({text})") from None
