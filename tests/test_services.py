"""Service models: the paper's popular service and fold-in, where everyone gets personalized lists."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import miars_services
from miars_core import checks
from miars_core.cli import app
from miars_core.errors import MiarsError
from miars_core.pipeline import AttackConfig, run_attack
from miars_core.plugins import get_plugins
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
    from miars_core.stages import Cell

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
    from miars_core.types import Interactions

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
                                                     "solver": "gradient", "reg": 10.0}
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
    from miars_core.stages import Cell

    config = AttackConfig(dataset=str(small_dataset), top_k=10, service="foldin", target="item",
                          service_params={"members": "foldin"}, attack="query-recall")
    cell = Cell(config, get_plugins())
    part = cell.part("target")
    lists = cell.lists("target", False)
    assert np.array_equal(cell.access("target", False).recommend(part.members.matrix), lists[part.is_member])
    assert cell.served("target").meta["report"]["members_foldin_overlap"] == 1.0
    with pytest.raises(MiarsError, match="members"):
        run_attack(AttackConfig(**base, target="item", service_params={"members": "new"}))
