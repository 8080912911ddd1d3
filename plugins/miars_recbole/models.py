"""RecBole models wrapped as miars recommenders (trained on members only, batched full ranking)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import AnyOf, Interval, ListOf, Mapping, Options, OrNone  # noqa: F401 - param_constraints
from miars_core.contracts.state import csr_arrays, csr_from_arrays
from miars_core.science.ranking import check_k, top_k_excluding, top_k_popular
from miars_core.contracts.types import Interactions


class RecBoleModel(Component):
    """Any RecBole general recommender, trained on the members.

    ``model`` is RecBole's class name (``BPR``, ``LightGCN``, ...). ``epochs=None`` (the default)
    trains to convergence by a measured criterion (held-out recall of the members' own
    interactions, see ``miars_recbole.lean``) and then on all interactions for the chosen length;
    ``epochs=N`` trains exactly N epochs. ``batch_size=None`` scales the batch with the data
    (>= ~32 steps per epoch) and ``learning_rate=None`` scales the model's base rate by
    sqrt(batch / 4096); explicit values are used as given. ``selection`` overrides the criterion's
    settings (``holdout``, ``k``, ``eval_every``, ``patience``, ``min_delta``, ``max_epochs``,
    ``eval_users``, ``eval_subsample``, ``confirm``). ``config`` passes any other RecBole setting (e.g. ``{"embedding_size": 128}``).
    BPR and NeuMF train through the lean torch data path; other models through RecBole's trainer.
    """

    #: Hyperparameters passed to RecBole's config under their own names (set by subclasses).
    recbole_keys: tuple[str, ...] = ()
    #: Learning rate at batch 4,096 when ``learning_rate`` is None (None: RecBole's model default).
    base_learning_rate: float | None = None
    #: This model's defaults of the auto-epochs criterion (``selection`` overrides them).
    selection_defaults: dict[str, Any] = {}
    #: Allowed values, checked by the registry before anything is built (miars_core.contracts.params).
    param_constraints = {
        "epochs": OrNone(AnyOf((Interval(int, 1), Options(("auto",))))), "learning_rate": OrNone(Interval(float, 0, 10, closed="right")),
        "batch_size": OrNone(Interval(int, 1)), "score_batch_size": Interval(int, 1), "config": OrNone(Mapping(
            values={"embedding_size": Interval(int, 1), "epochs": Interval(int, 1), "train_batch_size": Interval(int, 1),
                    "learning_rate": Interval(float, 0, 10, closed="right")},
            forbidden={**{k: "miars sets itself" for k in ("model", "dataset", "data_path", "seed", "checkpoint_dir",
                                                             "eval_args", "load_col", "USER_ID_FIELD", "ITEM_ID_FIELD")},
                       **{k: "miars sets it from --device" for k in ("device", "use_gpu", "gpu_id")}})),
    }

    def __init__(
        self,
        model: str = "BPR",
        epochs: int | None = None,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        config: dict[str, Any] | None = None,
        score_batch_size: int = 256,
        selection: dict[str, Any] | None = None,
    ):
        self.model = model
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.config = config
        self.score_batch_size = score_batch_size
        self.selection = selection

    # -- training ---------------------------------------------------------------------------
    def _recbole_config(self) -> dict[str, Any]:
        """RecBole settings from the hyperparameters (epochs, batch size and learning rate excluded)."""
        cfg: dict[str, Any] = {key: getattr(self, key) for key in self.recbole_keys}
        cfg.update(self.config or {})
        return cfg

    def _epochs(self) -> int | None:
        epochs = self.epochs
        if epochs is None or (isinstance(epochs, str) and epochs.lower() == "auto"):
            return None
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or int(epochs) < 1:
            raise MiarsError(f"{self.model}: epochs must be an integer >= 1 or 'auto', got {epochs!r}")
        return int(epochs)

    def _sizes(self, n_interactions: int) -> tuple[int, float | None, float]:
        """(batch size, learning rate or None for RecBole's default, scale applied to a default rate)."""
        from .lean import auto_batch_size, scaled_learning_rate

        batch = int(self.batch_size) if self.batch_size is not None else auto_batch_size(n_interactions)
        if batch < 1:
            raise MiarsError(f"{self.model}: batch_size must be >= 1, got {self.batch_size}")
        scale = scaled_learning_rate(1.0, batch) if self.batch_size is None else 1.0
        if self.learning_rate is not None:
            return batch, float(self.learning_rate), 1.0
        if self.base_learning_rate is not None:
            return batch, self.base_learning_rate * scale, 1.0
        return batch, None, scale

    def _uses_epochs(self) -> bool:
        from .lean import LEAN_MODELS

        if self.model in LEAN_MODELS:
            return True
        from . import compat

        compat.apply()
        from recbole.utils import ModelType, get_model

        try:
            return get_model(self.model).type != ModelType.TRADITIONAL
        except (ValueError, AttributeError):
            raise MiarsError(f"RecBole has no general model {self.model!r}") from None

    def _start(self, matrix, seed: int, batch: int, lr: float | None, lr_scale: float, epochs: int | None = None):
        """A fresh model on ``matrix``: an object with ``epoch()`` and ``fitted()``."""
        from .lean import LEAN_MODELS
        from .session import LeanRun, RecBoleRun

        cfg = self._recbole_config()
        if self.model in LEAN_MODELS:
            base = lr if lr is not None else 0.001 * lr_scale
            return LeanRun(self.model, matrix, cfg, seed, batch, base)
        cfg = {**cfg, "train_batch_size": batch, "epochs": int(epochs or 1)}
        if lr is not None:
            cfg["learning_rate"] = lr
        return RecBoleRun(self.model, matrix, cfg, seed, lr_scale if lr is None else 1.0)

    def fit(self, train: Interactions, seed: int = 0) -> "RecBoleModel":
        import torch

        from .lean import select_epochs, selection_criterion

        epochs = self._epochs()
        start = time.perf_counter()
        matrix = train.matrix
        if matrix.nnz == 0:
            raise MiarsError(f"cannot train RecBole {self.model}: the members have no interactions")
        batch, lr, lr_scale = self._sizes(matrix.nnz)
        threads = torch.get_num_threads()
        selection = None
        try:
            if not self._uses_epochs():
                epochs = 1
            elif epochs is None:
                crit = selection_criterion(matrix, {**self.selection_defaults, **(self.selection or {})})

                def begin(fit_matrix):
                    run = self._start(fit_matrix, seed, batch, lr, lr_scale, int(crit["max_epochs"]))

                    def snapshot():
                        return {key: value.detach().clone() for key, value in run.model.state_dict().items()}

                    return run.epoch, lambda rows: run.fitted().score_rows(rows), snapshot, run.model.load_state_dict

                selection = select_epochs(matrix, seed, crit, begin)
                epochs = selection.epochs
            run = self._start(matrix, seed, batch, lr, lr_scale, epochs)
            for _ in range(epochs):
                run.epoch()
            fitted = run.fitted()
        finally:
            torch.set_num_threads(threads)  # RecBole's seeding may change it
        self.model_ = fitted
        self.train_ = matrix
        self.fit_info_ = {
            "recbole_model": self.model,
            "epochs": "auto" if selection is not None else epochs,
            "epochs_run": fitted.epochs_run,
            "batch_size": batch,
            "learning_rate": fitted.settings.get("learning_rate", lr),
            "final_train_loss": fitted.final_loss,
            "settings": fitted.settings,
            **(selection.report() if selection is not None else {}),
            "fit_seconds": round(time.perf_counter() - start, 3),
        }
        return self

    def recommend(self, k: int) -> np.ndarray:
        return top_k_excluding(self.model_.score_rows, self.train_, k, batch_size=self.score_batch_size, scratch=True)

    def get_state(self):
        """The fitted model as arrays plus a JSON record (``miars_recbole.state``), or None when it cannot be stored."""
        from .state import recommender_state

        return recommender_state(self)

    def set_state(self, arrays, record) -> "RecBoleModel":
        """Restore what :meth:`get_state` saved on this fresh wrapper (no training)."""
        from .state import restore_recommender

        return restore_recommender(self, arrays, record)

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        """Top-k for accounts the model was not trained on, from their histories, without retraining (fold-in).

        ``fit``: ``steps`` and ``learning_rate`` of the folded-in user vectors' fit.
        """
        return self.new_accounts().recommend_for(histories, k, seed=seed, **fit)

    def new_accounts(self):
        """What serves accounts the model was not trained on: the model's item side only (no user vectors, no
        training data), with ``recommend_for(histories, k, seed, **fit)``."""
        from .foldin import FoldInModel, ItemSide

        return FoldInModel(ItemSide.of(self.model_), self.score_batch_size)

    def foldin_solvers(self) -> tuple[str, ...] | None:
        """The fold-in solvers this model serves new accounts with (``foldin`` service's ``solver``), known before
        fitting: BPR ``auto, ridge, gradient``; NeuMF ``auto, gradient`` (no closed form); ItemKNN None (no user
        vector to solve: history x similarity); other RecBole models none (they cannot fold in)."""
        from .foldin import NO_CLOSED_FORM, SOLVERS

        kind = {"BPR": "bpr", "NeuMF": "neumf"}.get(self.model)
        if self.model == "ItemKNN":
            return None
        if kind is None:
            return ()
        return tuple(s for s in SOLVERS if s != "ridge" or kind not in NO_CLOSED_FORM)

    def foldin_no_closed_form(self) -> str:
        """Why this model has no closed-form fold-in (for the one-line refusal of ``solver=ridge``)."""
        from .foldin import NO_CLOSED_FORM

        kind = {"NeuMF": "neumf"}.get(self.model)
        return NO_CLOSED_FORM.get(kind, f"RecBole {self.model} cannot fold in new users at all")


class ItemKNN(RecBoleModel):
    """Item-based collaborative filtering (RecBole ItemKNN, cosine, 100 neighbours): the paper's Item-based CF.

    The similarity is RecBole's (cosine with shrink, each item's ``k`` nearest items), computed as a
    sparse item-item top-k; member rows are scored on demand (no users x items matrix).
    """

    recbole_keys = ("k", "shrink")
    param_constraints = {"k": Interval(int, 1), "shrink": Interval(float, 0), "score_batch_size": Interval(int, 1)}

    def __init__(self, k: int = 100, shrink: float = 0.0, score_batch_size: int = 512):
        super().__init__(model="ItemKNN", epochs=1, batch_size=None, score_batch_size=score_batch_size)
        self.k = k
        self.shrink = shrink

    def fit(self, train: Interactions, seed: int = 0) -> "ItemKNN":
        from .session import fit_itemknn

        if int(self.k) < 1:
            raise MiarsError(f"ItemKNN: k must be >= 1, got {self.k}")
        start = time.perf_counter()
        fitted = fit_itemknn(train.matrix, int(self.k), float(self.shrink), seed)
        self.model_ = fitted
        self.train_ = train.matrix
        self.fit_info_ = {"recbole_model": "ItemKNN", "epochs_run": 0, "settings": fitted.settings,
                          "similarity_nnz": int(fitted.model.w.nnz),
                          "fit_seconds": round(time.perf_counter() - start, 3)}
        return self


class LatentFactorModel(RecBoleModel):
    """Latent factor model: matrix factorization trained with BPR (RecBole BPR); the paper's LFM.

    Trained to convergence by default (``epochs=None``); base learning rate 0.005 at batch 4,096.
    """

    recbole_keys = ("embedding_size",)
    base_learning_rate = 0.005
    param_constraints = {**RecBoleModel.param_constraints, "embedding_size": Interval(int, 1)}

    def __init__(
        self,
        embedding_size: int = 64,
        epochs: int | None = None,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        score_batch_size: int = 1024,
        selection: dict[str, Any] | None = None,
    ):
        super().__init__(model="BPR", epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                         score_batch_size=score_batch_size, selection=selection)
        self.embedding_size = embedding_size


class NeuralCF(RecBoleModel):
    """Neural collaborative filtering (RecBole NeuMF: GMF + MLP towers); the paper's NCF.

    Trained to convergence by default (``epochs=None``; the curve read on 500 eval users, its best 3 epochs confirmed
    on all of them); base learning rate 0.002 at batch 4,096.
    """

    recbole_keys = ("mf_embedding_size", "mlp_embedding_size")
    base_learning_rate = 0.002
    #: Scoring every eval user through the MLP at every evaluation was most of a fit (82 of 98 s on ml-1m): the
    #: curve is read on 500 of them and its best 3 epochs confirmed on all (same lengths and recall measured there).
    selection_defaults = {"eval_subsample": 500}
    param_constraints = {**RecBoleModel.param_constraints, "mf_embedding_size": Interval(int, 1), "mlp_embedding_size": Interval(int, 1)}

    def __init__(
        self,
        epochs: int | None = None,
        learning_rate: float | None = None,
        batch_size: int | None = None,
        mf_embedding_size: int = 64,
        mlp_embedding_size: int = 64,
        score_batch_size: int = 64,
        selection: dict[str, Any] | None = None,
    ):
        super().__init__(model="NeuMF", epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                         score_batch_size=score_batch_size, selection=selection)
        self.mf_embedding_size = mf_embedding_size
        self.mlp_embedding_size = mlp_embedding_size


class Popularity(Component):
    """Control: the most popular items among the members, for members and new accounts alike (the attack should read chance).

    Non-personalized: members get what non-members get under the paper's service, so the lists
    carry no membership signal beyond which popular items each user already knows.
    """

    def __init__(self):
        pass

    def fit(self, train: Interactions, seed: int = 0) -> "Popularity":
        self.popularity_ = train.item_popularity()
        self.train_ = train.matrix
        self.fit_info_ = {"epochs_run": 0}
        return self

    def get_state(self):
        return ({"popularity": self.popularity_, **csr_arrays("train", self.train_)},
                {"train_shape": list(self.train_.shape), "fit_info": self.fit_info_})

    def set_state(self, arrays, record) -> "Popularity":
        self.popularity_ = arrays["popularity"]
        self.train_ = csr_from_arrays(arrays, "train", tuple(record["train_shape"]))
        self.fit_info_ = dict(record["fit_info"])
        return self

    def recommend(self, k: int) -> np.ndarray:
        return top_k_popular(self.popularity_, self.train_, k)

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        """The popular items each new account does not know (popularity needs no fold-in)."""
        return self.new_accounts().recommend_for(histories, k, seed=seed)

    def new_accounts(self) -> "_PopularNewAccounts":
        """What serves new accounts: the item popularity only."""
        return _PopularNewAccounts(self.popularity_)

    def foldin_solvers(self) -> None:
        """Nothing to solve for a new account (popularity): any fold-in solver serves the same lists."""
        return None


class _PopularNewAccounts:
    """New accounts get the popular items they do not know."""

    __slots__ = ("popularity",)

    def __init__(self, popularity: np.ndarray):
        self.popularity = np.asarray(popularity).copy()

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        return top_k_popular(self.popularity, sp.csr_matrix(histories), k)


class RandomItems(Component):
    """Control: every user gets k random items she does not know (seeded); a recommender that learned nothing.

    Items are drawn uniformly among those of the training data (the catalogue the service
    knows) that the user does not know; only when fewer than k remain do other unknown items
    fill the list. ``recommend_for`` serves new accounts the same way, so the control runs
    under ``--service foldin`` too. What the attack reads against it is what the protocol gives
    away without any memorization: under the paper's service (non-members get the popular
    list) ROC-AUC ~1.0, the "personalized vs popular list" confound; under fold-in ~0.5.
    """

    #: Users x items random keys drawn per block (bounds memory on large catalogues).
    block_elements = 1 << 24

    def __init__(self):
        pass

    def fit(self, train: Interactions, seed: int = 0) -> "RandomItems":
        self.train_ = sp.csr_matrix(train.matrix)
        self.catalog_ = train.item_popularity() > 0
        self.seed_ = int(seed)
        self.fit_info_ = {"epochs_run": 0}
        return self

    def get_state(self):
        return ({"catalog": self.catalog_, **csr_arrays("train", self.train_)},
                {"train_shape": list(self.train_.shape), "seed": self.seed_, "fit_info": self.fit_info_})

    def set_state(self, arrays, record) -> "RandomItems":
        self.train_ = csr_from_arrays(arrays, "train", tuple(record["train_shape"]))
        self.catalog_ = arrays["catalog"].astype(bool)
        self.seed_ = int(record["seed"])
        self.fit_info_ = dict(record["fit_info"])
        return self

    def recommend(self, k: int) -> np.ndarray:
        return self._draw(self.train_, k, self.seed_)

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        """k random unknown items for each new account (nothing to fold in)."""
        return self._draw(sp.csr_matrix(histories), k, int(seed))

    def foldin_solvers(self) -> None:
        """Nothing to solve for a new account (random items): any fold-in solver serves the same lists."""
        return None

    def _draw(self, known: sp.csr_matrix, k: int, seed: int) -> np.ndarray:
        """One uniform key per (user, item): catalogue items in [0, 1), others in [1, 2), known items never."""
        n, m = known.shape
        check_k(k, known)
        rng = np.random.default_rng(seed)
        out = np.empty((n, k), dtype=np.int64)
        step = max(1, self.block_elements // max(m, 1))
        for start in range(0, n, step):  # blocks of users, not a loop over users
            rows = known[start:start + step]
            keys = rng.random((rows.shape[0], m)) + (~self.catalog_)[None, :]
            keys[np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr)), rows.indices] = np.inf
            top = np.argpartition(keys, k - 1, axis=1)[:, :k]
            out[start:start + step] = np.take_along_axis(top, np.argsort(np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
        return out


#: ``recbole:<Name>`` resolves these names to the tuned wrappers above.
TUNED = {"ItemKNN": ItemKNN, "BPR": LatentFactorModel, "NeuMF": NeuralCF}
