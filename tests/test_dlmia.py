"""DL-MIA (Wang et al., KDD'22): the disentangled encoder, the weight estimator, the transductive attack."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from miars_attacks import DLMIA, MLPAttack
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.kit import checks

FAST = dict(latent=8, vae_epochs=100, classifier_epochs=200, joint_epochs=50)


def shifted_parts(seed: int, n: int = 600, d: int = 12):
    """Shadow and target rows whose membership is dimension 0; the target's recommender adds +1.5 to dimensions 1-3."""
    rng = np.random.default_rng(seed)

    def part(shift: float):
        y = rng.random(n) < 0.5
        X = rng.normal(size=(n, d)).astype(np.float32)
        X[:, 0] += np.where(y, 1.0, -1.0)
        X[:, 1:4] += shift
        return X, y

    return (*part(0.0), *part(1.5))


def test_dl_mia_is_registered_cites_its_paper_and_passes_the_attack_conformance_check():
    assert get_plugins().registry("attack").get("dl-mia").factory is DLMIA
    assert "KDD'22" in DLMIA.__doc__.splitlines()[0]
    checks.check_attack(DLMIA, **FAST)


def test_with_only_the_raw_head_and_no_joint_training_it_is_exactly_the_mlp():
    Xs, ys, Xt, _ = shifted_parts(0)
    mlp = MLPAttack().fit(Xs, ys, seed=3).decision_function(Xt)
    plain = DLMIA(mix=[1, 0, 0], joint_epochs=0).fit(Xs, ys, seed=3).decision_function(Xt)
    assert np.array_equal(plain, mlp)


def test_the_invariant_code_loses_the_recommender_gap_and_the_specific_code_keeps_it():
    Xs, ys, Xt, _ = shifted_parts(1)
    aligned = DLMIA(**FAST).fit(Xs, ys, seed=0)
    aligned.decision_function(Xt)
    assert aligned.domain_accuracy_["invariant"] < 0.6  # a linear probe cannot tell shadow from target by y
    assert aligned.domain_accuracy_["specific"] > 0.8
    y, z = aligned.encode(np.r_[Xs, Xt])
    assert y.shape == z.shape == (len(Xs) + len(Xt), 8)
    plain = DLMIA(**FAST, domain_weight=0.0).fit(Xs, ys, seed=0)
    plain.decision_function(Xt)
    assert plain.domain_accuracy_["invariant"] > 0.75  # without the alignment y keeps the gap


def test_debiasing_beats_the_mlp_when_the_target_recommender_shifts_the_difference_vectors():
    gains = []
    for seed in range(3):
        Xs, ys, Xt, yt = shifted_parts(seed)
        mlp = roc_auc_score(yt, MLPAttack().fit(Xs, ys, seed=0).decision_function(Xt))
        dl = roc_auc_score(yt, DLMIA(**FAST).fit(Xs, ys, seed=0).decision_function(Xt))
        gains.append(dl - mlp)
    assert np.mean(gains) > 0.02 and min(gains) > 0.0


def test_truth_level_weights_lie_in_their_range_and_switching_parts_off_changes_the_scores():
    Xs, ys, Xt, _ = shifted_parts(2)
    full = DLMIA(**FAST).fit(Xs, ys, seed=0)
    scores = full.decision_function(Xt)
    assert full.weights_.shape == (len(Xs) + len(Xt),)
    assert full.weights_.min() >= 0.05 - 1e-7 and full.weights_.max() <= 1.0
    assert full.weights_.std() > 0  # users are not all trusted alike
    assert np.array_equal(full.decision_function(Xt), scores)  # transductive, yet the same rows give the same scores
    unweighted = DLMIA(**FAST, reweight=False).fit(Xs, ys, seed=0)
    other = unweighted.decision_function(Xt)
    assert np.ptp(unweighted.weights_) == 0  # the estimator off: every user keeps the same weight
    assert not np.array_equal(other, scores)
    no_pseudo = DLMIA(**FAST, pseudo_weight=0.0).fit(Xs, ys, seed=0).decision_function(Xt)
    assert not np.array_equal(no_pseudo, scores)


