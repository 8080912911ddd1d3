"""The RecBole wrappers: contracts, modern-stack shims, fast scoring paths."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.kit import checks


@pytest.fixture(scope="module")
def small():
    return checks.make_interactions(n_users=60, n_items=70, seed=3)


@pytest.mark.parametrize("name, params", [("item", {}), ("lfm", {"epochs": 2}), ("ncf", {"epochs": 1})])
def test_builtin_recbole_recommenders_keep_the_contract(name, params):
    factory = get_plugins().registry("recommender").get(name).factory
    checks.check_recommender(factory, **params)


def test_recbole_writes_nothing_to_the_working_directory_and_ignores_sys_argv(tmp_path, monkeypatch, small):
    from miars_recbole.models import LatentFactorModel

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=7", "--learning_rate=0.5"])
    model = LatentFactorModel(epochs=2, learning_rate=0.005).fit(small, seed=0)
    assert model.fit_info_["epochs_run"] == 2
    assert model.fit_info_["settings"]["learning_rate"] == pytest.approx(0.005)
    assert os.listdir(tmp_path) == []


def test_neumf_fast_scores_equal_recboles_own_forward(small):
    import torch
    from recbole.data.interaction import Interaction

    from miars_recbole.models import NeuralCF
    from miars_recbole.session import _neumf_logits

    fitted = NeuralCF(epochs=1).fit(small, seed=0).model_
    m = fitted.model
    users = torch.as_tensor(fitted.user_rb[:7])
    n = len(fitted.item_cols)
    slow = m.forward(users.repeat_interleave(n), torch.arange(n).repeat(7)).view(7, n)
    assert torch.allclose(_neumf_logits(m, users), slow, atol=1e-5)
    assert torch.allclose(_neumf_logits(m, users, max_elements=7 * 128 * 5), slow, atol=1e-5)  # 5-item chunks


def test_namespaced_names_use_the_tuned_wrappers_or_any_recbole_model(small):
    from miars_recbole.models import NeuralCF

    reg = get_plugins().registry("recommender")
    assert reg.get("recbole:NeuMF").factory is NeuralCF
    model = reg.create("recbole:EASE", epochs=1)
    lists = model.fit(small, seed=0).recommend(5)
    assert lists.shape == (60, 5)
    assert not small.matrix[np.repeat(np.arange(60), 5), lists.ravel()].any()
    with pytest.raises(MiarsError, match="recbole:NeuMF"):
        reg.get("recbole:NueMF")


def test_same_seed_same_lists_for_a_trained_model(small):
    from miars_recbole.models import LatentFactorModel

    a = LatentFactorModel(epochs=2).fit(small, seed=5).recommend(10)
    b = LatentFactorModel(epochs=2).fit(small, seed=5).recommend(10)
    assert np.array_equal(a, b)


def test_bad_epochs_is_a_clear_error(small):
    from miars_recbole.models import LatentFactorModel

    with pytest.raises(MiarsError, match="epochs"):
        LatentFactorModel(epochs=0).fit(small)
