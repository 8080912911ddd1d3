"""RecBole's sequential recommenders as targets (issue 17): trained on the members' sequences, served by one
forward pass (members and new accounts alike), stored through the state contract, run end to end.

Everything here runs on small synthetic sequences with small networks and a few epochs: users walk through
the catalogue one item at a time, a pattern any sequential model learns in a few epochs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.types import Interactions, sequences
from miars_core.engine.config import AttackConfig
from miars_datasets import InteractionFile

from test_sequences import write_sequences

#: Small networks: the tests check behaviour, not accuracy.
SMALL = {"hidden_size": 16, "embedding_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 2}
PARAMS = {"epochs": 2, "batch_size": 64, "max_len": 8, "config": SMALL}
#: The models issue 17 asks for at least.
REQUIRED = ("GRU4Rec", "SASRec", "BERT4Rec", "Caser", "NARM", "STAMP")


@pytest.fixture(scope="module")
def walks(tmp_path_factory):
    """60 users x 30 items, 8-12 steps each; the first 30 users are members, the others never trained on."""
    path = write_sequences(tmp_path_factory.mktemp("seq") / "walks.tsv", n_users=60, n_items=30, length=(8, 12))
    data = InteractionFile(path).load()
    return data, data.rows(np.arange(30)), data.rows(np.arange(30, 60))


def next_items(data: Interactions, n_items: int = 30) -> np.ndarray:
    """The column of each user's true next item (one step after her last)."""
    col = {int(v): i for i, v in enumerate(data.item_ids)}
    return np.array([col[(int(data.item_ids[s[-1]]) + 1) % n_items] for s in sequences(data.ordered_matrix())])


def create(name: str, **params):
    return get_plugins().create("recommender", f"recbole:{name}", **{**PARAMS, **params})


@pytest.mark.parametrize("name", REQUIRED)
def test_each_required_model_trains_on_sequences_and_serves_everyone_by_a_forward_pass(walks, name):
    data, members, others = walks
    model = create(name).fit(members, seed=0)
    assert model.sequential and model.fit_info_["epochs_run"] == 2 and np.isfinite(model.fit_info_["final_train_loss"])
    lists = model.recommend(5)
    assert lists.shape == (30, 5)
    assert not (np.asarray(members.matrix[np.repeat(np.arange(30), 5), lists.ravel()]) > 0).any()  # known excluded
    fresh = model.recommend_for(others.ordered_matrix(), 5, seed=0)
    assert fresh.shape == (30, 5)
    assert not (np.asarray(others.matrix[np.repeat(np.arange(30), 5), fresh.ravel()]) > 0).any()
    # the state contract: stored and restored on a fresh instance, the same lists for members and new accounts
    state = model.get_state()
    assert state is not None, f"{name} could not be stored"
    arrays, record = state
    json.dumps(record, allow_nan=False)
    again = create(name).set_state({k: np.array(v) for k, v in arrays.items()}, json.loads(json.dumps(record)))
    np.testing.assert_array_equal(again.recommend(5), lists)
    np.testing.assert_array_equal(again.recommend_for(others.ordered_matrix(), 5), fresh)


def test_a_member_is_served_the_next_items_after_her_whole_sequence_and_a_new_account_the_same_way(walks):
    data, members, others = walks
    model = create("GRU4Rec", epochs=30, learning_rate=0.01).fit(members, seed=0)
    member_hits = (model.recommend(3) == next_items(members)[:, None]).any(axis=1).mean()
    fresh_hits = (model.recommend_for(others.ordered_matrix(), 3) == next_items(others)[:, None]).any(axis=1).mean()
    assert member_hits > 0.8 and fresh_hits > 0.8, (member_hits, fresh_hits)
    # the order is what is read: the same items in reverse order ask for another continuation
    reverse = others.ordered_matrix().copy()
    counts = np.diff(reverse.indptr)
    reverse.data = np.repeat(counts + 1, counts) - reverse.data
    reversed_hits = (model.recommend_for(reverse, 3) == next_items(others)[:, None]).any(axis=1).mean()
    assert reversed_hits < 0.5 * fresh_hits


def test_the_new_account_side_holds_no_member_vector(walks):
    import torch

    data, members, others = walks
    model = create("Caser").fit(members, seed=0)  # reads a user id: its user embeddings are the members'
    side = model.new_accounts()
    assert not any(torch.equal(p, q) for p, q in zip(side.model.user_embedding.parameters(),
                                                     model.model_.user_embedding.parameters()))
    assert float(side.model.user_embedding.weight.detach().abs().sum()) == 0.0
    assert side.model is not model.model_


def test_interactions_without_order_are_refused_in_one_line(walks):
    data, members, others = walks
    plain = Interactions(members.matrix, members.user_ids, members.item_ids)
    with pytest.raises(MiarsError, match="needs the order of each user's interactions"):
        create("SASRec").fit(plain, seed=0)


