"""Utility of the service's new accounts: the target non-members' lists scored on their own held-out items.

result.json's ``utility.{undefended,defended}.new_accounts`` (miars_core/engine/pipeline.py
``utility_block``) beside the members' numbers: a list defense that rewrites only non-members'
lists (popularity randomization) leaves the members' numbers alone and costs the new accounts.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.engine.pipeline import AttackConfig, new_account_utility, run_attack
from miars_core.engine.schema import validate
from miars_core.engine.stages import Cell
from miars_core.engine.store import DiskStore
from miars_core.science.ranking import top_k_popular
from miars_core.science.utility import utility_metrics

SMALL = {"top_k": 10, "min_interactions": 5, "featurizer_params": {"dim": 8}, "attack_params": {"epochs": 20}}
PR = {"defense": "popularity-randomization", "defense_params": {"ratio": 0.2}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return DiskStore(tmp_path_factory.mktemp("new-accounts-cache"))


def _config(small_dataset, **options) -> AttackConfig:
    return AttackConfig(dataset=str(small_dataset), target="item", shadow="item", utility_holdout=0.2,
                        **{**SMALL, **options})


def test_popularity_randomization_under_foldin_costs_new_accounts_not_members(small_dataset, store):
    result = run_attack(_config(small_dataset, service="foldin", **PR), store=store)
    u, members, non_members = result.utility, result.split["target"]["members"], result.split["target"]["non_members"]
    und, dfd = u["undefended"], u["defended"]
    # the members' numbers are the ones read before (same keys), and untouched by the defense
    assert {k: v for k, v in dfd.items() if k != "new_accounts"} == {k: v for k, v in und.items() if k != "new_accounts"}
    assert und["users"] == members
    new_und, new_dfd = und["new_accounts"], dfd["new_accounts"]
    assert new_und["users"] == new_dfd["users"] == non_members
    assert set(new_und) == {"users", "recall@10", "ndcg@10", "hr@10"}
    # fold-in lists find the new accounts' future; random popular items find much less of it
    assert new_dfd["ndcg@10"] < 0.8 * new_und["ndcg@10"] and new_dfd["recall@10"] < new_und["recall@10"]
    validate(json.loads(json.dumps(result.to_json())))


def test_under_the_popular_service_new_accounts_get_the_popular_lists_utility(small_dataset, store):
    config = _config(small_dataset)  # the paper's service
    result = run_attack(config, store=store)
    cell = Cell(config, get_plugins(), store)
    part, future = cell.part("target"), cell.future("target")
    others = ~part.is_member
    # independently: the k most popular items (in the members' visible data) each new account does not know
    popular = top_k_popular(part.members.item_popularity(), part.interactions.matrix[others].tocsr(), 10)
    expected = utility_metrics(popular, future[others], 10)
    assert result.utility["undefended"]["new_accounts"] == expected
    assert expected["users"] == int(others.sum()) and expected["ndcg@10"] > 0


def test_training_defenses_score_new_accounts_on_the_defended_serve(small_dataset, store):
    result = run_attack(_config(small_dataset, service="foldin", defense="subsample", defense_params={"fraction": 0.5}),
                        store=store)
    cell = Cell(_config(small_dataset, service="foldin", defense="subsample", defense_params={"fraction": 0.5}),
                get_plugins(), store)
    others = ~cell.part("target").is_member
    lists = cell.served("target", True).arrays["lists"]
    expected = utility_metrics(lists[others], cell.future("target")[others], 10)
    assert result.utility["defended"]["new_accounts"] == expected


def test_a_stored_run_gives_the_same_new_account_numbers_without_computing_a_stage(small_dataset, tmp_path):
    """new_accounts is derived from the stored lists, not from a stage record: a store written before the field
    existed (whose records hold only the members' numbers, as these do) gives it, and no stage is computed."""
    store = DiskStore(tmp_path / "cache")
    config = _config(small_dataset, service="foldin", **PR)
    first = run_attack(config, store=store)
    cell = Cell(config, get_plugins(), DiskStore(tmp_path / "cache"))
    assert "new_accounts" not in json.dumps(cell.served("target").meta) + json.dumps(cell.defended("target").meta)
    again = run_attack(config, store=DiskStore(tmp_path / "cache"))
    assert again.cache["computed"] == {} and again.utility == first.utility


def test_new_account_utility_without_held_out_items_reports_users_zero_not_nan():
    import scipy.sparse as sp

    lists = np.array([[0, 1], [1, 2], [2, 3]])
    future = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    others = np.array([False, True, True])
    assert new_account_utility(lists, future, others, 2) == {"users": 0}
    assert new_account_utility(lists, future, ~others, 2)["recall@2"] == 1.0


def test_the_schema_takes_new_accounts_and_checks_its_numbers(small_dataset, store):
    good = json.loads(json.dumps(run_attack(_config(small_dataset, service="foldin", **PR), store=store).to_json()))
    validate(good)
    old = copy.deepcopy(good)  # a result written before the field: still valid (version 1 grows by optional fields)
    for side in old["utility"].values():
        side.pop("new_accounts")
    validate(old)
    for spoil in (lambda n: n.update({"ndcg@10": 1.5}), lambda n: n.pop("users"), lambda n: n.update(holdout=0.2)):
        bad = copy.deepcopy(good)
        spoil(bad["utility"]["defended"]["new_accounts"])
        with pytest.raises(MiarsError, match="utility"):
            validate(bad)
