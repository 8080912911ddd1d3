"""Controls in every report: the no-signal check in every cell, and control recommenders beside the real ones."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from miars_core.cli import app
from miars_core.contracts.plugins import get_plugins
from miars_core.engine.grid import GridSpec, cell_record
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.engine.store import MemoryStore
from miars_core.kit import checks
from miars_recbole.models import Popularity, RandomItems

SMALL = {"top_k": 10, "min_interactions": 5, "featurizer_params": {"dim": 8}, "attack_params": {"epochs": 50}}
FLAGS = ["--top-k", "10", "--min-interactions", "5", "--featurizer-param", "dim=8", "--attack-param", "epochs=50",
         "--workers", "1", "-q"]


@pytest.fixture(scope="module")
def store():
    return MemoryStore()


def _results(run_dir):
    return {json.loads(p.read_text())["cell"]["id"]: json.loads(p.read_text()) for p in run_dir.glob("cells/*/result.json")}


def test_the_random_control_keeps_the_recommender_contract_and_folds_in():
    checks.check_recommender(RandomItems)
    data = checks.make_interactions()
    rec = RandomItems().fit(data, seed=3)
    lists = rec.recommend(10)
    catalog = np.flatnonzero(data.item_popularity() > 0)
    assert np.isin(lists, catalog).all()  # drawn among the items the service knows
    assert len({tuple(r) for r in lists}) == len(lists)  # every user her own draw
    rec.block_elements = 3 * data.n_items  # drawn in blocks of users: the same lists
    assert np.array_equal(rec.recommend(10), lists)
    new = rec.recommend_for(data.matrix[:5], 4, seed=1)
    assert new.shape == (5, 4) and not np.asarray(data.matrix[np.repeat(np.arange(5), 4), new.ravel()]).any()
    assert get_plugins().registry("recommender").get("random").summary.startswith("Control")
    assert get_plugins().registry("recommender").get("pop").factory is Popularity


# The popularity measure (users split, no hold-out) reads popularity bias: on this fixture every taste block is
# equally popular, so a personalized recommender reads lift ~1 there and the popular-items one stands for "trained".
@pytest.mark.parametrize("split, holdout, method, trained", [
    ("interactions", 0.0, "vectorization", "item"), ("interactions", 0.2, "vectorization", "item"),
    ("users", 0.0, "popularity", "pop"), ("users", 0.2, "holdout", "item")])
def test_every_cell_checks_its_target_for_signal(small_dataset, store, split, holdout, method, trained):
    base = dict(dataset=str(small_dataset), shadow="item", split=split, utility_holdout=holdout, **SMALL)
    random = run_attack(AttackConfig(target="random", **base), store=store).recommenders["target"]["utility"]
    item = run_attack(AttackConfig(target=trained, **base), store=store).recommenders["target"]["utility"]
    assert random["method"] == item["method"] == method
    assert random["no_signal"] and random["lift"] < 1.5 and "carry no signal" in random["warning"]
    assert not item["no_signal"] and item["lift"] > 1.5 and "warning" not in item
    assert random["expected_by_chance"] >= 20


def test_the_check_judges_the_lists_the_attack_sees(small_dataset, store):
    config = AttackConfig(dataset=str(small_dataset), target="item", defense="list-noise", defense_params={"p": 1.0}, **SMALL)
    result = run_attack(config, store=store)
    utility = result.recommenders["target"]["utility"]
    assert utility["lists"] == "defended" and utility["no_signal"]  # every item replaced at random: nothing left


def test_grid_and_report_flag_a_target_without_signal(small_dataset, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["grid", "--dataset", str(small_dataset), "--target", "random,item", "--shadow", "item",
                                   "--split", "users", "--utility-holdout", "0.2", *FLAGS, "--out", str(out), "--cache",
                                   str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    results = _results(out)
    flagged = [cid for cid, r in results.items() if r["recommenders"]["target"]["utility"].get("warning")]
    assert len(flagged) == 1 and "_random_item_" in flagged[0]
    tables = (out / "report" / "tables.md").read_text()
    assert f"`{flagged[0]}`" in tables and "| **random** [control] [no signal] |" in tables
    assert "| **item** |" in tables
    html = (out / "report" / "report.html").read_text()
    assert 'id="checks"' in html and flagged[0] in html and "random [control] [no signal]" in html
    rows = list(csv.DictReader((out / "report" / "tables.csv").open()))
    assert {(r["target"], r["control"], r["no_signal_cells"]) for r in rows} == {("random", "true", "1"), ("item", "false", "0")}


def test_controls_flag_adds_random_and_pop_beside_the_real_targets(small_dataset, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["grid", "--dataset", str(small_dataset), "--target", "item", "--controls",
                                   "--service", "popular,foldin", *FLAGS, "--out", str(out), "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    cells = {(r["cell"]["target"], r["cell"]["shadow"], r["cell"]["service"]): r for r in _results(out).values()}
    assert set(cells) == {(t, t, s) for t in ("item", "random", "pop") for s in ("popular", "foldin")}
    assert [cells[(t, t, "popular")]["cell"]["control"] for t in ("item", "random", "pop")] == [False, True, True]
    roc = {key: r["metrics"]["roc_auc"] for key, r in cells.items()}
    # the confound: random lists against the popular list read as membership; under fold-in they read chance
    assert roc[("random", "random", "popular")] > 0.85 and abs(roc[("random", "random", "foldin")] - 0.5) < 0.1
    assert abs(roc[("pop", "pop", "popular")] - 0.5) < 0.1
    tables = (out / "report" / "tables.md").read_text()
    assert "| **pop** [control] |" in tables and "## Controls and checks" in tables and "confound" in tables
    rows = list(csv.DictReader((out / "report" / "tables.csv").open()))
    assert {r["target"] for r in rows if r["control"] == "true"} == {"random", "pop"}
    assert "random [control]" in (out / "report" / "report.html").read_text()


def test_controls_take_no_parameter_meant_for_the_real_targets_and_the_toml_key(tmp_path):
    spec = GridSpec(target=["lfm"], controls=True, target_params={"*": {"epochs": 1}})
    configs = {c.target: c for c in spec.configs()}
    assert configs["lfm"].target_params == {"epochs": 1} and configs["random"].target_params == {}
    assert cell_record(configs["pop"])["control"] and not cell_record(configs["lfm"])["control"]
    assert [c.target for c in GridSpec(target=["pop", "item"], controls=True).configs()] == ["pop", "item", "random"]
    bad = tmp_path / "grid.toml"
    bad.write_text('controls = "yes"\n')
    res = CliRunner().invoke(app, ["grid", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and res.output.startswith("miars: error: --config") and "controls = 'yes' is not true or false" in res.output
    assert not (tmp_path / "x").exists()


def test_bench_defenses_reports_controls_and_flags(small_dataset, tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["bench-defenses", "--dataset", str(small_dataset), "--target", "item", "--controls",
                                   "--defense", "list-noise", "--defense-param", "p=0.3", "--seed", "0", "--top-k", "10",
                                   "--attack-param", "epochs=50", "--workers", "1", "-q", "--out", str(out),
                                   "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    md = (out / "report" / "defenses.md").read_text()
    assert "target random [control: random items]" in md and "target pop [control: popular items]" in md
    assert "| none [no signal] |" in md and "No signal in:" in md
    rows = list(csv.DictReader((out / "report" / "defenses.csv").open()))
    assert {r["target"] for r in rows if r["control"] == "true"} == {"random", "pop"}
    assert any(r["target"] == "random" and r["no_signal_cells"] == "1" for r in rows)
    assert "[control: random items]" in (out / "report" / "report.html").read_text()


def test_a_single_run_prints_and_writes_the_flag_also_for_a_dataset_transfer(small_dataset, tmp_path):
    from conftest import write_clustered_interactions

    from miars_core.cli import _attack_app

    other = write_clustered_interactions(tmp_path / "other.tsv", n_users=240, n_items=120, seed=7)
    out = tmp_path / "out"
    res = CliRunner().invoke(_attack_app(), [
        "--dataset", str(small_dataset), "--shadow-dataset", str(other), "--target", "random", "--shadow", "item",
        "--top-k", "10", "--min-interactions", "5", "--featurizer-param", "dim=8", "--attack-param", "epochs=50",
        "--out", str(out), "-q"])
    assert res.exit_code == 0, res.stderr
    utility = json.loads((out / "result.json").read_text())["recommenders"]["target"]["utility"]
    assert utility["no_signal"] and f"miars: warning: {utility['warning']}" in " ".join(res.stderr.split())
    assert len((out / "scores.tsv").read_text().splitlines()) == 1 + json.loads((out / "result.json").read_text())[
        "split"]["target"]["users"]
