"""Stage outputs as arrays and back (the data types of :mod:`miars_core.contracts.types`), and the checks
of outputs read back: a stage's output must be usable before anything indexes with it."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..contracts.types import Interactions, Part, Split


def _ids(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def _csr_arrays(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {f"{prefix}_indptr": m.indptr, f"{prefix}_indices": m.indices}


def _csr(arrays: dict[str, np.ndarray], prefix: str, n_items: int) -> sp.csr_matrix:
    indptr, indices = arrays[f"{prefix}_indptr"], arrays[f"{prefix}_indices"]
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_items))


def _order_arrays(prefix: str, data: Interactions) -> dict[str, np.ndarray]:
    """``<prefix>_order``: each interaction's time or position (aligned with the matrix's entries), when there is one."""
    return {} if data.order is None else {f"{prefix}_order": np.asarray(data.order, dtype=np.float64)}


def interactions_to_arrays(data: Interactions) -> dict[str, np.ndarray]:
    return {**_csr_arrays("m", data.matrix), **_order_arrays("m", data), "user_ids": _ids(data.user_ids),
            "item_ids": _ids(data.item_ids)}


def interactions_from_arrays(a: dict[str, np.ndarray]) -> Interactions:
    return Interactions(_csr(a, "m", len(a["item_ids"])), a["user_ids"], a["item_ids"], a.get("m_order"))


def split_to_arrays(split: Split) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"item_ids": _ids(split.item_ids)}
    for part in (split.shadow, split.target):
        out.update(_csr_arrays(part.name, part.interactions.matrix))
        out.update(_order_arrays(part.name, part.interactions))
        out[f"{part.name}_user_ids"] = _ids(part.interactions.user_ids)
        out[f"{part.name}_is_member"] = part.is_member
    out.update(_csr_arrays("vectorization", split.vectorization.matrix))
    out.update(_order_arrays("vectorization", split.vectorization))
    out["vectorization_user_ids"] = _ids(split.vectorization.user_ids)
    return out


def split_from_arrays(a: dict[str, np.ndarray]) -> Split:
    n_items = len(a["item_ids"])

    def inter(name: str) -> Interactions:
        return Interactions(_csr(a, name, n_items), a[f"{name}_user_ids"], a["item_ids"], a.get(f"{name}_order"))

    parts = [Part(name, inter(name), a[f"{name}_is_member"].astype(bool)) for name in ("shadow", "target")]
    return Split(parts[0], parts[1], inter("vectorization"), a["item_ids"])


# -- checks of outputs read back (a stage's output must be usable before anything indexes with it) -------
def _index_problem(arr: np.ndarray | None, name: str, upper: int, shape: tuple | None = None) -> tuple[str, str] | None:
    """``arr`` holds integer indices in ``0..upper-1`` (and has ``shape``, -1 meaning any)."""
    if arr is None:
        return name, "is missing"
    if arr.dtype.kind not in "iu":
        return name, f"holds {arr.dtype} values, not integer indices"
    if shape is not None and (arr.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, arr.shape))):
        return name, f"has shape {list(arr.shape)}, expected {[('any' if d == -1 else d) for d in shape]}"
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= upper):
        return name, f"holds indices outside 0..{upper - 1}"
    return None


def _csr_problem(a: dict[str, np.ndarray], prefix: str, n_rows: int, n_items: int) -> tuple[str, str] | None:
    indptr, indices = a.get(f"{prefix}_indptr"), a.get(f"{prefix}_indices")
    bad = _index_problem(indptr, f"{prefix}_indptr", (len(indices) + 1) if indices is not None else 1, (n_rows + 1,))
    if bad:
        return bad
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        return f"{prefix}_indptr", "is not a valid row index of its matrix"
    bad = _index_problem(indices, f"{prefix}_indices", n_items, (-1,))
    if bad or f"{prefix}_order" not in a:
        return bad
    # an order (time or position per interaction): finite, one per entry, over canonical rows
    bad = _finite_problem(a[f"{prefix}_order"], f"{prefix}_order", (len(indices),))
    if bad:
        return bad
    if len(indices) > 1:
        rows = np.repeat(np.arange(n_rows), np.diff(indptr))
        if ((np.diff(indices) <= 0) & (rows[1:] == rows[:-1])).any():
            return f"{prefix}_indices", "is not sorted within rows (the order array is aligned with sorted rows)"
    return None


def _flags_problem(arr: np.ndarray | None, name: str, n: int) -> tuple[str, str] | None:
    if arr is None:
        return name, "is missing"
    if arr.dtype != np.bool_ or arr.shape != (n,):
        return name, f"holds {arr.dtype} {list(arr.shape)}, expected bool [{n}]"
    return None


def _finite_problem(arr: np.ndarray | None, name: str, shape: tuple) -> tuple[str, str] | None:
    if arr is None:
        return name, "is missing"
    if arr.dtype.kind != "f" or arr.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, arr.shape)):
        return name, f"holds {arr.dtype} {list(arr.shape)}, expected floats of shape {[('any' if d == -1 else d) for d in shape]}"
    if not np.isfinite(arr).all():
        return name, "holds non-finite values"
    return None


def interactions_problem(a: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """What is wrong with a stored ``load`` output (None: usable)."""
    if "user_ids" not in a or "item_ids" not in a:
        return "user_ids" if "user_ids" not in a else "item_ids", "is missing"
    return _csr_problem(a, "m", len(a["user_ids"]), len(a["item_ids"]))


def split_problem(a: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """What is wrong with a stored ``split`` output (None: usable)."""
    if "item_ids" not in a:
        return "item_ids", "is missing"
    n_items = len(a["item_ids"])
    for name in ("shadow", "target", "vectorization"):
        users = a.get(f"{name}_user_ids")
        if users is None:
            return f"{name}_user_ids", "is missing"
        bad = _csr_problem(a, name, len(users), n_items)
        if bad is None and name != "vectorization":
            bad = _flags_problem(a.get(f"{name}_is_member"), f"{name}_is_member", len(users))
        if bad:
            return bad
    return None


def learned_state(component: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """A fitted component's learned state (attributes ending in ``_``) as arrays + JSON, or None.

    None means some learned attribute is neither an array nor a plain value, so the state cannot
    be stored without pickle; the stage is then recomputed in each process that needs it.
    """
    arrays, plain = {}, {}
    for name, value in vars(component).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[name] = value
        elif value is None or isinstance(value, (bool, int, float, str)):
            plain[name] = value
        else:
            return None
    return arrays, plain
