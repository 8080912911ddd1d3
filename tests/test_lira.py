"""LiRA (Carlini et al., S&P 2022) as a query attack: the per-user likelihood-ratio test, offline and online.

The score function is checked on planted statistics (per-user vs global variance, a planted gap
found, no gap read as chance); the attack end to end on small synthetic data against a planted
leaky recommender (co-occurrence counts that keep the members' pairs) and a no-signal control (a
recommender that ignores its training data); bad input fails in one line before any work;
reference models are stored and shared with query-recall.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import miars_attacks
from miars_attacks.lira import PER_USER_MIN, lira_scores
from miars_core import cli
from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.state import csr_arrays, csr_from_arrays
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.engine.stages import Cell
from miars_core.engine.store import DiskStore
from miars_core.kit import checks
from miars_core.science.ranking import top_k_excluding
from miars_core.science.threat import online_rows

FITS: list[int] = []


class Memo(Component):
    """Planted leak: a new account's scores are its history x the members' item co-occurrence counts."""

    def __init__(self, shrink: float = 1.0):
        self.shrink = shrink

    def fit(self, train, seed=0):
        FITS.append(train.n_users)
        x = sp.csr_matrix(train.matrix, dtype=np.float32)
        self.w_ = sp.csr_matrix(x.T @ x) / np.float32(self.shrink)
        self.train_ = x
        return self

    def recommend(self, k):
        return top_k_excluding(lambda rows: np.asarray((self.train_[rows] @ self.w_).todense()), self.train_, k)

    def recommend_for(self, histories, k, seed=0, **fit):
        h = sp.csr_matrix(histories, dtype=np.float32)
        return top_k_excluding(lambda rows: np.asarray((h[rows] @ self.w_).todense()), h, k)

    def get_state(self):
        return {**csr_arrays("w", self.w_), **csr_arrays("train", self.train_)}, {"shape": list(self.train_.shape)}

    def set_state(self, arrays, record):
        n_users, n_items = record["shape"]
        self.w_ = csr_from_arrays(arrays, "w", (n_items, n_items))
        self.train_ = csr_from_arrays(arrays, "train", (n_users, n_items))
        return self


class Blind(Memo):
    """No-signal control: scores every item by noise drawn from its fit seed, whatever it was trained on."""

    def fit(self, train, seed=0):
        super().fit(train, seed)
        self.noise_ = np.random.default_rng(seed).random(train.matrix.shape[1]).astype(np.float32)
        return self

    def recommend_for(self, histories, k, seed=0, **fit):
        h = sp.csr_matrix(histories, dtype=np.float32)
        return top_k_excluding(lambda rows: np.broadcast_to(self.noise_, (len(rows), h.shape[1])).copy(), h, k)

    get_state = None  # type: ignore[assignment]
    set_state = None  # type: ignore[assignment]


def _plugins():
    module = types.ModuleType("test_lira_plugin")

    @hookimpl
    def register_recommenders(register):
        register("memo", Memo)
        register("blind", Blind)

    module.register_recommenders = register_recommenders
    return get_plugins(extra=[module])


def _config(dataset, **kw) -> AttackConfig:
    base = dict(dataset=str(dataset), target="memo", top_k=10, service="foldin", attack="lira",
                attack_params={"references": 4, "queries": 2})
    base.update(kw)
    return AttackConfig(**base)


# -- the score function on planted statistics ---------------------------------------------------
def _planted(n=400, r=64, seed=0):
    """Users with reference statistics of very different spread; members sit 0.1 above their mean."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.2, 0.6, n)
    sd = np.where(np.arange(n) % 2 == 0, 0.01, 0.3)  # half the users are tight, half very noisy
    ref = mu + sd * rng.normal(size=(r, n))
    member = rng.random(n) < 0.5
    x = mu + sd * rng.normal(size=n) + np.where(member, 0.1, 0.0)
    return x, ref, member


