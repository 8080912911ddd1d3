"""RecBole's sequential recommenders (GRU4Rec, SASRec, BERT4Rec, ...) trained on the members' sequences.

A member's sequence is her items in order (:class:`miars_core.contracts.types.Interactions` ``order``:
time or position, ties by item column). Training goes through RecBole's own data path: the members'
interactions are written to a temporary atomic file with each item's position in its user's sequence as
the ``timestamp`` field, RecBole sorts by it and builds every (prefix -> next item) example of each
sequence (``MAX_ITEM_LIST_LENGTH`` items of prefix at most), and RecBole's trainer fits the model.

Serving is one forward pass: a member's list is the model's next-k after her whole sequence (its last
``max_len`` items), and an account the model was not trained on (a non-member, a fresh account of a
query) gets the same forward pass over its own sequence, without retraining. Known items are
excluded. Models that also read a user id (Caser, FPMC, HGN, ...) see their trained user for a
member and RecBole's padding user (id 0) for any other account: the user side of such models
is the members' and is not handed to new accounts (:class:`SequenceSide` zeroes it).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import Interval, Mapping, OrNone, AnyOf, Options
from miars_core.contracts.state import csr_arrays, csr_from_arrays
from miars_core.contracts.types import Interactions, sequences
from miars_core.science.ranking import top_k_excluding

from . import compat
from .settings import FIXED

#: What every sequential model is built with, besides :data:`settings.FIXED` (the order is the position).
SEQ_FIXED = {
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "group_by": "user", "mode": "full"},
}


def training_sequences(train: Interactions, who: str) -> sp.csr_matrix:
    """The members' interactions with each entry's 1-based position in her sequence as its value."""
    if not train.has_order:
        raise MiarsError(f"{who} is a sequential recommender and needs the order of each user's interactions; these "
                         "interactions have none (a dataset without timestamps, or a defense that dropped them)")
    return train.ordered_matrix()


class SeqRun:
    """A RecBole sequential model with RecBole's data loader and trainer, trained one epoch at a time."""

    def __init__(self, model_name: str, positions: sp.csr_matrix, overrides: dict, seed: int):
        compat.apply()
        from recbole.config import Config
        from recbole.data import create_dataset
        from recbole.data.dataloader import TrainDataLoader
        from recbole.data.utils import create_samplers
        from recbole.utils import InputType, get_model, get_trainer, init_seed

        from .session import _id_maps

        coo = sp.csr_matrix(positions).tocoo()
        if coo.nnz == 0:
            raise MiarsError(f"cannot train RecBole {model_name}: the members have no interactions")
        self.model_name = model_name
        self.overrides = dict(overrides)
        self.build = {"path": "sequential", "model": model_name, "overrides": dict(overrides), "seed": int(seed)}
        with tempfile.TemporaryDirectory(prefix="miars-recbole-") as tmp:
            os.makedirs(os.path.join(tmp, "members"))
            path = os.path.join(tmp, "members", "members.inter")
            order = np.lexsort((coo.data, coo.row))
            body = np.column_stack([coo.row[order], coo.col[order], coo.data[order].astype(np.int64)])
            with open(path, "w") as fh:
                fh.write("user_id:token\titem_id:token\ttimestamp:float\n")
                np.savetxt(fh, body, fmt="%d", delimiter="\t")
            base = {**FIXED, **SEQ_FIXED, **overrides, "seed": int(seed), "data_path": tmp,
                    "checkpoint_dir": os.path.join(tmp, "saved")}
            try:
                # CE-loss models take no negatives (RecBole refuses them); pairwise ones sample one per positive
                config = Config(model=model_name, dataset="members", config_dict={**base, "train_neg_sample_args": None})
                if config["MODEL_INPUT_TYPE"] == InputType.PAIRWISE and "train_neg_sample_args" not in overrides:
                    config = Config(model=model_name, dataset="members", config_dict={
                        **base, "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}})
            except (ValueError, KeyError, AttributeError) as exc:
                raise MiarsError(f"RecBole rejected model {model_name!r} or its settings: {exc}") from None
            init_seed(int(seed), True)
            dataset = create_dataset(config)
            built = dataset.build()
            train_sampler, _, _ = create_samplers(config, dataset, built)
            self.loader = TrainDataLoader(config, built[0], train_sampler, shuffle=True)
            init_seed(int(seed), True)
            self.model = get_model(model_name)(config, self.loader.dataset).to("cpu")
            self.trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, self.model)
        self.config = config
        self.user_rb, self.item_cols = _id_maps(dataset, positions.shape[0])
        self.losses: list[float] = []

    def epoch(self) -> float:
        """One epoch of RecBole's trainer, with the general runs' loop and loss checks (``RecBoleRun.epoch``)."""
        from .session import RecBoleRun

        return RecBoleRun.epoch(self)

    def settings(self) -> dict:
        from .session import _plain

        cfg = self.config
        keys = set(self.overrides) | {"epochs", "learning_rate", "train_batch_size", "MAX_ITEM_LIST_LENGTH",
                                      "loss_type", "hidden_size", "embedding_size"}
        return {key: _plain(cfg[key]) for key in sorted(keys) if key in cfg}


class SequenceSide:
    """What serves accounts a sequential model was not trained on: a copy of the network with its user side
    zeroed (no member's vector), the id maps of its items and the sequence length; ``recommend_for``."""

    __slots__ = ("model", "item_cols", "n_items", "max_len", "popularity", "score_batch_size")

    #: Histories handed to :meth:`recommend_for` carry each item's position (or time) as its value.
    sequential = True

    def __init__(self, model, item_cols: np.ndarray, n_items: int, max_len: int, popularity: np.ndarray,
                 score_batch_size: int = 256):
        self.model = model
        self.item_cols = np.asarray(item_cols).copy()
        self.n_items = int(n_items)
        self.max_len = int(max_len)
        self.popularity = np.asarray(popularity, dtype=np.float32).copy()
        self.score_batch_size = int(score_batch_size)

    @classmethod
    def of(cls, model, item_cols, n_items: int, max_len: int, popularity, score_batch_size: int = 256) -> "SequenceSide":
        """A copy of ``model`` whose user embeddings (members' vectors, in user-aware models) are zero."""
        import torch

        side = copy.deepcopy(model).eval()
        n_users = getattr(model, "n_users", None)
        with torch.no_grad():
            for module in side.modules():
                if isinstance(module, torch.nn.Embedding) and n_users is not None and module.num_embeddings == n_users \
                        and "user" in _name_of(side, module):
                    module.weight.zero_()
        return cls(side, item_cols, n_items, max_len, popularity, score_batch_size)

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        """Top-k for new accounts: one forward pass over each history in order (values = positions or times)."""
        h = sp.csr_matrix(histories)
        users = np.zeros(h.shape[0], dtype=np.int64)  # RecBole's padding user: no member's vector
        return top_k_excluding(scorer(self.model, self.item_cols, self.n_items, self.max_len, self.popularity, h, users),
                               h, k, batch_size=self.score_batch_size, scratch=True)


def _name_of(root, module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name
    return ""


def scorer(model, item_cols: np.ndarray, n_items: int, max_len: int, popularity: np.ndarray,
           histories: sp.csr_matrix, users_rb: np.ndarray):
    """``rows -> scores`` (len(rows) x all items, torch) of the next item after each row's sequence.

    ``histories``: rows of item columns whose values order them (positions or times, ties by
    column); items the model never saw are left out of the sequence, and a row left with no
    item is scored by the members' item popularity. ``users_rb``: RecBole user id per row (0:
    padding, for accounts the model was not trained on).
    """
    import torch
    from recbole.data.interaction import Interaction

    n_rb = len(item_cols)
    col_to_rb = np.zeros(n_items, dtype=np.int64)
    col_to_rb[item_cols[1:]] = np.arange(1, n_rb)
    seqs = sequences(histories)
    targets = torch.as_tensor(item_cols[1:])
    pop = torch.as_tensor(popularity, dtype=torch.float32)

    def scores(rows: np.ndarray):
        rows = np.asarray(rows)
        batch = np.zeros((len(rows), max_len), dtype=np.int64)
        lengths = np.zeros(len(rows), dtype=np.int64)
        for j, r in enumerate(rows):
            s = col_to_rb[seqs[r]]
            s = s[s > 0][-max_len:]
            batch[j, : len(s)] = s
            lengths[j] = len(s)
        out = torch.full((len(rows), n_items), -torch.inf)
        has = lengths > 0
        if has.any():
            n_has = int(has.sum())
            inter = Interaction({model.ITEM_SEQ: torch.as_tensor(batch[has]), model.ITEM_SEQ_LEN: torch.as_tensor(lengths[has]),
                                 model.USER_ID: torch.as_tensor(np.asarray(users_rb)[rows][has]),
                                 # GRU4RecCPR / SASRecCPR compute their training loss inside full_sort_predict and
                                 # read a next item for it; the scores never read it: a placeholder (padding)
                                 model.POS_ITEM_ID: torch.zeros(n_has, dtype=torch.long)})
            with torch.no_grad():
                try:
                    block = model.full_sort_predict(inter)
                except NotImplementedError:  # pragma: no cover - every sequential model we run has one
                    raise MiarsError(f"RecBole {type(model).__name__} has no full-ranking path") from None
            block = block.view(int(has.sum()), -1)[:, 1:n_rb].to(torch.float32)
            sub = torch.full((int(has.sum()), n_items), -torch.inf)
            sub[:, targets] = block
            out[torch.as_tensor(has)] = sub
        if (~has).any():
            out[torch.as_tensor(~has)] = pop
        return out

    return scores


def last_items_split(positions: sp.csr_matrix, share: float, seed: int, min_count: int = 5):
    """Hold out each member's last floor(share * n) items (n >= ``min_count``): her continuation. Returns
    (fit: the earlier items with their positions, held: the held-out items, 0/1)."""
    m = sp.csr_matrix(positions, dtype=np.float32)
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), counts)
    n_hold = np.where(counts >= min_count, np.floor(share * counts), 0).astype(np.int64)
    held = m.data > (counts - n_hold)[rows]  # positions are 1-based: the last n_hold of each row
    build = lambda sel, data: sp.csr_matrix((data, (rows[sel], m.indices[sel])), shape=m.shape)
    return build(~held, m.data[~held]), build(held, np.ones(int(held.sum()), dtype=np.float32))


