"""Fast parsers for interaction files (pandas' C reader; pandas is imported lazily).

Every reader returns ``(users, items, order)``: two parallel numpy arrays of original ids, one
entry per line (duplicates are collapsed later by ``Interactions.from_pairs``), and the
interactions' times as float64 where the file has them (MovieLens ``u.data`` and ``ratings.dat``,
Amazon CSV, a RecBole ``.inter`` with a ``timestamp`` field, a delimited file whose header names a
time column), else None. Any
problem (missing, empty, wrong column count, unparsable values) raises a one-line
:class:`~miars_core.contracts.errors.MiarsError` that names the file and the expected format.

Id types: the fixed formats whose ids are integers (MovieLens, Last.fm) give ``int64``;
Amazon ids (reviewer ids, ASINs that may start with ``0``) stay strings. Generic files and
RecBole ``.inter`` files give ``int64`` for a column whose every id is a canonical decimal
integer (no sign other than ``-``, no leading zeros, at most 18 digits) and strings
otherwise, so ``007`` and ``7`` never collide.
"""

from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path

import numpy as np

from miars_core.contracts.errors import MiarsError

#: A RecBole atomic-file header field such as ``user_id:token``.
_RECBOLE_FIELD = re.compile(r"^[^:\s]+:(token|token_seq|float|float_seq)$")
#: The field types RecBole knows.
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
#: Anything shaped like a typed header field (``name:type``), known type or not.
_TYPED_FIELD = re.compile(r"^[A-Za-z_][\w.\-]*:[A-Za-z_]\w*$")
#: Column names that mark a header row: ``user``, ``userId``, ``item_id``, ``movieID``, ``asin``, ``u``...
_HEADER_NAME = re.compile(
    r"(user|item|movie|artist|product|asin|reviewer|track|song|book|business|u|i|uid|iid)([ _.\-]?(id|ids|name))?s?|id"
)
_GZIP_MAGIC = b"\x1f\x8b"


def _fail(path: Path, expected: str, problem: str) -> MiarsError:
    return MiarsError(f"malformed file {path}: expected {expected}; {problem}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _check_exists(path: Path, expected: str) -> None:
    if not path.exists():
        raise MiarsError(f"file {path} does not exist; expected {expected}")
    if not path.is_file():
        raise MiarsError(f"{path} is not a file; expected {expected}")


def _read(path: Path, expected: str, **kwargs):
    """``pandas.read_csv`` with every cell a string; errors become MiarsError naming ``path``."""
    import pandas as pd

    _check_exists(path, expected)
    kwargs.setdefault("header", None)
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            na_filter=False,
            compression="gzip" if _is_gzip(path) else None,
            encoding="utf-8-sig",
            encoding_errors="surrogateescape",
            skip_blank_lines=True,
            **kwargs,
        )
    except pd.errors.EmptyDataError:
        raise _fail(path, expected, "the file is empty") from None
    except (pd.errors.ParserError, ValueError, UnicodeError, EOFError, OSError) as exc:
        raise _fail(path, expected, _one_line(exc)) from None
    if len(df) == 0:
        raise _fail(path, expected, "the file has no data rows")
    return df


def _check_columns(df, path: Path, expected: str, ncols: int, required: list[int] | None = None) -> None:
    """Exactly ``ncols`` columns, and no empty field in the ``required`` ones (default: all)."""
    if df.shape[1] != ncols:
        raise _fail(path, expected, f"found {df.shape[1]} columns")
    # Lines with too few fields are padded with empty strings (na_filter is off).
    cols = [df.iloc[:, c] for c in (range(ncols) if required is None else required)]
    empty = np.zeros(len(df), dtype=bool)
    for col in cols:
        empty |= (col == "").to_numpy(dtype=bool, na_value=True)
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise _fail(path, expected, f"data row {row + 1} has fewer than {len(cols)} fields or an empty field")


def _first_bad(series, pattern: str) -> int | None:
    ok = series.str.fullmatch(pattern).to_numpy(dtype=bool, na_value=False)
    if ok.all():
        return None
    return int(np.flatnonzero(~ok)[0])


