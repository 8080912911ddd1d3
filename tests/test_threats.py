"""Threat models beyond the paper: query access, query attacks and the metric attacks of the field."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import miars_attacks
from miars_attacks.metric import orient_and_threshold
from miars_attacks.query import half_splits, recall_of_lists
from miars_core import cli
from miars_core.cli import app
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.types import Interactions
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.engine.store import DiskStore
from miars_core.kit import checks
from miars_core.science.threat import QueryAccess
from miars_services import FoldInService, PopularService

VIEW_ATTACKS = ("kmeans", "shadow-free", "reference-rec", "query-recall", "interaction")


def test_every_new_attack_is_registered_and_passes_its_conformance_check():
    names = set(get_plugins().registry("attack").names())
    assert set(VIEW_ATTACKS) <= names
    for factory in (miars_attacks.KMeansAttack, miars_attacks.ShadowFree, miars_attacks.ReferenceRec,
                    miars_attacks.QueryRecall, miars_attacks.InteractionQuery):
        checks.check_attack(factory)
        assert "(" in (factory.__doc__ or "").splitlines()[0], f"{factory.__name__} cites its paper on line one"


def test_half_splits_cut_each_history_into_a_query_half_and_the_rest():
    h = sp.random(30, 50, density=0.3, format="csr", random_state=1)
    h.data[:] = 1
    q, t = half_splits(h, 3, seed=7)
    assert q.shape == t.shape == (90, 50)
    counts = np.diff(h.indptr)
    stacked = sp.vstack([h] * 3, format="csr")
    assert (q + t != stacked).nnz == 0  # Q and T are disjoint and cover H
    assert np.array_equal(np.diff(q.indptr), np.tile(counts // 2, 3))
    assert (q[:30] != q[30:60]).nnz > 0  # each query draws a new half
    q2, _ = half_splits(h, 3, seed=7)
    assert (q != q2).nnz == 0  # same seed, same halves
    lists = np.array([[0, 1, 2]])
    held = sp.csr_matrix(np.array([[1, 0, 1, 1] + [0] * 46]), dtype=np.float32)
    assert recall_of_lists(lists, held)[0] == pytest.approx(2 / 3)


def test_orientation_and_threshold_come_from_the_shadow_labels():
    y = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    sign, cut = orient_and_threshold(np.array([-3.0, -2, -1, 1, 2, 3]), y)  # inverted scores
    assert sign == -1.0
    assert ((sign * np.array([-3.0, -2, -1, 1, 2, 3]) - cut > 0) == y).all()


def _access(small, budget=None, defense=None):
    train = Interactions(small.matrix, small.user_ids, small.item_ids)
    return QueryAccess.of(PopularService(), None, train, 5, budget=budget, defense=defense)


@pytest.fixture()
def small(small_dataset):
    return get_plugins().registry("dataset").create("file", path=str(small_dataset)).load(data_dir=None, download=False)


def test_query_access_counts_queries_enforces_its_budget_and_serves_cold_start(small):
    access = _access(small, budget=10)
    h = small.matrix[:4]
    lists = access.recommend(h)
    assert lists.shape == (4, 5) and access.used_ == 4 and access.calls_ == 1
    assert not np.asarray(h[np.repeat(np.arange(4), 5), lists.ravel()]).any()  # never an item the account knows
    empty = access.recommend(sp.csr_matrix((2, small.n_items)))
    popular = np.argsort(-small.item_popularity(), kind="stable")[:5]
    assert (empty == popular).all()  # an empty account gets the popular top-k
    with pytest.raises(MiarsError, match=r"asked the target service 11 queries, over its budget of 10; raise --query-budget"):
        access.recommend(small.matrix[:5])
    assert access.record() == {"budget": 10, "used": 6, "calls": 2}


def test_query_answers_pass_through_the_cells_list_defense(small):
    from miars_defenses.lists import RankShuffle

    plain = _access(small).recommend(small.matrix[:20])
    shuffled = _access(small, defense=RankShuffle()).recommend(small.matrix[:20])
    assert (np.sort(plain, axis=1) == np.sort(shuffled, axis=1)).all() and (plain != shuffled).any()


def test_query_recall_finds_item_knn_members_under_foldin_within_its_budget(small_dataset, tmp_path):
    base = dict(dataset=str(small_dataset), target="item", top_k=10, attack="query-recall")
    foldin = run_attack(AttackConfig(**base, service="foldin"))
    assert foldin.metrics["roc_auc"] > 0.9
    n = foldin.split["target"]["users"]
    record = dict(foldin.queries["attack"])
    assert record.pop("refit_seconds") >= 0.0  # the reference model is fitted inside the attack stage
    assert record == {"per_target_user": 5, "budget": 5 * n, "used": 5 * n, "calls": 1, "target_users": n}
    assert foldin.components["attack"]["params"]["calibration"] == "zreg"
    raw = run_attack(AttackConfig(**base, service="foldin", attack_params={"calibration": "none", "queries": 2}))
    assert raw.queries["attack"]["used"] == 2 * n
    assert not np.array_equal(raw.artifacts["scores"], foldin.artifacts["scores"])
    with pytest.raises(MiarsError, match="over its budget"):
        run_attack(AttackConfig(**base, service="foldin", query_budget=3))
    with pytest.raises(MiarsError, match="--query-budget -1 is out of range; it must be an integer >= 0"):
        AttackConfig(**base, query_budget=-1).validate()


def test_the_mlp_reads_near_chance_under_foldin_where_query_recall_does_not(small_dataset):
    base = dict(dataset=str(small_dataset), target="item", top_k=10, service="foldin")
    mlp = run_attack(AttackConfig(**base, attack_params={"epochs": 50}))
    query = run_attack(AttackConfig(**base, attack="query-recall"))
    assert abs(mlp.metrics["roc_auc"] - 0.5) < 0.15
    assert query.metrics["roc_auc"] - mlp.metrics["roc_auc"] > 0.25


@pytest.mark.parametrize("attack", ["kmeans", "shadow-free", "reference-rec"])
def test_metric_attacks_separate_personalized_from_popular_lists_and_stay_finite_under_foldin(small_dataset, attack):
    base = dict(dataset=str(small_dataset), target="item", top_k=10, attack=attack)
    popular = run_attack(AttackConfig(**base))
    foldin = run_attack(AttackConfig(**base, service="foldin"))
    assert popular.metrics["roc_auc"] > 0.85  # the paper's confound: popular vs personalized lists
    assert foldin.metrics["roc_auc"] < popular.metrics["roc_auc"]
    for r in (popular, foldin):
        assert np.isfinite(r.artifacts["scores"]).all()
    assert (popular.queries is not None) == (attack == "reference-rec")


def test_a_cached_cell_fits_the_recommender_again_for_query_access_and_gets_the_same_scores(small_dataset, tmp_path):
    store = DiskStore(tmp_path / "cache")
    base = dict(dataset=str(small_dataset), target="item", top_k=10, service="foldin")
    run_attack(AttackConfig(**base, attack_params={"epochs": 50}), store=store)  # lists now cached, models not
    cached = run_attack(AttackConfig(**base, attack="query-recall"), store=store)
    assert "shadow_recommender" not in cached.cache["computed"]
    fresh = run_attack(AttackConfig(**base, attack="query-recall"))
    assert np.array_equal(cached.artifacts["scores"], fresh.artifacts["scores"])
    again = run_attack(AttackConfig(**base, attack="query-recall"), store=store)
    assert "attack" in again.cache["cached"] and again.queries == cached.queries


def test_query_attacks_run_as_grid_cells_and_in_bench_defenses(small_dataset, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["grid", "--dataset", str(small_dataset), "--target", "item", "--service", "foldin",
                              "--attack", "query-recall,kmeans", "--top-k", "10", "--query-budget", "5", "--workers", "1",
                              "-q", "--no-report", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    results = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("*/result.json")]
    assert sorted(r["config"]["attack"] for r in results) == ["kmeans", "query-recall"]
    assert [r["queries"]["attack"]["used"] for r in results if r["config"]["attack"] == "query-recall"][0] > 0
    res = runner.invoke(app, ["bench-defenses", "--dataset", str(small_dataset), "--target", "item", "--service", "foldin",
                              "--attack", "query-recall", "--defense", "rank-shuffle", "--defense-param", "window=10",
                              "--seed", "0", "--top-k", "10", "--workers", "1", "-q", "--no-report",
                              "--out", str(tmp_path / "bench"), "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    defended = [json.loads(p.read_text()) for p in (tmp_path / "bench" / "cells").glob("*rank-shuffle*/result.json")]
    assert len(defended) == 1 and set(defended[0]["queries"]) == {"defense_unaware", "defense_aware"}


def test_an_attack_that_needs_what_the_cell_lacks_fails_in_one_line(small_dataset):
    with pytest.raises(MiarsError, match="unknown attack 'nosuch'"):
        run_attack(AttackConfig(dataset=str(small_dataset), attack="nosuch"))
    from miars_core.science.threat import AdversaryView

    view = AdversaryView(histories=sp.csr_matrix((2, 3)), lists=np.zeros((2, 1), dtype=np.int64), k=1)
    with pytest.raises(MiarsError, match="needs item vectors.*center-diff"):
        miars_attacks.ShadowFree().decision_function(view)
    with pytest.raises(MiarsError, match="needs labels"):
        miars_attacks.QueryRecall().fit(view)  # a shadow view always has them; a target view never does
    view.labels = np.array([True, False])
    with pytest.raises(MiarsError, match="needs query"):
        miars_attacks.QueryRecall().fit(view)
    assert FoldInService  # the service every query attack is measured against


def test_interaction_attack_scores_pairs_with_its_own_metrics(small_dataset, tmp_path):
    from miars_core.engine.stages import Cell

    config = AttackConfig(dataset=str(small_dataset), target="item", top_k=10, service="foldin", attack="interaction",
                          utility_holdout=0.2)
    result = run_attack(config)
    report = result.interaction["attack"]
    n = result.split["target"]["users"]
    assert report["pairs"] == 5 * n and result.queries["attack"]["used"] == 5 * n
    assert 0 < report["trained_pairs"] < report["pairs"]
    assert report["all_pairs"]["roc_auc"] > 0.85  # fold-in ItemKNN gives its training pairs back
    # the pairs come from what the adversary sees: never a held-out (future) item, so every member's pair was trained on
    cell = Cell(config, get_plugins())
    pairs = cell.pairs("target")
    target, future = cell.part("target"), cell.future("target")
    assert not np.asarray(future[pairs[:, 0], pairs[:, 1]]).any()
    assert "members_pairs" not in report and report["trained_pairs"] == int(target.is_member[pairs[:, 0]].sum())
    # the labels are the training data, never a non-member's pair: with a data defense some members' pairs are untrained
    defended = AttackConfig(**{**config.__dict__, "defense": "subsample", "defense_params": {"fraction": 0.5}})
    report = run_attack(defended).interaction["defense_aware"]
    assert report["members_pairs"]["untrained_pairs"] > 0 and 0.0 <= report["members_pairs"]["roc_auc"] <= 1.0
    cell = Cell(defended, get_plugins())
    labels = cell.pair_labels("target", True, pairs)
    assert not labels[~target.is_member[pairs[:, 0]]].any()
    train = cell.fitted("target", True).train.matrix
    assert 0 < labels.sum() < target.is_member[pairs[:, 0]].sum()
    assert labels.sum() == sum(train[int(np.flatnonzero(target.is_member).tolist().index(r)), i] > 0
                               for r, i in pairs[labels])


def test_dp_itemknn_folds_in_and_brings_query_recall_toward_chance(small_dataset):
    base = dict(dataset=str(small_dataset), target="item", top_k=10, service="foldin", attack="query-recall")
    plain = run_attack(AttackConfig(**base))
    private = run_attack(AttackConfig(**base, defense="dp-itemknn", defense_params={"epsilon": 0.5}))
    assert plain.metrics["roc_auc"] > 0.9
    assert private.metrics["roc_auc"] < plain.metrics["roc_auc"] - 0.2
    assert private.recommenders["target"]["privacy"]["epsilon"] == 0.5


def test_zreg_calibration_standardizes_the_recall_of_shadow_non_members():
    class Shuffled:  # a service that serves random unknown items: its recall differs from the reference's
        def serve_others(self, fitted, train, histories, k, seed=0):
            from miars_core.science.ranking import top_k_excluding

            scores = np.random.default_rng(seed).random(histories.shape).astype(np.float32)
            return top_k_excluding(scores, sp.csr_matrix(histories), k)

    shadow, target, _ = checks._views()
    train = Interactions(shadow.histories, np.arange(shadow.n_users), np.arange(shadow.histories.shape[1]))
    shadow.query = QueryAccess.of(Shuffled(), None, train, shadow.k)
    attack = miars_attacks.QueryRecall(calibration="zreg").fit(shadow, seed=3)
    raw = attack._raw(shadow, 3)
    out = ~shadow.labels
    assert abs(raw[out].mean()) < 1e-6 and raw[out].std() == pytest.approx(1.0, rel=1e-3)
    plain = miars_attacks.QueryRecall(calibration="reference").fit(shadow, seed=3)
    assert attack.coef_.shape == (4,) and not hasattr(plain, "coef_")


def test_query_recall_averages_its_reference_models_each_asked_the_same_queries():
    shadow, _, _ = checks._views()
    asked = []
    make = shadow.reference

    def reference(index=0):
        access = make(index)
        asked.append((index, access))
        return access

    shadow.reference = reference
    miars_attacks.QueryRecall(calibration="reference", references=3, queries=2).fit(shadow, seed=0)
    assert [i for i, _ in asked] == [0, 1, 2]
    assert all(a.used_ == 2 * shadow.n_users for _, a in asked)


def test_each_reference_index_is_its_own_model(small_dataset):
    from miars_core.engine.stages import Cell

    cell = Cell(AttackConfig(dataset=str(small_dataset), target="item", top_k=10, service="foldin",
                             attack="query-recall"), get_plugins())
    first, again, other = cell.reference_access("target"), cell.reference_access("target", 0), cell.reference_access("target", 1)
    assert first is again and other is not first
    h = cell.part("target").interactions.matrix[:50]
    assert (first.recommend(h) != other.recommend(h)).any()  # another sample of the adversary's data, another model


def _docs_plugin(marker: str) -> tuple[types.ModuleType, str]:
    """The plugin guide's example block holding ``marker``, loaded as a plugin module (the docs are the test), and its text."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if marker in b)
    module = types.ModuleType("docs_plugin")
    exec(compile(block, "docs/plugins.md", "exec"), module.__dict__)
    return module, block


