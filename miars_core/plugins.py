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
from .errors import MiarsError
from .registry import KINDS, Registry

ENTRY_POINT_GROUP = "miars"

_HOOK_FOR_KIND = {
    "dataset": "register_datasets",
    "recommender": "register_recommenders",
    "featurizer": "register_featurizers",
    "attack": "register_attacks",
    "defense": "register_defenses",
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


def load_entry_point_plugins(pm: pluggy.PluginManager, info: dict[str, PluginInfo]) -> None:
    """Import and register every plugin of the ``miars`` entry-point group; record failures."""
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        version = dist.version if dist is not None else ""
        if ep.name in info:
            continue  # the same distribution seen twice on sys.path
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            info[ep.name] = PluginInfo(ep.name, version, ep.value)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal
            line = traceback.format_exception_only(type(exc), exc)[-1].strip()
            info[ep.name] = PluginInfo(ep.name, version, ep.value, status=f"failed: {line}")


def build(pm: pluggy.PluginManager, info: dict[str, PluginInfo]) -> Plugins:
    """Call every registration hook and fill one registry per kind."""
    registries = {kind: Registry(kind) for kind in KINDS}
    for kind, hook_name in _HOOK_FOR_KIND.items():
        _call_register_hook(pm, hook_name, registries[kind], info)
    for impl in pm.hook.register_namespaces.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or "?"
        calls = _collect(impl, plugin_name, "register_namespaces", info, arity=4)
        for kind, prefix, resolve, choices in calls or []:
            if kind not in registries:
                raise MiarsError(
                    f"plugin {plugin_name!r} registered a namespace for unknown kind {kind!r}; use one of {', '.join(KINDS)}"
                )
            registries[kind].add_namespace(prefix, resolve, choices, plugin_name)
            _note(info, plugin_name, kind, f"{prefix}:<Name>")
    for name, plugin in pm.list_name_plugin():
        if name in info:
            info[name].hooks = sorted({h.name for h in pm.get_hookcallers(plugin) or []})
    return Plugins(pm, registries, info)


def _call_register_hook(pm, hook_name: str, registry: Registry, info) -> None:
    # Each implementation gets its own callback so the registry knows which plugin registered what.
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or "?"
        for name, factory in _collect(impl, plugin_name, hook_name, info) or []:
            registry.add(name, factory, plugin_name)  # duplicates fail loudly here
            _note(info, plugin_name, registry.kind, name)


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
        line = traceback.format_exception_only(type(exc), exc)[-1].strip()
        entry = info.setdefault(plugin_name, PluginInfo(plugin_name))
        entry.status = f"failed: {hook_name}: {line}"
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
            pm.register(plugin, name=name)
            info[name] = PluginInfo(name, getattr(plugin, "__version__", ""), name)
        plugins = build(pm, info)
        if not extra:
            _cached = plugins
        return plugins
