"""What stage keys are made of: content digests, the version of the stage code, component and dataset identities.

A key is :func:`digest` of a JSON record; every record carries :func:`core_version` (miars'
version plus a hash of the modules in :data:`STAGE_MODULES`), and each component in it carries
:func:`component_version` (its plugin's version plus a hash of its package's source), so changed
code never reads a stale output.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

#: Bump when a stage's computation changes in a way the module hash below would not see.
STAGES_VERSION = "2"

#: Core modules whose code decides stage outputs, under miars_core (their source is hashed into every key).
STAGE_MODULES = ("engine.stages", "engine.graph", "engine.codecs", "science.protocol", "science.service",
                 "science.ranking", "contracts.types", "contracts.seeds", "engine.store", "science.utility",
                 "contracts.defenses", "science.threat", "contracts.state")


def digest(record: Any) -> str:
    """sha256 of a JSON record (sorted keys): the content address of a stage output."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def _source_hash(package_dir: str) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(package_dir).rglob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def core_version() -> str:
    """Version of the stage code: miars' version plus a hash of the modules in :data:`STAGE_MODULES`."""
    from .. import __version__

    here = Path(__file__).resolve().parents[1]  # miars_core/
    h = hashlib.sha256()
    for name in STAGE_MODULES:
        h.update((here / f"{name.replace('.', '/')}.py").read_bytes())
    return f"{__version__}+{STAGES_VERSION}.{h.hexdigest()[:16]}"


def component_version(factory: Callable[..., Any], plugin_version: str) -> str:
    """A component's version: its plugin's version plus a hash of the source of its package."""
    module = getattr(factory, "__module__", None) or getattr(getattr(factory, "func", None), "__module__", "")
    import importlib
    import sys

    top = (module or "").split(".")[0]
    mod = sys.modules.get(top) or (importlib.import_module(top) if top else None)
    files = getattr(mod, "__path__", None) or ([str(Path(mod.__file__).parent)] if getattr(mod, "__file__", None) else [])
    return f"{plugin_version}+{_source_hash(files[0])}" if files else plugin_version


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return _file_sha256(str(p), st.st_size, st.st_mtime_ns)


def dataset_identity(name: str, data_dir: str | None, plugins) -> dict:
    """What identifies a dataset's content: a file's sha256, else the name, data dir and loader version."""
    from .datasets import dataset_file

    registry = plugins.registry("dataset")
    path = dataset_file(name, registry)
    if path is not None:
        return {"file_sha256": file_fingerprint(path), "loader": _entry_version(registry.get("file"), plugins)}
    entry = registry.get(name)
    rec: dict[str, Any] = {"name": name, "loader": _entry_version(entry, plugins)}
    try:  # official datasets can tell which file they would read
        path, _ = entry.factory().locate(data_dir=Path(data_dir).expanduser() if data_dir else None, download=False)
        rec["file_sha256"] = file_fingerprint(path)
    except Exception:  # noqa: BLE001 - no such method, or the file is not there yet (downloaded later)
        rec["data_dir"] = str(Path(data_dir).expanduser().resolve()) if data_dir else None
    return rec


def _entry_version(entry, plugins) -> str:
    info = plugins.info.get(entry.plugin)
    return component_version(entry.factory, f"{entry.plugin}=={info.version if info else ''}")

