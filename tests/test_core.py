"""Core behaviour: registries, split, ranking, features, metrics, service, defense, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from miars_core.contracts.errors import DuplicateNameError, MiarsError, UnknownNameError
from miars_core.contracts.registry import Registry
from miars_core.contracts.seeds import stage_seed
from miars_core.contracts.types import Interactions, Part, ServiceContext
from miars_core.science.metrics import membership_metrics
from miars_core.science.protocol import split_dataset
from miars_core.science.ranking import top_k_excluding
from miars_core.science.service import popularity_order, serve


def random_interactions(n_users=120, n_items=80, density=0.3, seed=0) -> Interactions:
    rng = np.random.default_rng(seed)
    m = sp.random(n_users, n_items, density=density, format="csr", random_state=rng, dtype=np.float32)
    m.data[:] = 1
    users, items = m.nonzero()
    return Interactions.from_pairs(np.array([f"u{u}" for u in users]), items + 1000)


# -- registry ------------------------------------------------------------------------------
def test_registry_rejects_duplicates_naming_both_plugins():
    reg = Registry("recommender")
    reg.add("knn", dict, "plugin-a")
    with pytest.raises(DuplicateNameError, match="plugin-a.*plugin-b"):
        reg.add("knn", list, "plugin-b")


def test_registry_unknown_name_suggests_close_match_and_lists_choices():
    reg = Registry("recommender")
    for name in ("item", "lfm", "ncf"):
        reg.add(name, dict, "p")
    with pytest.raises(UnknownNameError) as err:
        reg.get("itme")
    msg = str(err.value)
    assert "did you mean item" in msg and "lfm" in msg and "ncf" in msg and "\n" not in msg


def test_registry_namespace_resolves_and_rejects_unknown_members():
    reg = Registry("recommender")
    reg.add_namespace("lib", lambda rest: (lambda **kw: (rest, kw)), lambda: ["Alpha", "Beta"], "p")
    assert reg.get("lib:Beta").factory() == ("Beta", {})
    assert reg.create("lib:Alpha", x=1) == ("Alpha", {"x": 1})
    with pytest.raises(UnknownNameError, match="lib:Alpha"):
        reg.get("lib:Alpa")
    with pytest.raises(MiarsError, match="reserved"):
        reg.add("lib:Gamma", dict, "p")


def test_registry_create_reports_bad_parameters():
    reg = Registry("defense")
    reg.add("d", lambda ratio=0.1: ratio, "p")
    with pytest.raises(MiarsError, match="has no parameter 'nosuch'; valid parameters: ratio"):
        reg.create("d", nosuch=1)
    with pytest.raises(MiarsError, match="did you mean ratio"):
        reg.create("d", ratoi=1)


# -- split ---------------------------------------------------------------------------------
def test_interaction_split_is_disjoint_complete_and_balanced():
    data = random_interactions(n_users=200, density=0.4)
    split = split_dataset(data, min_interactions=5, seed=1)
    vec = split.vectorization.matrix
    # Each part only holds interactions of the data; parts (before filtering) cover it exactly.
    shadow_rows = np.searchsorted(data.user_ids, split.shadow.interactions.user_ids)
    target_rows = np.searchsorted(data.user_ids, split.target.interactions.user_ids)
    for part, rows in ((split.shadow, shadow_rows), (split.target, target_rows)):
        diff = part.interactions.matrix - data.matrix[rows]
        assert diff.max() <= 0  # subset
        assert part.n_members * 2 == part.interactions.n_users
        assert part.interactions.user_counts().min() >= 5
    overlap = split.shadow.interactions.matrix.multiply(vec[shadow_rows])
    assert overlap.nnz == 0
    total = data.n_interactions
    assert abs(vec.nnz - total / 3) <= 1


def test_split_same_seed_same_result_other_seed_differs():
    data = random_interactions()
    a, b, c = (split_dataset(data, min_interactions=5, seed=s) for s in (3, 3, 4))
    assert (a.target.interactions.matrix != b.target.interactions.matrix).nnz == 0
    assert np.array_equal(a.target.is_member, b.target.is_member)
    assert (a.vectorization.matrix != c.vectorization.matrix).nnz > 0


def test_user_split_puts_each_user_in_one_part():
    data = random_interactions(n_users=300)
    split = split_dataset(data, mode="users", min_interactions=5, seed=0)
    shadow_users = set(split.shadow.interactions.user_ids)
    target_users = set(split.target.interactions.user_ids)
    vec_users = set(data.user_ids[split.vectorization.user_counts() > 0])
    assert not shadow_users & target_users and not shadow_users & vec_users and not target_users & vec_users


def test_split_refuses_too_little_data_and_bad_mode():
    data = random_interactions(n_users=10, density=0.1)
    with pytest.raises(MiarsError, match="min-interactions"):
        split_dataset(data, min_interactions=20)
    with pytest.raises(MiarsError, match="interactions, users"):
        split_dataset(data, mode="items")


# -- ranking -------------------------------------------------------------------------------
def test_top_k_excluding_matches_brute_force_and_never_returns_known_items():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 40)).astype(np.float32)
    known = sp.random(50, 40, density=0.3, format="csr", random_state=1)
    known.data[:] = 1
    top = top_k_excluding(scores, known, 7, batch_size=16)
    masked = np.where(known.toarray() > 0, -np.inf, scores)
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :7]
    assert np.array_equal(top, expected)


def test_top_k_prefers_unscorable_items_over_known_ones():
    scores = np.array([[5.0, np.nan, 1.0, -np.inf]], dtype=np.float32)
    known = sp.csr_matrix(np.array([[0, 0, 1, 0]], dtype=np.float32))
    top = top_k_excluding(scores, known, 3)
    assert top[0, 0] == 0 and 2 not in top[0]


def test_top_k_impossible_k_is_a_clear_error():
    known = sp.csr_matrix(np.ones((2, 5), dtype=np.float32))
    with pytest.raises(MiarsError, match="--top-k"):
        top_k_excluding(np.zeros((2, 5)), known, 1)


# -- features ------------------------------------------------------------------------------
def test_center_diff_matches_a_direct_per_user_computation():
    from miars_attacks.features import CenterDiff, rank_weights

    data = random_interactions(n_users=30, n_items=25)
    feat = CenterDiff(dim=5).fit(data, seed=0)
    rng = np.random.default_rng(2)
    recs = np.stack([rng.permutation(25)[:6] for _ in range(30)])
    x = feat.transform(data, recs)
    v = feat.item_vectors_
    w = np.array([(6 - j) / 21 for j in range(6)])
    assert np.allclose(rank_weights(6), w) and np.isclose(rank_weights(100).sum(), 1)
    for u in range(30):
        items = data.matrix[u].indices
        expected = v[items].mean(axis=0) - (w[:, None] * v[recs[u]]).sum(axis=0)
        assert np.allclose(x[u], expected, atol=1e-5)


def test_item_vectors_are_seeded_and_reject_impossible_dim():
    from miars_attacks.features import item_vectors

    m = random_interactions().matrix
    assert np.array_equal(item_vectors(m, 8, seed=1), item_vectors(m, 8, seed=1))
    with pytest.raises(MiarsError, match="dim"):
        item_vectors(m, 500)


# -- metrics -------------------------------------------------------------------------------
def test_metrics_on_a_hand_checked_case():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    s = np.array([4.0, 3.0, 2.0, -1.0, 1.0, -2.0, -3.0, -4.0])
    m = membership_metrics(y, s)
    assert m["roc_auc"] == pytest.approx(15 / 16)
    # threshold 0: TP 3, FN 1, FP 1, TN 3
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)
    assert m["tpr_at_fpr_0.01"] == pytest.approx(0.75)  # 3 members above the best non-member
    assert m["advantage"] == pytest.approx(0.75)
    assert (m["members"], m["non_members"]) == (4, 4)


def test_saturated_probabilities_tie_but_logit_margins_do_not():
    # Why the attack scores by logit margin: float32 softmax rounds strong members to exactly 1.0.
    import torch

    margins = torch.tensor([30.0, 25.0, 20.0, 18.0, 17.5, -3.0])
    y = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    probs = torch.softmax(torch.stack([torch.zeros(6), margins], 1), 1)[:, 1].numpy()
    assert (probs == 1.0).sum() >= 4
    assert membership_metrics(y, probs)["tpr_at_fpr_0.01"] == 0.0
    assert membership_metrics(y, margins.double().numpy())["tpr_at_fpr_0.01"] == 1.0


# -- service and defense --------------------------------------------------------------------
def _part(data: Interactions, seed=0) -> Part:
    is_member = np.zeros(data.n_users, dtype=bool)
    is_member[np.random.default_rng(seed).permutation(data.n_users)[: data.n_users // 2]] = True
    return Part("target", data, is_member)


def test_service_gives_non_members_the_popular_items_they_do_not_know():
    from miars_recbole.models import Popularity

    part = _part(random_interactions(n_users=60, n_items=50))
    served = serve(part, Popularity(), "pop", 5, seed=0)
    popular = popularity_order(part)
    m = part.interactions.matrix
    for u in np.flatnonzero(~part.is_member)[:10]:
        unknown = [i for i in popular if m[u, i] == 0]
        assert list(served.lists[u]) == unknown[:5]
    assert served.report["members_popular_overlap"] > 0.5


def test_popularity_randomization_draws_from_the_unknown_popular_pool_for_non_members_only():
    from miars_defenses import PopularityRandomization

    part = _part(random_interactions(n_users=60, n_items=80, density=0.15))
    k = 5
    lists = np.tile(np.arange(k), (60, 1))
    popular = popularity_order(part)
    ctx = ServiceContext(part.interactions, part.is_member, popular, k)
    out = PopularityRandomization(ratio=0.25).apply(lists, ctx, seed=3)
    assert np.array_equal(out[part.is_member], lists[part.is_member])
    m = part.interactions.matrix
    for u in np.flatnonzero(~part.is_member):
        pool = [i for i in popular if m[u, i] == 0][:20]
        assert set(out[u]) <= set(pool) and len(set(out[u])) == k
    assert np.array_equal(out, PopularityRandomization(ratio=0.25).apply(lists, ctx, seed=3))
    assert not np.array_equal(out, PopularityRandomization(ratio=0.25).apply(lists, ctx, seed=4))
    with pytest.raises(MiarsError, match="ratio"):
        PopularityRandomization(ratio=1.5).apply(lists, ctx)


def test_stage_seeds_are_stable_and_distinct():
    assert stage_seed(0, "split") == stage_seed(0, "split")
    assert len({stage_seed(0, s) for s in ("split", "shadow", "target", "attack")}) == 4
    assert stage_seed(1, "split") != stage_seed(0, "split")


def test_builtin_numpy_components_pass_the_conformance_suite():
    from miars_attacks import CenterDiff
    from miars_core.kit import checks
    from miars_defenses import PopularityRandomization
    from miars_recbole.models import Popularity

    checks.check_recommender(Popularity)
    checks.check_featurizer(CenterDiff, dim=8)
    checks.check_defense(PopularityRandomization, ratio=0.5)


def test_registry_checks_parameter_types_against_defaults():
    class Comp:
        def __init__(self, dim: int = 100, ratio: float = 0.1, hidden: tuple = (32, 8), name: str = "x", flag: bool = False):
            self.dim, self.ratio, self.hidden, self.name, self.flag = dim, ratio, hidden, name, flag

    reg = Registry("featurizer")
    reg.add("c", Comp, "p")
    built = reg.create("c", ratio=1, hidden=[4, 2])
    assert built.ratio == 1.0 and isinstance(built.ratio, float) and built.hidden == (4, 2)
    for bad in ({"dim": "abc"}, {"dim": 2.5}, {"ratio": "x"}, {"flag": 1}, {"hidden": 3}, {"dim": True}):
        with pytest.raises(MiarsError, match="should be a"):
            reg.create("c", **bad)


def test_a_plugin_whose_registration_hook_raises_is_reported_not_fatal_nor_half_registered():
    from types import SimpleNamespace

    from miars_core.contracts.hookspecs import hookimpl
    from miars_core.contracts.plugins import get_plugins

    @hookimpl
    def register_recommenders(register):
        register("half-done", dict)
        raise RuntimeError("boom")

    broken = SimpleNamespace(__name__="broken_plugin", register_recommenders=register_recommenders)
    plugins = get_plugins(extra=[broken])
    assert plugins.info["broken_plugin"].status.startswith("failed: register_recommenders: RuntimeError: boom")
    assert "half-done" not in plugins.registry("recommender").names()
    assert "item" in plugins.registry("recommender").names()
