"""A defense on training: ``dp-sgd``, differentially private training of ``lfm`` (BPR) and ``ncf`` (NeuMF) with opacus."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import Interval, Options, OrNone  # noqa: F401 - param_constraints
from miars_core.contracts.state import csr_arrays, csr_from_arrays
from miars_core.contracts.types import Interactions
from miars_core.science.ranking import top_k_excluding

from . import _params

#: RecBole models dp-sgd knows how to train, and the miars names that wrap them.
SUPPORTED = {"BPR": "lfm / recbole:BPR", "NeuMF": "ncf / recbole:NeuMF"}


#: What the guarantee covers, what the service adds outside it, and what is public (``privacy_``).
COVERS = (
    "the trained model (user and item embeddings, NeuMF's layers)",
    "every list computed from the model and the list owner's own history (members' lists, fold-in lists)",
)
OUTSIDE = (
    "the non-member popular list of the `popular` service and the cold-start list (an account with no "
    "history): exact item counts over the members' data, computed by the service, not by this defense",
    "a member's own list leaves out the items she knows: it shows her own history to whoever sees it",
)
PUBLIC = (
    "the item catalogue: every item of the data set is in the model and scored",
    "the member accounts (one user embedding per member row)",
    "the number of training records (sets the sampling rate and the default delta)",
)


class DPSGD(Component):
    """DP-SGD training of lfm (BPR) and ncf (NeuMF) with opacus: per-example clipping, Gaussian noise, RDP accountant (Abadi et al., CCS 2016).

    M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar, L. Zhang, "Deep
    Learning with Differential Privacy" (CCS 2016), as implemented by opacus (Yousefpour et
    al., 2021). The wrapped recommender's RecBole model (BPR for ``lfm``, NeuMF for ``ncf``) is
    built with the same hyperparameters (embedding sizes, epochs, learning rate, batch size,
    unless overridden here) and trained by this defense's own loop: each step draws a Poisson
    sample of the members' interactions (rate ``batch_size / n_records``), pairs each with a
    negative item drawn uniformly from the catalogue, clips each example's gradient to L2 norm
    ``max_grad_norm`` (opacus ghost clipping, which handles embedding tables without
    materialising per-example gradients) and adds Gaussian noise of standard deviation
    ``noise_multiplier * max_grad_norm`` to the sum, with Adam as the base optimizer.

    Privacy is **record-level**: one record is one (member, item) interaction; adding or
    removing one interaction changes the output distribution by at most (epsilon, delta).
    A member with many interactions is protected by group privacy only (roughly
    ``n * epsilon``). Give ``epsilon`` (the noise multiplier is then calibrated by opacus to
    reach it after all epochs) or ``noise_multiplier`` (epsilon is then what the accountant
    reports). ``delta`` defaults to ``1 / (n ln n)`` for ``n`` training records (well below
    ``1 / n``; see :func:`miars_defenses._params.default_delta`). ``privacy_`` holds the
    accountant's epsilon after training, the level, what the guarantee covers and what lies
    outside it.

    **What is public.** The item catalogue (every item of the data set, whether or not a
    member interacted with it: the model has an embedding for each and scores them all, and
    negatives are drawn uniformly from all of them), the member accounts (one user embedding
    per member row) and the number of training records (it sets the sampling rate and the
    default delta). So the set of items that can be served does not depend on any record.
    """

    acts_on = "training"
    sweep = {"epsilon": [1.0, 3.0, 10.0]}
    #: Recommender names this defense can train (bench-defenses pairs it with these only).
    recommenders = ("lfm", "ncf", "recbole:BPR", "recbole:NeuMF")

    param_constraints = {
        "epsilon": OrNone(Interval(float, 0, None, closed="neither")),
        "noise_multiplier": OrNone(Interval(float, 0, None, closed="neither")),
        "max_grad_norm": Interval(float, 0, None, closed="neither"), "delta": OrNone(Interval(float, 0, 1, closed="neither")),
        "epochs": OrNone(Interval(int, 1)), "batch_size": OrNone(Interval(int, 1)),
        "learning_rate": OrNone(Interval(float, 0, 10, closed="right")), "accountant": Options(("rdp", "prv", "gdp")),
    }

    def __init__(self, epsilon: float | None = 3.0, noise_multiplier: float | None = None, max_grad_norm: float = 1.0,
                 delta: float | None = None, epochs: int | None = None, batch_size: int | None = None,
                 learning_rate: float | None = None, accountant: str = "rdp"):
        self.epsilon = epsilon
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.delta = delta
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.accountant = accountant

    def _validate(self) -> dict:
        name = "dp-sgd"
        v = {
            "epsilon": _params.number(name, "epsilon", self.epsilon, low=0, low_open=True, example=3.0, allow_none=True),
            "noise_multiplier": _params.number(name, "noise_multiplier", self.noise_multiplier, low=0, low_open=True,
                                               example=1.0, allow_none=True),
            "max_grad_norm": _params.number(name, "max_grad_norm", self.max_grad_norm, low=0, low_open=True, example=1.0),
            "delta": _params.number(name, "delta", self.delta, low=0, high=1, low_open=True, high_open=True,
                                    example=1e-5, allow_none=True),
            "epochs": _params.number(name, "epochs", self.epochs, low=1, integer=True, example=10, allow_none=True),
            "batch_size": _params.number(name, "batch_size", self.batch_size, low=1, integer=True, example=1024,
                                         allow_none=True),
            "learning_rate": _params.number(name, "learning_rate", self.learning_rate, low=0, low_open=True,
                                            example=0.005, allow_none=True),
            "accountant": _params.choice(name, "accountant", self.accountant, ("rdp", "prv", "gdp")),
        }
        if (v["epsilon"] is None) == (v["noise_multiplier"] is None):
            raise MiarsError("dp-sgd: give exactly one of epsilon (target) and noise_multiplier; "
                             "e.g. --defense-param epsilon=3 or --defense-param epsilon=None,noise_multiplier=1.0")
        return v

    def fit(self, recommender, members: Interactions, seed: int = 0) -> "_FittedDP":
        v = self._validate()
        model_name = getattr(recommender, "model", None)
        if model_name not in SUPPORTED or not callable(getattr(recommender, "_recbole_config", None)):
            raise MiarsError(
                f"dp-sgd trains {', '.join(self.recommenders)} only, not {type(recommender).__name__}"
                f"{f' ({model_name})' if isinstance(model_name, str) else ''}; for item use dp-itemknn"
            )
        start = time.perf_counter()
        overrides = dict(recommender._recbole_config())
        epochs = v["epochs"] or int(overrides.get("epochs", 10))
        batch_size = v["batch_size"] or int(overrides.get("train_batch_size", 4096))
        lr = v["learning_rate"] or float(overrides.get("learning_rate", 0.001))
        matrix = sp.csr_matrix(members.matrix)
        n_records = int(matrix.nnz)
        if n_records == 0:
            raise MiarsError("dp-sgd: the members have no interactions to train on")
        delta = v["delta"] if v["delta"] is not None else _params.default_delta(n_records)
        fitted, info = _train(model_name, matrix, overrides, seed, epochs=epochs, batch_size=batch_size, lr=lr,
                              epsilon=v["epsilon"], noise_multiplier=v["noise_multiplier"],
                              max_grad_norm=v["max_grad_norm"], delta=delta, accountant=v["accountant"])
        self.privacy_ = {
            "epsilon": info["epsilon"], "delta": delta, "level": "record",
            "unit": "one (member, item) interaction",
            "delta_rule": "given" if v["delta"] is not None else "1 / (n ln n), n = training records",
            "covers": list(COVERS), "outside": list(OUTSIDE), "public": list(PUBLIC),
            "mechanism": f"DP-SGD (opacus {info['opacus']}, {v['accountant']} accountant, Poisson sampling)",
            "noise_multiplier": info["noise_multiplier"], "max_grad_norm": v["max_grad_norm"],
            "sample_rate": info["sample_rate"], "steps": info["steps"], "epochs": epochs,
            "batch_size": batch_size, "learning_rate": lr, "target_epsilon": v["epsilon"], "records": n_records,
            "params": self.get_params(),
        }
        out = _FittedDP(fitted, matrix, int(getattr(recommender, "score_batch_size", 256) or 256))
        out.fit_info_ = {"defense": "dp-sgd", "recbole_model": model_name, "fit_seconds": round(time.perf_counter() - start, 3),
                         "final_train_loss": info["final_loss"], **self.privacy_}
        return out

    def set_state(self, recommender, arrays, record) -> "_FittedDP":
        """The model :meth:`fit` trained, back from what its ``get_state`` saved (no training)."""
        from miars_recbole.training import restore_fitted

        train = csr_from_arrays(arrays, "train", tuple(record["train_shape"]))
        model = restore_fitted({k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")},
                               record["model"], train)
        out = _FittedDP(model, train, int(record["score_batch_size"]))
        out.fit_info_ = dict(record["fit_info"])
        return out


class _FittedDP:
    """The privately trained RecBole model, served like the plain wrapper (batched full ranking)."""

    def __init__(self, fitted, train: sp.csr_matrix, score_batch_size: int):
        self.model_ = fitted
        self.train_ = train
        self.score_batch_size = score_batch_size

    def get_state(self):
        """The private model as arrays plus a JSON record (the recommender state contract); restored by
        :meth:`DPSGD.set_state`."""
        from miars_recbole.training import fitted_state

        state = fitted_state(self.model_)
        if state is None:
            return None
        arrays, record = state
        return ({**{f"model.{k}": v for k, v in arrays.items()}, **csr_arrays("train", self.train_)},
                {"model": record, "train_shape": list(self.train_.shape), "score_batch_size": int(self.score_batch_size),
                 "fit_info": self.fit_info_})

    def recommend(self, k: int) -> np.ndarray:
        return top_k_excluding(self.model_.score_rows, self.train_, k, batch_size=self.score_batch_size)

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        """Fold-in of accounts it was not trained on (BPR / lfm: a user vector against the private item factors)."""
        return self.new_accounts().recommend_for(histories, k, seed=seed, **fit)

    def new_accounts(self):
        """What serves accounts it was not trained on: the private model's item side only."""
        from miars_recbole.training import FoldInModel, ItemSide

        return FoldInModel(ItemSide.of(self.model_), self.score_batch_size)