class SequentialModel(Component):
    """Any RecBole sequential recommender (GRU4Rec, SASRec, BERT4Rec, ...), trained on the members' sequences.

    ``model`` is RecBole's class name. A member's list is the model's next-k after her whole
    sequence; any other account's the same forward pass over its own sequence (no retraining).
    ``epochs=None`` trains to the length chosen by held-out recall of each member's last items
    (the auto criterion of the general models, on the continuation; ``selection`` overrides its
    settings), then on all interactions; ``epochs=N`` trains exactly N. ``batch_size=None`` scales
    the batch with the data (>= ~32 steps per epoch); ``learning_rate=None`` keeps RecBole's
    default for the model. ``max_len``: RecBole's ``MAX_ITEM_LIST_LENGTH``, the most recent items
    a prediction reads. ``config`` passes any other RecBole setting.
    """

    #: Reads each user's history in order: miars refuses it on data without order, and hands it ordered histories.
    sequential = True
    param_constraints = {
        "epochs": OrNone(AnyOf((Interval(int, 1), Options(("auto",))))),
        "learning_rate": OrNone(Interval(float, 0, 10, closed="right")), "batch_size": OrNone(Interval(int, 1)),
        "max_len": Interval(int, 2), "score_batch_size": Interval(int, 1),
        "config": OrNone(Mapping(forbidden={k: "miars sets itself" for k in (
            "model", "dataset", "data_path", "seed", "checkpoint_dir", "device", "use_gpu", "eval_args", "load_col",
            "USER_ID_FIELD", "ITEM_ID_FIELD", "TIME_FIELD", "MAX_ITEM_LIST_LENGTH")})),
    }

    def __init__(self, model: str = "SASRec", epochs: int | None = None, learning_rate: float | None = None,
                 batch_size: int | None = None, max_len: int = 50, config: dict[str, Any] | None = None,
                 score_batch_size: int = 256, selection: dict[str, Any] | None = None):
        self.model = model
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_len = max_len
        self.config = config
        self.score_batch_size = score_batch_size
        self.selection = selection

    def _overrides(self, n_interactions: int, epochs: int) -> dict:
        from .lean import auto_batch_size

        cfg = dict(self.config or {})
        cfg["MAX_ITEM_LIST_LENGTH"] = int(self.max_len)
        cfg["train_batch_size"] = int(self.batch_size) if self.batch_size is not None else auto_batch_size(n_interactions)
        cfg["epochs"] = int(epochs)
        if self.learning_rate is not None:
            cfg["learning_rate"] = float(self.learning_rate)
        return cfg

    def fit(self, train: Interactions, seed: int = 0) -> "SequentialModel":
        import torch

        from .lean import select_epochs, selection_criterion

        start = time.perf_counter()
        positions = training_sequences(train, f"recommender 'recbole:{self.model}'")
        epochs = self.epochs
        if isinstance(epochs, str) and epochs.lower() == "auto":
            epochs = None
        threads = torch.get_num_threads()
        selection = None
        try:
            if epochs is None:
                crit = selection_criterion(positions, self.selection)

                def begin(fit_positions):
                    run = SeqRun(self.model, fit_positions, self._overrides(fit_positions.nnz, int(crit["max_epochs"])), seed)
                    n_items = positions.shape[1]
                    pop = _popularity(fit_positions)
                    return run.epoch, lambda rows: scorer(run.model, run.item_cols, n_items, int(self.max_len), pop,
                                                          fit_positions, run.user_rb)(rows)

                selection = select_epochs(positions, seed, crit, begin,
                                          split=lambda m, share, s: last_items_split(m, share, s))
                epochs = selection.epochs
            run = SeqRun(self.model, positions, self._overrides(positions.nnz, int(epochs)), seed)
            for _ in range(int(epochs)):
                run.epoch()
        finally:
            torch.set_num_threads(threads)  # RecBole's seeding may change it
        self.model_ = run.model
        self.user_rb_ = run.user_rb
        self.item_cols_ = run.item_cols
        self.train_ = positions
        self.build_ = run.build
        settings = run.settings()
        self.fit_info_ = {
            "recbole_model": self.model, "sequential": True,
            "epochs": "auto" if selection is not None else int(epochs), "epochs_run": len(run.losses),
            "batch_size": settings.get("train_batch_size"), "learning_rate": settings.get("learning_rate"),
            "final_train_loss": run.losses[-1] if run.losses else None, "settings": settings,
            **(selection.report() if selection is not None else {}),
            "fit_seconds": round(time.perf_counter() - start, 3),
        }
        return self

    def _scorer(self, histories, users_rb):
        return scorer(self.model_, self.item_cols_, self.train_.shape[1], int(self.max_len), _popularity(self.train_),
                      histories, users_rb)

    def recommend(self, k: int) -> np.ndarray:
        """Each member's next-k after her whole sequence, her known items excluded."""
        return top_k_excluding(self._scorer(self.train_, self.user_rb_), self.train_, k,
                               batch_size=int(self.score_batch_size), scratch=True)

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        """Top-k for accounts the model was not trained on: the same forward pass over their sequences."""
        return self.new_accounts().recommend_for(histories, k, seed=seed)

    def new_accounts(self) -> SequenceSide:
        """What serves new accounts: the network with its user side zeroed, and the item maps (no member data)."""
        return SequenceSide.of(self.model_, self.item_cols_, self.train_.shape[1], int(self.max_len),
                               _popularity(self.train_), int(self.score_batch_size))

    # -- the recommender state contract ---------------------------------------------------------------
    def get_state(self):
        """The network's ``state_dict``, the id maps and the members' sequences; None when restoring would not
        reproduce the scores exactly (checked on a few members)."""
        from .state import _recbole_version

        arrays = {"user_rb": np.asarray(self.user_rb_), "item_cols": np.asarray(self.item_cols_),
                  **csr_arrays("train", self.train_)}  # the sequences: each entry's position is its value
        for name, tensor in self.model_.state_dict().items():
            arrays[f"param.{name}"] = tensor.detach().cpu().numpy().copy()
        record = {"build": self.build_, "train_shape": list(self.train_.shape), "fit_info": self.fit_info_,
                  "recbole": _recbole_version(), "format": 1}
        try:
            restored = type(self)(**self.get_params()).set_state(arrays, record)
            rows = np.flatnonzero(np.asarray(self.user_rb_) > 0)[:32]
            import torch

            same = torch.equal(self._scorer(self.train_, self.user_rb_)(rows),
                               restored._scorer(restored.train_, restored.user_rb_)(rows))
        except Exception:  # noqa: BLE001 - whatever fails, the model is not stored (and is fitted again)
            return None
        return (arrays, record) if same else None

    def set_state(self, arrays, record) -> "SequentialModel":
        """Rebuild the network around the stored sequences (RecBole's constructor, no training) and load its weights."""
        import torch

        from .state import _recbole_version

        if record.get("format") != 1 or record.get("recbole") != _recbole_version():
            raise MiarsError(f"a stored sequential model of format {record.get('format')!r} written with RecBole "
                             f"{record.get('recbole')}; this miars reads format 1 with RecBole {_recbole_version()}")
        train = csr_from_arrays(arrays, "train", tuple(record["train_shape"]))
        build = record["build"]
        threads = torch.get_num_threads()
        try:
            run = SeqRun(build["model"], train, dict(build["overrides"]), int(build["seed"]))
        finally:
            torch.set_num_threads(threads)
        if not (np.array_equal(run.user_rb, arrays["user_rb"]) and np.array_equal(run.item_cols, arrays["item_cols"])):
            raise MiarsError("the stored model's id maps do not match its training sequences")
        params = {key[len("param."):]: torch.from_numpy(np.array(value)) for key, value in arrays.items()
                  if key.startswith("param.")}
        run.model.load_state_dict(params, strict=True)
        run.model.eval()
        self.model_, self.user_rb_, self.item_cols_, self.train_, self.build_ = (run.model, run.user_rb, run.item_cols,
                                                                                 train, build)
        self.fit_info_ = dict(record["fit_info"])
        return self


def _popularity(positions: sp.csr_matrix) -> np.ndarray:
    return np.bincount(sp.csr_matrix(positions).indices, minlength=positions.shape[1]).astype(np.float32)
