"""Defenses at every point of action: conformance, real behaviour, privacy accounting, utility metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.defenses import acts_on
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.types import Interactions, ServiceContext, binary_csr
from miars_core.contracts.types import Part
from miars_core.kit import checks
from miars_core.science.service import _unknown_top_k, serve
from miars_core.science.utility import holdout, utility_metrics
from miars_defenses import PopularityRandomization
from miars_defenses.dp_itemknn import DPItemKNN, gaussian_sigma
from miars_defenses.dp_sgd import DPSGD
from miars_defenses.lists import ListNoise, RankShuffle
from miars_defenses.subsample import Subsample

BUILTIN = {
    "popularity-randomization": (PopularityRandomization, "lists"),
    "list-noise": (ListNoise, "lists"),
    "rank-shuffle": (RankShuffle, "lists"),
    "subsample": (Subsample, "data"),
    "dp-itemknn": (DPItemKNN, "training"),
    "dp-sgd": (DPSGD, "training"),
}

#: Parameters the conformance checks must see rejected, one-line, per defense (NaN is added by the check).
BAD = {
    "popularity-randomization": [{"ratio": 0}, {"ratio": 2}, {"ratio": -0.1}, {"ratio": "abc"}],
    "list-noise": [{"p": 1.5}, {"p": -0.1}, {"p": float("inf")}, {"pool": 0}],
    "rank-shuffle": [{"window": 0}, {"window": 2.5}, {"window": -3}],
    "subsample": [{"fraction": 0}, {"fraction": 1.5}, {"fraction": -0.5}],
    "dp-itemknn": [{"epsilon": -1}, {"epsilon": 0}, {"epsilon": float("inf")}, {"max_per_user": 0},
                   {"mechanism": "exponential"}, {"delta": 1.5}, {"neighbors": 0}],
    "dp-sgd": [{"epsilon": -1}, {"epsilon": 0}, {"max_grad_norm": 0}, {"delta": 0}, {"epochs": 0},
               {"noise_multiplier": 1.0}, {"epsilon": None}, {"accountant": "moments"}],
}
#: Defaults that do not fit the 40 x 60 synthetic data of the checks.
PARAMS = {"popularity-randomization": {"ratio": 0.5}}


# --------------------------------------------------------------------------- registration and conformance


def test_every_builtin_defense_is_registered_with_a_cited_summary_and_a_sweep():
    registry = get_plugins().registry("defense")
    for name, (cls, where) in BUILTIN.items():
        entry = registry.get(name)
        assert entry.factory is cls
        assert acts_on(cls) == where
        assert entry.summary and checks._CITATION.search(entry.summary), entry.summary  # the paper, in `miars list`
        values = max(cls.sweep.values(), key=len)
        assert len(values) >= 3


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_defense_passes_its_conformance_check(name):
    cls, where = BUILTIN[name]
    check = {"lists": checks.check_list_defense, "data": checks.check_data_defense,
             "training": checks.check_training_defense}[where]
    check(cls, bad_params=BAD[name], **PARAMS.get(name, {}))


def test_check_defense_dispatches_on_acts_on():
    calls = []

    class Spy(Component):
        """A data defense that keeps everything (illustrative, not from a paper)."""

        acts_on = "data"
        sweep = {"keep": [1, 2, 3]}

        def __init__(self, keep: int = 1):
            self.keep = keep

        def apply_data(self, members, seed=0):
            calls.append(seed)
            if not isinstance(self.keep, int):
                raise MiarsError(f"spy: keep must be an integer, got {self.keep!r}")
            return Interactions(members.matrix.copy(), members.user_ids, members.item_ids)

    checks.check_defense(Spy)
    assert calls  # the data check ran, not the list check (which would call apply)


def _lists_defense(**attrs):
    """A list defense (copying its input) with the given class attributes."""

    def apply(self, recommendations, context, seed=0):
        if not 0 <= float(self.p) <= 1:
            raise MiarsError(f"x: p must be in [0, 1], got {self.p}")
        return np.array(recommendations, dtype=np.int64, copy=True)

    body = {"__doc__": "Do nothing (Nobody et al., 2020).", "acts_on": "lists", "sweep": {"p": [0.1, 0.2, 0.3]},
            "__init__": lambda self, p=0.1: setattr(self, "p", p), "apply": apply}
    body.update(attrs)
    return type("Probe", (Component,), body)


@pytest.mark.parametrize("attrs, needle", [
    ({"sweep": {"p": [0.1, 0.2]}}, ">= 3 distinct values"),
    ({"sweep": {"q": [1, 2, 3]}}, "not a hyperparameter"),
    ({"__doc__": "Do nothing at all."}, "cites no paper"),
    ({"acts_on": "model"}, "acts_on"),
])
def test_list_check_catches_broken_declarations(attrs, needle):
    with pytest.raises(AssertionError, match=needle):
        checks.check_list_defense(_lists_defense(**attrs))


def test_list_check_catches_unvalidated_parameters_and_mutation():
    def lax(self, recommendations, context, seed=0):
        return np.array(recommendations, dtype=np.int64, copy=True)

    with pytest.raises(AssertionError, match="accepted the bad parameters"):
        checks.check_list_defense(_lists_defense(apply=lax), bad_params=[{"p": 2.0}])

    def mutating(self, recommendations, context, seed=0):
        if not 0 <= float(self.p) <= 1:
            raise MiarsError(f"x: p must be in [0, 1], got {self.p}")
        recommendations[:, [0, 1]] = recommendations[:, [1, 0]]
        return recommendations

    with pytest.raises(AssertionError, match="in place"):
        checks.check_list_defense(_lists_defense(apply=mutating))


def test_legacy_list_defense_without_declarations_still_passes_check_defense():
    class Legacy(Component):
        """Reverse every list (illustrative; not from a paper)."""

        def __init__(self):
            pass

        def apply(self, recommendations, context, seed=0):
            return np.ascontiguousarray(np.asarray(recommendations, dtype=np.int64)[:, ::-1])

    assert acts_on(Legacy) == "lists"
    checks.check_defense(Legacy)


def test_training_check_requires_privacy():
    class NoPrivacy(Component):
        """Train the recommender as is (illustrative, not from a paper)."""

        acts_on = "training"
        sweep = {"epsilon": [1.0, 2.0, 3.0]}

        def __init__(self, epsilon: float = 1.0):
            self.epsilon = epsilon

        def fit(self, recommender, members, seed=0):
            if not float(self.epsilon) > 0:
                raise MiarsError(f"x: epsilon must be > 0, got {self.epsilon}")
            return recommender.fit(members, seed=seed)

    with pytest.raises(AssertionError, match="privacy_"):
        checks.check_training_defense(NoPrivacy)

    class LooseWords(NoPrivacy):
        """Train the recommender as is (illustrative, not from a paper)."""

        def fit(self, recommender, members, seed=0):
            fitted = super().fit(recommender, members, seed=seed)
            self.privacy_ = {"epsilon": 1.0, "delta": 0.0, "level": "user", "mechanism": "m", "outside": "everything"}
            return fitted

    with pytest.raises(AssertionError, match=r"privacy_\['outside'\] must be a list of sentences"):
        checks.check_training_defense(LooseWords)


# --------------------------------------------------------------------------- list defenses


def _case(n_items=300, seed=1):
    recs, context, data = checks._list_case(n_items=n_items, seed=seed)
    return recs, context, data


def test_list_noise_p0_is_identity_and_p1_changes_every_position_for_everyone():
    recs, context, data = _case()
    assert np.array_equal(ListNoise(p=0.0).apply(recs, context, seed=3), recs)
    out = ListNoise(p=1.0).apply(recs, context, seed=3)
    assert (out != recs).all()  # members and non-members alike
    pool = set(context.popular[: 10 * recs.shape[1] + 15 + recs.shape[1]].tolist())
    assert set(out.ravel().tolist()) <= pool  # drawn from the popular head
    assert not np.asarray(data.matrix[np.repeat(np.arange(len(out)), out.shape[1]), out.ravel()]).any()


def test_list_noise_replaces_about_p_and_keeps_ranks_of_kept_items():
    recs, context, _ = _case(n_items=600)
    out = ListNoise(p=0.3, pool=200).apply(recs, context, seed=0)
    changed = out != recs
    assert 0.2 < changed.mean() < 0.4
    assert changed[context.is_member].mean() > 0.15 and changed[~context.is_member].mean() > 0.15
    assert np.array_equal(out[~changed], recs[~changed])
    assert np.array_equal(out, ListNoise(p=0.3, pool=200).apply(recs, context, seed=0))
    assert not np.array_equal(out, ListNoise(p=0.3, pool=200).apply(recs, context, seed=1))


def test_list_noise_too_small_pool_is_a_clear_error():
    recs, context, _ = _case()
    with pytest.raises(MiarsError, match="pool"):
        ListNoise(p=1.0, pool=3).apply(recs, context, seed=0)


def test_rank_shuffle_serves_the_same_items_and_shuffles_only_within_windows():
    recs, context, _ = _case()
    k = recs.shape[1]
    assert np.array_equal(RankShuffle(window=1).apply(recs, context, seed=0), recs)
    full = RankShuffle(window=k).apply(recs, context, seed=0)
    assert np.array_equal(np.sort(full, axis=1), np.sort(recs, axis=1))
    assert (full != recs).any(axis=1).mean() > 0.9
    out = RankShuffle(window=5).apply(recs, context, seed=0)
    for start in range(0, k, 5):
        assert np.array_equal(np.sort(out[:, start:start + 5], axis=1), np.sort(recs[:, start:start + 5], axis=1))


def test_popularity_randomization_error_is_one_line_naming_the_parameter():
    recs, context, _ = _case()
    for bad in (0, 2, float("nan"), "abc"):
        with pytest.raises(MiarsError) as err:
            PopularityRandomization(ratio=bad).apply(recs, context, seed=0)
        msg = str(err.value)
        assert "\n" not in msg and "ratio" in msg and "(0, 1]" in msg and "ratio=0.1" in msg


# --------------------------------------------------------------------------- data defenses


def test_subsample_keeps_about_f_of_each_member_and_at_least_one():
    data = checks.make_interactions(n_users=200, n_items=80, seed=4)
    for f in (0.25, 0.5, 0.75, 1.0):
        out = Subsample(fraction=f).apply_data(data, seed=0)
        n, kept = data.user_counts(), out.user_counts()
        assert np.array_equal(kept, np.maximum(1, np.rint(f * n)))
        assert (out.matrix - out.matrix.multiply(data.matrix)).nnz == 0  # a subset
    tiny = Subsample(fraction=0.01).apply_data(data, seed=0)
    assert (tiny.user_counts() == 1).all()


def _part(data):
    is_member = np.zeros(data.n_users, dtype=bool)
    is_member[: data.n_users // 2] = True
    return Part("target", data, is_member)


def test_serving_under_a_data_defense_never_serves_a_dropped_item():
    data = checks.make_interactions(n_users=30, n_items=60, seed=2)

    class Pop(checks._MostPopular):
        pass

    part = _part(data)
    served = serve(part, Pop(), "pop", 10, seed=0, defense=Subsample(fraction=0.25))
    lists = served.lists
    rows = np.repeat(np.arange(data.n_users), 10)
    assert not np.asarray(data.matrix[rows, lists.ravel()]).any()
    assert (np.sort(lists, axis=1)[:, 1:] != np.sort(lists, axis=1)[:, :-1]).all()
    assert served.report["trained_interactions"] < part.members.n_interactions


def test_members_lists_skip_known_but_untrained_items_in_rank_order():
    known = binary_csr(np.array([0, 0, 1]), np.array([1, 3, 0]), (2, 6))
    train = binary_csr(np.array([0]), np.array([1]), (2, 6))

    class Fixed:
        def recommend(self, k):
            return np.array([[3, 0, 2, 4, 5], [0, 1, 2, 3, 4]])[:, :k]

    assert _unknown_top_k(Fixed(), train, known, 3, "fixed").tolist() == [[0, 2, 4], [1, 2, 3]]


# --------------------------------------------------------------------------- dp-itemknn


def test_gaussian_sigma_is_the_analytic_gaussian_mechanism():
    sigma = gaussian_sigma(1.0, 1e-5, 1.0)
    assert 3.6 < sigma < 3.8  # Balle & Wang (2018): ~3.73, below the classical sqrt(2 ln(1.25/delta)) = 4.84
    assert gaussian_sigma(1.0, 1e-5, 2.0) == pytest.approx(2 * sigma, rel=1e-6)
    assert gaussian_sigma(10.0, 1e-5, 1.0) < sigma


def _overlap(a, b):
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def test_dp_itemknn_approaches_itemknn_at_huge_epsilon_and_not_at_tiny_epsilon():
    from miars_recbole import ItemKNN

    data = checks.make_interactions(n_users=80, n_items=60, seed=7)
    plain = ItemKNN(k=20).fit(data, seed=0).recommend(10)
    big = DPItemKNN(epsilon=1e9, max_per_user=1000)
    near = big.fit(ItemKNN(k=20), data, seed=0).recommend(10)
    far = DPItemKNN(epsilon=0.05).fit(ItemKNN(k=20), data, seed=0).recommend(10)
    assert _overlap(near, plain) > 0.85
    assert _overlap(far, plain) < 0.5
    assert big.privacy_["level"] == "user" and big.privacy_["neighbors"] == 20
    assert big.privacy_["delta"] == pytest.approx(1 / (80 * math.log(80)))
    assert any("cold-start" in line for line in big.privacy_["outside"])
    lap = DPItemKNN(epsilon=1.0, mechanism="laplace", max_per_user=10)
    lap.fit(ItemKNN(), data, seed=0)
    assert lap.privacy_["delta"] == 0.0 and lap.privacy_["noise_scale"] == pytest.approx(55.0)


def test_dp_itemknn_noise_is_symmetric_and_independent_of_the_block_size(monkeypatch):
    from miars_defenses import dp_itemknn

    data = checks.make_interactions(n_users=50, n_items=45, seed=3)
    x = dp_itemknn.bound_per_user(data.matrix, 8, seed=0)
    monkeypatch.setattr(dp_itemknn, "NOISE_TILE", 4)  # 12 tiles
    whole, counts = dp_itemknn._noisy_cosine_knn(x, 2.0, "gaussian", 44, 0.0, seed=5)
    monkeypatch.setattr(dp_itemknn, "MAX_BLOCK_ELEMENTS", 45 * 9)  # blocks of 8 items = 2 tiles
    blocked, counts_blocked = dp_itemknn._noisy_cosine_knn(x, 2.0, "gaussian", 44, 0.0, seed=5)
    assert abs(whole - blocked).max() < 1e-6 and np.array_equal(counts, counts_blocked)
    dense = whole.toarray()
    assert np.allclose(dense, dense.T, atol=1e-6)  # all neighbours kept: the similarity is symmetric


def test_dp_itemknn_bounds_each_user():
    from miars_defenses.dp_itemknn import bound_per_user

    data = checks.make_interactions(n_users=60, n_items=60, seed=1)
    x = bound_per_user(data.matrix, 6, seed=0)
    assert (np.diff(x.indptr) == np.minimum(data.user_counts(), 6)).all()
    assert (x - x.multiply(data.matrix)).nnz == 0


def test_dp_itemknn_refuses_other_recommenders():
    from miars_recbole import LatentFactorModel

    with pytest.raises(MiarsError, match="item"):
        DPItemKNN().fit(LatentFactorModel(), checks.make_interactions(), seed=0)


# --------------------------------------------------------------------------- dp-sgd


def test_dp_sgd_epsilon_comes_from_the_accountant_and_grows_with_less_noise():
    from miars_recbole import LatentFactorModel

    data = checks.make_interactions(n_users=60, n_items=60, seed=2)
    eps = []
    for sigma in (4.0, 1.5, 0.7):
        d = DPSGD(epsilon=None, noise_multiplier=sigma, epochs=3, batch_size=64)
        d.fit(LatentFactorModel(embedding_size=8), data, seed=0)
        n = data.n_interactions
        assert d.privacy_["level"] == "record" and d.privacy_["delta"] == pytest.approx(1 / (n * math.log(n)))
        assert d.privacy_["steps"] > 3
        eps.append(d.privacy_["epsilon"])
    assert eps[0] < eps[1] < eps[2]
    target = DPSGD(epsilon=2.0, epochs=3, batch_size=64)
    target.fit(LatentFactorModel(embedding_size=8), data, seed=0)
    assert 1.5 < target.privacy_["epsilon"] <= 2.0 + 1e-6


def test_dp_sgd_scores_the_public_catalogue_so_no_record_decides_what_can_be_served():
    """Items no member touched are in the model and servable; removing an item's only record keeps it servable."""
    import torch

    from miars_recbole import LatentFactorModel

    data = checks.make_interactions(n_users=50, n_items=60, seed=4)  # its last items have no interactions
    pop = data.item_popularity()
    untouched = np.flatnonzero(pop == 0)
    assert len(untouched) > 0
    one = sp.csr_matrix(([1.0], ([0], [untouched[0]])), shape=data.matrix.shape)
    lone = Interactions(sp.csr_matrix(data.matrix + one), data.user_ids, data.item_ids)  # one untouched item, one record
    for members in (data, lone):
        d = DPSGD(epsilon=5.0, epochs=2, batch_size=64)
        fitted = d.fit(LatentFactorModel(embedding_size=8), members, seed=0)
        scores = fitted.model_.score_rows(np.arange(members.n_users))
        assert scores.shape == (members.n_users, members.n_items) and bool(torch.isfinite(scores).all())
        k = members.n_items - int(members.user_counts().max())
        lists = fitted.recommend(k)
        assert set(untouched[1:]) <= set(lists.ravel().tolist())  # every untouched item reaches some list
        assert "the item catalogue" in " ".join(d.privacy_["public"]) and d.privacy_["level"] == "record"
        assert any("popular" in line for line in d.privacy_["outside"]) and d.privacy_["covers"]


