"""Train one RecBole model on a sparse member matrix, in a temporary folder, and score it in batches."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.errors import MiarsError

from . import compat
from .settings import FIXED as _FIXED
from .settings import for_device


@dataclass
class FittedRecBole:
    """A trained RecBole model plus the id maps between its internal ids and our rows/columns."""

    model: Any
    user_rb: np.ndarray  # RecBole internal user id for each training row (0 = unknown)
    item_cols: np.ndarray  # global item column of each RecBole internal item id (index 0 = padding)
    n_items: int
    epochs_run: int
    final_loss: float | None
    settings: dict
    #: How to build the model's module again around a stored state (``miars_recbole.state``); None: it cannot be.
    build: dict | None = None

    def score_rows(self, rows: np.ndarray):
        """Scores (len(rows) x all global items) as a torch tensor, on the model's device; unscorable items are -inf."""
        import torch

        from miars_core.kit.torch_utils import device_of

        rb = self.user_rb[rows]
        users = torch.as_tensor(rb, dtype=torch.long, device=device_of(self.model))
        n_rb = len(self.item_cols)
        with torch.no_grad():
            block = self._full_sort(users, n_rb)
        if n_rb - 1 == self.n_items and np.array_equal(self.item_cols[1:], np.arange(self.n_items)):
            out = block[:, 1:].to(torch.float32)  # every item known to the model, in column order
        else:
            out = torch.full((len(rows), self.n_items), -torch.inf, device=block.device)
            out[:, torch.as_tensor(self.item_cols[1:], device=block.device)] = block[:, 1:].to(torch.float32)
        if (rb == 0).any():
            out[torch.as_tensor(rb == 0, device=out.device)] = -torch.inf
        return out

    def _full_sort(self, users, n_rb: int):
        import torch
        from recbole.data.interaction import Interaction

        m = self.model
        if type(m).__name__ == "NeuMF" and m.mf_train and m.mlp_train:
            fast = _neumf_logits(m, users)
            if fast is not None:
                return fast
        try:
            scores = m.full_sort_predict(Interaction({m.USER_ID: users}))
            return scores.view(len(users), n_rb)
        except NotImplementedError:
            pass
        # No full-ranking path (NeuMF): one batched predict over users x all items.
        items = torch.arange(n_rb, device=users.device)
        inter = Interaction({m.USER_ID: users.repeat_interleave(n_rb), m.ITEM_ID: items.repeat(len(users))})
        return m.predict(inter).view(len(users), n_rb)


def _neumf_logits(m, users, max_elements: int = 1 << 20):
    """NeuMF's logits for users x all items without materialising every (user, item) pair's input.

    The first MLP layer acts on [user; item], so it splits into a user part and an item part that
    are added by broadcasting; the GMF branch and the output layer reduce to one GEMM. Items are
    processed in chunks so the (users x items x hidden) block stays under ``max_elements`` floats.
    """
    import torch

    return neumf_logits_for(m, m.user_mf_embedding(users), m.user_mlp_embedding(users), max_elements)