def test_the_registry_offers_the_sequential_models():
    from miars_recbole import sequential_model_names, supported_model_names

    names = supported_model_names()
    for name in REQUIRED:
        assert name in names and name in sequential_model_names()
    entry = get_plugins().registry("recommender").get("recbole:SASRec")
    assert entry is not None
    out = subprocess.run([sys.executable, "-m", "miars_core", "list", "recommender"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "SASRec" in out.stdout and "BERT4Rec" in out.stdout


def test_a_sequential_target_with_a_general_shadow_is_refused_before_any_work():
    from miars_core.engine.stages import Cell

    with pytest.raises(MiarsError, match="is a sequential recommender but shadow 'item' is not"):
        Cell(AttackConfig(dataset="ml-100k", target="recbole:SASRec", shadow="item"), get_plugins())


@pytest.mark.parametrize("attack, service", [("mlp", "popular"), ("query-recall", "foldin")])
def test_an_attack_on_a_sequential_target_runs_end_to_end(tmp_path, attack, service):
    path = write_sequences(tmp_path / "walks.tsv", n_users=160, n_items=150, length=(20, 30))
    params = ["--target-param", "epochs=2", "--target-param", "max_len=8", "--target-param", "batch_size=128",
              "--target-param", f"config={json.dumps(SMALL)}"]
    shadow = [p.replace("--target-param", "--shadow-param") for p in params]
    extra = ["--attack-param", "queries=1", "--attack-param", "references=1"] if attack == "query-recall" else \
        ["--attack-param", "epochs=20"]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "miars_core", "attack", "--dataset", str(path), "--target",
                           "recbole:GRU4Rec", "--shadow", "recbole:GRU4Rec", "--attack", attack, "--service", service,
                           "--top-k", "5", "--min-interactions", "5", "--no-cache", "--quiet", "--out", str(out),
                           *params, *shadow, *extra], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["recommenders"]["target"]["fit_info"]["sequential"] is True
    assert 0.0 <= result["metrics"]["roc_auc"] <= 1.0
    if attack == "query-recall":
        assert result["queries"]["used"] > 0


def test_docs_table_lists_every_recbole_sequential_model():
    from pathlib import Path

    from miars_recbole import UNSUPPORTED_SEQUENTIAL, sequential_model_names

    doc = (Path(__file__).resolve().parents[1] / "docs" / "sequential.md").read_text()
    assert set(UNSUPPORTED_SEQUENTIAL) <= set(sequential_model_names())
    for name in sequential_model_names():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/sequential.md has no row for {name}"
        assert ("not supported" in row) == (name in UNSUPPORTED_SEQUENTIAL), row
    reg = get_plugins().registry("recommender")
    for name, reason in UNSUPPORTED_SEQUENTIAL.items():
        with pytest.raises(MiarsError, match="not supported") as err:
            reg.get(f"recbole:{name}")
        assert reason in str(err.value)


def test_recboles_sequential_package_leaves_autograd_anomaly_detection_as_it_was():
    # RecBole's sine.py turns anomaly detection on when the sequential package is imported; miars restores it,
    # so one sequential model does not slow down (and change the errors of) every later fit in the process
    import torch

    from miars_recbole import compat

    assert not torch.is_anomaly_enabled()
    compat.apply()
    from recbole.utils import get_model

    get_model("SINE")
    get_model("SASRec")
    assert not torch.is_anomaly_enabled()


def test_a_grid_crossing_sequential_and_general_recommenders_runs_and_lists_the_pair_it_leaves_out(tmp_path):
    """target x shadow over {GRU4Rec, pop}: three pairs run; GRU4Rec with the general shadow is left out, with its
    reason in grid.json and the report, and its entry empty. Every pair refused: the single cell's one line."""
    from miars_core import api

    path = write_sequences(tmp_path / "walks.tsv", n_users=120, n_items=60, length=(12, 18))
    params = [f"recbole:GRU4Rec.{k}={v}" for k, v in
              (("epochs", 1), ("max_len", 8), ("batch_size", 128), ("config", json.dumps(SMALL)))]
    names = ["recbole:GRU4Rec", "pop"]
    run = api.grid(dataset=str(path), target=names, shadow=names, target_param=params, shadow_param=params,
                   attack_param=["epochs=20"], featurizer_param=["dim=16"], top_k=5, min_interactions=5, seed=[0],
                   no_cache=True, quiet=True,
                   out=str(tmp_path / "grid"), workers=1)
    assert not run.failed
    pairs = {(json.loads((run.run_dir / "cells" / c / "result.json").read_text())["config"]["target"],
              json.loads((run.run_dir / "cells" / c / "result.json").read_text())["config"]["shadow"]) for c in run.cells}
    assert pairs == {("recbole:GRU4Rec", "recbole:GRU4Rec"), ("pop", "recbole:GRU4Rec"), ("pop", "pop")}
    skipped = json.loads(run.paths["grid.json"].read_text())["spec"]["skipped"]
    assert [(s["target"], s["shadow"]) for s in skipped] == [("recbole:GRU4Rec", "pop")]
    assert any("left out" in n and "sequential target needs a sequential shadow" in n for n in run.notes)
    tables = (run.run_dir / "report" / "tables.md").read_text()
    assert "target recbole:GRU4Rec with shadow pop: a sequential target needs a sequential shadow" in tables
    assert "Left out" in (run.run_dir / "report" / "report.html").read_text()
    with pytest.raises(MiarsError, match="is a sequential recommender but shadow 'pop' is not"):
        api.grid(dataset=str(path), target=["recbole:GRU4Rec"], shadow=["pop"], target_param=params, seed=[0],
                 no_cache=True, quiet=True, out=str(tmp_path / "refused"))
    assert not (tmp_path / "refused").exists()  # refused before any folder was made
