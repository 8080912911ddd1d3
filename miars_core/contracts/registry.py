"""Name -> component registries, one per kind, filled by plugin hooks."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import DuplicateNameError, MiarsError, UnknownNameError
from .params import constraints_of, non_finite_path

KINDS = ("dataset", "recommender", "featurizer", "attack", "defense", "service")


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
    """Components of one kind. Duplicate names fail loudly; unknown names suggest close matches.

    ``conflicts`` records names two plugins registered (the second plugin is skipped by the
    plugin manager); using such a name fails naming both plugins. ``failed_plugins`` names the
    plugins that failed to load, so an unknown name can say which of them might provide it.
    """

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)
    namespaces: dict[str, Namespace] = field(default_factory=dict)
    conflicts: dict[str, tuple[str, str]] = field(default_factory=dict)
    failed_plugins: list[str] = field(default_factory=list)

    def add(self, name: str, factory: Callable[..., Any], plugin: str) -> None:
        self.check_name(name, plugin)
        if not callable(factory):
            raise MiarsError(f"plugin {plugin!r} registered {self.kind} {name!r} with a factory that is not callable")
        self.entries[name] = Entry(self.kind, name, factory, plugin)

    def check_namespace(self, prefix: str, resolve, choices, plugin: str) -> None:
        """Raise MiarsError when ``plugin`` may not register the namespace ``prefix``."""
        if not isinstance(prefix, str) or not prefix or prefix != prefix.strip() or ":" in prefix:
            raise MiarsError(f"plugin {plugin!r} registered a {self.kind} namespace with an invalid prefix {prefix!r}")
        if not callable(resolve) or not callable(choices):
            raise MiarsError(f"plugin {plugin!r} registered namespace {prefix!r} whose resolve or choices is not callable")
        if prefix in self.namespaces:
            other = self.namespaces[prefix].plugin
            raise DuplicateNameError(
                f"{self.kind} namespace {prefix + ':'!r} is registered twice, by {other!r} and by {plugin!r}; "
                "uninstall one of the plugins"
            )

    def add_namespace(self, prefix: str, resolve, choices, plugin: str) -> None:
        self.check_namespace(prefix, resolve, choices, plugin)
        if prefix in self.namespaces:
            other = self.namespaces[prefix].plugin
            raise DuplicateNameError(
                f"{self.kind} namespace {prefix + ':'!r} is registered twice, by {other!r} and by {plugin!r}; "
                "uninstall one of the plugins"
            )
        self.namespaces[prefix] = Namespace(prefix, resolve, choices, plugin)

    def check_name(self, name: str, plugin: str) -> None:
        """Raise MiarsError when ``plugin`` may not register ``name`` (invalid, or taken)."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise MiarsError(f"plugin {plugin!r} registered a {self.kind} with an invalid name {name!r}; use a non-empty string")
        if ":" in name:
            raise MiarsError(
                f"plugin {plugin!r} registered {self.kind} {name!r}: ':' is reserved for namespaces; register a namespace instead"
            )
        if name in self.entries:
            other = self.entries[name].plugin
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice, by plugin {other!r} and by plugin {plugin!r}; "
                "rename one or uninstall one of the plugins"
            )

    def add_conflict(self, name: str, kept: str, skipped: str) -> None:
        self.conflicts.setdefault(name, (kept, skipped))

    def names(self) -> list[str]:
        """Usable registered names (a name two plugins registered is not usable)."""
        return sorted(n for n in self.entries if n not in self.conflicts)

    def choices(self) -> list[str]:
        """Every valid name: registered names plus each namespace shown as ``prefix:<Name>``."""
        return self.names() + [f"{p}:<Name>" for p in sorted(self.namespaces)]

    def get(self, name: str) -> Entry:
        """Return the entry for ``name``, resolving ``prefix:rest`` through a namespace.

        A namespace's ``resolve`` may raise :class:`MiarsError` for a name it refuses (e.g. a
        model known not to work): that message is the answer, whether or not ``choices()``
        lists the name.
        """
        if not isinstance(name, str):
            raise MiarsError(f"{self.kind} name {name!r} is not a string")
        contested = name if name in self.conflicts else name.partition(":")[0] + ":" if ":" in name else None
        if contested in self.conflicts:
            kept, skipped = self.conflicts[contested]
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered by two plugins, {kept!r} and {skipped!r} "
                f"(plugin {skipped!r} was skipped); uninstall one of them or rename the {self.kind}"
            )
        if name in self.entries:
            return self.entries[name]
        prefix, sep, rest = name.partition(":")
        if sep and prefix in self.namespaces:
            ns = self.namespaces[prefix]
            valid = list(_safe(ns.choices))
            if rest not in valid:
                try:
                    ns.resolve(rest)  # may explain the refusal
                except MiarsError:
                    raise
                except Exception:  # noqa: BLE001 - an unknown name: say so below
                    pass
                hint = difflib.get_close_matches(rest, valid, n=3)
                did = f" (did you mean {', '.join(prefix + ':' + h for h in hint)}?)" if hint else ""
                raise UnknownNameError(
                    f"unknown {self.kind} {name!r}{did}; valid {prefix}: names: {', '.join(valid)}{self._failed_hint()}"
                )
            try:
                factory = ns.resolve(rest)
            except MiarsError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken namespace plugin
                raise MiarsError(
                    f"plugin {ns.plugin!r} failed to resolve {self.kind} {name!r}: {type(exc).__name__}: {_first_line(exc)}"
                ) from None
            if not callable(factory):
                raise MiarsError(f"plugin {ns.plugin!r} resolved {self.kind} {name!r} to {factory!r}, which is not callable")
            return Entry(self.kind, name, factory, ns.plugin)
        everything = self.names() + [f"{p}:{c}" for p, ns in self.namespaces.items() for c in _safe(ns.choices)]
        hint = difflib.get_close_matches(name, everything, n=3, cutoff=0.5)
        did = f" (did you mean {', '.join(hint)}?)" if hint else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{did}; choose from: {', '.join(self.choices())}; "
            f"run `miars list {self.kind}` for details{self._failed_hint()}"
        )

    def _failed_hint(self) -> str:
        if not self.failed_plugins:
            return ""
        names = ", ".join(repr(p) for p in sorted(self.failed_plugins))
        return f"; note: plugin {names} failed to load and may provide it (see `miars plugins`)"

    def create(self, name: str, **params: Any) -> Any:
        """Build the component ``name`` with hyperparameters ``params``.

        Before the factory is called: unknown keys fail with the valid keys and a did-you-mean,
        values are checked against the type of their default, against the component's
        ``param_constraints`` (:mod:`miars_core.contracts.params`), and for non-finite numbers.
        """
        entry = self.get(name)
        params = check_param_keys(self.kind, name, entry.factory, params)
        check_param_finite(self.kind, name, params)
        params = check_param_types(self.kind, name, entry.factory, params)
        check_param_values(self.kind, name, entry.factory, params)
        try:
            return entry.factory(**params)
        except MiarsError:
            raise
        except (TypeError, ValueError) as exc:
            raise MiarsError(f"{self.kind} {name!r} rejected parameters {params}: {_first_line(exc)}") from None


