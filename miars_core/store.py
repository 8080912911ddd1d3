"""Content-addressed storage of stage outputs: numpy arrays and a JSON record, never pickle.

A stage output lives in ``<root>/<stage>/<key[:2]>/<key>/``: one ``.npy`` file per array and
``meta.json``. It is written into a temporary folder beside it and renamed into place, so a
reader sees either nothing or the whole output, whenever the writer is killed. Two writers of
the same key (two workers) both succeed; the first rename wins and the contents are equal.
"""

from __future__ import annotations

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

from .errors import MiarsError

#: Layout version of the store itself (bump when the on-disk format changes).
STORE_FORMAT = "v1"


def default_cache_dir() -> Path:
    """``$MIARS_CACHE/stages`` or ``~/.cache/miars/stages``: the default ``--cache``."""
    env = os.environ.get("MIARS_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "miars"
    return root / "stages"


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

    def __repr__(self) -> str:
        return "MemoryStore()"


class DiskStore:
    """Stage outputs under a folder, shared by every process (and machine) that can read it."""

    persistent = True

    def __init__(self, root: str | Path, memo_bytes: int = 1 << 30):
        self.root = Path(root).expanduser()
        self._memo = MemoryStore(max_bytes=memo_bytes)  # recently read or written outputs of this process

    def __getstate__(self) -> dict:  # workers get the path, not this process's memo
        return {"root": str(self.root)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    def __repr__(self) -> str:
        return f"DiskStore({str(self.root)!r})"

    def path(self, stage: str, key: str) -> Path:
        return self.root / STORE_FORMAT / stage / key[:2] / key

    def get(self, stage: str, key: str) -> Output | None:
        hit = self._memo.get(stage, key)
        if hit is not None:
            return hit
        folder = self.path(stage, key)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in meta.get("_arrays", [])}
        return self._memo.put(stage, key, arrays, {k: v for k, v in meta.items() if k != "_arrays"})

    def meta(self, stage: str, key: str) -> dict[str, Any] | None:
        """A stored output's JSON record, without reading its arrays (None when not stored)."""
        hit = self._memo.get(stage, key)
        if hit is not None:
            return hit.meta
        path = self.path(stage, key) / "meta.json"
        if not path.is_file():
            return None
        return {k: v for k, v in json.loads(path.read_text()).items() if k != "_arrays"}

    def put(self, stage: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Output:
        try:
            self._write(stage, key, arrays, meta)
        except OSError as exc:
            raise MiarsError(f"cannot write the stage cache under {str(self.root)!r} ({exc.strerror or exc}); nothing was "
                             "written to --out; free space there, pass --cache DIR on another disk, or --no-cache") from None
        return self._memo.put(stage, key, arrays, meta)

    def _write(self, stage: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        folder = self.path(stage, key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key[:12]}.", suffix=".tmp"))
        try:
            for name, value in arrays.items():
                arr = np.asarray(value)
                if arr.dtype == object:
                    raise TypeError(f"stage {stage}: array {name!r} has dtype object; store plain numbers or strings")
                buf = io.BytesIO()  # written in one call, so a full disk or file-size limit raises with its errno
                np.lib.format.write_array(buf, arr, allow_pickle=False)
                with open(tmp / f"{name}.npy", "wb") as fh:
                    fh.write(buf.getbuffer())
            record = {**meta, "_arrays": sorted(arrays)}
            (tmp / "meta.json").write_text(json.dumps(record, sort_keys=True, allow_nan=False))
            try:
                os.rename(tmp, folder)
            except OSError:
                if not (folder / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another worker stored the same output first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

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


Store = MemoryStore | DiskStore
