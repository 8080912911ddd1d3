"""User attributes (``--user-attributes PATH``) and the cold start by attributes.

A data set may come with categorical attributes of its users (gender, age, occupation...).
:func:`read_attributes` reads them from a delimited file: a user id, then one column per
attribute; every value is a categorical token. Recognised formats:

* MovieLens ``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``, plain or gzipped):
  gender, age, occupation (the zip code is dropped);
* RecBole atomic ``.user`` files (tab-separated, a header of ``name:type`` fields, e.g. RecBole's
  ml-100k ``user_id:token age:token gender:token occupation:token zip_code:token``): every field
  but the user id and the zip code, with gender, age and occupation first (in that order);
* any other delimited file (tab, comma, semicolon or ``::``): user id, then attribute columns, in
  file order. The first line is a header when its first field is a user-id name (``user``,
  ``user_id``, ``userid``, ``uid``, ``id``, optionally with ``:token``) or when it is not a
  number while the next line's is; without a header the columns are ``attr1``, ``attr2``, ...

:class:`UserAttributes` holds the table as integer codes (0 = ``unknown``, a user absent from
the file or an empty value); ``for_users(ids)`` aligns it with any set of users (a data set's,
a part's, a model's training users). :class:`AttributeColdStart` is what a service serves an
account without history from those codes: the most popular items among its members with the
same attribute values, falling back to coarser groups, then to every member.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..contracts.errors import MiarsError

#: Bumped when reading or coding a file changes: it enters the keys of the stages that read attributes.
ATTRIBUTES_VERSION = 1
#: The category of a user absent from the file (or with an empty value): code 0 in every column.
UNKNOWN = "unknown"
#: Column names of a MovieLens ``users.dat`` file, and the columns kept (coarsest first).
MOVIELENS_COLUMNS = ("user_id", "gender", "age", "occupation", "zip_code")
PREFERRED = ("gender", "age", "occupation")
DROPPED = ("zip_code", "zip", "zipcode", "zip-code")
ID_NAMES = ("user", "user_id", "userid", "uid", "id", "user id")
#: Members a group needs before the cold start by attributes serves from it (a service parameter's default).
MIN_GROUP = 10

_HELP = ("a file of one user per line: user id, then attribute columns (tab, comma, semicolon or '::' separated, "
         "header optional), a MovieLens users.dat or a RecBole .user file")


@dataclass(frozen=True, eq=False)
class UserAttributes:
    """Categorical attributes of users, as integer codes.

    ``user_ids`` (str, sorted, unique) are the file's users; ``codes[u, j]`` is the code of
    user ``u``'s value in column ``columns[j]``: ``categories[j][code]``, code 0 being
    :data:`UNKNOWN`. ``format`` says how the file was read (``movielens``, ``recbole``,
    ``delimited``).
    """

    user_ids: np.ndarray
    codes: np.ndarray
    columns: tuple[str, ...]
    categories: tuple[tuple[str, ...], ...]
    format: str = "delimited"

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    def rows_of(self, user_ids) -> np.ndarray:
        """Row of each id in this table, -1 for an id the file does not list (vectorised)."""
        wanted = _as_text(user_ids)
        if len(self.user_ids) == 0 or len(wanted) == 0:
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.user_ids, wanted), len(self.user_ids) - 1)
        return np.where(self.user_ids[at] == wanted, at, -1).astype(np.int64)

    def for_users(self, user_ids) -> np.ndarray:
        """(len(user_ids), n_columns) codes, rows aligned with ``user_ids``; users absent from the file: 0 (unknown)."""
        rows = self.rows_of(user_ids)
        out = np.zeros((len(rows), self.n_columns), dtype=np.int32)
        found = rows >= 0
        out[found] = self.codes[rows[found]]
        return out

    def summary(self, user_ids) -> dict:
        """What result.json says about the attributes of a data set's users: columns, categories, users matched."""
        rows = self.rows_of(user_ids)
        matched = int((rows >= 0).sum())
        return {"format": self.format, "columns": list(self.columns),
                "categories": {c: len(cats) - 1 for c, cats in zip(self.columns, self.categories)},
                "users": int(len(rows)), "matched": matched, "unknown": int(len(rows)) - matched}


def _as_text(ids) -> np.ndarray:
    """Ids as strings, integer-valued floats without their ``.0`` (an id 7 in one file is ``7.0`` in another)."""
    arr = np.asarray(ids)
    if arr.dtype.kind == "f" and arr.size and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        arr = arr.astype(np.int64)
    return np.char.strip(arr.astype(str))


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise MiarsError(f"--user-attributes {str(path)!r}: cannot be decompressed ({exc}); it must be "
                             f"{_HELP}, plain or gzipped") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _delimiter(line: str) -> str:
    for sep in ("::", "\t", ",", ";"):
        if sep in line:
            return sep
    return "\t"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _field_name(text: str) -> str:
    return text.strip().split(":")[0].strip().lower().replace("-", "_")


