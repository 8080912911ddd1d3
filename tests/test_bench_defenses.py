"""miars bench-defenses: defenses x parameters x recommenders x seeds on the grid engine, tables and frontier."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from miars_core.cli import app
from miars_core.defensereport import defense_rows
from miars_core.gridreport import load_cells
from miars_core.pipeline import AttackConfig, run_attack


def test_bench_defenses_runs_the_sweep_and_writes_table_and_frontier(small_dataset, tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, [
        "bench-defenses", "--dataset", str(small_dataset), "--target", "item", "--defense", "popularity-randomization",
        "--defense-param", "ratio=0.1,0.2", "--seed", "0,1", "--top-k", "10", "--attack-param", "epochs=20",
        "--workers", "1", "-q", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    rows = defense_rows(load_cells(out))
    assert [(r.defense, r.params) for r in rows] == [("none", {}), ("popularity-randomization", {"ratio": 0.1}),
                                                     ("popularity-randomization", {"ratio": 0.2})]
    for r in rows:
        assert r.estimates["static:roc_auc"].n_seeds == 2
        assert {"utility:recall@10", "utility:ndcg@10", "utility:hr@10", "cost:seconds"} <= set(r.estimates)
    none, defended = rows[0], rows[1]
    # undefended: both attackers are the same attacker
    assert none.values["static:roc_auc"] == none.values["adaptive:roc_auc"]
    # popularity randomization only rewrites non-members' lists: the members' utility is untouched
    assert defended.values["utility:ndcg@10"] == none.values["utility:ndcg@10"]
    assert (out / "report" / "defenses.md").read_text().count("| popularity-randomization (ratio=") == 2
    html = (out / "report" / "report.html").read_text()
    assert 'id="defenses"' in html and "privacy-utility frontier" in html
    png = next((out / "report" / "img").glob("frontier-*.png")).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_utility_holdout_is_measured_on_items_the_service_never_saw(small_dataset):
    result = run_attack(AttackConfig(dataset=str(small_dataset), target="item", shadow="item", top_k=10, utility_holdout=0.2,
                                     attack_params={"epochs": 20}))
    u = result.utility["undefended"]
    assert u["holdout"] == 0.2 and u["users"] == result.split["target"]["members"]
    assert 0 < u["recall@10"] <= 1 and 0 < u["ndcg@10"] <= 1 and u["hr@10"] >= u["recall@10"]
    # the recommender's own block holds the no-signal check (its lists against the members' other items)
    assert result.recommenders["target"]["utility"]["method"] == "vectorization" and "recall@10" not in json.dumps(
        result.recommenders)
    pop = run_attack(AttackConfig(dataset=str(small_dataset), target="pop", shadow="pop", top_k=10, utility_holdout=0.2,
                                  attack_params={"epochs": 20}))
    # a personalized recommender finds more of the held-out items than the popularity list
    assert u["recall@10"] > pop.utility["undefended"]["recall@10"]
    assert np.isfinite(list(v for v in u.values() if isinstance(v, float))).all()
