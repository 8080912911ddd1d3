"""Output folders that miars owns: a marker recognises them, and miars replaces only what it wrote.

Every folder a command writes its results into carries ``.miars.json``, a JSON object naming
the ``command`` that writes there (``grid``, ``bench-defenses``, ``attack``, ``report``), a
``run_id`` and the miars version. Before any work, a command refuses an output folder that is
not empty and is not a run folder of the same command (one line naming the way out: another
folder, or ``--force``). Inside its folder a command replaces only its own files:

* ``grid`` / ``bench-defenses``: ``.miars.json``, ``grid.json``, ``cells/<id>/`` for the cells of
  the grid, and in each cell folder only :data:`CELL_FILES` (other files there are kept);
* ``attack`` (``miars-attack --out``): ``.miars.json``, ``result.json``, ``scores.tsv``;
* ``report`` (``RUN_DIR/report/``): the files listed in its marker's ``files`` (what the last
  report wrote); a report never deletes or overwrites a file that its marker does not list.

``--force`` lets a command write into a folder that is not its own; it still replaces only the
paths it writes, and never deletes anything else.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from ..contracts.errors import MiarsError

#: The marker file of every folder miars writes results into.
MARKER = ".miars.json"
#: Names miars owns in a grid's cell folder (``scores_<attacker>.tsv`` for the attackers miars reports).
CELL_FILES = ("result.json", "scores.tsv", "scores_attack.tsv", "scores_defense_aware.tsv", "scores_defense_unaware.tsv",
              "error.json", "traceback.txt")
#: Files whose presence commits a cell folder (removed first, renamed last).
CELL_COMMIT = ("result.json", "error.json")
#: Commands that write a run folder of the grid layout.
GRID_COMMANDS = ("grid", "bench-defenses")


def display(path: str | os.PathLike) -> str:
    """A path as printable text: bytes that are not UTF-8 (surrogate escapes) as ``\\xNN``."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def shown(path: str | os.PathLike) -> str:
    """A path for a one-line message: quoted :func:`display` text."""
    return repr(display(path))


def read_marker(folder: Path) -> dict | None:
    """The folder's marker, or None when it has none; a marker that is not a JSON object is None too."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def new_marker(command: str, previous: dict | None = None, **extra: Any) -> dict:
    """A marker for ``command``; a run folder keeps its run id and creation time across runs."""
    from .. import __version__

    keep = previous if previous and previous.get("command") == command else {}
    return {"miars_run": 1, "command": command, "run_id": keep.get("run_id") or uuid.uuid4().hex,
            "created": keep.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "miars": __version__, **extra}


def marker_bytes(marker: dict) -> bytes:
    return (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_marker(folder: Path, marker: dict) -> None:
    from ..contracts.files import atomic_write

    atomic_write(folder / MARKER, marker_bytes(marker))


def _legacy_grid(folder: Path) -> bool:
    """A grid run folder written before markers existed: its grid.json has the grid's own fields."""
    try:
        record = json.loads((folder / "grid.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and isinstance(record.get("spec"), dict) and isinstance(record.get("cells"), list)


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise MiarsError(f"cannot list {shown(folder)} ({exc.strerror or exc}); pass another folder") from None


def claim(folder: str | Path, command: str, flag: str, force: bool = False) -> dict | None:
    """Before any work: may ``command`` write into ``folder``? Returns its current marker (None if it has none).

    Allowed: a folder that does not exist or is empty, a run folder of ``command`` (its marker,
    or for grids a grid.json written before markers), and with ``force`` any folder.
    """
    p = Path(folder)
    if not p.exists():
        return None
    if not p.is_dir():
        raise MiarsError(f"{flag} {shown(p)} is a file, not a folder; pass a folder path")
    marker = read_marker(p)
    if force:
        return marker
    how = f"pass a new or empty {flag} folder, or --force to write into this one (miars replaces only the files it writes)"
    if marker is not None:
        if marker["command"] == command:
            return marker
        raise MiarsError(f"{flag} {shown(p)} is a folder of `miars {marker['command']}`, not of `miars {command}`; {how}")
    entries = _entries(p)
    if not entries:
        return None
    if command in GRID_COMMANDS and _legacy_grid(p):
        return None
    if MARKER in entries:
        raise MiarsError(f"{flag} {shown(p)} has a {MARKER} that is not a miars run marker (not a JSON object naming a "
                         f"command); {how}")
    listed = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise MiarsError(f"{flag} {shown(p)} is not empty ({listed}) and is not a `miars {command}` run folder; {how}")


# -- the report folder -----------------------------------------------------------------------------
#: Files a report writes at fixed names (images go to img/).
REPORT_FILES = ("tables.md", "tables.csv", "defenses.md", "defenses.csv", "report.html")


def _report_written_by_old_miars(report: Path) -> bool:
    """A report/ written before markers: its report.html is miars' (recognised by its first lines)."""
    try:
        with open(report / "report.html", "rb") as fh:
            head = fh.read(300)
    except OSError:
        return False
    return head.startswith(b"<!DOCTYPE html>\n<html") and b"<title>miars report: " in head


def report_owned(report: Path) -> set[str]:
    """Paths (relative to ``report``) that miars wrote there and may replace or remove."""
    marker = read_marker(report)
    if marker is not None and marker.get("command") == "report" and isinstance(marker.get("files"), list):
        return {f for f in marker["files"] if isinstance(f, str) and ".." not in Path(f).parts and not f.startswith("/")}
    if marker is None and _report_written_by_old_miars(report):
        owned = {n for n in REPORT_FILES if (report / n).is_file()}
        img = report / "img"
        if img.is_dir():
            owned |= {f"img/{f.name}" for f in img.iterdir() if f.is_file() and (f.suffix == ".png" or f.name == ".roc-digests.json")}
        return owned
    return set()


def check_report_dir(report: str | Path, force: bool = False, writing: list[str] | None = None) -> set[str]:
    """Refuse to write a report over files that miars did not write there; return the owned paths.

    ``writing``: the paths about to be written (None, before a grid runs: the report's fixed names;
    image names depend on the cells and are checked when the report is written).
    """
    p = Path(report)
    if p.exists() and not p.is_dir():
        raise MiarsError(f"{shown(p)} is a file, where miars writes the report folder; move it away or pass --no-report")
    if not p.is_dir():
        return set()
    owned = report_owned(p)
    if force:
        return owned
    marker = read_marker(p)
    if marker is not None and marker.get("command") != "report":
        raise MiarsError(f"{shown(p)} is a folder of `miars {marker['command']}`, not a report folder; move it away, "
                         "or pass --force to write the report into it")
    candidates = [w for w in [*(REPORT_FILES if writing is None else writing), MARKER] if (p / w).exists()]
    foreign = [w for w in candidates if w not in owned and w != MARKER or (w == MARKER and marker is None)]
    if foreign:
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise MiarsError(f"{shown(p)} holds files that miars did not write ({listed}); move them away, or pass --force "
                         "to let the report replace them")
    return owned
