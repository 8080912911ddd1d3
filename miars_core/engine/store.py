"""Content-addressed storage of stage outputs: numpy arrays and a JSON record, never pickle.

A stage output lives in ``<root>/<format>/<stage>/<key[:2]>/<key>/``: one ``.npy`` file per
array and ``meta.json``. It is written into a temporary folder beside it and renamed into
place, so a reader sees either nothing or the whole output, whenever the writer is killed. Two
writers of the same key (two workers) both succeed; the first rename wins and the contents are
equal.

Every read is verified. ``meta.json`` records, for each array, its dtype, shape, file size and
a SHA-256 checksum of its bytes, plus a checksum of the record itself. An output that does not
match (a file edited, truncated, swapped or missing, a record that is not JSON or was edited, an
entry written before checksums existed) is treated as missing: it is moved out of the way, one
line naming the file goes to :attr:`DiskStore.problems`, and the stage is computed again. Checksums protect against accidents (disks, copies, hand edits, bugs), not
against someone who rewrites both an array and its record on purpose.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts.errors import MiarsError
from ..contracts.files import writable_folder

#: Layout version of the store itself (bump when the on-disk format changes). v2: checksums in meta.json.
STORE_FORMAT = "v2"
#: Keys of meta.json that belong to the store, not to the stage.
ARRAYS, RECORD = "_arrays", "_record"


def default_cache_dir() -> Path:
    """``$MIARS_CACHE/stages`` or ``~/.cache/miars/stages``: the default ``--cache``."""
    env = os.environ.get("MIARS_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "miars"
    return root / "stages"


def array_checksum(arr: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order. Strong, and the fastest strong hash of the standard
    library on CPUs with SHA extensions (x86 since 2019-2020, ARMv8): 1.9 GB/s here against 0.5-1.4
    GB/s for BLAKE2b (benchmarks/README.md)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


def record_checksum(record: dict) -> str:
    """Checksum of a record's JSON text (sorted keys), without its own ``_record`` field."""
    body = {k: v for k, v in record.items() if k != RECORD}
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


class Output:
    """What one stage produced: named arrays plus a JSON-able record."""

    __slots__ = ("arrays", "meta")

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
        self.arrays = arrays
        self.meta = meta


