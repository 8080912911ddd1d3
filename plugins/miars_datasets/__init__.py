"""Built-in datasets of miars, registered through the ``miars`` entry-point group.

Every dataset is implicit feedback: each rated (user, item) pair is one interaction,
repeated pairs count once, and ids are the original ids of the source files.

Where a dataset's file is looked for, in order:

1. ``data_dir`` (``--data-dir``): the file itself, then its ``.gz`` variant, in ``data_dir``
   and in the sub-folder the official archive extracts to (``data_dir/ml-1m/`` ...);
2. the user cache, ``$MIARS_CACHE/<name>/`` or ``~/.cache/miars/<name>/``;
3. with ``download=True`` (``--download``) only: the official file, downloaded into the cache
   (atomic rename, sha256 checked where the official digest is known).

``ml-100k`` needs none of that: without ``data_dir`` it reads the copy of MovieLens-100K
that ships inside RecBole's wheel. Importing this module is cheap (numpy only); pandas is
imported when a file is read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.hookspecs import hookimpl

from . import fetch, readers
from .fetch import cache_dir, sha256_of

if TYPE_CHECKING:
    from miars_core.contracts.types import Interactions

__all__ = [
    "AmazonDigitalMusic",
    "DATASETS",
    "InteractionFile",
    "LastFM2K",
    "MovieLens100K",
    "MovieLens1M",
    "cache_dir",
    "register_datasets",
    "sha256_of",
]

Reader = Callable[[Path], "tuple[np.ndarray, ...]"]  # (users, items) or (users, items, order or None)


class _OfficialDataset(Component):
    """A dataset with one official file, found locally, in the cache, or downloaded."""

    name: str = ""
    filename: str = ""
    read: Reader
    subdirs: tuple[str, ...] = ()
    url: str = ""
    member: str | None = None  # the file's path inside the zip at ``url``; None: ``url`` is the file
    sha256: str | None = None  # official digest of the (decompressed) file, where known
    #: Other accepted file names, with their readers, looked for after the official one.
    alternates: tuple[tuple[str, Reader], ...] = ()

    def __init__(self) -> None:
        pass

    def load(self, data_dir: Path | str | None = None, download: bool = False) -> Interactions:
        """Read the dataset as implicit-feedback Interactions (see the module docstring for where)."""
        path, read = self.locate(data_dir, download)
        return _interactions(*read(path))

    def has_order(self, data_dir: Path | str | None = None) -> bool | None:
        """Whether the file :meth:`load` would read carries each interaction's time (read from its
        name, not its content); None when no file is found here (it would be downloaded)."""
        try:
            _, read = self.locate(data_dir, download=False)
        except MiarsError:  # not here: the official file (downloaded) is what would be read
            return type(self).read in ORDERED_READERS
        return read in ORDERED_READERS

    # -- finding the file

    def _names(self) -> list[tuple[str, Reader]]:
        names = [(self.filename, type(self).read), (self.filename + ".gz", type(self).read)]
        for alt, read in self.alternates:
            names += [(alt, read), (alt + ".gz", read)]
        return names

    def locate(self, data_dir: Path | str | None = None, download: bool = False) -> tuple[Path, Reader]:
        """The file to read and its reader; downloads it only when ``download`` is true."""
        names = self._names()
        searched = ""
        if data_dir is not None:
            data_dir = Path(data_dir).expanduser()
            if data_dir.is_file():  # --data-dir pointing at the file itself
                read = next((r for n, r in names if n == data_dir.name), type(self).read)
                return data_dir, read
            if not data_dir.is_dir():
                raise MiarsError(f"data dir {data_dir} does not exist; pass an existing folder that holds {self.filename}")
            folders = [data_dir] + [data_dir / sub for sub in self.subdirs]
            for filename, read in names:
                for folder in folders:
                    if (folder / filename).is_file():
                        return folder / filename, read
            searched = f", not found in {' or '.join(fetch.display_path(f) for f in folders)}"
        cache = cache_dir(self.name)
        for filename, read in names:
            if (cache / filename).is_file():
                return cache / filename, read
        if download:
            return fetch.download(self.url, cache / self.filename, member=self.member, sha256=self.sha256), type(self).read
        raise MiarsError(
            f"dataset {self.name!r} needs {self.filename} (or {self.filename}.gz){searched}; "
            f"put it in --data-dir DIR or in {fetch.display_path(cache)}, or pass --download to fetch {self.url}"
        )


class MovieLens100K(_OfficialDataset):
    """MovieLens 100K (GroupLens; Harper & Konstan, ACM TiiS 2015): 943 users, 1,682 movies, 100,000 ratings; embedded via RecBole.

    Without ``data_dir`` the copy shipped in RecBole's wheel
    (``recbole/dataset_example/ml-100k/ml-100k.inter``) is read; with ``data_dir``, the
    official ``u.data`` (or ``u.data.gz``) from ``ml-100k.zip``. Ids are ints.
    """

    name = "ml-100k"
    filename = "u.data"
    read = staticmethod(readers.read_u_data)
    subdirs = ("ml-100k",)
    url = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    member = "ml-100k/u.data"
    sha256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"

    def load(self, data_dir: Path | str | None = None, download: bool = False) -> Interactions:
        if data_dir is None:
            embedded = embedded_ml100k()
            if embedded is not None:
                return _interactions(*readers.read_inter(embedded))
        return super().load(data_dir, download)

    def has_order(self, data_dir: Path | str | None = None) -> bool | None:
        if data_dir is None and embedded_ml100k() is not None:
            return True  # RecBole's ml-100k.inter has its timestamp:float field
        return super().has_order(data_dir)


class MovieLens1M(_OfficialDataset):
    """MovieLens 1M (GroupLens; Harper & Konstan, ACM TiiS 2015): 6,040 users, 3,706 movies, 1,000,209 ratings.

    Reads ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``, plain or gzip) from
    ``ml-1m.zip``. When no ``ratings.dat`` is found, a headerless ``user<TAB>item`` file
    ``ml-1m-pairs.tsv`` (or ``.gz``) in the same places is accepted instead: the same
    interactions without ratings. Ids are ints.
    """

    name = "ml-1m"
    filename = "ratings.dat"
    read = staticmethod(readers.read_ratings_dat)
    subdirs = ("ml-1m",)
    url = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
    member = "ml-1m/ratings.dat"
    alternates = (("ml-1m-pairs.tsv", readers.read_pairs_tsv),)


class LastFM2K(_OfficialDataset):
    """Last.fm 2K user-artist listening (HetRec 2011, GroupLens; Cantador et al.): 1,892 users, 17,632 artists.

    Reads ``user_artists.dat`` (tab-separated, header ``userID artistID weight``, plain or
    gzip) from ``hetrec2011-lastfm-2k.zip``; every listened (user, artist) pair is an
    interaction whatever its weight. Ids are ints.
    """

    name = "lastfm-2k"
    filename = "user_artists.dat"
    read = staticmethod(readers.read_user_artists)
    subdirs = ("hetrec2011-lastfm-2k",)
    url = "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip"
    member = "user_artists.dat"


class AmazonDigitalMusic(_OfficialDataset):
    """Amazon Digital Music ratings (McAuley et al., SIGIR 2015; UCSD 2014): 478,235 users, 266,414 items, 836,006 ratings.

    Reads the ratings-only ``ratings_Digital_Music.csv`` (``user,item,rating,timestamp``,
    no header, plain or gzip). Ids are strings (ASINs may start with ``0``).
    """

    name = "adm"
    filename = "ratings_Digital_Music.csv"
    read = staticmethod(readers.read_amazon_csv)
    subdirs = ("amazon",)
    url = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/ratings_Digital_Music.csv"
    member = None
    sha256 = "fdf164882460ff26fa2521e01f6a9cf8005ad252ddce308dd03519064f02d80e"


class InteractionFile(Component):
    """Any interaction file given as --dataset PATH: delimited (user, item, ...) columns or a RecBole .inter file.

    Delimited files: the first two columns are user and item; the separator is sniffed
    among tab, ``::``, comma, ``;`` and whitespace, and a header row is detected, unless
    ``sep`` / ``header`` are given. A file whose header has RecBole typed fields
    (``user_id:token``...) is read by column name (``user_id``, ``item_id``, ``timestamp``). Plain or
    gzip. A column's ids are ints when all of them are canonical decimal integers
    (no leading zeros), else strings. The interactions' order (for sequential recommenders):
    a column declared as time, by ``time`` (1-based column number or header name) or by a
    header naming it ``timestamp``, ``time``, ``position``, ... (``readers.TIME_NAMES``).
    """

    name = "file"

    def __init__(self, path: str | Path, sep: str | None = None, header: bool | None = None,
                 time: int | str | None = None) -> None:
        self.path = path
        self.sep = sep
        self.header = header
        self.time = time

    def load(self, data_dir: Path | str | None = None, download: bool = False) -> Interactions:
        """Read ``path`` (a relative path missing here is also looked for in ``data_dir``)."""
        path = Path(self.path).expanduser()
        if not path.exists() and data_dir is not None and not path.is_absolute() and (Path(data_dir) / path).exists():
            path = Path(data_dir) / path
        return _interactions(*readers.read_delimited(path, sep=self.sep, header=self.header, time=self.time))

    def has_order(self, data_dir: Path | str | None = None) -> bool | None:
        """Whether the file declares an order (a ``time`` column given, a RecBole ``timestamp`` field, a header
        naming a time column), read from its first lines; whether the values parse is checked when it is read."""
        path = Path(self.path).expanduser()
        if not path.exists() and data_dir is not None and not path.is_absolute() and (Path(data_dir) / path).exists():
            path = Path(data_dir) / path
        if not path.is_file():
            return None
        if self.time not in (None, 0, "0"):
            return True
        if self.time is not None:
            return False
        lines = readers._sample_lines(path, 50)
        if not lines:
            return None
        if self.sep in (None, "\t") and self.header is not False and readers.looks_like_recbole_header(lines[0]):
            return any(f.strip().split(":", 1)[0] == "timestamp" for f in lines[0].split("\t"))
        sep = self.sep or readers.sniff_separator(lines)
        if sep is None:
            return None
        header = self.header if self.header is not None else readers.sniff_header(lines, sep)
        if not header:
            return False
        names = [f.strip().strip('"').lower() for f in readers._split(lines[0], sep)]
        return any(c >= 2 and name in readers.TIME_NAMES for c, name in enumerate(names))


def _interactions(users: np.ndarray, items: np.ndarray, order: np.ndarray | None = None) -> Interactions:
    """Interactions from a reader's columns; ``order`` (each line's time or position) is kept when the file has it."""
    from miars_core.contracts.types import Interactions  # scipy: imported on first load, not on plugin discovery

    return Interactions.from_pairs(users, items, order)


def embedded_ml100k() -> Path | None:
    """RecBole's bundled ``ml-100k.inter``, found without importing recbole; None if absent."""
    try:
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k" / "ml-100k.inter"
    return path if path.is_file() else None


#: Readers whose files carry each interaction's time.
ORDERED_READERS = (readers.read_u_data, readers.read_ratings_dat, readers.read_amazon_csv)

#: Registered name -> dataset class.
DATASETS: dict[str, type] = {
    "ml-100k": MovieLens100K,
    "ml-1m": MovieLens1M,
    "lastfm-2k": LastFM2K,
    "adm": AmazonDigitalMusic,
    "file": InteractionFile,
}


@hookimpl
def register_datasets(register):
    for name, factory in DATASETS.items():
        register(name, factory)