def test_bad_parameters_and_calls_are_refused_in_one_line():
    registry = get_plugins().registry("attack")
    for mix, says in (([0, 0, 0], "sums to 0"), ([1, 0], "not a list of three weights"), ([1, -1, 0], "not a number >= 0")):
        with pytest.raises(MiarsError, match=says) as err:
            registry.create("dl-mia", mix=mix)
        assert "\n" not in str(err.value) and "raw, invariant and specific" in str(err.value)
    with pytest.raises(MiarsError, match="latent"):
        registry.create("dl-mia", latent=0)
    with pytest.raises(MiarsError, match="call fit"):
        DLMIA().decision_function(np.zeros((3, 4), np.float32))
    Xs, ys, _, _ = shifted_parts(0, n=40)
    with pytest.raises(MiarsError, match="at least 2 target users"):
        DLMIA(**FAST).fit(Xs, ys).decision_function(Xs[:1])


def test_dl_mia_runs_as_a_cell_and_is_recorded(small_dataset):
    base = dict(dataset=str(small_dataset), target="item", top_k=10, attack="dl-mia",
                attack_params={"latent": 8, "vae_epochs": 50, "classifier_epochs": 150, "joint_epochs": 30})
    popular = run_attack(AttackConfig(**base))
    assert popular.metrics["roc_auc"] > 0.85  # the paper's service: personalised vs popular lists
    assert popular.components["attack"]["name"] == "dl-mia"
    foldin = run_attack(AttackConfig(**base, service="foldin"))
    assert abs(foldin.metrics["roc_auc"] - 0.5) < 0.15  # no debiasing makes the list features carry membership


def test_an_attack_record_reaches_result_json_and_a_bad_one_is_refused(small_dataset, tmp_path):
    import json

    from miars_core.engine.schema import validate
    from miars_core.engine.stages import _plain_record

    base = dict(dataset=str(small_dataset), target="item", top_k=10, attack="dl-mia",
                attack_params={"latent": 8, "vae_epochs": 50, "classifier_epochs": 150, "joint_epochs": 30})
    result = run_attack(AttackConfig(**base))
    record = result.to_json()["attack_record"]["attack"]
    assert set(record) == {"domain_probe_invariant", "domain_probe_specific", "mean_weight_shadow",
                           "mean_weight_target", "low_weight_share", "target_called_members"}
    assert 0.05 <= record["mean_weight_target"] <= 1.0 and 0.0 <= record["target_called_members"] <= 1.0
    validate(json.loads(json.dumps(result.to_json())))
    assert "attack_record" not in run_attack(AttackConfig(**{**base, "attack": "mlp", "attack_params": {}})).to_json()

    class Loud:
        record_ = {"probe": float("nan")}

    with pytest.raises(MiarsError, match=r"attack 'loud' has record_=.*finite number"):
        _plain_record(Loud(), "loud", "record_")
    Loud.record_ = {"lists": [1, 2]}
    with pytest.raises(MiarsError, match="plain values"):
        _plain_record(Loud(), "loud", "record_")


def test_the_domain_probe_weighs_both_domains_alike_when_their_sizes_differ():
    from miars_attacks.dlmia import _domain_accuracy

    rng = np.random.default_rng(0)
    n_shadow, n_target = 50, 500  # an ml-100k shadow beside an ml-1m target is about this ratio
    dom = np.r_[np.zeros(n_shadow), np.ones(n_target)]
    shifted = rng.normal(size=(n_shadow + n_target, 4)) + 1.0 * dom[:, None]  # separable 0.76 of the time (Bayes ~0.84)
    assert _domain_accuracy(shifted, n_shadow, seed=0) > 0.7  # an unweighted probe reads 0.52: it calls all "target"
    noise = rng.normal(size=(n_shadow + n_target, 4))
    assert abs(_domain_accuracy(noise, n_shadow, seed=0) - 0.5) < 0.15
