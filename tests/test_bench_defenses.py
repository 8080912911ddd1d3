"""miars bench-defenses: defenses x parameters x recommenders x seeds on the grid engine, tables and frontier."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
from typer.testing import CliRunner

from miars_core.cli import app
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.reports.defensereport import defense_rows
from miars_core.reports.gridreport import load_cells


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
    md = (out / "report" / "defenses.md").read_text()
    none_rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| none")]  # a [no signal] marker may follow
    assert md.count("| popularity-randomization (ratio=") == 2 and "| defense | n | " in md
    assert len(none_rows) == 1 and none_rows[0][1] == "2"
    assert "Student-t 95% CI" in md
    table = list(csv.DictReader(io.StringIO((out / "report" / "defenses.csv").read_text())))
    assert table and {r["ci_method"] for r in table} == {"student-t"} and {r["n_seeds"] for r in table} == {"2"}
    by_row = {(x.defense, ";".join(f"{k}={v}" for k, v in sorted(x.params.items()))): x for x in rows}
    for r in table:  # with 2 seeds the t-interval (t = 12.7) brackets both values
        values = by_row[(r["defense"], r["params"])].values[r["column"]]
        assert float(r["ci_low"]) <= min(values) + 1e-12 and max(values) - 1e-12 <= float(r["ci_high"])
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


def _record(defense, params, privacy, seed, auc):
    from pathlib import Path

    from miars_core.reports.gridreport import CellRecord

    metrics = {"roc_auc": auc, "balanced_accuracy": 0.5}
    result = {"metrics": metrics, "attackers": {"defense_aware": metrics, "defense_unaware": metrics},
              "utility": {"defended": {"ndcg@10": 0.1, "holdout": 0.2, "users": 5}},
              "recommenders": {"target": {"fit_seconds": 1.0, **({"privacy": privacy} if privacy else {})}}}
    cell = {"dataset": "d", "target": "lfm", "defense": defense, "defense_params": params, "top_k": 10, "seed": seed}
    return CellRecord(f"{defense}-{seed}", Path("."), cell, "ok", result)


def test_epsilon_unit_is_a_column_of_every_defense_table_and_labels_the_frontier():
    from miars_core.reports.defensereport import _point_label, defenses_csv, defenses_markdown, frontier_png

    records = [_record("none", {}, None, 0, 0.9)]
    for seed, eps in ((0, 0.98), (1, 1.0)):
        records.append(_record("dp-sgd", {"epsilon": 1.0}, {"epsilon": eps, "delta": 1e-6, "level": "record"}, seed, 0.6))
        records.append(_record("dp-user", {"epsilon": 1.0}, {"epsilon": 1.0, "delta": 0.0, "level": "user"}, seed, 0.5))
    rows = defense_rows(records)
    by = {r.defense: r for r in rows}
    assert (by["none"].level, by["dp-sgd"].level, by["dp-user"].level) == ("", "record", "user")
    assert by["dp-sgd"].estimates["privacy:epsilon"].mean == np.mean([0.98, 1.0])
    md = defenses_markdown(rows)
    header = next(line for line in md.splitlines() if line.startswith("| defense |"))
    assert header.split(" | ")[1:3] == ["n", "epsilon unit"] and "DP epsilon" in header
    assert "| dp-sgd (epsilon=1.0) | 2 | record |" in md and "| dp-user (epsilon=1.0) | 2 | user |" in md
    assert "| none | 1 | – |" in md
    csv = defenses_csv(rows).splitlines()
    assert csv[0].endswith(",epsilon_unit")
    assert {line.rsplit(",", 1)[1] for line in csv[1:] if line.startswith("d,lfm,dp-sgd,")} == {"record"}
    assert _point_label(by["dp-sgd"]) == "eps=0.99 record" and _point_label(by["dp-user"]) == "eps=1 user"
    assert frontier_png(rows, "d", "lfm")[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_dp_cell_reports_its_guarantee_and_what_lies_outside_it(small_dataset, tmp_path):
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, [
        "bench-defenses", "--dataset", str(small_dataset), "--target", "item", "--defense", "dp-itemknn",
        "--defense-param", "epsilon=5", "--seed", "0", "--top-k", "10", "--attack-param", "epochs=20",
        "--workers", "1", "-q", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    cell = next(r for r in load_cells(out) if r.cell.get("defense") == "dp-itemknn")
    privacy = cell.result["recommenders"]["target"]["privacy"]
    assert privacy["level"] == "user" and privacy["epsilon"] == 5.0
    assert any("cold-start" in line and "exact item counts" in line for line in privacy["outside"])
    rows = [line for line in (out / "report" / "defenses.md").read_text().splitlines()
            if line.startswith("| dp-itemknn (epsilon=5)")]  # a [no signal] marker may follow the label
    assert len(rows) == 1 and rows[0].split(" | ")[1:3] == ["1", "user"]
