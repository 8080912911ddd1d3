"""The plugin manager facade: the one module that calls ``pm.hook``.

Plugins, the built-in ones included, are found through the ``miars`` entry-point group.
A plugin that fails to import is recorded and skipped, never fatal.
"""

from __future__ import annotations

import importlib.metadata as md
import threading
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import DuplicateNameError, MiarsError
from .registry import KINDS, Registry

ENTRY_POINT_GROUP = "miars"

#: ``MIARS_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the plugins shipped with miars: every other
#: distribution's entry point is blocked through pluggy's ``set_blocked`` and listed as blocked
#: (a clean environment for tests and bug reports, like pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD).
AUTOLOAD_VAR = "MIARS_DISABLE_PLUGIN_AUTOLOAD"
#: The distribution whose entry points are the built-in plugins.
DISTRIBUTION = "miars"

_HOOK_FOR_KIND = {
    "dataset": "register_datasets",
    "recommender": "register_recommenders",
    "featurizer": "register_featurizers",
    "attack": "register_attacks",
    "defense": "register_defenses",
    "service": "register_services",
}


@dataclass
class PluginInfo:
    """What ``miars plugins`` shows about one plugin."""

    name: str
    version: str = ""
    module: str = ""
    status: str = "loaded"  # or "failed: <one line>"
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Plugins:
    """A loaded plugin manager plus the registries it filled."""

    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    info: dict[str, PluginInfo]

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def create(self, kind: str, name: str, **params: Any) -> Any:
        return self.registries[kind].create(name, **params)


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


#: Entry-point names of the built-in plugins: on a name conflict they keep their names.
BUILTIN_PLUGINS = ("attacks", "datasets", "defenses", "recbole", "services")

_SPEC_NAMES = sorted(n for n in dir(hookspecs) if n.startswith("register_") and hasattr(getattr(hookspecs, n), "miars_spec"))


def _one_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip().splitlines()[0]


def validate_plugin(plugin: ModuleType | object, name: str) -> None:
    """Raise MiarsError unless ``plugin`` is a well-formed miars plugin.

    pluggy does the checking: the plugin is registered alone in a fresh manager (which
    validates each ``@hookimpl``'s arguments against its spec) and ``check_pending()`` fails
    on any implementation whose hook name matches no spec (``register_recommender``). A
    ``register_*`` function without ``@hookimpl`` and a plugin with no hook at all fail too.
    """
    import difflib

    probe = new_plugin_manager()
    try:
        probe.register(plugin, name=name)
        probe.check_pending()
    except pluggy.PluginValidationError as exc:
        text = " ".join(str(exc).split())
        bad = next((h.name for h in probe.get_hookcallers(plugin) or [] if not h.has_spec()), None)
        hint = difflib.get_close_matches(bad, _SPEC_NAMES, n=1) if bad else []
        did = f" (did you mean {hint[0]}?)" if hint else ""
        raise MiarsError(f"{text}{did}; valid hooks: {', '.join(_SPEC_NAMES)}") from None
    except ValueError as exc:  # pluggy: the plugin object or name is already registered
        raise MiarsError(_one_line(exc)) from None
    unmarked = []
    for attr in sorted(dir(plugin)):
        if not attr.startswith("register_") or attr.startswith("__"):
            continue
        try:
            value = getattr(plugin, attr)
        except Exception:  # noqa: BLE001 - odd descriptors are not hooks
            continue
        if callable(value) and probe.parse_hookimpl_opts(plugin, attr) is None and attr in _SPEC_NAMES:
            unmarked.append(attr)
    if unmarked:
        raise MiarsError(
            f"function {', '.join(unmarked)} is not marked @hookimpl, so miars never calls it; "
            "decorate it with `@hookimpl` (from miars_core.contracts.hookspecs import hookimpl)"
        )
    if not probe.get_hookcallers(plugin):
        raise MiarsError(f"plugin {name!r} implements no miars hook; define one of: {', '.join(_SPEC_NAMES)} with @hookimpl")