def read_attributes(path: str | Path) -> UserAttributes:
    """Read a user attributes file (see the module's docstring for the formats); one-line errors on bad input."""
    path = Path(path).expanduser()
    shown = repr(str(path))
    if not path.is_file():
        raise MiarsError(f"--user-attributes {shown}: no such file; pass {_HELP}")
    text = _open_text(path)
    lines = [line.rstrip("\r") for line in io.StringIO(text).read().split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise MiarsError(f"--user-attributes {shown} is empty; it must be {_HELP}")
    sep = _delimiter(lines[0])
    rows = [[f.strip() for f in line.split(sep)] for line in lines]
    width = len(rows[0])
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise MiarsError(f"--user-attributes {shown}: line {number} has {len(row)} columns, line 1 has {width} "
                             f"(separator {sep!r}); every line needs the same columns: {_HELP}")
    if width < 2:
        raise MiarsError(f"--user-attributes {shown} has one column (separator {sep!r}); it needs a user id and at "
                         f"least one attribute column: {_HELP}")
    first = rows[0]
    recbole = path.name.endswith((".user", ".user.gz")) or all(":" in f for f in first) and sep == "\t"
    header = (_field_name(first[0]) in ID_NAMES or recbole
              or (len(rows) > 1 and not _is_number(first[0]) and _is_number(rows[1][0])))
    if sep == "::" and not header and width == len(MOVIELENS_COLUMNS):
        fmt, names = "movielens", list(MOVIELENS_COLUMNS)
    elif header:
        fmt, names = ("recbole" if recbole else "delimited"), [_field_name(f) for f in first]
        rows = rows[1:]
    else:
        fmt, names = "delimited", ["user_id"] + [f"attr{j}" for j in range(1, width)]
    if not rows:
        raise MiarsError(f"--user-attributes {shown} has a header and no user; it must be {_HELP}")
    table = np.array(rows, dtype=object).astype(str)
    keep = [j for j in range(1, width) if names[j] not in DROPPED]
    if fmt in ("movielens", "recbole"):
        keep = sorted(keep, key=lambda j: (PREFERRED.index(names[j]) if names[j] in PREFERRED else len(PREFERRED), j))
    if not keep:
        raise MiarsError(f"--user-attributes {shown}: no attribute column is left once the zip code is dropped; "
                         f"it must be {_HELP}")
    ids = _as_text(table[:, 0])
    if (ids == "").any():
        line = int(np.flatnonzero(ids == "")[0]) + 1 + (fmt != "movielens" and header)
        raise MiarsError(f"--user-attributes {shown}: line {line} has no user id; every line starts with one")
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    repeated = ids[1:] == ids[:-1]
    if repeated.any():
        raise MiarsError(f"--user-attributes {shown} lists user {ids[1:][repeated][0]!r} twice; one line per user")
    values = table[order][:, keep]
    codes = np.zeros(values.shape, dtype=np.int32)
    categories = []
    for j in range(values.shape[1]):
        column = values[:, j]
        known = (column != "") & (np.char.lower(column) != UNKNOWN)
        cats, inverse = np.unique(column[known], return_inverse=True)
        codes[known, j] = inverse + 1
        categories.append((UNKNOWN, *cats.tolist()))
    return UserAttributes(ids, codes, tuple(names[j] for j in keep), tuple(categories), fmt)


def check_matches(attributes: UserAttributes, user_ids, path: str, dataset: str) -> dict:
    """The summary of ``attributes`` over a data set's users; a one-line error when the file matches none of them."""
    summary = attributes.summary(user_ids)
    if summary["matched"] == 0:
        example_file = ", ".join(attributes.user_ids[:3].tolist())
        example_data = ", ".join(_as_text(np.asarray(user_ids)[:3]).tolist())
        raise MiarsError(f"--user-attributes {path!r} matches no user of dataset {dataset!r} (file ids e.g. "
                         f"{example_file}; dataset ids e.g. {example_data}); the first column must hold the dataset's "
                         "user ids: pass the attributes file of this dataset, or drop --user-attributes")
    return summary


class AttributeColdStart:
    """Cold start by attributes: an account without history gets the most popular items among the members who share
    its attribute values, at the finest level with enough members.

    Levels are prefixes of the attribute columns, finest first: all ``c`` columns, then the
    first ``c - 1``, ..., then the first one, then everyone (the global popular list). An
    account is served from the first level where (a) it has a known value in every column of
    the prefix and (b) the members with those values number at least ``min_group``. Within a
    group, items rank by their popularity among the group's members, ties by their popularity
    among all members, then by item column. MovieLens columns come gender, age, occupation, so
    (gender, age, occupation) falls back to (gender, age), then (gender), then everyone.

    ``fit(matrix, codes)`` learns, per level, the groups with enough members and their item
    ranking (group-by through ``np.unique`` and one sparse product per level); only those
    rankings are kept (``levels_``), never a member's row. ``recommend(histories, codes, k)``
    serves each row its group's top-k items it does not know, vectorised over rows.
    """

    def __init__(self, min_group: int = MIN_GROUP):
        self.min_group = min_group

    def fit(self, matrix: sp.spmatrix, codes: np.ndarray) -> "AttributeColdStart":
        m = sp.csr_matrix(matrix, dtype=np.float64)
        m.data[:] = 1.0
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] != m.shape[0]:
            raise ValueError(f"codes of shape {codes.shape} for {m.shape[0]} members")
        n_items = m.shape[1]
        overall = np.asarray(m.sum(axis=0)).ravel()
        global_rank = np.empty(n_items, dtype=np.float64)
        global_rank[np.lexsort((np.arange(n_items), -overall))] = np.arange(n_items)
        self.radix_ = (codes.max(axis=0) + 1 if len(codes) else np.ones(codes.shape[1], dtype=np.int64)).astype(np.int64)
        self.n_items_ = n_items
        levels = []
        for width in range(codes.shape[1], 0, -1):
            known = (codes[:, :width] > 0).all(axis=1)
            keys = self._keys(codes[known, :width])
            groups, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
            big = counts >= int(self.min_group)
            if not big.any():
                continue
            member_rows = np.flatnonzero(known)
            indicator = sp.csr_matrix((np.ones(len(member_rows)), (inverse.ravel(), member_rows)),
                                      shape=(len(groups), m.shape[0]))
            popularity = np.asarray((indicator[np.flatnonzero(big)] @ m).todense())
            levels.append((width, groups[big], self._ranks(popularity, global_rank)))
        self.levels_ = levels
        self.global_ = self._ranks(overall[None, :], global_rank)[0]
        return self

    @staticmethod
    def _ranks(popularity: np.ndarray, global_rank: np.ndarray) -> np.ndarray:
        """-rank of each item in each row (0 best): by the row's popularity, then the global rank (float32, exact)."""
        key = -popularity * (len(global_rank) + 1.0) + global_rank[None, :]
        order = np.argsort(key, axis=1, kind="stable")
        ranks = np.empty(key.shape, dtype=np.float32)
        np.put_along_axis(ranks, order, -np.arange(key.shape[1], dtype=np.float32)[None, :], axis=1)
        return ranks

    def _keys(self, codes: np.ndarray) -> np.ndarray:
        """One int64 per row of codes over the first ``codes.shape[1]`` columns (mixed radix)."""
        key = np.zeros(len(codes), dtype=np.int64)
        for j in range(codes.shape[1]):  # a handful of columns, vectorised over rows
            key = key * int(self.radix_[j]) + codes[:, j]
        return key

    def groups(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each row of codes: the level (number of columns; 0 = everyone) and the row of its ranking in
        :meth:`rankings` it is served from."""
        codes = np.asarray(codes, dtype=np.int64)
        n = len(codes)
        width = np.zeros(n, dtype=np.int64)
        row = np.full(n, -1, dtype=np.int64)
        offset = 0
        for w, keys, ranks in self.levels_:
            cut = codes[:, :w]
            ok = (row < 0) & (cut > 0).all(axis=1) & (cut < self.radix_[:w]).all(axis=1)
            mine = self._keys(np.where(ok[:, None], cut, 0))
            at = np.minimum(np.searchsorted(keys, mine), len(keys) - 1)
            hit = ok & (keys[at] == mine)
            row[hit] = offset + at[hit]
            width[hit] = w
            offset += len(keys)
        row[row < 0] = offset  # everyone: the global ranking, last
        return width, row

    def rankings(self) -> np.ndarray:
        """Every group's ranking, level after level, then the global one: (groups + 1, items) float32 of -rank."""
        return np.vstack([ranks for _, _, ranks in self.levels_] + [self.global_[None, :]])

    def recommend(self, histories: sp.spmatrix, codes: np.ndarray, k: int) -> np.ndarray:
        """Top-``k`` item columns for each row: its group's ranking, without the items the row knows."""
        from .ranking import top_k_excluding

        histories = sp.csr_matrix(histories)
        if codes is None:
            codes = np.zeros((histories.shape[0], len(self.radix_)), dtype=np.int64)
        codes = np.asarray(codes)
        if codes.shape != (histories.shape[0], len(self.radix_)):
            raise MiarsError(f"attributes of shape {codes.shape} for {histories.shape[0]} accounts; one row of "
                             f"{len(self.radix_)} attribute codes per account")
        _, row = self.groups(codes)
        table = self.rankings()
        return top_k_excluding(lambda rows: table[row[rows]], histories, int(k))