class MemoryStore:
    """Stage outputs kept in this process only (``--no-cache`` for a single run, the Python API)."""

    persistent = False

    def __init__(self, max_bytes: int | None = None) -> None:
        self._items: OrderedDict[tuple[str, str], Output] = OrderedDict()
        self._lock = threading.Lock()
        self.max_bytes = max_bytes  # None: keep everything (a single run); else least recently used go first
        self._bytes = 0
        self.problems: list[str] = []

    def get(self, stage: str, key: str) -> Output | None:
        with self._lock:
            hit = self._items.get((stage, key))
            if hit is not None:
                self._items.move_to_end((stage, key))
            return hit

    def meta(self, stage: str, key: str) -> dict[str, Any] | None:
        hit = self.get(stage, key)
        return None if hit is None else hit.meta

    def put(self, stage: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Output:
        out = Output({k: np.asarray(v) for k, v in arrays.items()}, meta)
        size = sum(a.nbytes for a in out.arrays.values())
        with self._lock:
            old = self._items.pop((stage, key), None)
            if old is not None:
                self._bytes -= sum(a.nbytes for a in old.arrays.values())
            self._items[(stage, key)] = out
            self._bytes += size
            while self.max_bytes is not None and self._bytes > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= sum(a.nbytes for a in dropped.arrays.values())
        return out

    def drop(self, stage: str, key: str) -> None:
        with self._lock:
            old = self._items.pop((stage, key), None)
            if old is not None:
                self._bytes -= sum(a.nbytes for a in old.arrays.values())

    def reject(self, stage: str, key: str, reason: str, name: str | None = None) -> None:
        """Forget an output that failed a check of its contents (it is then computed again)."""
        self.drop(stage, key)
        self.problems.append(f"the {stage} stage's output {name or ''} in memory {reason}; computing it again")

    def scope(self, stage: str) -> "MemoryStore":
        """A store of ``stage``'s outputs only, kept with this one (shared by every cell that uses this store).

        What a lazily asked stage (reference models) reads and writes through, so that the object
        handed to an attack reaches no other stage's output. Its problems are this store's.
        """
        scopes = self.__dict__.setdefault("_scopes", {})
        if stage not in scopes:
            child = MemoryStore(self.max_bytes)
            child.problems = self.problems
            scopes[stage] = child
        return scopes[stage]

    def __repr__(self) -> str:
        return "MemoryStore()"


class _Corrupt(Exception):
    """A stored output that does not match its record: ``file`` and ``reason`` say where and how."""

    def __init__(self, file: Path, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


class DiskStore:
    """Stage outputs under a folder, shared by every process (and machine) that can read it."""

    persistent = True

    def __init__(self, root: str | Path, memo_bytes: int = 1 << 30):
        self.root = Path(root).expanduser()
        self._memo = MemoryStore(max_bytes=memo_bytes)  # recently read or written outputs of this process
        #: One line per stored output found broken in this process (and moved away to be computed again).
        self.problems: list[str] = []
        #: (stage, key) -> (file, reason) of every broken output found by this process.
        self.broken: dict[tuple[str, str], tuple[str, str]] = {}
        self._stuck: set[tuple[str, str]] = set()  # broken outputs that could not be moved away (not stored again)

    def __getstate__(self) -> dict:  # workers get the path, not this process's memo
        return {"root": str(self.root)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    def __repr__(self) -> str:
        return f"DiskStore({str(self.root)!r})"

    def path(self, stage: str, key: str) -> Path:
        return self.root / STORE_FORMAT / stage / key[:2] / key

    def scope(self, stage: str) -> "DiskStore":
        """A store of ``stage``'s outputs in the same folder with its own in-memory copies: what a lazily asked
        stage (reference models) reads and writes through, so that the object handed to an attack reaches no
        other stage's output. Its problems and broken outputs are reported with this store's."""
        scopes = self.__dict__.setdefault("_scopes", {})
        if stage not in scopes:
            child = DiskStore(self.root, memo_bytes=self._memo.max_bytes or (1 << 30))
            child.problems, child.broken = self.problems, self.broken
            scopes[stage] = child
        return scopes[stage]

    # -- reading, verified -------------------------------------------------------------------
    def get(self, stage: str, key: str) -> Output | None:
        hit = self._memo.get(stage, key)
        if hit is not None:
            return hit
        folder = self.path(stage, key)
        try:
            record = self._record(folder)
            if record is None:
                return None
            arrays = {name: self._load(folder, name, spec) for name, spec in record[ARRAYS].items()}
        except _Corrupt as bad:
            self._broken(stage, key, bad.file, bad.reason)
            return None
        meta = {k: v for k, v in record.items() if k not in (ARRAYS, RECORD)}
        return self._memo.put(stage, key, arrays, meta)

    def meta(self, stage: str, key: str) -> dict[str, Any] | None:
        """A stored output's JSON record, without reading its arrays (None when not stored or broken).

        The record's checksum and every array file's size are checked (cheap); the arrays'
        checksums are checked when they are read (:meth:`get`). A broken output is left for the
        reader that computes it again (:meth:`get` moves it away and reports it once).
        """
        hit = self._memo.get(stage, key)
        if hit is not None:
            return hit.meta
        folder = self.path(stage, key)
        try:
            record = self._record(folder)
            if record is None:
                return None
            for name, spec in record[ARRAYS].items():
                self._check_size(folder / f"{name}.npy", spec)
        except _Corrupt:
            return None
        return {k: v for k, v in record.items() if k not in (ARRAYS, RECORD)}

    def _record(self, folder: Path) -> dict | None:
        """meta.json, checked against its own checksum; None when the output is not stored."""
        path = folder / "meta.json"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if folder.is_dir():
                raise _Corrupt(path, "is missing") from None
            return None
        except NotADirectoryError:
            raise _Corrupt(folder, "is not a folder") from None
        except OSError as exc:
            raise _Corrupt(path, f"cannot be read ({exc.strerror or exc})") from None
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            raise _Corrupt(path, "is empty" if not raw.strip() else "is not valid JSON") from None
        if not isinstance(record, dict):
            raise _Corrupt(path, "is not a JSON object")
        arrays = record.get(ARRAYS)
        if RECORD not in record or not isinstance(arrays, dict):
            raise _Corrupt(path, "has no checksums (written by an older miars)")
        try:
            ok = record_checksum(record) == record[RECORD]
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise _Corrupt(path, "does not match its checksum (edited or damaged)")
        for name, spec in arrays.items():
            if (not isinstance(spec, dict) or not isinstance(spec.get("shape"), list)
                    or not all(isinstance(spec.get(f), str) for f in ("dtype", "sha256"))
                    or not isinstance(spec.get("bytes"), int) or "/" in name or name.startswith(".")):
                raise _Corrupt(path, f"has a malformed entry for array {name!r}")
        return record

    @staticmethod
    def _check_size(path: Path, spec: dict) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise _Corrupt(path, "is missing") from None
        except OSError as exc:
            raise _Corrupt(path, f"cannot be read ({exc.strerror or exc})") from None
        if size != spec["bytes"]:
            raise _Corrupt(path, f"has {size} bytes, its record says {spec['bytes']} (truncated or replaced)")

    def _load(self, folder: Path, name: str, spec: dict) -> np.ndarray:
        path = folder / f"{name}.npy"
        self._check_size(path, spec)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise _Corrupt(path, f"is not a readable .npy array ({' '.join(str(exc).split())[:120]})") from None
        if not isinstance(arr, np.ndarray):
            raise _Corrupt(path, "is not a plain .npy array")
        if arr.dtype.str != spec["dtype"] or list(arr.shape) != spec["shape"]:
            raise _Corrupt(path, f"holds {arr.dtype.str} {list(arr.shape)}, its record says {spec['dtype']} {spec['shape']}")
        if array_checksum(arr) != spec["sha256"]:
            raise _Corrupt(path, "does not match its checksum (its values changed)")
        return arr

    # -- broken outputs ----------------------------------------------------------------------
    def reject(self, stage: str, key: str, reason: str, name: str | None = None) -> None:
        """An output read back whose contents fail a stage's own check (ids out of range, ...):
        treat it as broken, like a checksum mismatch."""
        self._memo.drop(stage, key)
        folder = self.path(stage, key)
        self._broken(stage, key, folder / f"{name}.npy" if name else folder, reason)

    def _broken(self, stage: str, key: str, file: Path, reason: str) -> None:
        folder = self.path(stage, key)
        line = f"cached file {str(file)!r} {reason}; computing the {stage} stage again"
        self.broken[(stage, key)] = (str(file), reason)
        try:  # out of the way, so the output computed again can take its place
            aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key[:12]}.", suffix=".bad.tmp"))
            try:
                os.rename(folder, aside / "x")
            finally:
                shutil.rmtree(aside, ignore_errors=True)
        except FileNotFoundError:
            pass  # another process moved it first
        except OSError as exc:  # e.g. a shared cache whose folders belong to someone else
            self._stuck.add((stage, key))
            line = (f"cached file {str(file)!r} {reason} and cannot be moved away ({exc.strerror or exc}); computing the "
                    f"{stage} stage again for this run only (fix that folder's permissions to store it again)")
        self.problems.append(line)

    # -- writing -------------------------------------------------------------------------------
    def put(self, stage: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Output:
        if (stage, key) in self._stuck:  # a broken output that cannot be replaced: keep this one in memory only
            return self._memo.put(stage, key, arrays, meta)
        try:
            self._write(stage, key, arrays, meta)
        except OSError as exc:
            raise MiarsError(f"cannot write the stage cache under {str(self.root)!r} ({exc.strerror or exc}); nothing was "
                             "written to the cache; free space there, pass --cache DIR on another disk, or --no-cache") from None
        return self._memo.put(stage, key, arrays, meta)

    def _write(self, stage: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        folder = self.path(stage, key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key[:12]}.", suffix=".tmp"))
        try:
            specs = {}
            for name, value in arrays.items():
                arr = np.asarray(value)
                if arr.dtype == object:
                    raise TypeError(f"stage {stage}: array {name!r} has dtype object; store plain numbers or strings")
                buf = io.BytesIO()  # written in one call, so a full disk or file-size limit raises with its errno
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                with open(tmp / f"{name}.npy", "wb") as fh:
                    fh.write(buf.getbuffer())
                specs[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "bytes": buf.getbuffer().nbytes,
                               "sha256": array_checksum(arr)}
            record = {**meta, ARRAYS: specs}
            record[RECORD] = record_checksum(record)
            (tmp / "meta.json").write_text(json.dumps(record, sort_keys=True, allow_nan=False))
            try:
                os.rename(tmp, folder)
            except OSError:
                if not folder.is_dir():
                    raise
                if self._intact(stage, key):
                    shutil.rmtree(tmp, ignore_errors=True)  # another worker stored the same output first
                    return
                self._broken(stage, key, folder / "meta.json", "is damaged")
                if (stage, key) in self._stuck:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _intact(self, stage: str, key: str) -> bool:
        folder = self.path(stage, key)
        try:
            record = self._record(folder)
            return record is not None and all(self._check_size(folder / f"{n}.npy", s) is None for n, s in record[ARRAYS].items())
        except _Corrupt:
            return False

    def clean_partial(self, min_age: float = 3600.0) -> int:
        """Remove temporary folders that killed writers left (older than ``min_age`` seconds)."""
        import time

        base = self.root / STORE_FORMAT
        if not base.is_dir():
            return 0
        n = 0
        for tmp in base.glob("*/*/.*.tmp"):
            try:
                if time.time() - tmp.stat().st_mtime < min_age:
                    continue  # may belong to a writer still at work
            except OSError:
                continue
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
        return n


def check_cache_dir(root: str | Path, given: bool = True) -> Path:
    """Before any work: the cache folder exists or can be created, is a folder, and can be written.

    ``given``: the user passed ``--cache`` (else it is the default, from ``$MIARS_CACHE`` or ``~/.cache``).
    """
    p = Path(root).expanduser()
    shown = repr(os.fsdecode(p).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
    what = f"--cache {shown}" if given else f"the default stage cache {shown} ($MIARS_CACHE/stages or ~/.cache/miars/stages)"
    return writable_folder(p, what, "pass a writable folder as --cache DIR, or --no-cache")


Store = MemoryStore | DiskStore
