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
    # popularity randomization only rewrites non-members' lists: the members' utility is untouched...
    assert defended.values["utility:ndcg@10"] == none.values["utility:ndcg@10"]
    # ...but the service's new accounts (the non-members) get other lists: their own utility columns tell
    # (under the popular service a random draw from the popular pool may score near the popular list here;
    # tests/test_new_account_utility.py measures the fold-in cost)
    assert {"new_accounts:recall@10", "new_accounts:ndcg@10", "new_accounts:hr@10"} <= set(defended.estimates)
    assert defended.values["new_accounts:ndcg@10"] != none.values["new_accounts:ndcg@10"]
    md = (out / "report" / "defenses.md").read_text()
    none_rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| none")]  # a [no signal] marker may follow
    assert md.count("| popularity-randomization (ratio=") == 2 and "| defense | n | " in md
    assert len(none_rows) == 1 and none_rows[0][1] == "2"
    assert "Student-t 95% CI" in md
    header = next(line for line in md.splitlines() if line.startswith("| defense |"))
    assert "| ndcg@10 |" in header and "| new accounts ndcg@10 |" in header
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
    from miars_core.reports.defensereport import _key_label, defenses_csv, defenses_markdown, frontier_png

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
    assert _key_label(by["dp-sgd"]) == "dp-sgd (epsilon=1.0), ε=0.99 per record"
    assert _key_label(by["dp-user"]) == "dp-user (epsilon=1.0), ε=1 per user"
    assert frontier_png(rows, "d", "lfm")[:8] == b"\x89PNG\r\n\x1a\n"


def test_cells_written_before_new_account_utility_show_it_missing_never_zero():
    from miars_core.reports.defensereport import _key_label, defenses_csv, defenses_markdown, frontier_png

    old = [_record("none", {}, None, seed, 0.9) for seed in (0, 1)]  # result.json without utility.*.new_accounts
    new = [_record("list-noise", {"p": 0.5}, None, seed, 0.6) for seed in (0, 1)]
    for seed, rec in enumerate(new):
        rec.result["utility"]["defended"]["new_accounts"] = {"ndcg@10": (0.05, 0.06)[seed], "users": 4}
    mixed = _record("rank-shuffle", {}, None, 0, 0.7), _record("rank-shuffle", {}, None, 1, 0.7)
    mixed[1].result["utility"]["defended"]["new_accounts"] = {"ndcg@10": 0.2, "users": 4}
    rows = defense_rows(old + new + list(mixed))
    by = {r.defense: r for r in rows}
    assert "new_accounts:ndcg@10" not in by["none"].estimates and by["none"].values["utility:ndcg@10"] == [0.1, 0.1]
    assert by["list-noise"].values["new_accounts:ndcg@10"] == [0.05, 0.06]
    assert by["rank-shuffle"].values["new_accounts:ndcg@10"] == [0.2]  # the old cell adds nothing, not a 0
    md = defenses_markdown(rows).splitlines()
    header = next(line for line in md if line.startswith("| defense |")).split(" | ")
    column = header.index("new accounts ndcg@10")
    assert next(line for line in md if line.startswith("| none |")).split(" | ")[column] == "–"
    assert next(line for line in md if line.startswith("| rank-shuffle |")).split(" | ")[column] == "0.200 (1 seed)"
    assert "d,lfm,list-noise,p=0.5,10,new_accounts:ndcg@10," in defenses_csv(rows)
    assert _key_label(by["list-noise"]) == "list-noise (p=0.5); new accounts NDCG@10 0.055"
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


def _crowded_records():
    """Cells of a frontier as crowded as ml-1m's: points piled at the undefended point's utility and leakage."""
    def record(defense, params, privacy, auc, static, ndcg):
        from pathlib import Path

        from miars_core.reports.gridreport import CellRecord

        result = {"metrics": {"roc_auc": auc}, "attackers": {"defense_aware": {"roc_auc": auc},
                                                              "defense_unaware": {"roc_auc": static}},
                  "utility": {"defended": {"ndcg@100": ndcg}},
                  "recommenders": {"target": {"fit_seconds": 1.0, **({"privacy": privacy} if privacy else {})}}}
        cell = {"dataset": "d", "target": "item", "defense": defense, "defense_params": params, "top_k": 100, "seed": 0}
        return CellRecord(f"{defense}-{sorted(params.items())}", Path("."), cell, "ok", result)

    records = [record("none", {}, None, 0.995, 0.995, 0.157)]
    for r in (0.1, 0.25, 0.5, 0.75):
        records.append(record("subsample", {"ratio": r}, None, 0.995, 0.995, 0.157 - r * 0.0001))
    for r in (0.1, 0.2, 0.5, 1.0):
        records.append(record("popularity-randomization", {"ratio": r}, None, 0.995, 0.25 - r * 0.18, 0.157))
    for w in (5, 10, 20, 100):
        records.append(record("rank-shuffle", {"window": w}, None, 0.99, 0.95, 0.156))
    for e in (0.5, 1.0, 5.0):
        records.append(record("dp-itemknn", {"epsilon": e}, {"epsilon": e, "level": "user"}, 0.6 + 0.3 / e, 0.6, 0.02 * e))
    records.append(record("dp-sgd", {"epsilon": 1.0}, {"epsilon": 1.0, "level": "record"}, 0.7, 0.6, 0.05))
    return records


def test_frontier_labels_do_not_overlap_and_the_undefended_point_is_on_top():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from miars_core.reports.defensereport import frontier_figure, frontier_points

    rows = defense_rows(_crowded_records())
    fig = frontier_figure(rows, "d", "item")
    ax = fig.axes[0]
    position = ax.get_position().bounds
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # what the PNG shows: the labels were placed on this same layout
    assert ax.get_position().bounds == position
    renderer = canvas.get_renderer()
    labels = [t for t in ax.texts if t.get_gid() == "frontier-label"]
    numbered = frontier_points(rows, "d", "item")
    assert sorted(t.get_text() for t in labels) == sorted(str(n) for n, _ in numbered) and len(labels) == 16
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text itself, without its leader line
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), f"labels overlap: {a} {b}"
    frame = ax.get_window_extent(renderer)
    assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes)
    star = [c for c in ax.collections if c.get_offsets().shape[0] and c.get_sizes()[0] > 200]
    assert len(star) == 1 and star[0].get_zorder() > max(c.get_zorder() for c in ax.collections if c is not star[0])
    # record- and user-level epsilon: their own markers and key entries
    key = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("epsilon per user" in t for t in key) and any("epsilon per record" in t for t in key)
    assert "dp-itemknn (epsilon=0.5), ε=0.5 per user" in key and "dp-sgd (epsilon=1.0), ε=1 per record" in key
    markers = {m.get_marker() for m in fig.legends[0].legend_handles}
    assert {"D", "^", "o", "*", "s"} <= markers


def test_the_defense_table_numbers_the_frontier_s_points():
    from miars_core.reports.defensereport import defense_section, frontier_points

    records = _crowded_records()
    numbered = {r.label: n for n, r in frontier_points(defense_rows(records), "d", "item")}
    assert numbered["dp-itemknn (epsilon=0.5)"] == 1 and "none" not in numbered
    images: dict[str, bytes] = {}
    html, _, _ = defense_section(records, images)
    assert list(images) == ["frontier-d-item.png"]
    for label, n in numbered.items():
        assert f'<td>{n}</td><td class="l">{label}</td>' in html
    assert '<td></td><td class="l">none</td>' in html