def neumf_logits_for(m, user_mf, user_mlp, max_elements: int = 1 << 20):
    """NeuMF's logits (users x all items) for given user embeddings (GMF and MLP parts), or None
    when the MLP has batch normalisation (then RecBole's own scoring is used).

    Blocks of at most ``max_elements`` floats (4 MiB: they stay in cache; 64 MiB blocks were 5-6x
    slower on ml-1m, each a fresh allocation), ReLUs in place, eval-mode dropout skipped."""
    import torch

    layers = list(m.mlp_layers.mlp_layers)
    if any("BatchNorm" in type(layer).__name__ for layer in layers):
        return None
    first = next(i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.Linear))
    w, b = layers[first].weight, layers[first].bias
    d = user_mlp.shape[1]
    hu = user_mlp @ w[:, :d].T + b  # (B, h)
    hi = m.item_mlp_embedding.weight @ w[:, d:].T  # (I, h)
    wp, bp = m.predict_layer.weight[0], m.predict_layer.bias
    d_mf = user_mf.shape[1]
    out = (user_mf * wp[:d_mf]) @ m.item_mf_embedding.weight.T + bp  # GMF branch
    chunk = max(1, max_elements // max(1, len(user_mf) * hu.shape[1]))
    for start in range(0, hi.shape[0], chunk):
        x = hu[:, None, :] + hi[None, start : start + chunk, :]
        for layer in layers[first + 1 :]:
            if isinstance(layer, torch.nn.ReLU):
                x.relu_()  # x is this block's own tensor
            elif not (isinstance(layer, torch.nn.Dropout) and not layer.training):
                x = layer(x)
        out[:, start : start + chunk] += x @ wp[d_mf:]
    return out


class RecBoleRun:
    """A RecBole model with RecBole's own data loader and trainer, trained one epoch at a time."""

    def __init__(self, model_name: str, train: sp.csr_matrix, overrides: dict, seed: int, lr_scale: float = 1.0):
        compat.apply()
        from recbole.config import Config
        from recbole.data import create_dataset
        from recbole.data.dataloader import TrainDataLoader
        from recbole.data.utils import create_samplers
        from recbole.utils import get_model, get_trainer, init_seed

        from miars_core.kit.torch_utils import current_device

        coo = train.tocoo()
        if coo.nnz == 0:
            raise MiarsError(f"cannot train RecBole {model_name}: the members have no interactions")
        self.model_name = model_name
        self.overrides = dict(overrides)
        self.build = {"path": "recbole", "model": model_name, "overrides": dict(overrides), "seed": int(seed),
                      "lr_scale": float(lr_scale)}
        with tempfile.TemporaryDirectory(prefix="miars-recbole-") as tmp:
            os.makedirs(os.path.join(tmp, "members"))
            path = os.path.join(tmp, "members", "members.inter")
            order = np.lexsort((coo.col, coo.row))
            body = np.column_stack([coo.row[order], coo.col[order]])
            with open(path, "w") as fh:
                fh.write("user_id:token\titem_id:token\n")
                np.savetxt(fh, body, fmt="%d", delimiter="\t")
            cfg = {**_FIXED, **overrides, **for_device(current_device()), "seed": int(seed), "data_path": tmp,
                   "checkpoint_dir": os.path.join(tmp, "saved")}
            try:
                config = Config(model=model_name, dataset="members", config_dict=cfg)
            except (ValueError, KeyError, AttributeError) as exc:
                raise MiarsError(f"RecBole rejected model {model_name!r} or its settings: {exc}") from None
            if lr_scale != 1.0:
                config["learning_rate"] = float(config["learning_rate"]) * lr_scale
            init_seed(int(seed), True)
            dataset = create_dataset(config)
            built = dataset.build()
            train_sampler, _, _ = create_samplers(config, dataset, built)
            self.loader = TrainDataLoader(config, built[0], train_sampler, shuffle=True)
            init_seed(int(seed), True)
            self.model = get_model(model_name)(config, self.loader.dataset).to(config["device"])
            self.trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, self.model)
        self.config = config
        self.user_rb, self.item_cols = _id_maps(dataset, train.shape[0])
        self.n_items = train.shape[1]
        self.losses: list[float] = []

    def epoch(self) -> float:
        self.trainer.model.train()
        try:
            loss = self.trainer._train_epoch(self.loader, len(self.losses), show_progress=False)
        except ValueError as exc:
            if "nan" in str(exc).lower():
                raise MiarsError(f"RecBole {self.model_name}: training loss became nan in epoch {len(self.losses) + 1}; "
                                 "lower learning_rate") from None
            raise
        if isinstance(loss, tuple):
            loss = float(sum(loss))
        loss = float(loss) if loss is not None else float("nan")
        if loss == loss and not np.isfinite(loss):
            raise MiarsError(f"RecBole {self.model_name}: training loss became {loss} in epoch {len(self.losses) + 1}; "
                             "lower learning_rate")
        self.losses.append(loss)
        self.model.eval()
        return loss

    def fitted(self) -> "FittedRecBole":
        self.model.eval()
        cfg = self.config
        settings = {key: _plain(cfg[key]) for key in sorted(set(self.overrides) | {"epochs", "learning_rate", "train_batch_size", "train_neg_sample_args", "embedding_size"}) if key in cfg}
        final = self.losses[-1] if self.losses else None
        return FittedRecBole(self.model, self.user_rb, self.item_cols, self.n_items, len(self.losses), final, settings,
                             self.build)


def train_recbole_model(model_name: str, train: sp.csr_matrix, overrides: dict, seed: int,
                        on_epoch: Callable[[int, FittedRecBole], Any] | None = None, lr_scale: float = 1.0) -> FittedRecBole:
    """Fit RecBole's ``model_name`` on the binary matrix ``train`` (rows = users) with RecBole's trainer.

    Runs ``overrides["epochs"]`` (else RecBole's default) epochs. ``on_epoch(epoch, fitted)``, if
    given, is called after every epoch with the model in eval mode; a truthy return stops training.
    """
    import torch

    threads = torch.get_num_threads()
    run = RecBoleRun(model_name, train, overrides, seed, lr_scale)
    try:
        for epoch in range(int(run.config["epochs"])):
            run.epoch()
            if on_epoch is not None and on_epoch(epoch + 1, run.fitted()):
                break
    finally:
        torch.set_num_threads(threads)  # RecBole's init may change it
    return run.fitted()


