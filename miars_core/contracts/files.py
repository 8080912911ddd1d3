"""Writing files safely: atomic writes, a set of files published together, writable folders, TSV ids.

Low-level services every layer above uses (the engine's run folders and cells, the reports, the
audit); nothing here knows what a run or a report is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .errors import MiarsError


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: 0666 minus the umask (0644 usually)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _os_error(exc: OSError, path: Path | str, what: str, fix: str) -> MiarsError:
    reason = exc.strerror or type(exc).__name__
    return MiarsError(f"cannot {what} {str(path)!r} ({reason}); {fix}")


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file with the normal file mode, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write a file all at once: a temporary file beside it, renamed over it (normal file mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def scores_tsv(user_ids, is_member, scores) -> str:
    """``scores.tsv``: a header, then one line per user: id (:func:`tsv_id`), 1 for a member, score."""
    return "user_id\tis_member\tscore\n" + "".join(
        f"{tsv_id(u)}\t{int(m)}\t{s:.9g}\n" for u, m, s in zip(user_ids, is_member, scores))


def tsv_id(value) -> str:
    """An id as one TSV field, always valid UTF-8 and reversible.

    A backslash is doubled; tab, newline and carriage return become backslash-t, -n, -r; bytes
    that were not UTF-8 in the input file (read with surrogateescape) become backslash-xNN.
    Plain ids (the usual case) are unchanged.
    """
    text = str(value)
    if text.isascii() and not any(c in text for c in "\\\t\n\r"):
        return text
    raw = text.encode("utf-8", "surrogateescape") if _only_escapes(text) else text.encode("utf-8", "backslashreplace")
    text = raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _only_escapes(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def prepare_dir(path: str | Path, flag: str) -> Path:
    """Check early that an output folder can be created and written (before minutes of work)."""
    return writable_folder(path, f"{flag} {str(Path(path).expanduser())!r}", "pass a folder you can write to")


def _non_finite(value, path: str = "") -> str | None:
    if isinstance(value, float) and not np.isfinite(value):
        return path or "the top level"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, v in items:
        found = _non_finite(v, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def _publish(out: Path, files: dict[str, bytes], flag: str) -> None:
    """Stage ``files`` in a folder inside ``out``, then rename them into place in order (last = commit)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out, prefix=".miars-staging-"))
    except OSError as exc:
        raise _os_error(exc, out, "write into", f"free space or pass another {flag} folder; nothing was written") from None
    try:
        mode = file_mode()
        for name, data in files.items():
            try:
                _write_file(staging / name, data)
                os.chmod(staging / name, mode)
            except OSError as exc:
                raise _os_error(exc, out / name, "write", f"free space, raise the file-size limit or pass another {flag} folder; "
                                "nothing was written") from None
        names = list(files)
        try:
            (out / names[-1]).unlink(missing_ok=True)  # the old commit file goes first
            for name in names:
                os.replace(staging / name, out / name)
        except OSError as exc:
            raise _os_error(exc, out, "rename results into", f"check the folder and pass another {flag} folder") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def writable_folder(path: str | Path, what: str, fix: str) -> Path:
    """Before any work: ``path`` is a folder (created if missing) that can be written; else one line naming ``what``."""
    p = Path(path).expanduser()
    try:
        if p.exists() and not p.is_dir():
            raise MiarsError(f"{what} is a file, not a folder; {fix}")
        p.mkdir(parents=True, exist_ok=True)
    except MiarsError:
        raise
    except OSError as exc:
        raise MiarsError(f"{what} cannot be created ({exc.strerror or exc}); {fix}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".miars-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MiarsError(f"{what} is not writable ({exc.strerror or exc}); {fix}") from None
    return p
