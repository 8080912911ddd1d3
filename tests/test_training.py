"""Recommender training: auto epochs by held-out recall, the lean data path, sparse ItemKNN, the MLP attack."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from miars_core.contracts.errors import MiarsError
from miars_core.contracts.types import Interactions


@pytest.fixture(scope="module")
def clustered(small_dataset) -> Interactions:
    users, items = np.loadtxt(small_dataset, dtype=np.int64, unpack=True)
    return Interactions.from_pairs(users, items)


@pytest.fixture(scope="module")
def split(clustered):
    from miars_recbole.lean import holdout_split

    fit, held = holdout_split(clustered.matrix, 0.2, seed=1)
    return fit, held


def _recall(fitted, fit, held, k=10):
    from miars_recbole.lean import heldout_recall

    rows = np.flatnonzero(np.diff(held.indptr) > 0)
    return heldout_recall(fitted.score_rows, fit, held, rows, k)


def _popular_recall(fit, held, k=10):
    from miars_recbole.lean import heldout_recall

    pop = np.asarray(fit.sum(axis=0)).ravel().astype(np.float32)
    rows = np.flatnonzero(np.diff(held.indptr) > 0)
    return heldout_recall(lambda r: np.broadcast_to(pop, (len(r), len(pop))), fit, held, rows, k)


# -- sizing, hold-out, sampling --------------------------------------------------------------
def test_auto_batch_gives_small_data_enough_steps_and_keeps_4096_on_ml1m_sizes():
    from miars_recbole.lean import auto_batch_size, scaled_learning_rate

    for n in (500, 3000, 20_000, 160_000, 3_000_000):
        b = auto_batch_size(n)
        assert b & (b - 1) == 0 and 128 <= b <= 16384
        assert n / b >= 32 or b == 128
    assert auto_batch_size(160_000) == 4096
    assert auto_batch_size(3_000) == 128
    assert scaled_learning_rate(0.005, 4096) == pytest.approx(0.005)
    assert scaled_learning_rate(0.004, 1024) == pytest.approx(0.002)


def test_holdout_keeps_every_interaction_once_and_is_seeded(clustered):
    from miars_recbole.lean import holdout_split

    fit, held = holdout_split(clustered.matrix, 0.2, seed=3)
    assert (fit + held != clustered.matrix).nnz == 0
    assert fit.multiply(held).nnz == 0
    counts, n_held = np.diff(clustered.matrix.indptr), np.diff(held.indptr)
    assert np.array_equal(n_held, np.floor(0.2 * counts).astype(int))
    again, _ = holdout_split(clustered.matrix, 0.2, seed=3)
    assert (again != fit).nnz == 0


def test_negative_sampler_never_returns_a_known_item(clustered):
    import torch

    from miars_recbole.lean import index_members, known, sample_negatives

    data = index_members(clustered.matrix)
    users = data.user.repeat(5)
    neg = sample_negatives(data, users, torch.Generator().manual_seed(0))
    assert not known(data, users, neg).any()
    assert neg.min() >= 1 and neg.max() < data.n_items
    assert known(data, data.user, data.item).all()


# -- auto epochs -------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", ["LatentFactorModel", "NeuralCF"])
def test_auto_epochs_records_a_curve_stops_and_trains_the_chosen_length(clustered, cls):
    import miars_recbole.models as models

    model = getattr(models, cls)(selection={"max_epochs": 30, "patience": 3}).fit(clustered, seed=0)
    info = model.fit_info_
    assert info["epochs"] == "auto"
    curve = info["curve"]
    assert curve and all(e2 > e1 for (e1, _), (e2, _) in zip(curve, curve[1:]))
    best_epoch, best = max(curve, key=lambda c: (c[1], -c[0]))
    assert info["chosen_epochs"] == best_epoch == info["epochs_run"]
    assert info["stopped"] in ("patience", "max_epochs")
    if info["stopped"] == "patience":  # stopped: the last 3 evaluations did not beat the best
        assert curve[-1][0] < 30 and all(r <= best for _, r in curve[-3:])
    assert info["criterion"]["holdout"] == 0.2 and info["criterion"]["held_out_interactions"] > 0
    assert best > 0.0


def test_explicit_epochs_mean_exactly_that_many(clustered):
    from miars_recbole.models import LatentFactorModel, NeuralCF

    for cls in (LatentFactorModel, NeuralCF):
        info = cls(epochs=3).fit(clustered, seed=0).fit_info_
        assert info["epochs"] == 3 and info["epochs_run"] == 3 and "curve" not in info
    with pytest.raises(MiarsError, match="epochs"):
        LatentFactorModel(epochs="many").fit(clustered)


def test_auto_epochs_same_seed_same_lists(clustered):
    from miars_recbole.models import LatentFactorModel

    a = LatentFactorModel(selection={"max_epochs": 10}).fit(clustered, seed=4)
    b = LatentFactorModel(selection={"max_epochs": 10}).fit(clustered, seed=4)
    assert a.fit_info_["curve"] == b.fit_info_["curve"]
    assert np.array_equal(a.recommend(10), b.recommend(10))


def test_generic_recbole_model_gets_auto_epochs_through_recboles_trainer(clustered):
    from miars_recbole.models import RecBoleModel

    model = RecBoleModel(model="DMF", selection={"max_epochs": 4, "eval_every": 2, "patience": 1},
                         config={"user_hidden_size_list": [16], "item_hidden_size_list": [16]}).fit(clustered, seed=0)
    info = model.fit_info_
    assert info["epochs"] == "auto" and 1 <= info["epochs_run"] <= 4 and info["curve"]
    assert model.recommend(5).shape == (clustered.n_users, 5)


def test_nonfinite_loss_fails_loudly_naming_model_and_epoch(clustered, monkeypatch):
    import torch

    from miars_recbole.models import LatentFactorModel
    from recbole.model.general_recommender.bpr import BPR

    monkeypatch.setattr(BPR, "calculate_loss", lambda self, inter: self.user_embedding.weight.sum() * torch.tensor(float("nan")))
    with pytest.raises(MiarsError, match=r"BPR.*epoch 1"):
        LatentFactorModel(epochs=2).fit(clustered, seed=0)


# -- lean data path against RecBole's own loop ----------------------------------------------------
@pytest.mark.parametrize("name, epochs, lr", [("BPR", 20, 0.01), ("NeuMF", 10, 0.005)])
def test_lean_and_recbole_loops_reach_comparable_heldout_recall(split, name, epochs, lr):
    from miars_recbole.session import LeanRun, RecBoleRun

    fit, held = split
    lean = LeanRun(name, fit, {}, seed=0, batch_size=256, learning_rate=lr)
    rb = RecBoleRun(name, fit, {"epochs": epochs, "train_batch_size": 256, "learning_rate": lr}, seed=0)
    for _ in range(epochs):
        lean.epoch()
        rb.epoch()
    r_lean, r_rb = _recall(lean.fitted(), fit, held), _recall(rb.fitted(), fit, held)
    pop = _popular_recall(fit, held)
    assert r_lean > pop * 1.2 and r_rb > pop * 1.2, (r_lean, r_rb, pop)  # both learned the clusters
    assert abs(r_lean - r_rb) <= 0.1 * max(r_lean, r_rb), (r_lean, r_rb)
    # Same loss (RecBole's calculate_loss), per-epoch sums on the same scale.
    assert lean.trainer.losses[-1] == pytest.approx(rb.losses[-1], rel=0.35)


# -- sparse ItemKNN --------------------------------------------------------------------------------
def _recbole_itemknn(fit, k):
    from miars_recbole.session import RecBoleRun

    return RecBoleRun("ItemKNN", fit, {"k": k, "epochs": 1}, seed=0)


def test_sparse_itemknn_equals_recboles_dense_itemknn(split):
    from miars_core.science.ranking import top_k_excluding
    from miars_recbole.session import fit_itemknn

    fit, _ = split
    n_items = fit.shape[1]
    ours = fit_itemknn(fit, n_items, 0.0, seed=0)
    theirs = _recbole_itemknn(fit, n_items)
    theirs.epoch()
    theirs = theirs.fitted()
    rows = np.arange(fit.shape[0])
    a = ours.score_rows(rows).numpy()
    b = theirs.score_rows(rows).numpy()
    assert np.array_equal(np.isinf(a), np.isinf(b))
    finite = np.isfinite(a)
    assert np.allclose(a[finite], b[finite], rtol=1e-5, atol=1e-6)
    assert np.array_equal(top_k_excluding(ours.score_rows, fit, 10), top_k_excluding(theirs.score_rows, fit, 10))


def test_sparse_itemknn_keeps_recboles_neighbours_for_small_k(split):
    """With k < items, ties may pick different but equally similar neighbours: compare the kept values."""
    from miars_recbole.lean import index_members, item_item_topk

    fit, _ = split
    data = index_members(fit)
    run = _recbole_itemknn(fit, 7)
    n = fit.shape[1]
    ours = np.zeros((n + 1, n))
    ours[:, data.item_cols[1:]] = item_item_topk(data.matrix, 7).toarray()[:, 1:]
    theirs = np.zeros((n + 1, n))
    theirs[:, run.item_cols[1:]] = run.model.w.toarray()[:, 1:]  # columns by global item
    assert np.allclose(np.sort(ours, axis=0), np.sort(theirs, axis=0), rtol=1e-5)
    assert ((ours != 0).sum(axis=0) <= 7).all()


def test_item_item_topk_blocks_do_not_change_the_result(clustered):
    from miars_recbole.lean import item_item_topk

    whole = item_item_topk(clustered.matrix, 5)
    blocked = item_item_topk(clustered.matrix, 5, max_block=150 * 7)
    assert np.allclose(np.sort(whole.toarray(), axis=0), np.sort(blocked.toarray(), axis=0))
    assert sp.issparse(whole) and whole.nnz <= 5 * clustered.n_items


# -- MLP attack --------------------------------------------------------------------------------------
def _separable(n, seed, shift=0.8):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    X = rng.normal(size=(n, 20)).astype(np.float32)
    X[y, :5] += shift
    return X, y


@pytest.mark.parametrize("params", [{}, {"optimizer": "sgd", "batch_size": 64, "epochs": 30}])
def test_mlp_attack_separates_separable_data_and_is_seeded(params):
    from sklearn.metrics import roc_auc_score

    from miars_attacks.mlp import MLPAttack

    X, y = _separable(600, 0)
    Xt, yt = _separable(600, 1)
    model = MLPAttack(**params).fit(X, y, seed=3)
    scores = model.decision_function(Xt)
    # Bayes-optimal ROC-AUC here is Phi(0.8 * sqrt(5) / sqrt(2)) = 0.897 (a linear score on the 5 shifted features).
    assert roc_auc_score(yt, scores) > 0.80
    assert np.array_equal(scores, MLPAttack(**params).fit(X, y, seed=3).decision_function(Xt))
    assert not np.array_equal(scores, MLPAttack(**params).fit(X, y, seed=4).decision_function(Xt))


def test_mlp_attack_on_noise_reads_chance():
    from sklearn.metrics import roc_auc_score

    from miars_attacks.mlp import MLPAttack

    X, y = _separable(600, 0, shift=0.0)
    Xt, yt = _separable(2000, 1, shift=0.0)
    assert abs(roc_auc_score(yt, MLPAttack().fit(X, y, seed=0).decision_function(Xt)) - 0.5) < 0.05


@pytest.mark.parametrize("cls", ["LatentFactorModel", "NeuralCF"])
def test_auto_epochs_on_a_subsample_confirms_its_best_epochs_on_every_eval_user(clustered, cls):
    import miars_recbole.models as models

    base = {"max_epochs": 12, "patience": 6}  # a long curve: the full run is evaluated at every epoch kept below
    full = getattr(models, cls)(selection={**base, "eval_subsample": None}).fit(clustered, seed=3).fit_info_
    sub = getattr(models, cls)(selection={**base, "eval_subsample": 25, "confirm": 2}).fit(clustered, seed=3).fit_info_
    assert full["criterion"]["eval_subsample"] is None and "confirmed" not in full
    assert sub["criterion"]["eval_subsample"] == 25 and sub["criterion"]["eval_users"] == full["criterion"]["eval_users"]
    confirmed = sub["confirmed"]
    assert 1 <= len(confirmed) <= 2
    # the subsample's curve picked them; every eval user measured them: the same model states as the full run's
    on_all = dict(map(tuple, full["curve"]))
    assert all(on_all[epoch] == recall for epoch, recall in confirmed)
    best_epoch, best = max(confirmed, key=lambda c: (c[1], -c[0]))
    assert sub["chosen_epochs"] == best_epoch == sub["epochs_run"] and sub["chosen_recall"] == best
    assert full["chosen_recall"] == max(r for _, r in full["curve"])
    subsample = dict(map(tuple, sub["curve"]))
    assert sorted(sorted(subsample, key=lambda e: (-subsample[e], e))[:2]) == [e for e, _ in confirmed]
    with pytest.raises(MiarsError, match="eval_subsample"):
        getattr(models, cls)(selection={"eval_subsample": 0}).fit(clustered, seed=3)