def train_lean_model(model_name: str, train: sp.csr_matrix, overrides: dict, seed: int, epochs: int,
                     batch_size: int, learning_rate: float,
                     on_epoch: Callable[[int, FittedRecBole], Any] | None = None) -> FittedRecBole:
    """Fit RecBole's ``model_name`` (BPR, NeuMF) with the lean torch data path for exactly ``epochs`` epochs."""
    run = LeanRun(model_name, train, overrides, seed, batch_size, learning_rate)
    for epoch in range(int(epochs)):
        run.epoch()
        if on_epoch is not None and on_epoch(epoch + 1, run.fitted()):
            break
    return run.fitted()


class LeanRun:
    """A RecBole model class trained by :class:`lean.LeanTrainer` on torch tensors."""

    def __init__(self, model_name: str, train: sp.csr_matrix, overrides: dict, seed: int, batch_size: int, learning_rate: float):
        compat.apply()
        import torch

        from . import lean

        if train.nnz == 0:
            raise MiarsError(f"cannot train RecBole {model_name}: the members have no interactions")
        self.model_name = model_name
        threads = torch.get_num_threads()
        settings = {**overrides, "train_batch_size": int(batch_size), "learning_rate": float(learning_rate)}
        self.build = {"path": "lean", "model": model_name, "overrides": settings, "seed": int(seed)}
        self.config = lean.recbole_config(model_name, settings, seed)
        self.data = lean.index_members(train)
        self.model = lean.build_model(model_name, self.config, self.data, seed)
        torch.set_num_threads(threads)  # RecBole's init_seed may change it
        self.trainer = lean.LeanTrainer(self.model, self.data, model_name, int(batch_size), float(learning_rate),
                                        float(self.config["weight_decay"] or 0.0), seed)
        self.n_items = train.shape[1]
        self.overrides = dict(overrides)

    def epoch(self) -> float:
        return self.trainer.epoch()

    def fitted(self) -> "FittedRecBole":
        cfg = self.config
        keys = set(self.overrides) | {"learning_rate", "train_batch_size", "embedding_size", "weight_decay"}
        settings = {key: _plain(cfg[key]) for key in sorted(keys) if key in cfg}
        settings["data_path"] = "lean (torch tensors, uniform negatives excluding known items)"
        losses = self.trainer.losses
        return FittedRecBole(self.model, self.data.user_rb, self.data.item_cols, self.n_items, len(losses),
                             losses[-1] if losses else None, settings, self.build)


def fit_itemknn(train: sp.csr_matrix, k: int, shrink: float, seed: int) -> FittedRecBole:
    """RecBole's ItemKNN (item cosine, top-k neighbours) with a sparse similarity and rows scored on demand."""
    compat.apply()
    from . import lean

    if train.nnz == 0:
        raise MiarsError("cannot train RecBole ItemKNN: the members have no interactions")
    config = lean.recbole_config("ItemKNN", {"k": int(k), "shrink": float(shrink)}, seed, device="cpu")  # scipy: CPU
    data = lean.index_members(train)
    w = lean.item_item_topk(data.matrix, int(k), float(shrink))
    model = lean.sparse_itemknn_class()(config, lean.StandInDataset(data, config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]), w)
    model.eval()
    settings = {"k": int(k), "shrink": float(shrink), "similarity": "sparse item-item top-k (cosine)"}
    build = {"path": "itemknn", "model": "ItemKNN", "k": int(k), "shrink": float(shrink), "seed": int(seed)}
    return FittedRecBole(model, data.user_rb, data.item_cols, train.shape[1], 0, None, settings, build)


def _id_maps(dataset, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """RecBole internal id of each training row, and global item column of each internal item id."""
    id2tok = dataset.field2id_token
    user_tokens = np.asarray(id2tok[dataset.uid_field][1:]).astype(np.int64)  # index 0 is [PAD]
    user_rb = np.zeros(n_rows, dtype=np.int64)
    user_rb[user_tokens] = np.arange(1, len(user_tokens) + 1)
    item_cols = np.zeros(len(id2tok[dataset.iid_field]), dtype=np.int64)
    item_cols[1:] = np.asarray(id2tok[dataset.iid_field][1:]).astype(np.int64)
    return user_rb, item_cols


def _plain(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)
