"""The recommender state contract: a fitted model as arrays plus a JSON record, never a pickle.

A fitted recommender may offer two optional methods, and the engine then stores the fitted
model as a stage output (:mod:`miars_core.engine.stages`, the ``model`` stage) so that query
access, fold-in services, reference models, defense benchmarks and reruns never fit it again:

* ``get_state() -> (arrays, record)`` on the fitted object (what ``fit`` returned): ``arrays``
  maps names to numpy arrays of numbers, booleans or strings (no ``dtype=object``), ``record``
  is a JSON object (no NaN or infinity). ``None`` means "this fit cannot be stored" (the engine
  then keeps today's path: the model is fitted again in each process that needs it).
* ``set_state(arrays, record) -> fitted`` on a fresh, unfitted component built with the same
  hyperparameters: returns a fitted object that recommends exactly what the saved one did
  (``recommend(k)``, ``new_accounts()``, ``recommend_for``). It raises (any exception) when the
  state does not fit it, for instance when it was written by another version of a library:
  the engine then says so in one line and fits again.

A training defense (``acts_on = "training"``) restores the model it fitted the same way:
``defense.set_state(recommender, arrays, record) -> fitted`` mirrors ``defense.fit(recommender,
train, seed)``; the fitted object it returns has ``get_state()``.

:func:`check_state` is what the engine checks before storing; :func:`csr_arrays` and
:func:`csr_from_arrays` store a sparse matrix as two arrays (float32 0/1 matrices) or three.
``miars_core.kit.checks.check_state`` is the conformance check plugin authors run.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import MiarsError

#: Characters an array name may not hold (names become file names in the stage store).
_BAD_NAME = ("/", "\\", "\0")


def check_state(state: Any, who: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """A component's ``get_state()`` result, validated (None passes through: not storable).

    Raises a one-line :class:`MiarsError` naming ``who`` when the state is not arrays plus a
    JSON record (a bug of the component, not of the data).
    """
    if state is None:
        return None
    if not isinstance(state, tuple) or len(state) != 2:
        raise MiarsError(f"{who} get_state returned {type(state).__name__}; it must return (arrays, record) or None")
    arrays, record = state
    if not isinstance(arrays, dict) or not isinstance(record, dict):
        raise MiarsError(f"{who} get_state must return a dict of arrays and a dict record, got "
                         f"{type(arrays).__name__} and {type(record).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in _BAD_NAME):
            raise MiarsError(f"{who} get_state: array name {name!r} is not usable as a file name")
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "biufcSUM":
            raise MiarsError(f"{who} get_state: array {name!r} has dtype {arr.dtype}; store numbers, booleans or strings")
        out[name] = arr
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MiarsError(f"{who} get_state: the record is not plain JSON ({exc})") from None
    return out, record


def csr_arrays(prefix: str, matrix: sp.spmatrix) -> dict[str, np.ndarray]:
    """A sparse matrix as arrays ``<prefix>.indptr``, ``<prefix>.indices`` and, unless it is a float32 0/1
    matrix (interactions), ``<prefix>.data``; :func:`csr_from_arrays` gives it back exactly."""
    m = sp.csr_matrix(matrix)
    out = {f"{prefix}.indptr": m.indptr.copy(), f"{prefix}.indices": m.indices.copy()}
    if m.dtype != np.float32 or not (m.data == 1).all():
        out[f"{prefix}.data"] = m.data.copy()
    return out


def csr_from_arrays(arrays: dict[str, np.ndarray], prefix: str, shape: tuple[int, int]) -> sp.csr_matrix:
    """The matrix :func:`csr_arrays` stored (float32 ones when it stored no values), its structure checked."""
    indptr, indices = arrays[f"{prefix}.indptr"], arrays[f"{prefix}.indices"]
    data = arrays.get(f"{prefix}.data")
    n_rows, n_cols = (int(s) for s in shape)
    if (indptr.ndim != 1 or len(indptr) != n_rows + 1 or indices.ndim != 1 or indptr[0] != 0
            or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any()
            or (len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n_cols))
            or (data is not None and data.shape != indices.shape)):
        raise ValueError(f"the stored matrix {prefix!r} is not a valid {n_rows} x {n_cols} sparse matrix")
    values = np.ones(len(indices), dtype=np.float32) if data is None else data
    return sp.csr_matrix((values, indices, indptr), shape=(n_rows, n_cols))
