"""miars audit-dp: the one-run bound (Steinke, Nasr & Jagielski, NeurIPS 2023), the canaries, and the command.

A training defense that claims epsilon = 1 but adds no noise is written here as a third party
would write it, installed through a (fake) distribution's entry point, and must be caught;
the built-in DP defenses at epsilon = 1 must not be. The audits run on the 300 x 150
synthetic data set of ``conftest.py`` with 36 canaries (well under a second each; dp-sgd a few
seconds), the two acceptance cases on ml-100k `item` (seconds).
"""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
from scipy.special import expit, logit
from typer.testing import CliRunner

from miars_core import cli
from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.engine import audit

RUNNER = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
#: The synthetic data set has 150 items: at most 37 canaries (2 items each, half the catalogue).
CANARIES = 36


# --------------------------------------------------------------------------- the bound


def test_all_correct_guesses_give_the_closed_form_bound():
    """delta = 0 and v = r: p = q^r, so the bound is logit(0.05^(1/r))."""
    for r in (10, 50, 100):
        assert audit.p_value(200, r, r, 1.0, 0.0) == pytest.approx(expit(1.0) ** r)
        assert audit.epsilon_lower_bound(200, r, r, 0.0) == pytest.approx(float(logit(0.05 ** (1 / r))), abs=1e-6)
    assert audit.epsilon_lower_bound(100, 50, 50, 0.0) == pytest.approx(2.78, abs=0.01)


def test_chance_guessing_shows_nothing_and_more_correct_guesses_show_more():
    assert audit.epsilon_lower_bound(200, 100, 0, 1e-5) == 0.0
    assert audit.epsilon_lower_bound(200, 100, 50, 1e-5) == 0.0
    bounds = [audit.epsilon_lower_bound(200, 100, v, 1e-5) for v in (70, 80, 90, 100)]
    assert 0 < bounds[0] < bounds[1] < bounds[2] < bounds[3]


def test_delta_weakens_the_bound():
    assert audit.p_value(200, 100, 80, 1.0, 1e-3) > audit.p_value(200, 100, 80, 1.0, 0.0)
    assert audit.epsilon_lower_bound(200, 100, 80, 1e-3) < audit.epsilon_lower_bound(200, 100, 80, 0.0)
    assert audit.p_value(10, 10, 10, 1.0, 0.99) == 1.0  # capped


def test_the_bound_holds_its_confidence_for_an_epsilon_dp_mechanism():
    """Randomized response at epsilon = 1 is exactly 1-DP: the audit claims epsilon > 1 in at most 5% of runs,
    and it does see a mechanism three times as leaky."""
    rng = np.random.default_rng(0)
    m, r = 200, 100
    for eps, expect_low in ((1.0, True), (3.0, False)):
        correct = rng.binomial(r, expit(eps), size=400)
        rejected = np.mean([audit.p_value(m, r, int(v), 1.0, 0.0) < 0.05 for v in correct])
        if expect_low:
            assert rejected <= 0.05 + 0.03  # 400 runs: 0.05 + 2.8 standard errors
        else:
            assert rejected > 0.9


def test_min_guesses_is_the_fewest_that_can_show_the_claim():
    assert audit.min_guesses(1.0) == 10  # 0.731^9 = 0.060 >= 0.05 > 0.731^10
    assert audit.max_detectable(200, 10, 0.0) > 1.0 >= audit.max_detectable(200, 9, 0.0)
    assert audit.min_guesses(0.01) == audit.MIN_GUESSES
    assert audit.max_detectable(200, audit.MIN_GUESSES, 0.0) > 0 == audit.max_detectable(200, audit.MIN_GUESSES - 1, 0.0)


def test_guesses_take_the_extremes_and_break_ties_with_their_own_seed():
    scores = np.array([5.0, 1, 1, 1, 1, 0, -3, -3])
    t = audit.guess(scores, 2, 3, seed=0)
    assert t[0] == 1 and (t == 1).sum() == 2 and t[1:5].sum() == 1  # one of the tied 1s
    assert list(t[5:]) == [-1, -1, -1]
    assert np.array_equal(t, audit.guess(scores, 2, 3, seed=0))
    assert len({tuple(audit.guess(scores, 2, 3, seed=s)) for s in range(20)}) > 1
    with pytest.raises(ValueError):
        audit.guess(scores, 5, 4, seed=0)


