"""Fitted RecBole models as arrays plus a JSON record, and back (the recommender state contract).

A :class:`~miars_recbole.session.FittedRecBole` is a RecBole module plus its id maps. Its state is
the module's ``state_dict`` as arrays (``param.<name>``), the maps (``user_rb``, ``item_cols``)
and, for the sparse ItemKNN, the similarity (``w.*``); the record says how the module was built
(``build``: the lean data path, RecBole's own, or the sparse ItemKNN, with the RecBole settings
and seed) and which RecBole wrote it. Restoring builds the same module class around the same
settings and training data and loads the arrays into it: no training, and the same scores.

A model built by RecBole's own data path (``recbole:<Name>`` other than ItemKNN, BPR and NeuMF) is
restored only when that reproduces its scores exactly: :func:`restores_exactly` checks it right
after the fit (a model whose fitted state lives outside its ``state_dict`` is then not stored,
and is fitted again where it is needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.errors import MiarsError
from miars_core.contracts.state import csr_arrays, csr_from_arrays

#: Bump when the arrays or the record below change meaning.
STATE_FORMAT = 1

#: Rows scored to check that a model of RecBole's own data path restores exactly.
CHECK_ROWS = 64


def _recbole_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("recbole")
    except md.PackageNotFoundError:  # pragma: no cover - a dependency
        return "unknown"


def fitted_state(fitted) -> tuple[dict[str, np.ndarray], dict] | None:
    """A fitted RecBole model's state (see the module docstring), or None when it cannot be stored."""
    import json

    build = getattr(fitted, "build", None)
    if build is None:
        return None
    try:
        json.dumps(build, allow_nan=False)
    except (TypeError, ValueError):  # settings that are not plain JSON: keep the model in memory only
        return None
    model = fitted.model
    arrays: dict[str, np.ndarray] = {"user_rb": np.asarray(fitted.user_rb).copy(),
                                     "item_cols": np.asarray(fitted.item_cols).copy()}
    for name, tensor in model.state_dict().items():
        arrays[f"param.{name}"] = tensor.detach().cpu().numpy().copy()
    extra = {}
    if build.get("path") == "itemknn":  # the similarity over RecBole's item ids is not a torch parameter
        arrays.update(csr_arrays("w", model.w))
        extra["w_shape"] = [int(n) for n in model.w.shape]
    record = {**extra, "format": STATE_FORMAT, "class": type(model).__name__, "n_items": int(fitted.n_items),
              "epochs_run": int(fitted.epochs_run), "final_loss": fitted.final_loss, "settings": fitted.settings,
              "build": build, "recbole": _recbole_version()}
    return arrays, record


def restore_fitted(arrays: dict[str, np.ndarray], record: dict, train: sp.csr_matrix):
    """The :class:`~miars_recbole.session.FittedRecBole` that :func:`fitted_state` saved; ``train`` is the matrix
    it was trained on. Raises MiarsError when the state was written by another RecBole or format."""
    import torch

    from . import compat, lean
    from .session import FittedRecBole, RecBoleRun

    if record.get("format") != STATE_FORMAT:
        raise MiarsError(f"a stored RecBole model of state format {record.get('format')!r}; this miars reads {STATE_FORMAT}")
    if record.get("recbole") != _recbole_version():
        raise MiarsError(f"the stored model was written with RecBole {record.get('recbole')}, this is "
                         f"{_recbole_version()}")
    build = record["build"]
    path, name = build["path"], build["model"]
    user_rb, item_cols = arrays["user_rb"], arrays["item_cols"]
    train = sp.csr_matrix(train)
    threads = torch.get_num_threads()
    try:
        compat.apply()
        if path == "itemknn":
            config = lean.recbole_config("ItemKNN", {"k": int(build["k"]), "shrink": float(build["shrink"])},
                                         int(build["seed"]), device="cpu")  # scipy: CPU, as fit_itemknn
            data = lean.index_members(train)
            _same_maps(data.user_rb, data.item_cols, user_rb, item_cols)
            w = csr_from_arrays(arrays, "w", tuple(record["w_shape"]))
            stand_in = lean.StandInDataset(data, config["USER_ID_FIELD"], config["ITEM_ID_FIELD"])
            model = lean.sparse_itemknn_class()(config, stand_in, w)
        elif path == "lean":
            config = lean.recbole_config(name, dict(build["overrides"]), int(build["seed"]))
            model = lean.build_model(name, config, lean_data(user_rb, item_cols, train), int(build["seed"]))
        elif path == "recbole":
            run = RecBoleRun(name, train, dict(build["overrides"]), int(build["seed"]), float(build["lr_scale"]))
            _same_maps(run.user_rb, run.item_cols, user_rb, item_cols)
            model = run.model
        else:
            raise MiarsError(f"a stored RecBole model built by {path!r}, which this miars does not know")
        params = {key[len("param."):]: torch.from_numpy(np.array(value)) for key, value in arrays.items()
                  if key.startswith("param.")}
        model.load_state_dict(params, strict=True)
        model.eval()
    finally:
        torch.set_num_threads(threads)  # RecBole's seeding may change it
    return FittedRecBole(model, np.asarray(user_rb), np.asarray(item_cols), int(record["n_items"]),
                         int(record["epochs_run"]), record["final_loss"], record["settings"], build)