def _safe(fn: Callable[[], list[str]]) -> list[str]:
    try:
        return list(fn())
    except Exception:  # a broken namespace must not hide the real error
        return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def check_param_keys(kind: str, name: str, factory: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """Reject keys the factory does not take (with a did-you-mean) and keys a name fixes.

    A ``functools.partial`` factory (``recbole:EASE`` is ``partial(RecBoleModel, model="EASE")``)
    fixes its keywords: overriding them would run one thing and record another.
    """
    fixed = dict(getattr(factory, "keywords", None) or {}) if hasattr(factory, "func") else {}
    for key in getattr(factory, "overridable", ()):  # defaults the partial sets, not fixed by the name
        fixed.pop(key, None)
    for key in params:
        if not isinstance(key, str) or not key:
            raise MiarsError(f"{kind} {name!r}: parameter name {key!r} is not a non-empty string")
        if key in fixed:
            raise MiarsError(
                f"{kind} {name!r}: parameter {key} is fixed to {fixed[key]!r} by the name {name!r}; "
                f"choose another {kind} name instead of passing {key}={params[key]!r}"
            )
    sig = _signature(factory)
    if sig is None or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return params
    valid = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in fixed]
    for key in params:
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            did = f" (did you mean {hint[0]}?)" if hint else ""
            keys = ", ".join(valid) if valid else "none"
            raise MiarsError(f"{kind} {name!r} has no parameter {key!r}{did}; valid parameters: {keys}")
    return params


def check_param_finite(kind: str, name: str, params: dict[str, Any]) -> None:
    """Refuse any NaN or infinity, at any depth of a list or dict value."""
    for key, value in params.items():
        where = non_finite_path(value)
        if where is not None:
            inner = "" if where == "the value" else f" (at {key}{where})"
            raise MiarsError(
                f"{kind} {name!r}: parameter {key}={value!r} holds a non-finite number{inner}; pass finite numbers only"
            )


def check_param_values(kind: str, name: str, factory: Callable[..., Any], params: dict[str, Any]) -> None:
    """Check values against the factory's ``param_constraints`` (and refuse any NaN or infinity)."""
    check_param_finite(kind, name, params)
    rules = constraints_of(factory)
    for key, value in params.items():
        rule = rules.get(key)
        if rule is None:
            continue
        problem = rule.problem(value)
        if problem is not None:
            raise MiarsError(
                f"{kind} {name!r}: parameter {key}={json_like(value)} {problem}; it must be {rule.describe()}"
            )


def check_param_types(kind: str, name: str, factory: Callable[..., Any], params: dict[str, Any]) -> dict[str, Any]:
    """Reject a hyperparameter whose value does not fit the type of its default (one-line error).

    Integers are accepted where a float is expected and lists where a tuple is; parameters
    whose default is None, or factories without a readable signature, are not checked.
    """
    sig = _signature(factory)
    if sig is None:
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