def register_plugin(pm: pluggy.PluginManager, plugin: ModuleType | object, name: str, info: dict[str, PluginInfo],
                    version: str = "", module: str = "") -> bool:
    """Validate and register one plugin; a bad one is recorded as failed and left out."""
    entry = PluginInfo(name, version, module or name)
    try:
        validate_plugin(plugin, name)
        pm.register(plugin, name=name)
    except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal
        entry.status = f"failed: {_one_line(exc) if not isinstance(exc, MiarsError) else str(exc)}"
        info[name] = entry
        return False
    info[name] = entry
    return True


def load_entry_point_plugins(pm: pluggy.PluginManager, info: dict[str, PluginInfo]) -> None:
    """Import and register every plugin of the ``miars`` entry-point group; record failures.

    With ``MIARS_DISABLE_PLUGIN_AUTOLOAD=1`` only miars' own entry points load; the others are
    blocked in the plugin manager (``pm.set_blocked``) and recorded with status ``blocked``.
    """
    import os

    builtin_only = os.environ.get(AUTOLOAD_VAR, "").strip() == "1"
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        version = dist.version if dist is not None else ""
        if ep.name in info:
            continue  # the same distribution seen twice on sys.path
        if builtin_only and (dist is None or _canonical(dist.metadata["Name"] or "") != DISTRIBUTION):
            pm.set_blocked(ep.name)
            info[ep.name] = PluginInfo(ep.name, version, ep.value, status=f"blocked ({AUTOLOAD_VAR}=1)")
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal
            info[ep.name] = PluginInfo(ep.name, version, ep.value, status=f"failed: {_one_line(exc)}")
            continue
        register_plugin(pm, plugin, ep.name, info, version, ep.value)


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def build(pm: pluggy.PluginManager, info: dict[str, PluginInfo]) -> Plugins:
    """Call every registration hook and fill one registry per kind.

    Each plugin's registrations are collected first and accepted all together or not at all:
    a plugin whose hook raises, registers an invalid name, or a name another plugin already
    holds is marked failed and skipped (built-in plugins keep their names), so one bad plugin
    never disables the others. A conflicting name stays unusable, naming both plugins.
    """
    registries = {kind: Registry(kind) for kind in KINDS}
    collected: dict[str, list[tuple]] = {}
    for kind, hook_name in _HOOK_FOR_KIND.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin_name = pm.get_name(impl.plugin) or "?"
            calls = _collect(impl, plugin_name, hook_name, info)
            if calls is None:
                collected[plugin_name] = None  # type: ignore[assignment]
            elif collected.get(plugin_name, []) is not None:
                collected.setdefault(plugin_name, []).extend(("entry", kind, *c) for c in calls)
    for impl in pm.hook.register_namespaces.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or "?"
        calls = _collect(impl, plugin_name, "register_namespaces", info, arity=4)
        if calls is None:
            collected[plugin_name] = None  # type: ignore[assignment]
        elif collected.get(plugin_name, []) is not None:
            collected.setdefault(plugin_name, []).extend(("namespace", *c) for c in calls)
    order = sorted(collected, key=lambda n: (n not in BUILTIN_PLUGINS, n))
    for plugin_name in order:
        calls = collected[plugin_name]
        if calls is None:
            continue  # its hook raised: already marked failed
        _accept(plugin_name, calls, registries, info)
    failed = sorted(n for n, i in info.items() if i.status.startswith("failed"))
    for registry in registries.values():
        registry.failed_plugins = failed
    for name, plugin in pm.list_name_plugin():
        if name in info:
            info[name].hooks = sorted({h.name for h in pm.get_hookcallers(plugin) or []})
    return Plugins(pm, registries, info)


