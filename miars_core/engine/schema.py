"""The JSON Schemas of the files a run writes: result.json and a failed cell's error.json.

The schemas are files of the package (``miars_core/schema/result-1.json``, ``error-1.json``),
versioned: every result.json and error.json says which version it follows in
``schema_version`` (:data:`SCHEMA_VERSION`). A version grows only by new optional fields; a
field removed, renamed or retyped makes a new version and a new file beside the old one.
:func:`validate` checks a document against its schema (needs ``jsonschema``, a test dependency).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..contracts.errors import MiarsError

#: The schema version of the result.json and error.json this miars writes.
SCHEMA_VERSION = 1
#: The kinds of documents with a schema.
KINDS = ("result", "error")
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schema"


def schema_path(kind: str = "result", version: int = SCHEMA_VERSION) -> Path:
    """The schema file of ``kind`` (result, error) at ``version``."""
    if kind not in KINDS:
        raise MiarsError(f"no schema for {kind!r}; choose from: {', '.join(KINDS)}")
    return SCHEMA_DIR / f"{kind}-{version}.json"


def load_schema(kind: str = "result", version: int = SCHEMA_VERSION) -> dict:
    """The schema of ``kind`` at ``version``, as a dict."""
    path = schema_path(kind, version)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MiarsError(f"no schema version {version} for {kind}.json (miars knows {SCHEMA_VERSION})") from None


def validate(document: dict, kind: str = "result") -> None:
    """Check ``document`` (a parsed result.json or error.json) against the schema of its ``schema_version``.

    Raises :class:`MiarsError` naming the first problem and where it is (``metrics.roc_auc``).
    """
    if not isinstance(document, dict):
        raise MiarsError(f"a {kind}.json must be a JSON object, got {type(document).__name__}")
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MiarsError(f"{kind}.json has no schema_version (an integer); it was not written by this miars")
    errors = sorted(_validator(kind, version).iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.absolute_path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise MiarsError(f"{kind}.json does not follow schema version {version}: {where}: {first.message[:300]}{more}")


@functools.lru_cache(maxsize=None)
def _validator(kind: str, version: int):
    try:
        import jsonschema
        from referencing import Registry, Resource
    except ImportError:  # pragma: no cover - a test dependency
        raise MiarsError("validating needs the jsonschema package; pip install jsonschema") from None
    schemas = {k: load_schema(k, version) for k in KINDS}
    resources = [(uri, Resource.from_contents(s)) for s in schemas.values() for uri in (s["$id"], s["$id"].rsplit("/", 1)[-1])]
    return jsonschema.Draft202012Validator(schemas[kind], registry=Registry().with_resources(resources))