def _int_ids(series, path: Path, expected: str, what: str) -> np.ndarray:
    """A string column of integer ids as int64; any non-integer raises MiarsError."""
    try:
        return series.to_numpy(dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        bad = _first_bad(series.str.strip(), r"[-+]?[0-9]+")
        where = f"data row {bad + 1} has {what} {series.iloc[bad]!r}" if bad is not None else f"a {what} is out of range"
        raise _fail(path, expected, f"{where}, not an integer") from None


def _str_ids(series) -> np.ndarray:
    return series.to_numpy(dtype=object)


def _auto_ids(series, path: Path, expected: str, what: str) -> np.ndarray:
    """Stripped ids: int64 when every one is a canonical decimal integer, else the strings (object)."""
    ids = np.char.strip(np.asarray(series.to_numpy(dtype=object, na_value=""), dtype=str))
    empty = np.char.str_len(ids) == 0
    if empty.any():
        raise _fail(path, expected, f"data row {int(np.flatnonzero(empty)[0]) + 1} has an empty or missing {what}")
    if _canonical_ints(ids):
        try:
            return ids.astype(np.int64)
        except (ValueError, OverflowError):  # pragma: no cover - exotic digits
            pass
    return ids.astype(object)


def _canonical_ints(ids: np.ndarray) -> bool:
    """Whether every string is ``0`` or ``[-]D...`` with no leading zero and at most 18 digits (vectorized)."""
    n = np.char.str_len(ids)
    ok = np.char.isdecimal(ids) & (n <= 18) & ~((n > 1) & np.char.startswith(ids, "0"))
    if ok.all():
        return True
    rest = ids[~ok]
    if not np.char.startswith(rest, "-").all():
        return False
    body = np.char.lstrip(rest, "-")
    nb = np.char.str_len(body)
    return bool((np.char.isdecimal(body) & (nb == np.char.str_len(rest) - 1) & (nb >= 1) & (nb <= 18) & ~np.char.startswith(body, "0")).all())


def _times(series, path: Path, expected: str, what: str = "timestamp", dates: bool = False) -> np.ndarray:
    """A column of times as float64: numbers (unix seconds, positions), or with ``dates`` ISO 8601 dates
    (as unix seconds); anything else is a one-line MiarsError naming the row."""
    import pandas as pd

    text = series.str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any() and dates and bad.all():
        try:
            stamps = pd.to_datetime(text, format="ISO8601", utc=True)
        except (ValueError, TypeError, OverflowError):
            stamps = None
        if stamps is not None and not stamps.isna().any():
            return ((stamps - pd.Timestamp("1970-01-01", tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        kind = "a number or an ISO 8601 date" if dates else "a number"
        raise _fail(path, expected, f"data row {row + 1} has {what} {series.iloc[row]!r}, not {kind}")
    return values.to_numpy(dtype=np.float64)


def _check_numeric(series, path: Path, expected: str, what: str) -> None:
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy())
    if len(bad):
        raise _fail(path, expected, f"data row {int(bad[0]) + 1} has {what} {series.iloc[int(bad[0])]!r}, not a number")


# --------------------------------------------------------------------------- fixed formats

U_DATA = "tab-separated 'user_id<TAB>item_id<TAB>rating<TAB>timestamp' lines without a header (MovieLens u.data)"
RATINGS_DAT = "'UserID::MovieID::Rating::Timestamp' lines without a header (MovieLens-1M ratings.dat)"
USER_ARTISTS = "a tab-separated file with header 'userID<TAB>artistID<TAB>weight' (hetrec2011 user_artists.dat)"
AMAZON_CSV = "comma-separated 'user,item,rating,timestamp' lines without a header (Amazon ratings-only CSV)"
PAIRS_TSV = "tab-separated 'user_id<TAB>item_id' lines without a header"


def read_u_data(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MovieLens-100K ``u.data`` (plain or gzip): int user and item ids, unix timestamps."""
    path = Path(path)
    df = _read(path, U_DATA, sep="\t", quoting=csv.QUOTE_NONE)
    _check_columns(df, path, U_DATA, 4)
    _check_numeric(df[2], path, U_DATA, "rating")
    return (_int_ids(df[0], path, U_DATA, "user id"), _int_ids(df[1], path, U_DATA, "item id"),
            _times(df[3], path, U_DATA))


def read_ratings_dat(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MovieLens-1M ``ratings.dat`` (plain or gzip): int user and movie ids, unix timestamps.

    ``::`` is read as the single-character separator ``:`` so pandas' C parser applies;
    the empty fields between the two colons are checked to be empty.
    """
    path = Path(path)
    df = _read(path, RATINGS_DAT, sep=":", quoting=csv.QUOTE_NONE)
    if df.shape[1] == 1:
        raise _fail(path, RATINGS_DAT, "no '::' separator found")
    _check_columns(df, path, RATINGS_DAT, 7, required=[0, 2, 4, 6])
    gaps = (df[1] != "") | (df[3] != "") | (df[5] != "")
    if gaps.any():
        row = int(np.flatnonzero(gaps.to_numpy())[0])
        raise _fail(path, RATINGS_DAT, f"data row {row + 1} is not separated by '::'")
    _check_numeric(df[4], path, RATINGS_DAT, "rating")
    return (_int_ids(df[0], path, RATINGS_DAT, "user id"), _int_ids(df[2], path, RATINGS_DAT, "movie id"),
            _times(df[6], path, RATINGS_DAT))


def read_user_artists(path: Path) -> tuple[np.ndarray, np.ndarray, None]:
    """hetrec2011 Last.fm ``user_artists.dat`` (plain or gzip): int user and artist ids (no order: the file has no time)."""
    path = Path(path)
    df = _read(path, USER_ARTISTS, sep="\t", header=0, quoting=csv.QUOTE_NONE)
    names = [str(c).strip().lower() for c in df.columns]
    if names != ["userid", "artistid", "weight"]:
        raise _fail(path, USER_ARTISTS, f"the header is {'<TAB>'.join(map(str, df.columns))!r}")
    _check_columns(df, path, USER_ARTISTS, 3)
    return (_int_ids(df.iloc[:, 0], path, USER_ARTISTS, "user id"), _int_ids(df.iloc[:, 1], path, USER_ARTISTS, "artist id"),
            None)


def read_amazon_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amazon 2014 ratings-only CSV (plain or gzip): string reviewer ids and ASINs, unix timestamps."""
    path = Path(path)
    df = _read(path, AMAZON_CSV, sep=",")
    _check_columns(df, path, AMAZON_CSV, 4)
    _check_numeric(df[2], path, AMAZON_CSV, "rating")
    return _str_ids(df[0]), _str_ids(df[1]), _times(df[3], path, AMAZON_CSV)


def read_pairs_tsv(path: Path) -> tuple[np.ndarray, np.ndarray, None]:
    """A headerless ``user<TAB>item`` file of integer ids (such as ``ml-1m-pairs.tsv.gz``); no order."""
    path = Path(path)
    df = _read(path, PAIRS_TSV, sep="\t", quoting=csv.QUOTE_NONE)
    _check_columns(df, path, PAIRS_TSV, 2)
    return _int_ids(df[0], path, PAIRS_TSV, "user id"), _int_ids(df[1], path, PAIRS_TSV, "item id"), None


# --------------------------------------------------------------------------- RecBole atomic files

INTER = "a RecBole atomic .inter file: tab-separated, header of typed fields such as 'user_id:token<TAB>item_id:token'"


def read_inter(path: Path, user_field: str = "user_id", item_field: str = "item_id",
               time_field: str = "timestamp") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A RecBole ``.inter`` file: the ``user_field`` and ``item_field`` columns, taken by name, and the
    ``time_field`` column (RecBole's ``TIME_FIELD``, typed ``:float``) as the order when there is one."""
    path = Path(path)
    df = _read(path, INTER, sep="\t", header=0, quoting=csv.QUOTE_NONE)
    columns = [f.strip() for f in _sample_lines(path, 1)[0].split("\t")]  # pandas would rename repeated names
    if len(columns) != df.shape[1]:
        columns = [str(c) for c in df.columns]
    check_inter_header(columns, path)
    by_name: dict[str, list[str]] = {}
    for c in columns:
        by_name.setdefault(c.split(":", 1)[0], []).append(c)
    missing = [f for f in (user_field, item_field) if f not in by_name]
    if missing:
        raise _fail(path, INTER, f"no {' or '.join(repr(m) for m in missing)} column among {', '.join(columns)}")
    for field_name in (user_field, item_field):
        found = by_name[field_name]
        if len(found) > 1:
            raise _fail(path, INTER, f"the header has {len(found)} {field_name!r} columns ({', '.join(found)}); keep exactly one")
        ftype = found[0].split(":", 1)[1] if ":" in found[0] else ""
        if ftype != "token":
            why = ("holds sequences of ids (a row such as '242 3' would become one id); miars needs one "
                   f"{field_name.split('_')[0]} per row: write one row per interaction" if ftype == "token_seq"
                   else "must be typed ':token' (ids)")
            raise _fail(path, INTER, f"column {found[0]!r} {why}")
    users, items = df.iloc[:, columns.index(by_name[user_field][0])], df.iloc[:, columns.index(by_name[item_field][0])]
    order = None
    if time_field in by_name:
        found = by_name[time_field]
        if len(found) > 1:
            raise _fail(path, INTER, f"the header has {len(found)} {time_field!r} columns ({', '.join(found)}); keep exactly one")
        if found[0].split(":", 1)[1] != "float":
            raise _fail(path, INTER, f"column {found[0]!r} must be typed ':float' (RecBole's time field)")
        order = _times(df.iloc[:, columns.index(found[0])], path, INTER, what=time_field)
    return _auto_ids(users, path, INTER, user_field), _auto_ids(items, path, INTER, item_field), order


# --------------------------------------------------------------------------- any delimited file

DELIMITED = "a delimited file whose first two columns are user and item (separated by tab, comma, '::', ';' or whitespace)"
#: Separators tried in this order; whitespace (``\\s+``) last.
SEPARATORS = ("\t", "::", ",", ";")


def _sample_lines(path: Path, n: int = 50) -> list[str]:
    opener = gzip.open if _is_gzip(path) else open
    lines: list[str] = []
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            for line in f:
                line = line.rstrip("\r\n")
                if line.strip():
                    lines.append(line)
                    if len(lines) >= n:
                        break
    except (OSError, EOFError) as exc:
        raise _fail(path, DELIMITED, _one_line(exc)) from None
    return lines


def _split(line: str, sep: str) -> list[str]:
    return line.split() if sep == r"\s+" else line.split(sep)


def sniff_separator(lines: list[str]) -> str | None:
    """The first separator that splits every sampled line into the same number (>= 2) of fields."""
    for sep in SEPARATORS + (r"\s+",):
        counts = {len(_split(line, sep)) for line in lines}
        if len(counts) == 1 and counts.pop() >= 2:
            return sep
    # A header may be split differently (e.g. 'user item' over tab data); try without line 1.
    if len(lines) > 2:
        for sep in SEPARATORS + (r"\s+",):
            counts = {len(_split(line, sep)) for line in lines[1:]}
            if len(counts) == 1 and counts.pop() >= 2 and len(_split(lines[0], sep)) >= 2:
                return sep
    return None


def _looks_like_name(field: str) -> bool:
    return bool(_HEADER_NAME.fullmatch(field.strip().strip('"').lower()))


def sniff_header(lines: list[str], sep: str) -> bool:
    """Whether line 1 is a header: both its first fields look like column names (``userId``,
    ``item``, ``u``...), or both are digit-free words while one of those columns is all
    integers in the later sampled lines. Ids such as ``A1B2`` or ``B00X`` never make a header."""
    first = [f.strip().strip('"') for f in _split(lines[0], sep)[:2]]
    if all(_looks_like_name(f) for f in first):
        return True
    rest = [_split(line, sep)[:2] for line in lines[1:]]
    word = re.compile(r"[A-Za-z_][A-Za-z _.\-]*").fullmatch
    if not rest or not all(word(f) for f in first):
        return False
    is_int = re.compile(r"-?[0-9]+").fullmatch
    return any(all(len(r) > col and is_int(r[col].strip().strip('"')) for r in rest) for col in range(2))


def check_inter_header(fields: list[str], path: Path) -> None:
    """Every field of a RecBole header must be ``name:type`` with a type RecBole knows."""
    for f in fields:
        name, sep, ftype = f.partition(":")
        if not sep or not name:
            raise _fail(path, INTER, f"header field {f!r} is not 'name:type'")
        if ftype not in RECBOLE_TYPES:
            raise _fail(path, INTER, f"header field {f!r} has unknown type {ftype!r}; RecBole types are {', '.join(RECBOLE_TYPES)}")


def looks_like_recbole_header(line: str) -> bool:
    """Two or more tab-separated ``name:type`` fields, whatever the types (checked later)."""
    fields = [f for f in line.split("\t") if f]
    return len(fields) >= 2 and all(_TYPED_FIELD.match(f.strip()) for f in fields)


#: Header names that declare a column of a delimited file as the interactions' time (or position).
TIME_NAMES = ("timestamp", "time", "ts", "datetime", "date", "position", "pos", "order", "seq", "step")


def read_delimited(path: Path, sep: str | None = None, header: bool | None = None,
                   time: int | str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Any delimited interaction file (plain or gzip) or a RecBole ``.inter`` file.

    A file whose header has RecBole typed fields (``user_id:token``...) is read as an
    atomic file, taking its ``user_id`` and ``item_id`` columns by name (and ``timestamp``
    as the order). Otherwise the first two columns are user and item; ``sep`` and ``header``
    are sniffed unless given (see :func:`sniff_separator`, :func:`sniff_header`).

    The order: ``time`` names the column that holds each interaction's time or position (a
    1-based column number, or a header name); a column number 0 means none. Without it, a
    header that names a later column one of :data:`TIME_NAMES` (``timestamp``, ``time``,
    ``position``, ...) declares it; a headerless file has no order (its third column may be a
    rating). Times are numbers or ISO 8601 dates; anything else fails in one line.
    """
    path = Path(path)
    _check_exists(path, DELIMITED)
    lines = _sample_lines(path)
    if not lines:
        raise _fail(path, DELIMITED, "the file is empty")
    if sep in (None, "\t") and header is not False and (
        all(_RECBOLE_FIELD.match(f) for f in lines[0].split("\t") if f) or looks_like_recbole_header(lines[0])
    ):
        return read_inter(path)
    if sep is None:
        sep = sniff_separator(lines)
        if sep is None:
            raise _fail(path, DELIMITED, f"could not detect the separator from the first line {lines[0][:80]!r}")
    if header is None:
        header = sniff_header(lines, sep)
    kwargs: dict = {"header": 0 if header else None}
    if sep == "::" and all(parts[1::2] == [""] * len(parts[1::2]) for parts in (line.split(":") for line in lines)):
        # Fast path: '::' files without other colons are read with the C parser on ':'.
        df = _read(path, DELIMITED, sep=":", **kwargs)
        df = df.iloc[:, ::2]
    elif sep == "::":
        df = _read(path, DELIMITED, sep="::", engine="python", **kwargs)
    else:
        df = _read(path, DELIMITED, sep=sep, **kwargs)
    if df.shape[1] < 2:
        raise _fail(path, DELIMITED, f"found {df.shape[1]} column with separator {sep!r}")
    users, items = _auto_ids(df.iloc[:, 0], path, DELIMITED, "user"), _auto_ids(df.iloc[:, 1], path, DELIMITED, "item")
    column = _time_column(df, path, time, header)
    return users, items, (None if column is None else _times(df.iloc[:, column], path, DELIMITED, dates=True,
                                                             what=f"time (column {column + 1})"))


def _time_column(df, path: Path, time: int | str | None, header: bool) -> int | None:
    """The 0-based column that holds the order, or None (see :func:`read_delimited`)."""
    names = [str(c).strip().strip('"').lower() for c in df.columns] if header else []
    if time is None:
        found = [c for c, name in enumerate(names) if c >= 2 and name in TIME_NAMES]
        return found[0] if found else None
    if isinstance(time, bool):
        raise MiarsError(f"file dataset: time must be a column number (1-based) or a header name, got {time!r}")
    if isinstance(time, (int, np.integer)) or (isinstance(time, str) and time.strip().isdigit()):
        number = int(time)
        if number == 0:
            return None
        if number < 3 or number > df.shape[1]:
            raise _fail(path, DELIMITED, f"time column {number} is not one of columns 3..{df.shape[1]} "
                        "(columns 1 and 2 are user and item)")
        return number - 1
    if not header or str(time).strip().lower() not in names:
        where = f"its header has {', '.join(names)}" if header else "it has no header"
        raise _fail(path, DELIMITED, f"no time column named {time!r}: {where}")
    return names.index(str(time).strip().lower())
