"""Real-data end-to-end runs: the default job, the paper's same-algorithm pairs on MovieLens-1M."""

from __future__ import annotations

from pathlib import Path

import pytest

from miars_core.engine.pipeline import AttackConfig, run_attack

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML1M_PAIRS = SHARED / "movielens-1m" / "ml-1m-pairs.tsv.gz"
needs_ml1m = pytest.mark.skipif(not ML1M_PAIRS.exists(), reason=f"{ML1M_PAIRS} not present")


def test_default_run_reaches_the_target_and_is_reproducible():
    first = run_attack(AttackConfig())
    assert first.config.dataset == "ml-100k" and first.config.target == "item"
    assert first.metrics["roc_auc"] >= 0.80
    assert first.split["target"]["members"] == first.split["target"]["non_members"]
    assert run_attack(AttackConfig()).metrics == first.metrics


def test_popularity_target_leaks_nothing():
    # Members and non-members get the same kind of list: the attack must read chance.
    result = run_attack(AttackConfig(target="pop", shadow="pop"))
    assert 0.35 <= result.metrics["roc_auc"] <= 0.65


def test_neumf_target_attacked_with_an_lfm_shadow_on_ml100k():
    result = run_attack(AttackConfig(target="recbole:NeuMF", shadow="lfm"))
    assert result.recommenders["target"]["fit_info"]["recbole_model"] == "NeuMF"
    info = result.recommenders["target"]["fit_info"]
    assert info["epochs"] == "auto" and info["epochs_run"] == info["chosen_epochs"] >= 1 and info["curve"]
    assert result.metrics["roc_auc"] >= 0.75


def test_popularity_randomization_reports_both_attackers():
    result = run_attack(AttackConfig(defense="popularity-randomization"))
    aware = result.attackers["defense_aware"]
    unaware = result.attackers["defense_unaware"]
    assert result.metrics == aware
    # The paper's (unaware) attacker is fooled, even inverted; one who knows the defense is not.
    assert unaware["balanced_accuracy"] < 0.6
    assert aware["roc_auc"] > 0.8


@needs_ml1m
@pytest.mark.parametrize(
    "pair",
    ["item", pytest.param("lfm", marks=pytest.mark.slow), pytest.param("ncf", marks=pytest.mark.slow)],
)
def test_ml1m_same_algorithm_pairs_reach_roc_auc_090(pair):
    result = run_attack(AttackConfig(dataset=str(ML1M_PAIRS), target=pair, shadow=pair))
    assert result.split["dataset"] == {"users": 6040, "items": 3706, "interactions": 1_000_209}
    assert result.metrics["roc_auc"] >= 0.90
    assert result.recommenders["target"]["members_popular_overlap"] < 0.9
