"""Service models: the paper's popular service and fold-in, where everyone gets personalized lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import miars_services
from miars_core.cli import app
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.kit import checks
from miars_services import FoldInService, PopularService

FAST = {"attack_params": {"epochs": 50}}


def test_built_in_services_keep_the_contract():
    checks.check_service(PopularService)
    checks.check_service(FoldInService)
    names = get_plugins().registry("service").names()
    assert {"popular", "foldin"} <= set(names)


def test_foldin_removes_the_popular_list_confound_for_item_knn(small_dataset):
    base = dict(dataset=str(small_dataset), target="item", shadow="item", top_k=10, **FAST)
    popular = run_attack(AttackConfig(**base))
    foldin = run_attack(AttackConfig(**base, service="foldin"))
    # Under the paper's service the attack separates personalized from popular lists...
    assert popular.metrics["roc_auc"] > 0.75
    # ...when non-members are served by the same model from their own history it reads near chance.
    assert abs(foldin.metrics["roc_auc"] - 0.5) < 0.15
    assert popular.metrics["roc_auc"] - foldin.metrics["roc_auc"] > 0.2
    lists = foldin.artifacts["target_lists"]
    target = foldin.artifacts["split"].target
    known = target.interactions.matrix
    rows = np.repeat(np.arange(len(lists)), lists.shape[1])
    assert not np.asarray(known[rows, lists.ravel()]).any()
    assert foldin.components["service"]["name"] == "foldin"
    # the non-members' lists are personal: not everyone gets the same items
    others = lists[~target.is_member]
    assert len({tuple(sorted(r)) for r in others}) > len(others) // 2


def test_foldin_lfm_fits_new_users_against_frozen_factors(small_dataset):
    result = run_attack(AttackConfig(dataset=str(small_dataset), target="lfm", shadow="lfm", top_k=10, service="foldin",
                                     target_params={"epochs": 5}, shadow_params={"epochs": 5}, **FAST))
    assert 0.0 <= result.metrics["roc_auc"] <= 1.0
    lists = result.artifacts["target_lists"]
    assert lists.shape[1] == 10 and (np.sort(lists, axis=1)[:, 1:] != np.sort(lists, axis=1)[:, :-1]).all()


def test_a_recommender_that_cannot_fold_in_is_a_one_line_error(small_dataset):
    with pytest.raises(MiarsError, match="cannot serve new users.*--service popular"):
        run_attack(AttackConfig(dataset=str(small_dataset), target="recbole:LightGCN", shadow="recbole:LightGCN", top_k=10,
                                service="foldin",
                                target_params={"epochs": 1}, shadow_params={"epochs": 1}, **FAST))


def test_service_on_the_command_line_and_in_grids(small_dataset, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["list", "service", "--json"])
    assert res.exit_code == 0 and {r["name"] for r in json.loads(res.output)} >= {"popular", "foldin"}
    res = runner.invoke(app, ["grid", "--dataset", str(small_dataset), "--target", "item", "--service", "popular,foldin",
                              "--top-k", "10", "--attack-param", "epochs=50", "--workers", "1", "-q", "--no-report",
                              "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    cells = sorted(p.name for p in (tmp_path / "run" / "cells").iterdir())
    assert len(cells) == 2 and sum("_foldin_" in c for c in cells) == 1
    res = runner.invoke(app, ["grid", "--service", "nosuch", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown service 'nosuch'" in res.output


def test_the_popular_service_keeps_v0_cache_keys(small_dataset):
    from miars_core.engine.stages import Cell

    plugins = get_plugins()
    a = Cell(AttackConfig(dataset=str(small_dataset)), plugins)
    b = Cell(AttackConfig(dataset=str(small_dataset), service="foldin"), plugins)
    assert a.key("split", "target") == b.key("split", "target")
    assert a.key("serve", "target") != b.key("serve", "target")
    assert miars_services.__version__


def test_foldin_ncf_fits_neumf_user_embeddings_against_the_frozen_item_side(small_dataset):
    from miars_recbole.foldin import foldin_scorer

    result = run_attack(AttackConfig(dataset=str(small_dataset), target="ncf", shadow="ncf", top_k=10, service="foldin",
                                     target_params={"epochs": 3}, shadow_params={"epochs": 3}, **FAST))
    lists = result.artifacts["target_lists"]
    target = result.artifacts["split"].target
    others = lists[~target.is_member]
    assert len({tuple(sorted(r)) for r in others}) > len(others) // 2  # personal lists, not the popular one
    known = target.interactions.matrix
    assert not np.asarray(known[np.repeat(np.arange(len(lists)), 10), lists.ravel()]).any()
    rec = get_plugins().create("recommender", "ncf", epochs=3)
    from miars_core.contracts.types import Interactions

    members = Interactions(known[target.is_member], target.interactions.user_ids[target.is_member],
                           target.interactions.item_ids)
    rec.fit(members, seed=0)
    scores = foldin_scorer(rec.model_, known[~target.is_member][:4], seed=1)(np.arange(4))
    again = foldin_scorer(rec.model_, known[~target.is_member][:4], seed=1)(np.arange(4))
    assert np.isfinite(scores.numpy()).any() and np.array_equal(scores.numpy(), again.numpy())  # same seed, same fold-in


def test_foldin_fit_is_a_service_parameter(small_dataset):
    base = dict(dataset=str(small_dataset), target="lfm", shadow="lfm", top_k=10, service="foldin",
                target_params={"epochs": 5}, shadow_params={"epochs": 5}, **FAST)
    loose = run_attack(AttackConfig(**base, service_params={"steps": 1, "solver": "gradient"}))
    tight = run_attack(AttackConfig(**base, service_params={"solver": "gradient"}))
    members = loose.artifacts["split"].target.is_member
    assert np.array_equal(loose.artifacts["target_lists"][members], tight.artifacts["target_lists"][members])
    assert not np.array_equal(loose.artifacts["target_lists"][~members], tight.artifacts["target_lists"][~members])
    assert tight.components["service"]["params"] == {"steps": 50, "learning_rate": 0.005, "members": "trained",
                                                     "solver": "gradient", "reg": 10.0, "cold_start": "popular",
                                                     "min_group": 10}
    # the default (auto) solves BPR's fold-in in closed form: the gradient fit's settings do not move it
    ridge = run_attack(AttackConfig(**base, service_params={"steps": 1}))
    assert ridge.components["service"]["params"]["solver"] == "auto"
    assert not np.array_equal(ridge.artifacts["target_lists"][~members], tight.artifacts["target_lists"][~members])
    assert np.array_equal(ridge.artifacts["target_lists"],
                          run_attack(AttackConfig(**base, service_params={"solver": "ridge"})).artifacts["target_lists"])
    with pytest.raises(MiarsError, match="steps"):
        run_attack(AttackConfig(**base, service_params={"steps": 0}))


def test_foldin_can_serve_members_like_new_accounts_and_reports_how_far_their_lists_move(small_dataset):
    base = dict(dataset=str(small_dataset), top_k=10, service="foldin", **FAST)
    lfm = dict(target="lfm", shadow="lfm", target_params={"epochs": 5}, shadow_params={"epochs": 5})
    trained = run_attack(AttackConfig(**base, **lfm))
    folded = run_attack(AttackConfig(**base, **lfm, service_params={"members": "foldin"}))
    m = trained.artifacts["split"].target.is_member
    t_lists, f_lists = trained.artifacts["target_lists"], folded.artifacts["target_lists"]
    assert np.array_equal(t_lists[~m], f_lists[~m])  # non-members: the same fold-in either way
    kept = (t_lists[m][:, :, None] == f_lists[m][:, None, :]).any(axis=2).mean()
    report = folded.recommenders["target"]
    assert report["members_served"] == "foldin" and report["members_foldin_overlap"] == pytest.approx(kept, abs=1e-4)
    assert 0 < kept < 1  # BPR: a folded-in vector is not the trained one
    assert "members_foldin_overlap" not in trained.recommenders["target"]
    # item-kNN scores a member's row and a folded-in history the same way (its mechanism gap is zero), and a member
    # served by fold-in gets exactly what a fresh account with the member's history gets through query access
    from miars_core.engine.stages import Cell

    config = AttackConfig(dataset=str(small_dataset), top_k=10, service="foldin", target="item",
                          service_params={"members": "foldin"}, attack="query-recall")
    cell = Cell(config, get_plugins())
    part = cell.part("target")
    lists = cell.lists("target", False)
    assert np.array_equal(cell.access("target", False).recommend(part.members.matrix), lists[part.is_member])
    assert cell.served("target").meta["report"]["members_foldin_overlap"] == 1.0
    with pytest.raises(MiarsError, match="members"):
        run_attack(AttackConfig(**base, target="item", service_params={"members": "new"}))


# -- fold-in solvers (issue 15) ---------------------------------------------------------------------------------------
def _bpr_side(seed: int = 0, n_items: int = 15, dim: int = 4):
    """A BPR item side over 12 of ``n_items`` catalogue columns (3 columns the model never saw), random factors."""
    import torch

    from miars_recbole.foldin import ItemSide

    rng = np.random.default_rng(seed)
    cols = np.sort(rng.choice(n_items, 12, replace=False))
    v = torch.from_numpy(rng.normal(size=(13, dim)).astype(np.float32))  # row 0: RecBole's padding
    return ItemSide("bpr", v, np.concatenate([[0], cols]), n_items)


def _histories(seed: int = 1, n: int = 9, n_items: int = 15):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    h = (rng.random((n, n_items)) < 0.3).astype(np.float32)
    h[0] = 0  # an empty account
    return sp.csr_matrix(h)


def test_ridge_foldin_equals_a_direct_least_squares_solve_per_account():
    from miars_recbole.foldin import FoldInModel, foldin_scorer

    side, h = _bpr_side(), _histories()
    reg = 0.7
    scores = foldin_scorer(side, h, solver="ridge", reg=reg)(np.arange(h.shape[0])).numpy()
    vi = side.table.numpy()[1:].astype(np.float64)
    lam = reg * np.trace(vi.T @ vi) / vi.shape[1]
    known = side.item_cols[1:]
    unknown = np.setdiff1d(np.arange(side.n_items), known)
    for a in range(h.shape[0]):  # the reference: one least-squares problem per account, [V; sqrt(lam) I] u = [x; 0]
        x = h[a].toarray().ravel()[known]
        u = np.linalg.lstsq(np.vstack([vi, np.sqrt(lam) * np.eye(vi.shape[1])]),
                            np.concatenate([x, np.zeros(vi.shape[1])]), rcond=None)[0]
        assert np.allclose(scores[a, known], vi @ u, atol=1e-5)
        assert np.isneginf(scores[a, unknown]).all()  # items the model never saw cannot be scored
    assert np.allclose(scores[0, known], 0)  # an empty history: nothing to regress
    # batch sizes: the lists do not depend on how many accounts are scored (or solved) together
    lists = FoldInModel(side, score_batch_size=1).recommend_for(h, 3, solver="ridge", reg=reg)
    assert np.array_equal(lists, FoldInModel(side, score_batch_size=1000).recommend_for(h, 3, solver="ridge", reg=reg))
    assert np.array_equal(lists[4:], FoldInModel(side).recommend_for(h[4:], 3, solver="ridge", reg=reg))
    direct = np.where(h.toarray() > 0, -np.inf, scores)
    full = np.array([len(np.unique(row[np.isfinite(row)])) >= 4 for row in direct])  # distinct scores: no ties
    assert full.sum() >= 5 and np.array_equal(lists[full], np.argsort(-direct, axis=1)[full, :3])
    # auto is the closed form for BPR; the default penalty is the service's
    assert np.array_equal(FoldInModel(side).recommend_for(h, 3), FoldInModel(side).recommend_for(h, 3, solver="ridge"))


def test_gradient_foldin_does_not_depend_on_how_accounts_are_chunked():
    import scipy.sparse as sp

    from miars_recbole.foldin import _bpr_user_vectors

    side, h = _bpr_side(), _histories(n=20)
    h_rb = sp.csr_matrix(h[:, side.item_cols[1:]].toarray())
    h_rb = sp.csr_matrix(sp.hstack([sp.csr_matrix((h.shape[0], 1)), h_rb]))  # column 0: padding
    one = _bpr_user_vectors(h_rb, side.table, seed=3, steps=7, lr=0.05, max_pairs=1 << 16).numpy()
    for chunk in (1, 5, 17):  # one account at a time, a few, many
        assert np.allclose(_bpr_user_vectors(h_rb, side.table, 3, 7, 0.05, max_pairs=chunk).numpy(), one, atol=1e-6)
    assert not np.allclose(_bpr_user_vectors(h_rb, side.table, 4, 7, 0.05).numpy(), one)  # the seed draws the negatives
    assert np.array_equal(one, _bpr_user_vectors(h_rb, side.table, 3, 7, 0.05).numpy())  # same seed, same vectors


def test_neumf_gradient_foldin_does_not_depend_on_the_chunk_size(small_dataset):
    from miars_core.contracts.types import Interactions
    from miars_recbole.foldin import ItemSide, foldin_scorer

    result = get_plugins().create("recommender", "ncf", epochs=1)
    data = run_attack(AttackConfig(dataset=str(small_dataset), target="pop", top_k=10, **FAST)).artifacts["split"].target
    known = data.interactions.matrix
    result.fit(Interactions(known[data.is_member], data.interactions.user_ids[data.is_member], data.interactions.item_ids))
    side = ItemSide.of(result.model_)
    others = known[~data.is_member][:12]
    whole = foldin_scorer(side, others, seed=2, steps=5, max_pairs=1 << 16)(np.arange(12)).numpy()
    chunked = foldin_scorer(side, others, seed=2, steps=5, max_pairs=40)(np.arange(12)).numpy()
    assert np.isfinite(whole).any() and np.allclose(whole, chunked, atol=1e-5)
    with pytest.raises(MiarsError, match="solver=ridge.*no closed-form fold-in.*solver=gradient"):
        foldin_scorer(side, others, solver="ridge")


def test_foldin_refuses_bad_solvers_and_non_finite_factors():
    import torch

    from miars_recbole.foldin import FoldInModel, ItemSide

    side, h = _bpr_side(), _histories()
    with pytest.raises(MiarsError, match="solver 'newton' is unknown; allowed: auto, ridge, gradient"):
        FoldInModel(side).recommend_for(h, 3, solver="newton")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(MiarsError, match="reg must be a finite number > 0"):
            FoldInModel(side).recommend_for(h, 3, solver="ridge", reg=bad)
    v = side.table.clone()
    v[3, 1] = float("nan")
    broken = ItemSide("bpr", v, side.item_cols, side.n_items)
    with pytest.raises(MiarsError, match="non-finite"):
        FoldInModel(broken).recommend_for(h, 3, solver="ridge")
    with pytest.raises(MiarsError, match="non-finite"):
        FoldInModel(broken).recommend_for(h, 3, solver="gradient")
    assert torch.isfinite(side.table).all()


def test_a_closed_form_foldin_of_a_model_without_one_fails_before_any_work(small_dataset, tmp_path):
    from miars_core.engine.stages import Cell

    ridge = {"solver": "ridge"}
    with pytest.raises(MiarsError, match="solver=ridge: recommender 'ncf' has no closed-form fold-in"):
        Cell(AttackConfig(dataset=str(small_dataset), target="lfm", shadow="ncf", service="foldin",
                          service_params=ridge), get_plugins())  # before any data is read
    for target in ("lfm", "item", "pop"):  # a closed form, or nothing to solve
        Cell(AttackConfig(dataset=str(small_dataset), target=target, service="foldin", service_params=ridge), get_plugins())
    res = CliRunner().invoke(app, ["grid", "--dataset", str(small_dataset), "--target", "lfm,ncf", "--service", "foldin",
                                   "--service-param", "solver=ridge", "-q", "--out", str(tmp_path / "run"),
                                   "--cache", str(tmp_path / "c")])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("miars: error: --service-param solver=ridge")
    assert "'ncf'" in lines[0] and "solver=auto" in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()  # nothing written
    # a third-party recommender that declares no fold-in solver may fold in its own way, but not be asked for ridge
    service = FoldInService(solver="ridge")
    with pytest.raises(MiarsError, match="'mine' has no closed-form fold-in"):
        service.check_recommender(object(), "mine")
    FoldInService().check_recommender(object(), "mine")