def _accept(plugin_name: str, calls: list[tuple], registries: dict[str, Registry], info) -> None:
    """Add one plugin's registrations if every one of them is valid; else mark the plugin failed."""
    seen: set[tuple[str, str]] = set()
    try:
        for call in calls:
            if call[0] == "entry":
                _, kind, name, factory = call
                registries[kind].check_name(name, plugin_name)
                if not callable(factory):
                    raise MiarsError(f"plugin {plugin_name!r} registered {kind} {name!r} with a factory that is not callable")
                key = (kind, name)
            else:
                _, kind, prefix, resolve, choices = call
                if kind not in registries:
                    raise MiarsError(
                        f"plugin {plugin_name!r} registered a namespace for unknown kind {kind!r}; use one of {', '.join(KINDS)}"
                    )
                registries[kind].check_namespace(prefix, resolve, choices, plugin_name)
                key = (kind, prefix + ":")
            if key in seen:
                raise DuplicateNameError(f"plugin {plugin_name!r} registers {key[0]} {key[1]!r} twice")
            seen.add(key)
    except DuplicateNameError as exc:
        for call in calls:
            kind, name = (call[1], call[2]) if call[0] == "entry" else (call[1], call[2] + ":")
            reg = registries.get(kind)
            if reg is None:
                continue
            holder = reg.entries.get(name) if call[0] == "entry" else reg.namespaces.get(call[2])
            if holder is not None:
                reg.add_conflict(name if call[0] == "entry" else name, holder.plugin, plugin_name)
        _mark_failed(info, plugin_name, str(exc) + " (this plugin was skipped)")
        return
    except MiarsError as exc:
        _mark_failed(info, plugin_name, str(exc) + " (this plugin was skipped)")
        return
    for call in calls:
        if call[0] == "entry":
            _, kind, name, factory = call
            registries[kind].add(name, factory, plugin_name)
            _note(info, plugin_name, kind, name)
        else:
            _, kind, prefix, resolve, choices = call
            registries[kind].add_namespace(prefix, resolve, choices, plugin_name)
            _note(info, plugin_name, kind, f"{prefix}:<Name>")


def _mark_failed(info, plugin_name: str, message: str) -> None:
    entry = info.setdefault(plugin_name, PluginInfo(plugin_name))
    entry.status = f"failed: {message}"
    entry.provides = {}


def _collect(impl, plugin_name: str, hook_name: str, info, arity: int = 2) -> list[tuple] | None:
    """Run one plugin's registration hook and return what it registered.

    A hook that raises marks its plugin as failed and registers nothing: a broken plugin is
    reported by ``miars plugins``, never fatal, and never half-registered.
    """
    calls: list[tuple] = []

    def register(*args):
        if len(args) != arity:
            raise TypeError(f"register() takes {arity} arguments, got {len(args)}")
        calls.append(args)

    try:
        impl.function(register=register)
    except Exception as exc:  # noqa: BLE001
        _mark_failed(info, plugin_name, f"{hook_name}: {_one_line(exc)}")
        return None
    return calls


def _note(info, plugin_name, kind, name) -> None:
    entry = info.setdefault(plugin_name, PluginInfo(plugin_name))
    entry.provides.setdefault(kind, []).append(name)


_lock = threading.Lock()
_cached: Plugins | None = None


def get_plugins(extra: list[ModuleType | object] | None = None, *, reload: bool = False) -> Plugins:
    """Return the process-wide plugins (entry points), or a fresh set with ``extra`` plugins added.

    ``extra`` registers plugin objects directly, the way tests and notebooks add a plugin
    without installing it; the result is then not cached.
    """
    global _cached
    with _lock:
        if _cached is not None and not reload and not extra:
            return _cached
        pm = new_plugin_manager()
        info: dict[str, PluginInfo] = {}
        load_entry_point_plugins(pm, info)
        for plugin in extra or []:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
            register_plugin(pm, plugin, name, info, getattr(plugin, "__version__", ""), name)
        plugins = build(pm, info)
        if not extra:
            _cached = plugins
        return plugins
