"""Name -> component registries, one per kind, filled by plugin hooks."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import DuplicateNameError, MiarsError, UnknownNameError

KINDS = ("dataset", "recommender", "featurizer", "attack", "defense")


def first_doc_line(obj: Any) -> str:
    """Return the first line of an object's docstring, or '' when it has none."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, factory and the plugin that provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    @property
    def summary(self) -> str:
        return first_doc_line(self.factory)


@dataclass
class Namespace:
    prefix: str
    resolve: Callable[[str], Callable[..., Any]]
    choices: Callable[[], list[str]]
    plugin: str


@dataclass
class Registry:
    """Components of one kind. Duplicate names fail loudly; unknown names suggest close matches."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)

    def add(self, name: str, factory: Callable[..., Any], plugin: str) -> None:
        if not isinstance(name, str) or not name or name != name.strip():
            raise MiarsError(f"plugin {plugin!r} registered a {self.kind} with an invalid name {name!r}; use a non-empty string")
        if ":" in name:
            raise MiarsError(
                f"plugin {plugin!r} registered {self.kind} {name!r}: ':' is reserved for namespaces; register a namespace instead"
            )
        if not callable(factory):
            raise MiarsError(f"plugin {plugin!r} registered {self.kind} {name!r} with a factory that is not callable")
        if name in self.entries:
            other = self.entries[name].plugin
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice, by plugin {other!r} and by plugin {plugin!r}; "
                "rename one or uninstall one of the plugins"
            )
        self.entries[name] = Entry(self.kind, name, factory, plugin)

    def add_namespace(self, prefix: str, resolve, choices, plugin: str) -> None:
        if prefix in self.namespaces:
            other = self.namespaces[prefix].plugin
            raise DuplicateNameError(
                f"{self.kind} namespace {prefix + ':'!r} is registered twice, by {other!r} and by {plugin!r}; "
                "uninstall one of the plugins"
            )
        self.namespaces[prefix] = Namespace(prefix, resolve, choices, plugin)

    def names(self) -> list[str]:
        return sorted(self.entries)

    def choices(self) -> list[str]:
        """Every valid name: registered names plus each namespace shown as ``prefix:<Name>``."""
        return self.names() + [f"{p}:<Name>" for p in sorted(self.namespaces)]

    def get(self, name: str) -> Entry:
        """Return the entry for ``name``, resolving ``prefix:rest`` through a namespace."""
        if name in self.entries:
            return self.entries[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self.namespaces:
            ns = self.namespaces[prefix]
            valid = ns.choices()
            if rest not in valid:
                hint = difflib.get_close_matches(rest, valid, n=3)
                did = f" (did you mean {', '.join(prefix + ':' + h for h in hint)}?)" if hint else ""
                raise UnknownNameError(
                    f"unknown {self.kind} {name!r}{did}; valid {prefix}: names: {', '.join(valid)}"
                )
            return Entry(self.kind, name, ns.resolve(rest), ns.plugin)
        everything = self.names() + [f"{p}:{c}" for p, ns in self.namespaces.items() for c in _safe(ns.choices)]
        hint = difflib.get_close_matches(name, everything, n=3, cutoff=0.5)
        did = f" (did you mean {', '.join(hint)}?)" if hint else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{did}; choose from: {', '.join(self.choices())}; "
            f"run `miars list {self.kind}` for details"
        )

    def create(self, name: str, **params: Any) -> Any:
        """Build the component ``name`` with hyperparameters ``params`` (checked against its defaults' types)."""
        entry = self.get(name)
        params = check_param_types(self.kind, name, entry.factory, params)
        try:
            return entry.factory(**params)
        except TypeError as exc:
            raise MiarsError(f"{self.kind} {name!r} rejected parameters {params}: {exc}") from None


def _safe(fn: Callable[[], list[str]]) -> list[str]:
    try:
        return list(fn())
    except Exception:  # a broken namespace must not hide the real error
        return []


def check_param_types(kind: str, name: str, factory: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """Reject a hyperparameter whose value does not fit the type of its default (one-line error).

    Integers are accepted where a float is expected and lists where a tuple is; parameters
    whose default is None, or factories without a readable signature, are not checked.
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return params
    out = dict(params)
    for key, value in params.items():
        p = sig.parameters.get(key)
        if p is None or p.default is inspect.Parameter.empty or p.default is None:
            continue
        default = p.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                out[key] = float(value)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, (tuple, list)):
            ok = isinstance(value, (tuple, list))
            if ok:
                out[key] = type(default)(value)
        else:
            continue
        if not ok:
            raise MiarsError(
                f"{kind} {name!r}: parameter {key}={value!r} should be a {type(default).__name__} "
                f"like its default {default!r}; pass e.g. {key}={json_like(default)}"
            )
    return out


def json_like(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = list(value)
    return str(value).replace("'", '"') if not isinstance(value, str) else value
