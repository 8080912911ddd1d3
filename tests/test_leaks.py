"""No membership leak outside the model: the overlap control reads chance under every protocol option.

The utility hold-out is the users' future: a share of every user's interactions in both parts is
removed before the service or the adversary sees the part. Members' and non-members' visible
histories then come from one distribution, and no served list holds a visible history item.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

import miars_attacks
from miars_core.contracts.plugins import get_plugins
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.engine.graph import Node
from miars_core.engine.stages import Cell
from miars_core.engine.store import MemoryStore
from miars_core.kit import checks
from miars_core.science.threat import AdversaryView

#: Every kind of defense: none, one acting on lists, one on the training data, one training the model privately.
DEFENSES = {"none": (None, {}), "lists": ("list-noise", {"p": 0.3}), "data": ("subsample", {"fraction": 0.5}),
            "training": ("dp-itemknn", {"epsilon": 1.0})}
SMALL = {"top_k": 10, "min_interactions": 5, "featurizer_params": {"dim": 8}}


@pytest.fixture(scope="module")
def store():
    return MemoryStore()  # splits and fits shared by the cells of this module


def test_the_overlap_control_is_registered_and_scores_the_share_of_the_list_in_the_history():
    entry = get_plugins().registry("attack").get("overlap")
    assert entry.factory is miars_attacks.OverlapControl and entry.summary.startswith("Control")
    checks.check_attack(miars_attacks.OverlapControl)
    histories = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 0, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=np.float32))
    lists = np.array([[0, 2], [3, 4], [1, 2]])
    view = AdversaryView(histories=histories, lists=lists, k=2)
    control = miars_attacks.OverlapControl().fit(view)
    assert control.decision_function(view).tolist() == [0.5, 1.0, 0.0]
    assert control.predict(view).tolist() == [True, True, False]


@pytest.mark.parametrize("service, defense, split, holdout",
                         list(itertools.product(("popular", "foldin"), DEFENSES, ("interactions", "users"), (0.0, 0.2))))
def test_no_served_list_holds_a_visible_history_item(small_dataset, store, service, defense, split, holdout):
    name, params = DEFENSES[defense]
    config = AttackConfig(dataset=str(small_dataset), target="item", attack="overlap", service=service, defense=name,
                          defense_params=params, split=split, utility_holdout=holdout, **SMALL)
    result = run_attack(config, store=store)
    for scores in (result.artifacts["attacker_scores"]).values():
        assert not np.any(scores), "a served list holds an item of the user's visible history"
    for metrics in (result.attackers or {"attack": result.metrics}).values():
        assert metrics["roc_auc"] == 0.5
    if holdout:  # utility is still measured on the members' future, undefended and defended
        assert result.utility["undefended"]["users"] == result.split["target"]["members"]
        assert result.utility["undefended"]["recall@10"] > 0
        assert ("defended" in result.utility) == (name is not None)


@pytest.mark.parametrize("service", ["popular", "foldin"])
def test_no_leak_under_dp_sgd(small_dataset, store, service):
    config = AttackConfig(dataset=str(small_dataset), target="lfm", attack="overlap", service=service, defense="dp-sgd",
                          defense_params={"epochs": 1}, utility_holdout=0.2, target_params={"epochs": 2},
                          shadow_params={"epochs": 2}, **SMALL)
    result = run_attack(config, store=store)
    assert result.attackers["defense_aware"]["roc_auc"] == result.attackers["defense_unaware"]["roc_auc"] == 0.5
    assert not np.any(result.artifacts["scores"])


@pytest.mark.parametrize("split", ["interactions", "users"])
def test_the_holdout_is_every_users_future(small_dataset, split):
    config = AttackConfig(dataset=str(small_dataset), target="item", split=split, utility_holdout=0.2, **SMALL)
    cell = Cell(config, get_plugins())
    for part in ("shadow", "target"):
        whole = getattr(cell.split(part), part)
        visible, future = cell.part(part), cell.future(part)
        assert np.array_equal(visible.is_member, whole.is_member)
        # disjoint, and together the split's part: nothing lost, nothing seen twice
        assert visible.interactions.matrix.multiply(future).nnz == 0
        assert (visible.interactions.matrix + future != whole.interactions.matrix).nnz == 0
        # members and non-members alike lose round(0.2 n) of their n interactions (at least one is kept)
        n = whole.interactions.user_counts()
        assert np.array_equal(np.diff(future.indptr), np.minimum(n - 1, np.rint(0.2 * n).astype(int)))
        # the adversary sees the visible history only
        view = cell.view(part, False, np.zeros((len(n), 1)), "lists")
        assert (view.histories != visible.interactions.matrix).nnz == 0
    # seeded: the same cell draws the same future; the two parts draw theirs independently
    again = Cell(config, get_plugins())
    assert (again.future("target") != cell.future("target")).nnz == 0


def test_the_holdout_enters_the_keys_of_every_stage_it_changes_and_no_holdout_keeps_them(small_dataset):
    plugins = get_plugins()
    base = dict(dataset=str(small_dataset), target="item", defense="list-noise", **SMALL)
    plain, held = Cell(AttackConfig(**base), plugins), Cell(AttackConfig(**base, utility_holdout=0.2), plugins)
    for part in ("shadow", "target"):
        # the hold-out is in the key of the visible part, which every stage reading the part's users has as an input
        assert "holdout" not in plain.walker.record(Node("part", part)) and "holdout" in held.walker.record(Node("part", part))
        assert plain.walker.record(Node("model", part))["part"] == plain.key("part", part)
        assert plain.key("split", part) == held.key("split", part)  # the split itself does not change
        assert plain.key("vectors", part) == held.key("vectors", part)  # nor the adversary's own data
        for stage, defended in (("model", False), ("serve", False), ("defend", False), ("features", False),
                                ("features", True)):
            assert plain.key(stage, part, defended) != held.key(stage, part, defended), (stage, part)
    assert plain.key("attack", "", True) != held.key("attack", "", True)
    assert plain.part("target") is getattr(plain.split("target"), "target") and plain.future("target") is None