def test_offline_per_user_variance_beats_the_global_one_when_spreads_differ():
    x, ref, member = _planted()
    own = roc_auc_score(member, lira_scores(x, ref, variance="per-user"))
    pooled = roc_auc_score(member, lira_scores(x, ref, variance="global"))
    assert own > 0.75 and pooled < own - 0.05  # the noisy users' non-members drown the tight users' members
    assert np.array_equal(lira_scores(x, ref, variance="auto"), lira_scores(x, ref, variance="per-user"))
    few = ref[: PER_USER_MIN - 1]  # too few references for a user's own variance: auto falls back to the global
    assert np.array_equal(lira_scores(x, few, variance="auto"), lira_scores(x, few, variance="global"))
    # one reference: the global variance is one constant, so the ranking is the plain difference x - reference
    one = lira_scores(x, ref[:1])
    assert np.array_equal(np.argsort(one, kind="stable"), np.argsort(x - ref[0], kind="stable"))


def test_offline_score_is_the_z_score_under_the_users_reference_gaussian():
    ref = np.array([[0.1, 0.5], [0.3, 0.5], [0.2, 0.8]] * 6)  # 18 references: each user's own variance
    x = np.array([0.4, 0.6])
    z = lira_scores(x, ref, variance="per-user")
    assert z == pytest.approx((x - ref.mean(0)) / ref.std(0, ddof=1))