# --------------------------------------------------------------------------- the canaries


@pytest.fixture(scope="module")
def data(small_dataset):
    from miars_core.engine.datasets import load_named

    return load_named(str(small_dataset), None, False, get_plugins())


@pytest.mark.parametrize("level", ["user", "record"])
def test_canaries_are_the_only_link_between_their_items(data, level):
    a = audit.build_canaries(data, CANARIES, level, seed=3)
    x = a.members.matrix
    canary_items = np.concatenate([a.trigger, a.secret])
    assert len(set(canary_items.tolist())) == 2 * CANARIES
    pop = data.item_popularity()
    assert pop[canary_items].max() <= np.sort(pop)[2 * CANARIES - 1]  # the least popular items
    n_base = a.summary["users"]
    assert x[:n_base][:, canary_items].nnz == 0  # emptied in the real users' data
    assert 0.2 < a.included.mean() < 0.8
    for i in range(CANARIES):  # each probe holds its trigger only
        assert list(x[a.probe_rows[i]].indices) == [a.trigger[i]]
    secret_col = x[:, a.secret].tocsc()
    holders = [set(secret_col[:, i].indices.tolist()) for i in range(CANARIES)]
    for i in range(CANARIES):
        if not a.included[i]:
            assert not holders[i]  # an excluded canary leaves no trace
            continue
        (row,) = holders[i]
        expected = {a.trigger[i], a.secret[i]}
        assert set(x[row].indices.tolist()) == expected
    extra = x.shape[0] - n_base - CANARIES
    assert extra == (a.included.sum() if level == "user" else CANARIES)  # canary users, or every carrier
    assert np.array_equal(audit.build_canaries(data, CANARIES, level, seed=3).included, a.included)


def test_too_many_canaries_for_the_catalogue_is_a_one_line_error(data):
    with pytest.raises(MiarsError, match="--canaries 38 needs 76 canary items.*150 items.*--canaries 37"):
        audit.build_canaries(data, 38, "user", seed=0)


def test_scores_are_minus_the_rank_of_the_secret_in_the_probe_list(data):
    a = audit.build_canaries(data, CANARIES, "user", seed=0)
    lists = np.tile(np.arange(10), (a.members.n_users, 1))
    lists[a.probe_rows[0], 3] = a.secret[0]
    scores = audit.read_scores(lists, a)
    assert scores[0] == -3
    assert (scores[1:] == -10).sum() + (scores[1:] > -10).sum() == CANARIES - 1


# --------------------------------------------------------------------------- auditing defenses


class ClaimsDP(Component):
    """Train the wrapped recommender as is, yet claim epsilon-DP (a broken defense, not from a paper)."""

    acts_on = "training"
    sweep = {"epsilon": [0.5, 1.0, 2.0]}

    def __init__(self, epsilon: float = 1.0, level: str = "user"):
        self.epsilon = epsilon
        self.level = level

    def fit(self, recommender, members, seed=0):
        self.privacy_ = {"epsilon": float(self.epsilon), "delta": 1e-5, "level": self.level, "mechanism": "none at all"}
        return recommender.fit(members, seed=seed)


def _audit(data, defense, target="item", **params):
    plugins = get_plugins()
    return audit.audit_defense(defense, lambda: plugins.create("recommender", target, **params), data,
                               canaries=CANARIES, seed=0)


@pytest.mark.parametrize("level", ["user", "record"])
def test_a_defense_that_claims_dp_without_noise_is_caught_at_its_level(data, level):
    out = _audit(data, lambda: ClaimsDP(level=level))
    assert out["level"] == level and out["epsilon_claimed"] == 1.0
    assert out["guesses"] == CANARIES // 2 and out["correct"] == out["guesses"]  # the canaries stand out
    assert out["epsilon_lower"] > 1.0 and out["violated"] is True and out["verdict"] == "violated"


def test_dp_itemknn_at_epsilon_1_is_not_violated(data):
    from miars_defenses.dp_itemknn import DPItemKNN

    out = _audit(data, lambda: DPItemKNN(epsilon=1.0))
    assert out["level"] == "user" and out["privacy"]["mechanism"].startswith("gaussian")
    assert out["violated"] is False and out["epsilon_lower"] <= 1.0
    assert out["correct"] < out["guesses"]  # noise: the canaries do not stand out