def test_default_delta_is_well_below_one_over_n():
    from miars_defenses._params import default_delta

    for n in (10, 943, 100_000):
        assert default_delta(n) == pytest.approx(1 / (n * math.log(n)))
        assert default_delta(n) * n < 0.5  # under one in two units exposed, falling with n
    assert default_delta(1) == 1.0 and default_delta(2) == 0.5  # ln n floored at 1


def test_dp_sgd_refuses_item():
    from miars_recbole import ItemKNN

    with pytest.raises(MiarsError, match="lfm"):
        DPSGD().fit(ItemKNN(), checks.make_interactions(), seed=0)


def test_opacus_ghost_clipping_equals_per_example_clipping():
    """One noiseless step equals the mean of per-example gradients clipped to C (duplicate ids included)."""
    import copy

    import torch
    from opacus import PrivacyEngine
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from miars_defenses.dp_sgd import _modules

    class BPR(nn.Module):
        def __init__(self):
            super().__init__()
            self.user_embedding, self.item_embedding = nn.Embedding(6, 4), nn.Embedding(9, 4)

    class NeuMF(nn.Module):
        def __init__(self):
            super().__init__()
            self.user_mf_embedding, self.item_mf_embedding = nn.Embedding(6, 3), nn.Embedding(9, 3)
            self.user_mlp_embedding, self.item_mlp_embedding = nn.Embedding(6, 3), nn.Embedding(9, 3)
            self.mlp_layers = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU())
            self.predict_layer, self.mf_train, self.mlp_train = nn.Linear(7, 1), True, True

    torch.manual_seed(0)
    users = torch.tensor([0, 1, 2, 3, 1, 5, 0, 2])
    items = torch.tensor([[1, 2], [3, 3], [4, 1], [5, 6], [7, 8], [2, 2], [1, 8], [4, 5]])
    clip = 0.05
    for name, model_cls in (("BPR", BPR), ("NeuMF", NeuMF)):
        model = model_cls()
        ref, ref_loss = _modules(name, copy.deepcopy(model))
        ref_loss.reduction = "none"
        params = list(ref.parameters())
        total = [torch.zeros_like(p) for p in params]
        for b in range(len(users)):
            grads = torch.autograd.grad(ref_loss(ref(users[b:b + 1], items[b:b + 1])).sum(), params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
            factor = min(1.0, clip / (float(torch.sqrt(sum((g ** 2).sum() for g in grads))) + 1e-6))
            for t, g in zip(total, grads):
                t += g * factor
        expected = [p.detach() - t / len(users) for p, t in zip(params, total)]
        module, loss_fn = _modules(name, model)
        loader = DataLoader(TensorDataset(users, items[:, 0], items[:, 1]), batch_size=len(users))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm, opt, crit, dl = PrivacyEngine(accountant="rdp").make_private(
                module=module, optimizer=torch.optim.SGD(module.parameters(), lr=1.0), criterion=loss_fn,
                data_loader=loader, noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False,
                grad_sample_mode="ghost")
            for u, pos, neg in dl:
                opt.zero_grad()
                crit(dm(u, torch.stack([pos, neg], 1)), None).backward()
                opt.step()
        got = [p.detach() for p in module.parameters()]
        assert max(float((a - b).abs().max()) for a, b in zip(got, expected)) < 1e-6, name


# --------------------------------------------------------------------------- utility


def test_utility_metrics_on_hand_made_lists():
    # user 0: held out {1, 5}; list [1, 2, 5] -> hits at ranks 1 and 3
    # user 1: held out {4};    list [0, 2, 3] -> no hit
    # user 2: nothing held out -> excluded
    held = binary_csr(np.array([0, 0, 1]), np.array([1, 5, 4]), (3, 6))
    lists = np.array([[1, 2, 5], [0, 2, 3], [0, 1, 2]])
    m = utility_metrics(lists, held, 3)
    assert m["users"] == 2
    assert m["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx((dcg / idcg + 0) / 2)
    assert m["hr@3"] == pytest.approx(0.5)
    m1 = utility_metrics(lists, held, 1)  # only the first position counts
    assert m1["recall@1"] == pytest.approx((1 / 2) / 2) and m1["ndcg@1"] == pytest.approx(0.5) and m1["hr@1"] == 0.5
    assert utility_metrics(lists, sp.csr_matrix((3, 6)), 3)["users"] == 0


def test_holdout_keeps_one_training_item_and_a_seeded_fifth():
    data = checks.make_interactions(n_users=300, n_items=80, seed=9)
    train, held = holdout(data, 0.2, seed=1)
    assert train.matrix.multiply(held).nnz == 0
    assert (train.matrix + held != data.matrix).nnz == 0
    assert (train.user_counts() >= 1).all()
    n = data.user_counts()
    assert np.array_equal(np.diff(held.indptr), np.minimum(n - 1, np.rint(0.2 * n)))
    again, held_again = holdout(data, 0.2, seed=1)
    assert (held_again != held).nnz == 0 and (holdout(data, 0.2, seed=2)[1] != held).nnz > 0
    one = Interactions(binary_csr(np.array([0]), np.array([3]), (1, 5)), np.array(["u"]), np.arange(5))
    assert holdout(one, 0.5, seed=0)[1].nnz == 0
    with pytest.raises(MiarsError, match="fraction"):
        holdout(data, 1.0, seed=0)


# --------------------------------------------------------------------------- the serving contract


def test_serving_under_a_training_defense_and_acts_on_validation():
    from miars_recbole import ItemKNN

    data = checks.make_interactions(n_users=30, n_items=60, seed=8)
    defense = DPItemKNN(epsilon=1.0)
    served = serve(_part(data), ItemKNN(k=10), "item", 10, seed=0, defense=defense)
    lists = served.lists
    assert lists.shape == (30, 10) and lists.dtype == np.int64
    assert not np.asarray(data.matrix[np.repeat(np.arange(30), 10), lists.ravel()]).any()
    assert defense.privacy_["epsilon"] == 1.0 and served.report["fit_info"]["defense"] == "dp-itemknn"
    assert served.report["privacy"]["epsilon"] == 1.0

    class Elsewhere:
        acts_on = "model"

    with pytest.raises(MiarsError, match="acts_on"):
        acts_on(Elsewhere())
