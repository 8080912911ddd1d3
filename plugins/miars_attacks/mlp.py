"""The paper's attack model: an MLP (d-32-8-2) trained on shadow features, scored by its logit margin."""

from __future__ import annotations

import numpy as np

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import Interval, ListOf, Options, OrNone


def shadow_rows(X, y) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked shadow features and labels as float32 / int64, and the features' mean and scale (0 -> 1)."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X has shape {X.shape} but y has {len(y)} labels")
    if len(np.unique(y)) != 2:
        raise MiarsError("the attack needs shadow users of both classes (members and non-members)")
    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale[scale == 0] = 1.0
    return X, y, mean, scale


def build_mlp(sizes: list[int]):
    """A torch ``Sequential`` of Linear layers of these sizes with ReLU between them (none after the last)."""
    import torch

    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


class MLPAttack(Component):
    """MLP membership classifier d-32-8-2 of Zhang et al., CCS'21, scored by the logit margin.

    Features are standardized with the shadow statistics. By default the MLP is trained full-batch
    (``batch_size=None``: every step sees all shadow users) with Adam for ``epochs`` steps, the
    compute floor for a model this small; ``optimizer="sgd"`` with a ``batch_size`` gives the
    authors' optimizer (SGD + momentum) over shuffled, seeded mini-batches instead (not their
    unshuffled batch-size-1 loop, which makes results swing between runs).
    It trains and scores on the stage's device (``--device``); the weights are initialised and
    the batches shuffled on the CPU, so only the arithmetic differs between devices.
    """

    param_constraints = {
        "hidden": ListOf(Interval(int, 1)), "epochs": Interval(int, 1), "batch_size": OrNone(Interval(int, 1)),
        "learning_rate": Interval(float, 0, 10, closed="right"), "momentum": Interval(float, 0, 1, closed="left"),
        "weight_decay": Interval(float, 0), "optimizer": Options(("adam", "sgd")),
    }

    def __init__(self, hidden: tuple[int, ...] = (32, 8), epochs: int = 300, batch_size: int | None = None,
                 learning_rate: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.01,
                 optimizer: str = "adam"):
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.optimizer = optimizer

    def fit(self, X: np.ndarray, y: np.ndarray, seed: int = 0) -> "MLPAttack":
        from miars_core.kit.torch_utils import single_thread

        with single_thread():
            return self._fit(X, y, seed)

    def _fit(self, X: np.ndarray, y: np.ndarray, seed: int) -> "MLPAttack":
        import torch

        from miars_core.kit.torch_utils import current_device

        if self.optimizer not in ("adam", "sgd"):
            raise MiarsError(f"mlp: optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if int(self.epochs) < 1:
            raise MiarsError(f"mlp: epochs must be >= 1, got {self.epochs}")
        X, y, self.mean_, self.scale_ = shadow_rows(X, y)
        gen = torch.Generator().manual_seed(int(seed))
        torch.manual_seed(int(seed))
        device = torch.device(current_device())
        net = build_mlp([X.shape[1], *map(int, self.hidden), 2]).to(device)
        if self.optimizer == "adam":
            opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(net.parameters(), lr=self.learning_rate, momentum=self.momentum,
                                  weight_decay=self.weight_decay)
        xt = torch.from_numpy((X - self.mean_) / self.scale_).to(device)
        yt = torch.from_numpy(y).to(device)
        loss_fn = torch.nn.CrossEntropyLoss()
        n = len(xt)
        bs = n if self.batch_size is None else max(1, int(self.batch_size))
        net.train()
        for _ in range(int(self.epochs)):
            if bs >= n:
                opt.zero_grad(set_to_none=True)
                loss_fn(net(xt), yt).backward()
                opt.step()
                continue
            perm = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
        net.eval()
        self.net_ = net
        with torch.no_grad():
            self.final_loss_ = float(loss_fn(net(xt), yt))
        if not np.isfinite(self.final_loss_):
            raise MiarsError(f"mlp: training loss became {self.final_loss_}; lower learning_rate")
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logit margin z_member - z_non_member: never saturates, unlike a float32 softmax."""
        import torch

        from miars_core.kit.torch_utils import device_of

        xt = torch.from_numpy((np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_).to(device_of(self.net_))
        with torch.no_grad():
            z = self.net_(xt).double()
        return (z[:, 1] - z[:, 0]).cpu().numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.decision_function(X) > 0