def _build(model_name: str, train: sp.csr_matrix, overrides: dict, seed: int):
    """A fresh RecBole model (untrained) over every member row and every item of the catalogue.

    Internal ids are row + 1 and column + 1 (0 is RecBole's padding), whatever the data hold:
    the model's shape, its initialisation and the negatives' range are fixed by the public
    catalogue and the member accounts, never by which records exist.
    """
    from miars_recbole import training

    training.apply_compat()
    n_rows, n_items = train.shape
    config = training.recbole_config(model_name, overrides, seed)
    user_rb = np.arange(1, n_rows + 1, dtype=np.int64)
    item_cols = np.concatenate([[0], np.arange(n_items, dtype=np.int64)])
    coo = train.tocoo()
    matrix = sp.csr_matrix((np.ones(coo.nnz, dtype=np.float32), (coo.row + 1, coo.col + 1)), shape=(n_rows + 1, n_items + 1))
    data = training.LeanData(user=None, item=None, keys=None, n_users=n_rows + 1, n_items=n_items + 1, user_rb=user_rb,
                             item_cols=item_cols, matrix=matrix)
    model = training.build_model(model_name, config, data, seed)
    return model, user_rb, item_cols


def _modules(model_name: str, model):
    """The (user, [positive, negative]) scoring module and the per-example loss for opacus."""
    import torch
    from torch import nn

    class BPRPairs(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, users, items):  # items: (B, 2) = positive, negative
            u = self.m.user_embedding(users)
            it = self.m.item_embedding(items)
            s = (u[:, None, :] * it).sum(-1)
            return s[:, 0] - s[:, 1]

    class NeuMFPairs(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, users, items):
            m = self.m
            u_mf = m.user_mf_embedding(users)[:, None, :].expand(-1, 2, -1)
            u_mlp = m.user_mlp_embedding(users)[:, None, :].expand(-1, 2, -1)
            mf = u_mf * m.item_mf_embedding(items)
            mlp = m.mlp_layers(torch.cat([u_mlp, m.item_mlp_embedding(items)], -1))
            return m.predict_layer(torch.cat([mf, mlp], -1)).squeeze(-1)  # (B, 2) logits

    class BPRLoss(nn.Module):  # -log sigmoid(s_pos - s_neg), per example
        reduction = "mean"

        def forward(self, diff, target=None):
            loss = -nn.functional.logsigmoid(diff)
            return loss if self.reduction == "none" else (loss.sum() if self.reduction == "sum" else loss.mean())

    class PairBCE(nn.Module):  # BCE(pos, 1) + BCE(neg, 0), per example
        reduction = "mean"

        def forward(self, logits, target=None):
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(-1)
            return loss if self.reduction == "none" else (loss.sum() if self.reduction == "sum" else loss.mean())

    if model_name == "BPR":
        return BPRPairs(model), BPRLoss()
    if not (model.mf_train and model.mlp_train):
        raise MiarsError("dp-sgd trains NeuMF with both towers (mf_train and mlp_train true)")
    return NeuMFPairs(model), PairBCE()