def test_a_query_attack_written_like_the_docs_example_runs_at_one_query_per_target_user(small_dataset, monkeypatch):
    module, block = _docs_plugin("class EvenOdd")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # the engine hashes a component's package
    assert "return self.decision_function(view) > 0" in block  # its predict scores (and queries) again
    plugins = get_plugins(extra=[module])
    result = run_attack(AttackConfig(dataset=str(small_dataset), target="item", top_k=10, service="foldin",
                                     attack="even-odd", query_budget=1), plugins=plugins)
    n = result.split["target"]["users"]
    record = result.queries["attack"]
    assert (record["budget"], record["used"], record["calls"]) == (n, n, 1)  # scored once: one query per user
    assert result.metrics["roc_auc"] > 0.6
    scores = result.artifacts["scores"]
    y = result.artifacts["split"].target.is_member
    assert result.metrics["recall"] == pytest.approx((scores[y] > 0).mean())  # the engine's predictions: score > 0


def test_predictions_follow_the_attacks_decision_threshold(small_dataset):
    from miars_core.contracts.components import Component
    from miars_core.contracts.hookspecs import hookimpl
    from miars_core.engine.stages import Cell

    class MedianCut(Component):
        """Logistic regression with a cut kept outside its scores (example)."""

        def __init__(self, cut: float = 0.0):
            self.cut = cut

        def fit(self, X, y, seed=0):
            from sklearn.linear_model import LogisticRegression

            self.model_ = LogisticRegression(random_state=seed).fit(X, np.asarray(y).astype(bool))
            self.decision_threshold_ = float(self.cut)
            return self

        def decision_function(self, X):
            return self.model_.decision_function(X).astype(np.float64)

        def predict(self, X):
            return self.decision_function(X) > self.decision_threshold_

    checks.check_attack(MedianCut)
    checks.check_attack(MedianCut, cut=0.7)
    module = types.ModuleType("median_cut")
    module.register_attacks = hookimpl(lambda register: register("median-cut", MedianCut))
    plugins = get_plugins(extra=[module])

    def outcome(cut):
        config = AttackConfig(dataset=str(small_dataset), target="item", top_k=10, attack="median-cut",
                              attack_params={"cut": cut})
        out = Cell(config, plugins).attack_scores(False).arrays
        return out["scores"], out["predicted"]

    scores, predicted = outcome(0.0)
    assert np.array_equal(predicted, scores > 0)
    cut = float(np.median(scores))
    again, predicted = outcome(cut)
    assert np.array_equal(again, scores) and np.array_equal(predicted, scores > cut) and 0 < predicted.mean() < 1
    assert not np.array_equal(predicted, scores > 0)

    class Disagrees(MedianCut):
        """predict ignores the threshold the engine uses."""

        def predict(self, X):
            return self.decision_function(X) > 0

    with pytest.raises(AssertionError, match="predict differs from decision_function > "):
        checks.check_attack(Disagrees, cut=0.7)

    class BadThreshold(MedianCut):
        """A threshold that is no number."""

        def fit(self, X, y, seed=0):
            super().fit(X, y, seed)
            self.decision_threshold_ = float("nan")
            return self

    with pytest.raises(AssertionError, match="decision_threshold_=nan"):
        checks.check_attack(BadThreshold)


@pytest.mark.parametrize("command", ["attack", "grid", "bench-defenses"])
def test_a_query_attack_with_a_zero_budget_is_refused_before_any_work(small_dataset, tmp_path, command):
    out = tmp_path / "out"
    common = ["--dataset", str(small_dataset), "--target", "item", "--attack", "query-recall", "--query-budget", "0",
              "--top-k", "10", "--out", str(out), "--cache", str(tmp_path / "cache")]
    if command == "attack":
        res = CliRunner().invoke(cli._attack_app(), common + ["--service", "foldin"])
    else:
        extra = ["--defense", "rank-shuffle"] if command == "bench-defenses" else []
        res = CliRunner().invoke(app, [command, *common, "--service", "foldin", "--workers", "1", "-q", *extra])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("miars: error: --query-budget 0: attack 'query-recall' queries")
    assert "--query-budget >= 1" in lines[0]
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing written
    with pytest.raises(MiarsError, match="--query-budget 0"):
        run_attack(AttackConfig(dataset=str(small_dataset), attack="query-recall", query_budget=0))
    assert run_attack(AttackConfig(dataset=str(small_dataset), target="item", top_k=10, query_budget=0,
                                   attack_params={"epochs": 5})).queries is None  # a features attack needs no budget