def test_online_likelihood_ratio_finds_a_planted_gap_and_reads_chance_without_one():
    rng = np.random.default_rng(1)
    n, r = 300, 16
    inside = np.array([np.isin(np.arange(n), online_rows(n, 7, i)) for i in range(r)])
    assert (inside.sum(0) == r // 2).all()  # complementary pairs: every user is in exactly half of the models
    member = rng.random(n) < 0.5
    mu = rng.uniform(0.1, 0.5, n)
    for gap, low, high in ((0.15, 0.9, 1.0), (0.0, 0.4, 0.6)):
        ref = mu + np.where(inside, gap, 0.0) + 0.05 * rng.normal(size=(r, n))
        x = mu + np.where(member, gap, 0.0) + 0.05 * rng.normal(size=n)
        for variance in ("global", "per-user"):
            auc = roc_auc_score(member, lira_scores(x, ref, inside, variance=variance))
            assert low <= auc <= high, (gap, variance, auc)
    scores = lira_scores(x, ref, inside)
    assert np.isfinite(scores).all()


def test_online_users_without_an_in_model_borrow_the_mean_gap():
    ref = np.array([[0.5, 0.2, 0.9], [0.3, 0.2, 0.7]])
    inside = np.array([[True, False, True], [False, False, False]])  # the middle user was never in
    scores = lira_scores(np.array([0.5, 0.4, 0.9]), ref, inside, variance="global")
    assert np.isfinite(scores).all() and scores[1] > 0  # 0.4 is nearer her borrowed in-mean 0.2 + 0.2 than 0.2
    with pytest.raises(MiarsError, match="references >= 2"):
        lira_scores(np.zeros(3), ref[:1], np.zeros((1, 3), dtype=bool))


def test_lira_passes_its_conformance_check_and_cites_its_paper():
    checks.check_attack(miars_attacks.LiRA)
    checks.check_attack(miars_attacks.LiRA, references=2, variance="global")
    doc = miars_attacks.LiRA.__doc__ or ""
    assert "(Carlini et al., S&P 2022)" in doc.splitlines()[0] and "First Principles" in doc
    assert "lira" in get_plugins().registry("attack").names()


# -- end to end on synthetic data -----------------------------------------------------------------
def test_a_planted_leak_is_detected_and_a_blind_recommender_reads_chance(small_dataset):
    plugins = _plugins()
    for online in (False, True):
        params = {"references": 4, "queries": 2, "online": online}
        leak = run_attack(_config(small_dataset, attack_params=params), plugins=plugins)
        blind = run_attack(_config(small_dataset, target="blind", attack_params=params), plugins=plugins)
        assert leak.metrics["roc_auc"] > 0.9, (online, leak.metrics)
        assert abs(blind.metrics["roc_auc"] - 0.5) < 0.12, (online, blind.metrics)
        n = leak.split["target"]["users"]
        assert leak.queries["used"] == 2 * n  # the target is asked `queries` per user, once


def test_online_reference_models_train_on_complementary_halves_of_the_candidates(small_dataset):
    cell = Cell(_config(small_dataset, attack_params={"online": True, "references": 2}), _plugins())
    refs = cell.online_references("target")
    n = cell.part("target").interactions.n_users
    a, b = refs.trained(0), refs.trained(1)
    assert a.sum() == b.sum() == n // 2 and not (a & b).any() and (a | b).all()
    assert not np.array_equal(a, cell.part("target").is_member)  # a draw of the adversary's, not the members
    FITS.clear()
    refs(0), refs(1), refs(0)
    assert FITS == [n // 2, n // 2]  # each trained once, on half of the candidates


def test_reference_models_are_stored_and_shared_with_query_recall(small_dataset, tmp_path):
    plugins = _plugins()
    FITS.clear()
    run_attack(_config(small_dataset, attack="query-recall", attack_params={"queries": 2}), plugins=plugins,
               store=DiskStore(tmp_path))
    assert len(FITS) == 2 + 3  # shadow, target, query-recall's 3 reference models
    FITS.clear()
    first = run_attack(_config(small_dataset, attack_params={"references": 5, "queries": 2}), plugins=plugins,
                       store=DiskStore(tmp_path))
    assert len(FITS) == 2  # references 3 and 4 only: 0-2 are query-recall's
    FITS.clear()
    online = run_attack(_config(small_dataset, attack_params={"references": 4, "queries": 2, "online": True}),
                        plugins=plugins, store=DiskStore(tmp_path))
    assert len(FITS) == 4 and online.timings["reference_models"] > 0
    FITS.clear()
    again = run_attack(_config(small_dataset, attack_params={"references": 4, "queries": 2, "online": True}),
                       plugins=plugins, store=DiskStore(tmp_path))
    assert FITS == [] and again.metrics == online.metrics
    assert again.timings["reference_models"] == online.timings["reference_models"]
    assert first.timings["reference_models"] > 0


def test_the_online_view_reaches_no_labels_nor_the_members_training_data(small_dataset):
    from miars_core.engine.graph import Walker
    from miars_core.contracts.types import Part, Split
    from miars_core.science.service import Fitted, Served

    cell = Cell(AttackConfig(dataset=str(small_dataset), target="item", top_k=10, service="foldin", attack="lira",
                             attack_params={"online": True, "references": 2}), get_plugins())
    view = cell.view("target", False, cell.features("target", False), "queries")
    for i in (0, 1):
        view.online_reference(i).recommend(view.histories[:5])
        view.online_reference.trained(i)
    served = cell.fitted("target")
    checks.check_isolation(view, is_member=cell.part("target").is_member, train=served.train.matrix,
                           forbidden=[cell, served, served.model, cell.split("target"), cell.part("target")],
                           forbidden_types=(Cell, Walker, Part, Split, Served, Fitted))


# -- bad input: one line, before any work -----------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--attack-param", "references=0"], "references"),
    (["--attack-param", "online=true", "--attack-param", "references=1"], "online=true needs references >= 2"),
    (["--attack-param", "queries=5", "--query-budget", "3"], "--query-budget 3: attack 'lira' asks 5 queries per target user"),
    (["--attack-param", "online=true", "--query-budget", "4"], "--query-budget 4: attack 'lira' asks 5 queries"),
])
def test_bad_input_is_one_line_before_any_work(small_dataset, tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli._attack_app(), ["--dataset", str(small_dataset), "--target", "item", "--service",
                                                    "foldin", "--attack", "lira", "--top-k", "10", "--out", str(out),
                                                    "--cache", str(tmp_path / "cache"), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("miars: error:") and message in lines[0], lines
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing written