def lean_data(user_rb: np.ndarray, item_cols: np.ndarray, train: sp.csr_matrix):
    """The stand-in data a model of the lean path is built on, from its id maps and training matrix."""
    from .lean import LeanData

    n_users = int(user_rb.max()) + 1 if len(user_rb) else 1
    n_items = len(item_cols)
    col_to_rb = np.zeros(train.shape[1], dtype=np.int64)
    col_to_rb[item_cols[1:]] = np.arange(1, n_items)
    coo = train.tocoo()
    u, i = user_rb[coo.row], col_to_rb[coo.col]
    keep = (u > 0) & (i > 0)
    matrix = sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (u[keep], i[keep])), shape=(n_users, n_items))
    return LeanData(user=None, item=None, keys=None, n_users=n_users, n_items=n_items, user_rb=np.asarray(user_rb),
                    item_cols=np.asarray(item_cols), matrix=matrix)


def _same_maps(user_rb, item_cols, stored_user_rb, stored_item_cols) -> None:
    if not (np.array_equal(user_rb, stored_user_rb) and np.array_equal(item_cols, stored_item_cols)):
        raise MiarsError("the stored model's id maps do not match its training data")


def restores_exactly(fitted, arrays: dict[str, np.ndarray], record: dict, train: sp.csr_matrix) -> bool:
    """Whether the restored model scores the first :data:`CHECK_ROWS` trained rows exactly as ``fitted`` does."""
    import torch

    rows = np.flatnonzero(np.asarray(fitted.user_rb) > 0)[:CHECK_ROWS]
    try:
        restored = restore_fitted(arrays, record, train)
        with torch.no_grad():
            return bool(torch.equal(fitted.score_rows(rows), restored.score_rows(rows)))
    except Exception:  # noqa: BLE001 - whatever fails, the model is not stored (and is fitted again)
        return False


def recommender_state(recommender) -> tuple[dict[str, np.ndarray], dict] | None:
    """``get_state`` of the RecBole wrappers (``item``, ``lfm``, ``ncf``, ``recbole:<Name>``)."""
    state = fitted_state(recommender.model_)
    if state is None:
        return None
    model_arrays, model_record = state
    train = sp.csr_matrix(recommender.train_)
    if model_record["build"]["path"] == "recbole" and not restores_exactly(recommender.model_, model_arrays,
                                                                           model_record, train):
        return None
    arrays = {**{f"model.{k}": v for k, v in model_arrays.items()}, **csr_arrays("train", train)}
    return arrays, {"model": model_record, "train_shape": list(train.shape), "fit_info": recommender.fit_info_}


def restore_recommender(recommender, arrays: dict[str, np.ndarray], record: dict) -> Any:
    """``set_state`` of the RecBole wrappers: the fitted model back on a fresh wrapper (returned)."""
    train = csr_from_arrays(arrays, "train", tuple(record["train_shape"]))
    model_arrays = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    recommender.model_ = restore_fitted(model_arrays, record["model"], train)
    recommender.train_ = train
    recommender.fit_info_ = dict(record["fit_info"])
    return recommender