def _train(model_name, train, overrides, seed, *, epochs, batch_size, lr, epsilon, noise_multiplier, max_grad_norm,
           delta, accountant):
    import torch
    from opacus import PrivacyEngine

    threads = torch.get_num_threads()
    model, user_rb, item_cols = _build(model_name, train, overrides, seed)
    torch.set_num_threads(threads)
    col_to_rb = np.zeros(train.shape[1], dtype=np.int64)
    col_to_rb[item_cols[1:]] = np.arange(1, len(item_cols))
    coo = train.tocoo()
    users = torch.as_tensor(user_rb[coo.row], dtype=torch.long)
    items = torch.as_tensor(col_to_rb[coo.col], dtype=torch.long)
    with warnings.catch_warnings():
        # opacus' notices, not problems here: no secure RNG (runs are seeded on purpose), and its
        # backward hooks fire on module outputs because the inputs are integer ids.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        # the RDP bound is valid at the largest order too, just not the tightest one
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        fitted, info = _train_loop(PrivacyEngine(accountant=accountant), model, user_rb, item_cols, train, users, items,
                                   seed, epochs=epochs, batch_size=batch_size, lr=lr, epsilon=epsilon,
                                   noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, delta=delta,
                                   threads=threads)
    # how to build the module again around its stored state (the recommender state contract): as _build did
    fitted.build = {"path": "lean", "model": model_name, "overrides": dict(overrides), "seed": int(seed)}
    return fitted, info