def test_dp_sgd_at_epsilon_1_is_not_violated(data):
    from miars_defenses.dp_sgd import DPSGD

    out = _audit(data, lambda: DPSGD(epsilon=1.0, epochs=2), target="lfm", embedding_size=8)
    assert out["level"] == "record" and 0.9 < out["epsilon_claimed"] <= 1.0 + 1e-9
    assert out["violated"] is False and out["epsilon_lower"] <= 1.0


def test_a_claim_above_what_the_canaries_can_show_is_inconclusive(data):
    out = _audit(data, lambda: ClaimsDP(epsilon=50.0))
    assert out["verdict"] == "inconclusive" and out["violated"] is False
    assert out["epsilon_max_detectable"] < 50


# --------------------------------------------------------------------------- the command, with a third-party plugin

PLUGIN_SOURCE = '''
from miars_core.contracts.components import Component
from miars_core.contracts.hookspecs import hookimpl


class ClaimsDP(Component):
    """Train the wrapped recommender as is, yet claim user-level epsilon-DP (a broken defense, not from a paper)."""

    acts_on = "training"
    sweep = {"epsilon": [0.5, 1.0, 2.0]}

    def __init__(self, epsilon: float = 1.0):
        self.epsilon = epsilon

    def fit(self, recommender, members, seed=0):
        self.privacy_ = {"epsilon": float(self.epsilon), "delta": 1e-5, "level": "user", "mechanism": "none at all"}
        return recommender.fit(members, seed=seed)


class ClaimsNothing(Component):
    """Train the wrapped recommender as is and report no guarantee (not from a paper)."""

    acts_on = "training"
    sweep = {"unused": [1, 2, 3]}

    def __init__(self, unused: int = 1):
        self.unused = unused

    def fit(self, recommender, members, seed=0):
        return recommender.fit(members, seed=seed)


@hookimpl
def register_defenses(register):
    register("claims-dp", ClaimsDP)
    register("claims-nothing", ClaimsNothing)
'''


@pytest.fixture
def third_party(tmp_path_factory, monkeypatch, third_party_plugins):
    """A plugin installed the way pip leaves one: a module and a dist-info with a `miars` entry point."""
    root = tmp_path_factory.mktemp("site")
    (root / "miars_audit_test_plugin.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    info = root / "miars_audit_test_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: miars-audit-test-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[miars]\naudit-test = miars_audit_test_plugin\n")
    monkeypatch.syspath_prepend(str(root))
    plugins = get_plugins(reload=True)
    assert plugins.info["audit-test"].status == "loaded"
    yield plugins
    monkeypatch.undo()
    sys.modules.pop("miars_audit_test_plugin", None)
    get_plugins(reload=True)


def _cli(args):
    return RUNNER.invoke(cli.app, ["audit-dp", *[str(a) for a in args]], env=ENV)


def test_audit_dp_on_ml100k_item_catches_a_third_party_defense_that_claims_dp_without_noise(third_party, tmp_path):
    """The acceptance case, on ml-100k itself (the copy shipped with the wheel; seconds on `item`)."""
    out = tmp_path / "audit"
    res = _cli(["--dataset", "ml-100k", "--target", "item", "--defense", "claims-dp", "--defense-param", "epsilon=1",
                "--seed", 2, "--no-cache", "-q", "--out", out])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "audit.json").read_text())
    assert record["violated"] is True and record["epsilon_lower"] > record["epsilon_claimed"] == 1.0
    for key in ("delta", "level", "canaries", "guesses", "correct", "method", "seed"):
        assert key in record
    assert record["level"] == "user" and record["seed"] == 2 and record["canaries"] == audit.DEFAULT_CANARIES
    assert record["data"]["items"] == 1682 and record["guesses"] == audit.DEFAULT_CANARIES // 2
    assert "Steinke" in record["method"]["citation"] and "recommend(" in record["method"]["observation"]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "claims-dp" in lines[0] and "VIOLATED" in lines[0]
    assert [p.name for p in out.iterdir()] == ["audit.json"]


def test_audit_dp_on_ml100k_item_passes_dp_itemknn_at_epsilon_1(tmp_path):
    res = _cli(["--dataset", "ml-100k", "--target", "item", "--defense", "dp-itemknn", "--defense-param", "epsilon=1",
                "--no-cache", "-q", "--out", tmp_path])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "audit.json").read_text())
    assert record["violated"] is False and record["epsilon_claimed"] == 1.0 and record["level"] == "user"


