"""RecBole models wrapped as miars recommenders (trained on members only, batched full ranking)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from miars_core.components import Component
from miars_core.errors import MiarsError
from miars_core.params import Interval, ListOf, Mapping, OrNone  # noqa: F401 - param_constraints
from miars_core.ranking import top_k_excluding, top_k_popular
from miars_core.types import Interactions


class RecBoleModel(Component):
    """Any RecBole general recommender, trained on the members with RecBole's own trainer.

    ``model`` is RecBole's class name (``BPR``, ``LightGCN``, ...). ``epochs``,
    ``learning_rate`` and ``batch_size`` override RecBole's defaults; ``config`` passes any
    other RecBole setting (e.g. ``{"embedding_size": 128}``).
    """

    #: Hyperparameters passed to RecBole's config under their own names (set by subclasses).
    recbole_keys: tuple[str, ...] = ()
    #: Allowed values, checked by the registry before anything is built (miars_core.params).
    param_constraints = {
        "epochs": OrNone(Interval(int, 1)), "learning_rate": OrNone(Interval(float, 0, 10, closed="right")),
        "batch_size": OrNone(Interval(int, 1)), "score_batch_size": Interval(int, 1), "config": OrNone(Mapping(
            values={"embedding_size": Interval(int, 1), "epochs": Interval(int, 1), "train_batch_size": Interval(int, 1),
                    "learning_rate": Interval(float, 0, 10, closed="right")},
            forbidden={k: "miars sets itself" for k in ("model", "dataset", "data_path", "seed", "checkpoint_dir", "device",
                                                          "use_gpu", "eval_args", "load_col", "USER_ID_FIELD", "ITEM_ID_FIELD")})),
    }

    def __init__(
        self,
        model: str = "BPR",
        epochs: int | None = 100,
        learning_rate: float | None = None,
        batch_size: int | None = 4096,
        config: dict[str, Any] | None = None,
        score_batch_size: int = 256,
    ):
        self.model = model
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.config = config
        self.score_batch_size = score_batch_size

    # -- training ---------------------------------------------------------------------------
    def _recbole_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {}
        if self.epochs is not None:
            cfg["epochs"] = int(self.epochs)
        if self.learning_rate is not None:
            cfg["learning_rate"] = float(self.learning_rate)
        if self.batch_size is not None:
            cfg["train_batch_size"] = int(self.batch_size)
        cfg.update({key: getattr(self, key) for key in self.recbole_keys})
        cfg.update(self.config or {})
        return cfg

    def fit(self, train: Interactions, seed: int = 0) -> "RecBoleModel":
        from .session import train_recbole_model

        if self.epochs is not None and int(self.epochs) < 1:
            raise MiarsError(f"{self.model}: epochs must be >= 1, got {self.epochs}")
        start = time.perf_counter()
        fitted = train_recbole_model(self.model, train.matrix, self._recbole_config(), seed)
        self.model_ = fitted
        self.train_ = train.matrix
        self.fit_info_ = {
            "recbole_model": self.model,
            "epochs_run": fitted.epochs_run,
            "final_train_loss": fitted.final_loss,
            "settings": fitted.settings,
            "fit_seconds": round(time.perf_counter() - start, 3),
        }
        return self

    def recommend(self, k: int) -> np.ndarray:
        return top_k_excluding(self.model_.score_rows, self.train_, k, batch_size=self.score_batch_size)


class ItemKNN(RecBoleModel):
    """Item-based collaborative filtering (RecBole ItemKNN, cosine, 100 neighbours): the paper's Item-based CF."""

    recbole_keys = ("k", "shrink")
    param_constraints = {"k": Interval(int, 1), "shrink": Interval(float, 0), "score_batch_size": Interval(int, 1)}

    def __init__(self, k: int = 100, shrink: float = 0.0, score_batch_size: int = 512):
        super().__init__(model="ItemKNN", epochs=1, batch_size=None, score_batch_size=score_batch_size)
        self.k = k
        self.shrink = shrink


class LatentFactorModel(RecBoleModel):
    """Latent factor model: matrix factorization trained with BPR (RecBole BPR); the paper's LFM."""

    recbole_keys = ("embedding_size",)
    param_constraints = {**RecBoleModel.param_constraints, "embedding_size": Interval(int, 1)}

    def __init__(
        self,
        embedding_size: int = 64,
        epochs: int = 50,
        learning_rate: float = 0.005,
        batch_size: int = 4096,
        score_batch_size: int = 1024,
    ):
        super().__init__(model="BPR", epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                         score_batch_size=score_batch_size)
        self.embedding_size = embedding_size


class NeuralCF(RecBoleModel):
    """Neural collaborative filtering (RecBole NeuMF: GMF + MLP towers); the paper's NCF."""

    recbole_keys = ("mf_embedding_size", "mlp_embedding_size")
    param_constraints = {**RecBoleModel.param_constraints, "mf_embedding_size": Interval(int, 1), "mlp_embedding_size": Interval(int, 1)}

    def __init__(
        self,
        epochs: int = 40,
        learning_rate: float = 0.002,
        batch_size: int = 4096,
        mf_embedding_size: int = 64,
        mlp_embedding_size: int = 64,
        score_batch_size: int = 64,
    ):
        super().__init__(model="NeuMF", epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                         score_batch_size=score_batch_size)
        self.mf_embedding_size = mf_embedding_size
        self.mlp_embedding_size = mlp_embedding_size


class Popularity(Component):
    """Most popular items among the members (non-personalized baseline: the attack should read chance)."""

    def __init__(self):
        pass

    def fit(self, train: Interactions, seed: int = 0) -> "Popularity":
        self.popularity_ = train.item_popularity()
        self.train_ = train.matrix
        self.fit_info_ = {"epochs_run": 0}
        return self

    def recommend(self, k: int) -> np.ndarray:
        return top_k_popular(self.popularity_, self.train_, k)


#: ``recbole:<Name>`` resolves these names to the tuned wrappers above.
TUNED = {"ItemKNN": ItemKNN, "BPR": LatentFactorModel, "NeuMF": NeuralCF}
