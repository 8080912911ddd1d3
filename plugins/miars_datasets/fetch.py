"""Finding dataset files: a data directory, the user cache, or a download into the cache.

Nothing here touches the network unless :func:`download` is called (``--download``).
Downloads go to a temporary ``*.part`` file next to the target and are renamed into
place only once complete (and, where the official digest is known, verified), so an
interrupted or corrupted download never leaves a file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from miars_core.contracts.errors import MiarsError

#: Environment variable that overrides the cache root (default ``~/.cache/miars``).
CACHE_ENV = "MIARS_CACHE"

log = logging.getLogger(__name__)


def cache_root() -> Path:
    """The root of the miars dataset cache: ``$MIARS_CACHE`` or ``~/.cache/miars``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "miars"


def cache_dir(name: str) -> Path:
    """The cache folder of one dataset: ``<cache root>/<name>/`` (not created here)."""
    return cache_root() / name


def display_path(path: Path) -> str:
    """A path for messages, with the home directory shown as ``~`` and a trailing slash for folders."""
    path = Path(path)
    try:
        text = "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        text = str(path)
    return text if text.endswith("/") else text + "/"


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_file(filenames: list[str], folders: list[Path]) -> Path | None:
    """The first existing file among ``folder/filename`` (folders outer, names inner), else None."""
    for folder in folders:
        for filename in filenames:
            candidate = folder / filename
            if candidate.is_file():
                return candidate
    return None


#: Environment variable: the overall deadline of one download, in seconds (default 1800).
DEADLINE_ENV = "MIARS_DOWNLOAD_DEADLINE"
DEFAULT_DEADLINE = 1800.0


class DownloadTimeout(Exception):
    """A download that did not finish before its overall deadline."""


def download_deadline() -> float:
    """Seconds one download may take in all: ``$MIARS_DOWNLOAD_DEADLINE`` or 30 minutes."""
    raw = os.environ.get(DEADLINE_ENV)
    if not raw:
        return DEFAULT_DEADLINE
    try:
        value = float(raw)
    except ValueError:
        raise MiarsError(f"${DEADLINE_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise MiarsError(f"${DEADLINE_ENV}={raw!r} must be a finite number of seconds > 0")
    return value


def _urlretrieve(url: str, dest: Path, deadline: float | None = None, progress: bool | None = None) -> None:
    """Copy ``url`` to the file ``dest`` (the one function that opens a network connection).

    The whole transfer must end within ``deadline`` seconds (default :func:`download_deadline`):
    a server that trickles bytes is cut off, not waited for forever. Each read also times out
    after at most 60 s of silence. A progress bar is drawn on stderr when it is a terminal.
    """
    import time
    import urllib.request

    limit = download_deadline() if deadline is None else float(deadline)
    end = time.monotonic() + limit

    def remaining() -> float:
        left = end - time.monotonic()
        if left <= 0:
            raise DownloadTimeout(f"not finished after the {limit:g} s deadline (set ${DEADLINE_ENV} to allow more)")
        return left

    try:
        response = urllib.request.urlopen(url, timeout=min(60.0, remaining()))  # noqa: S310 - fixed https/http URLs
    except TimeoutError:
        remaining()
        raise
    with response, open(dest, "wb") as out:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        bar = _progress(url, total, progress)
        try:
            while True:
                sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
                if sock is not None:
                    sock.settimeout(min(60.0, remaining()))
                try:
                    chunk = response.read1(1 << 16) if hasattr(response, "read1") else response.read(1 << 16)
                except TimeoutError:  # socket.timeout: silent for too long, or the deadline came first
                    remaining()
                    raise
                remaining()
                if not chunk:
                    break
                out.write(chunk)
                bar.advance(len(chunk))
        finally:
            bar.close()


class _NoBar:
    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _RichBar:
    def __init__(self, url: str, total: int | None):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        self.progress = Progress(TextColumn("downloading {task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.task = self.progress.add_task(url.rsplit("/", 1)[-1], total=total)
        self.progress.start()

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def close(self) -> None:
        self.progress.stop()


def _progress(url: str, total: int | None, show: bool | None):
    import sys

    if show is None:
        show = sys.stderr.isatty()
    return _RichBar(url, total) if show else _NoBar()


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    """Copy one member of a zip archive to ``dest``; match by full name, else by base name."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            if member not in names:
                base = member.rsplit("/", 1)[-1]
                matches = [n for n in names if n.rsplit("/", 1)[-1] == base]
                if len(matches) != 1:
                    raise MiarsError(f"downloaded archive has no member {member!r}; it holds {', '.join(names[:10])}")
                member = matches[0]
            with zf.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise MiarsError(f"downloaded file is not a valid zip archive ({exc}); try again or download it by hand") from None


def download(url: str, dest: Path, *, member: str | None = None, sha256: str | None = None,
             deadline: float | None = None) -> Path:
    """Download ``url`` (a zip holding ``member``, or the file itself) to ``dest``; return ``dest``.

    The download and the extracted member are written to temporary ``.part`` files in
    ``dest``'s folder and atomically renamed to ``dest`` after the sha256 check (when a
    digest is given). On any failure every temporary file is removed and a
    :class:`MiarsError` explains what to do.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []

    def temp(suffix: str) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
        os.close(fd)
        temps.append(Path(name))
        return temps[-1]

    try:
        fetched = temp(".download.part")
        log.info("downloading %s into %s", url, dest.parent)
        try:
            _urlretrieve(url, fetched, deadline) if deadline is not None else _urlretrieve(url, fetched)
        except MiarsError:
            raise
        except Exception as exc:  # noqa: BLE001 - URLError, timeouts, HTTP errors, disk full
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            raise MiarsError(
                f"could not download {url} ({reason}); download it by hand and put {dest.name} in {display_path(dest.parent)}"
            ) from None
        result = fetched
        if member is not None:
            result = temp(".part")
            _extract_member(fetched, member, result)
        if sha256 is not None:
            got = sha256_of(result)
            if got != sha256.lower():
                raise MiarsError(
                    f"checksum mismatch for {dest.name} downloaded from {url}: sha256 {got}, expected {sha256}; "
                    "the partial file was deleted, try again or download it by hand"
                )
        os.replace(result, dest)
        temps.remove(result)
        return dest
    finally:
        for leftover in temps:
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