def test_audit_dp_passes_dp_itemknn_and_reuses_the_cached_fit(small_dataset, tmp_path):
    args = ["--dataset", small_dataset, "--target", "item", "--defense", "dp-itemknn", "--defense-param", "epsilon=1",
            "--canaries", CANARIES, "--cache", tmp_path / "cache", "-q"]
    first = _cli([*args, "--out", tmp_path / "a"])
    assert first.exit_code == 0, first.output
    record = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert record["violated"] is False and "no violation found" in first.stdout
    assert record["privacy"]["level"] == "user" and record["privacy"]["outside"]
    again = _cli([*args, "--guesses", 10, "--out", tmp_path / "b"])  # other guesses: the same fit, from the cache
    assert again.exit_code == 0, again.output
    other = json.loads((tmp_path / "b" / "audit.json").read_text())
    assert other["guesses"] == 10 and other["canaries_in"] == record["canaries_in"]
    assert other["timings"]["fit_and_read"] == record["timings"]["fit_and_read"]


AUDIT_ERRORS = {
    # id: (args after --dataset, needles); the third-party plugin is installed
    "list-defense": (["--target", "item", "--defense", "popularity-randomization"], ["acts on lists", "training"]),
    "no-privacy": (["--target", "item", "--defense", "claims-nothing"], ["'claims-nothing'", "privacy_"]),
    "too-few-canaries": (["--target", "item", "--defense", "dp-itemknn", "--canaries", "8"],
                         ["--canaries 8", "too few", "--canaries 20"]),
    "too-few-for-the-claim": (["--target", "item", "--defense", "claims-dp", "--defense-param", "epsilon=3",
                               "--canaries", "36"], ["--canaries 36", "3", "--canaries 124"]),
    "too-many-canaries": (["--target", "item", "--defense", "dp-itemknn", "--canaries", "60"],
                          ["--canaries 60", "150 items", "--canaries 37"]),
    "guesses-over-canaries": (["--target", "item", "--defense", "dp-itemknn", "--canaries", "30", "--guesses", "31"],
                              ["--guesses 31", "30"]),
    "unknown-defense": (["--target", "item", "--defense", "nosuch"], ["'nosuch'", "dp-itemknn"]),
    "unknown-target": (["--target", "nosuch", "--defense", "dp-itemknn"], ["'nosuch'", "item"]),
    "bad-defense-param": (["--target", "item", "--defense", "dp-itemknn", "--defense-param", "epsilon=-1"], ["epsilon"]),
    "unknown-defense-param": (["--target", "item", "--defense", "dp-itemknn", "--defense-param", "nosuch=1"], ["nosuch"]),
    "wrong-recommender": (["--target", "item", "--defense", "dp-sgd", "--defense-param", "epsilon=1"], ["lfm"]),
    "bad-seed": (["--target", "item", "--defense", "dp-itemknn", "--seed", "-1"], ["--seed"]),
}


@pytest.mark.parametrize("case", list(AUDIT_ERRORS))
def test_audit_dp_bad_input_is_one_line_exit_2_and_writes_nothing(case, third_party, small_dataset, tmp_path):
    args, needles = AUDIT_ERRORS[case]
    out = tmp_path / "audit"
    res = _cli(["--dataset", small_dataset, *args, "--no-cache", "-q", "--out", out])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("miars: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert res.stdout == "" and not out.exists()


def test_audit_dp_output_folder_that_is_a_file(small_dataset, tmp_path):
    regular = tmp_path / "file"
    regular.write_text("keep me\n")
    res = _cli(["--dataset", small_dataset, "--target", "item", "--defense", "dp-itemknn", "--out", regular])
    assert res.exit_code == 2 and "is a file" in res.stderr and regular.read_text() == "keep me\n"


def test_audit_record_is_strict_json_and_a_non_finite_number_is_refused(data):
    out = _audit(data, lambda: ClaimsDP())
    assert json.loads(audit._render(out)) == out
    with pytest.raises(MiarsError, match="non-finite number at epsilon_lower"):
        audit._render({**out, "epsilon_lower": float("nan")})


def test_the_data_set_stays_untouched(data):
    matrix, users = data.matrix.copy(), data.user_ids.copy()
    audit.build_canaries(data, CANARIES, "record", seed=1)
    assert (data.matrix != matrix).nnz == 0 and np.array_equal(data.user_ids, users)
