"""The synthetic generator and the bounded-memory paths that let the attack run at 20M interactions."""

from __future__ import annotations

import numpy as np
import pytest

from miars_core.science.synth import sample_users, synthetic_interactions


@pytest.fixture(scope="module")
def synth():
    return synthetic_interactions(200_000, 4_000, 2_500, seed=0)


def test_generator_is_seeded_and_hits_its_size(synth):
    again = synthetic_interactions(200_000, 4_000, 2_500, seed=0)
    assert (again.matrix != synth.matrix).nnz == 0
    other = synthetic_interactions(200_000, 4_000, 2_500, seed=1)
    assert (other.matrix != synth.matrix).nnz > 0
    assert synth.matrix.shape == (4_000, 2_500)
    assert abs(synth.n_interactions - 200_000) <= 0.06 * 200_000
    assert synth.matrix.data.min() == 1.0 and synth.matrix.data.max() == 1.0


def test_generator_has_movielens_like_long_tails(synth):
    pop = np.sort(synth.item_popularity())[::-1]
    counts = synth.user_counts()
    # A few items carry much of the data; activity is skewed with a long right tail.
    assert pop[: len(pop) // 100].sum() > 0.08 * pop.sum()
    assert pop[0] > 20 * np.median(pop)
    assert counts.max() > 5 * np.median(counts)
    assert np.median(counts) >= 15


def test_generator_has_taste_groups_to_learn(synth):
    # Users of the same group share items beyond popularity: item-item cosine top neighbours of an
    # item share its group (i % 20) far more often than 1 in 20.
    from miars_recbole.lean import item_item_topk

    w = item_item_topk(synth.matrix, 10).tocsc()
    cols = np.arange(200, 400)
    same = [np.mean(w.indices[w.indptr[j] : w.indptr[j + 1]] % 20 == j % 20) for j in cols]
    assert np.mean(same) > 0.3


def test_sample_users_caps_interactions(synth):
    small = sample_users(synth, 500, 30, seed=2)
    assert small.n_users == 500 and small.user_counts().max() <= 30
    assert (small.item_popularity() > 0).all()
    assert set(small.user_ids) <= set(synth.user_ids)


@pytest.mark.parametrize("name", ["item", "lfm"])
def test_scoring_never_asks_for_more_than_one_bounded_block(synth, name, monkeypatch):
    import miars_core.science.ranking as ranking
    from miars_core.contracts.plugins import get_plugins

    monkeypatch.setattr(ranking, "MAX_BLOCK_ELEMENTS", 300 * synth.n_items)  # at most 300 users per block
    params = {"epochs": 1} if name == "lfm" else {}
    model = get_plugins().create("recommender", name, **params).fit(synth, seed=0)
    asked = []
    score_rows = model.model_.score_rows
    model.model_.score_rows = lambda rows: asked.append(len(rows)) or score_rows(rows)
    lists = model.recommend(20)
    assert max(asked) <= 300 and sum(asked) == synth.n_users
    assert lists.shape == (synth.n_users, 20)
    assert not synth.matrix[np.repeat(np.arange(synth.n_users), 20), lists.ravel()].any()
    if name == "item":  # the similarity is sparse: k neighbours per item, no users x items prediction matrix
        assert model.model_.model.w.nnz <= 100 * synth.n_items
        assert not hasattr(model.model_.model, "pred_mat")