#: RDP orders used to calibrate the noise multiplier (a valid bound at any set of orders; this compact
#: set is ~10x faster than opacus' default one, which still gives the reported, tighter epsilon).
CALIBRATION_ALPHAS = [1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 32.0, 64.0]


def _train_loop(engine, model, user_rb, item_cols, train, users, items, seed, *, epochs, batch_size, lr, epsilon,
                noise_multiplier, max_grad_norm, delta, threads):
    """Poisson-sampled DP-SGD steps; opacus clips, adds noise and accounts.

    The loader handed to opacus only tells it the sample rate ``q = 1 / ceil(n / batch_size)``;
    the loop draws each step's sample itself (every record independently with probability
    ``q``, which is what the accountant assumes), ``int(epochs / q)`` steps in all, as opacus
    counts them when it calibrates the noise for a target epsilon. Samples and negatives are
    drawn on the CPU (the same on every device); the model, its steps and the noise run on the
    model's device (``--device``; the noise comes from a generator on that device).
    """
    import opacus
    import torch
    from opacus.accountants.utils import get_noise_multiplier
    from torch.utils.data import DataLoader, TensorDataset

    from miars_core.kit.torch_utils import device_of
    from miars_recbole.training import FittedRecBole

    n_records, n_rb_items = len(users), len(item_cols)
    device = device_of(model)
    torch.manual_seed(int(seed))
    module, criterion = _modules(type(model).__name__, model)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(users, items), batch_size=min(batch_size, n_records))
    q = 1.0 / len(loader)
    n_steps = int(epochs / q)
    if epsilon is not None:
        extra = {"alphas": CALIBRATION_ALPHAS} if engine.accountant.mechanism() == "rdp" else {}
        noise_multiplier = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=q, steps=n_steps,
                                                accountant=engine.accountant.mechanism(), **extra)
    dp_module, dp_opt, dp_crit, _ = engine.make_private(
        module=module, optimizer=optimizer, criterion=criterion, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm, poisson_sampling=False, grad_sample_mode="ghost",
        noise_generator=torch.Generator(device=device).manual_seed(int(seed) + 1))
    sample_gen = torch.Generator().manual_seed(int(seed) + 2)
    steps, total, count = 0, 0.0, 0
    for _ in range(n_steps):
        index = torch.nonzero(torch.rand(n_records, generator=sample_gen) < q).squeeze(1)
        if len(index) == 0:  # an empty Poisson sample: nothing is released, nothing is counted
            continue
        u, pos = users[index].to(device), items[index].to(device)
        neg = torch.randint(1, n_rb_items, (len(index),), generator=sample_gen).to(device)
        dp_opt.zero_grad()
        loss = dp_crit(dp_module(u, torch.stack([pos, neg], dim=1)), None)
        loss.backward()
        dp_opt.step()
        steps += 1
        if steps > n_steps - max(1, int(1 / q)):  # the loss over the last epoch
            total += float(loss.detach()) * len(index)
            count += len(index)
    last = total / count if count else None
    eps = float(engine.get_epsilon(delta))
    if hasattr(dp_module, "_close"):
        dp_module._close()
    elif hasattr(dp_module, "remove_hooks"):
        dp_module.remove_hooks()
    model.eval()
    torch.set_num_threads(threads)
    fitted = FittedRecBole(model, user_rb, item_cols, train.shape[1], epochs, last, {})
    info = {"epsilon": eps, "noise_multiplier": float(dp_opt.noise_multiplier), "sample_rate": q,
            "steps": steps, "final_loss": None if last is None or not math.isfinite(last) else float(last),
            "opacus": opacus.__version__}
    return fitted, info
