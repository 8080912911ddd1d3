"""Grid reports (``miars report``) on hand-built run folders in the layout ``miars grid --out`` writes.

The fake run: dataset ``toy``, targets x shadows ``item``/``lfm``, seeds 0-2, scores drawn so
that each (target, shadow) pair has its own strength; one defended cell (target and shadow
``item``, seed 0, both attackers); one failed cell (error.json); one cell listed in grid.json
but never written. Every result.json holds metrics computed from its own scores.tsv.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from miars_core import cli
from miars_core.contracts.errors import MiarsError
from miars_core.reports.gridreport import TABLE_METRICS, build_groups, load_cells, write_report
from miars_core.science.intervals import mean_ci
from miars_core.science.metrics import membership_metrics

RUNNER = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI = '<img src="data:image/png;base64,'
TARGETS = ("item", "lfm")
SHADOWS = ("item", "lfm")
SEEDS = (0, 1, 2)
STRENGTH = {("item", "item"): 2.0, ("item", "lfm"): 1.2, ("lfm", "item"): 0.8, ("lfm", "lfm"): 1.6}
N_USERS = 120


def _cell(target, shadow, seed, defense="none", defense_params=None):
    suffix = "" if defense == "none" else f"-{defense}"
    return {
        "id": f"toy-{target}-{shadow}{suffix}-s{seed}", "dataset": "toy", "shadow_dataset": "toy",
        "target": target, "shadow": shadow, "defense": defense, "defense_params": defense_params or {},
        "top_k": 10, "seed": seed, "featurizer": "center-diff", "attack": "mlp",
    }


def _scores(strength: float, seed: int):
    rng = np.random.default_rng([seed, int(strength * 100)])
    y = np.arange(N_USERS) < N_USERS // 2
    s = rng.normal(0.0, 1.0, N_USERS) + strength * y - strength / 2
    return y, np.array([float(f"{x:.9g}") for x in s])  # exactly what scores.tsv holds


def _write_scores(path: Path, y, s):
    path.write_text("user_id\tis_member\tscore\n" + "".join(f"u{i}\t{int(m)}\t{x:.9g}\n" for i, (m, x) in enumerate(zip(y, s))))


def _write_cell(root: Path, cell: dict, strength: float) -> dict:
    d = root / "cells" / cell["id"]
    d.mkdir(parents=True)
    y, s = _scores(strength, cell["seed"])
    _write_scores(d / "scores.tsv", y, s)
    metrics = membership_metrics(y, s)
    result = {"metrics": metrics, "timings": {"attack": 0.1}, "config": {"dataset": "toy", "seed": cell["seed"]},
              "split": {}, "recommenders": {}, "components": {}, "versions": {}, "cell": cell}
    if cell["defense"] != "none":
        y2, s2 = _scores(strength / 4, cell["seed"] + 100)
        _write_scores(d / "scores_defense_unaware.tsv", y2, s2)
        result["attackers"] = {"defense_aware": metrics,
                               "defense_unaware": membership_metrics(y2, s2)}
    (d / "result.json").write_text(json.dumps(result))
    return result


def make_run(root: Path) -> dict:
    """Write the fake run into ``root``; return {cell id: result dict} of the finished cells."""
    results = {}
    for t in TARGETS:
        for sh in SHADOWS:
            for seed in SEEDS:
                c = _cell(t, sh, seed)
                results[c["id"]] = _write_cell(root, c, STRENGTH[(t, sh)])
    dc = _cell("item", "item", 0, "popularity-randomization", {"ratio": 0.1})
    results[dc["id"]] = _write_cell(root, dc, 2.0)
    bad = _cell("lfm", "lfm", 3)
    (root / "cells" / bad["id"]).mkdir()
    (root / "cells" / bad["id"] / "error.json").write_text(
        json.dumps({"cell": bad, "stage": "target_recommender", "error": "RuntimeError: boom at epoch 7"}))
    grid = {"spec": {"dataset": ["toy"], "target": list(TARGETS), "shadow": list(SHADOWS), "seed": list(SEEDS)},
            "cells": sorted(results) + [bad["id"], "toy-never-written"], "failed": [bad["id"]],
            "wall_seconds": 12.5, "stage_seconds": {"fit": 8.0, "attack": 4.5}}
    (root / "grid.json").write_text(json.dumps(grid))
    return results


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    results = make_run(root)
    html_path = write_report(root)
    return root, results, html_path


def _csv_rows(root: Path) -> list[dict]:
    with open(root / "report" / "tables.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ------------------------------------------------------------------------- statistics


def test_the_interval_is_the_student_t_interval_of_the_mean():
    values = [0.71, 0.74, 0.69, 0.80]
    est = mean_ci(values)
    m, s = np.mean(values), np.std(values, ddof=1)
    half = 3.182446305284263 * s / 2  # t(0.975, 3) from tables, sqrt(4) = 2
    assert (est.mean, est.ci_low, est.ci_high) == pytest.approx((m, m - half, m + half), abs=1e-12)
    assert est.n_seeds == 4 and est.method == "student-t"


def test_one_value_has_no_interval_equal_values_a_point_and_bounds_clip():
    one = mean_ci([0.9])
    assert (one.mean, one.ci_low, one.ci_high, one.n_seeds, one.method) == (0.9, None, None, 1, "none")
    const = mean_ci([0.6, 0.6, 0.6])
    assert const.ci_low == pytest.approx(0.6) and const.ci_high == pytest.approx(0.6)
    assert mean_ci([]).n_seeds == 0 and mean_ci([0.5, None, float("nan")]).n_seeds == 1
    near_one = mean_ci([0.99, 0.999, 0.95])
    assert near_one.ci_high == 1.0 and near_one.ci_low < 0.95  # clipped to the rate's range, never past it
    assert mean_ci([0.99, 0.999, 0.95], bounds=None).ci_high > 1.0
    assert mean_ci([3.0, 5.0, 9.0]).ci_high > 9.0  # values outside the bounds: not a rate, not clipped


def test_the_interval_holds_its_coverage_at_three_seeds():
    """2,000 simulated 3-seed settings (seeded): the 95% interval covers the true mean >= 93% of the time
    for normal values, where the seeds' range (the former percentile bootstrap of 3 values) covers ~75%."""
    rng = np.random.default_rng(13)
    mu = 0.8
    samples = rng.normal(mu, 0.03, size=(2000, 3))
    covered = [(e.ci_low <= mu <= e.ci_high) for e in map(mean_ci, samples)]
    assert np.mean(covered) >= 0.93
    in_range = (samples.min(axis=1) <= mu) & (mu <= samples.max(axis=1))
    assert np.mean(in_range) < 0.80
    # a skewed distribution (values pressed against 1, like a high ROC-AUC: Beta(20, 1)) lowers the coverage,
    # which docs/notes.md reports (~0.89 at 3 seeds): the interval still beats the range by far
    skewed = rng.beta(20, 1, size=(2000, 3))
    truth = 20 / 21
    cover = np.mean([e.ci_low <= truth <= e.ci_high for e in map(mean_ci, skewed)])
    in_range = np.mean((skewed.min(axis=1) <= truth) & (truth <= skewed.max(axis=1)))
    assert 0.80 < cover < 0.95 and cover > in_range + 0.1


def test_wider_spread_gives_a_wider_ci():
    narrow = mean_ci([0.70, 0.71, 0.72])
    wide = mean_ci([0.60, 0.71, 0.82])
    assert wide.ci_high - wide.ci_low > narrow.ci_high - narrow.ci_low


# ------------------------------------------------------------------------- loading


def test_load_cells_sees_finished_failed_and_missing_cells(run):
    root, results, _ = run
    records = {r.id: r for r in load_cells(root)}
    assert {i for i, r in records.items() if r.status == "ok"} == set(results)
    failed = [r for r in records.values() if r.status == "failed"]
    assert [r.id for r in failed] == ["toy-lfm-lfm-s3"]
    assert failed[0].stage == "target_recommender" and "boom at epoch 7" in failed[0].error
    assert records["toy-never-written"].status == "missing"


# ------------------------------------------------------------------------- tables


def test_csv_means_equal_the_hand_computed_means_and_cis_are_wider_than_the_seeds_spread(run):
    root, results, _ = run
    rows = [r for r in _csv_rows(root) if r["defense"] == "none"]
    assert len(rows) == len(TARGETS) * len(SHADOWS) * len(TABLE_METRICS)
    ratios = []
    for r in rows:
        values = [results[_cell(r["target"], r["shadow"], s)["id"]]["metrics"][r["metric"]] for s in SEEDS]
        assert float(r["mean"]) == pytest.approx(np.mean(values), abs=1e-9)
        assert int(r["n_seeds"]) == 3 and r["seeds"] == "0 1 2" and r["ci_method"] == "student-t"
        low, high = float(r["ci_low"]), float(r["ci_high"])
        assert low <= min(values) + 1e-9 and max(values) - 1e-9 <= high and 0.0 <= low and high <= 1.0
        if max(values) > min(values) and 0.0 < low and high < 1.0:  # unclipped
            ratios.append((high - low) / (max(values) - min(values)))
        assert r["attacker"] == "headline" and r["dataset"] == "toy" and r["top_k"] == "10"
    # the acceptance bar: a 3-seed t-interval is ~2.6x the seeds' range for normal values (4.30 * 2 s / sqrt(3))
    assert len(ratios) >= 10 and 2.0 < np.mean(ratios) < 4.0


def test_table_metrics_cover_the_issue_list_and_pairs_differ(run):
    root, _, _ = run
    rows = _csv_rows(root)
    assert {r["metric"] for r in rows} == {"roc_auc", "balanced_accuracy", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "advantage"}
    auc = {(r["target"], r["shadow"]): float(r["mean"]) for r in rows if r["metric"] == "roc_auc" and r["defense"] == "none"}
    # strengths were chosen so item/item leaks most and lfm/item least
    assert max(auc, key=auc.get) == ("item", "item") and min(auc, key=auc.get) == ("lfm", "item")


def test_defended_cell_reports_both_attackers_with_one_seed_and_no_ci(run):
    root, results, _ = run
    rows = [r for r in _csv_rows(root) if r["defense"] == "popularity-randomization"]
    assert {r["attacker"] for r in rows} == {"defense_aware", "defense_unaware"}
    res = results["toy-item-item-popularity-randomization-s0"]
    for r in rows:
        assert r["defense_params"] == "ratio=0.1"
        assert float(r["mean"]) == pytest.approx(res["attackers"][r["attacker"]][r["metric"]], abs=1e-9)
        assert r["n_seeds"] == "1" and r["ci_low"] == "" and r["ci_high"] == "" and r["ci_method"] == "none"
    aware = next(float(r["mean"]) for r in rows if r["attacker"] == "defense_aware" and r["metric"] == "roc_auc")
    unaware = next(float(r["mean"]) for r in rows if r["attacker"] == "defense_unaware" and r["metric"] == "roc_auc")
    assert aware != unaware


def test_markdown_has_a_target_by_shadow_matrix_per_metric_and_group(run):
    root, results, _ = run
    md = (root / "report" / "tables.md").read_text()
    groups = build_groups(load_cells(root))
    assert len(groups) == 3  # undefended + the two attackers of the defended cell
    assert md.count("| target \\ shadow | item | lfm |\n") == len(TABLE_METRICS)  # the undefended 2x2 group
    assert md.count("| target \\ shadow | item |\n") == len(TABLE_METRICS) * 2  # each attacker of the 1x1 defended one
    assert "(1 seed)" in md and "defense-unaware attacker" in md and "defense-aware attacker" in md
    # the item/item ROC-AUC entry is the formatted mean and CI of the three seeds
    est = mean_ci([results[_cell("item", "item", s)["id"]]["metrics"]["roc_auc"] for s in SEEDS])
    assert f"| **item** | {est.mean:.3f} [{est.ci_low:.3f}, {est.ci_high:.3f}] |" in md
    assert "Student-t 95% CI" in md and md.count("Seeds per entry (n): 3; 95% CI: Student-t over seeds.") == 1
    assert md.count("Seeds per entry (n): 1; no CI (one seed).") == 2
    assert "toy-lfm-lfm-s3" in md and "boom at epoch 7" in md


def test_report_is_deterministic(run, tmp_path):
    root, _, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(root / "cells", copy / "cells")
    shutil.copy(root / "grid.json", copy / "grid.json")
    write_report(copy)
    write_report(copy)  # a second time over its own output
    for name in ("tables.md", "tables.csv"):
        assert (copy / "report" / name).read_bytes() == (root / "report" / name).read_bytes()


# ------------------------------------------------------------------------- images and HTML


def test_pngs_on_disk_are_valid_heatmaps_and_roc_plots(run):
    root, results, _ = run
    pngs = sorted((root / "report" / "img").glob("*.png"))
    heat = [p for p in pngs if p.name.startswith("heatmap-")]
    roc = [p for p in pngs if p.name.startswith("roc-")]
    # the 2 x 2 group: ROC-AUC and balanced accuracy; the defended groups (one cell each, two attackers) are tables
    assert len(heat) == 1 * 2 and all("-none-" in p.name for p in heat)
    assert len(roc) == len(results)
    for p in pngs:
        w, h = _png_size(p.read_bytes())
        assert w > 200 and h > 150


def test_html_is_self_contained_and_holds_every_table_plot_and_failure(run):
    root, results, html_path = run
    assert html_path == root / "report" / "report.html"
    page = html_path.read_text()
    for forbidden in ("http://", "https://", "<script", "<link", "src=\"img/", "src='"):
        assert forbidden not in page
    for g in build_groups(load_cells(root)):
        for metric, _ in TABLE_METRICS:
            assert f'data-group="{g.slug}" data-metric="{metric}"' in page
    n_images = page.count(DATA_URI)
    assert n_images == 1 * 2 + len(results)  # heatmaps of the 2 x 2 group only, one ROC plot per cell
    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        _png_size(base64.b64decode(b64))
    assert "toy-lfm-lfm-s3" in page and "boom at epoch 7" in page and "toy-never-written" in page
    assert "12.5 s" in page and '<th class="l">seed</th><td class="l"><code>0, 1, 2</code>' in page  # grid.json's timing and spec
    assert "calls &ldquo;AUC&rdquo;" in page
    assert "Student-t 95% CI of the mean over seeds" in page and "Seeds per entry (n): 3; 95% CI: Student-t" in page


def test_unreadable_cells_are_listed_not_fatal(tmp_path):
    make_run(tmp_path)
    (tmp_path / "cells" / "toy-item-lfm-s1" / "result.json").write_text("{not json")
    (tmp_path / "cells" / "toy-lfm-item-s2" / "scores.tsv").write_text("garbage\n")
    (tmp_path / "grid.json").unlink()
    page = write_report(tmp_path).read_text()
    assert "unreadable result.json" in page
    assert "scores unreadable" in page
    rows = [r for r in _csv_rows(tmp_path) if r["target"] == "item" and r["shadow"] == "lfm" and r["defense"] == "none"]
    assert rows and all(r["n_seeds"] == "2" and r["seeds"] == "0 2" for r in rows)
    md = (tmp_path / "report" / "tables.md").read_text()
    assert "(n=2)" in md and "Seeds per entry (n): 2, 3;" in md  # an entry with fewer seeds than its table says so


def test_a_matrix_is_drawn_only_when_it_has_more_than_one_row_and_column(tmp_path):
    from miars_core.reports.gridreport import has_heatmap

    root = tmp_path / "run"
    for t, sh in (("item", "item"), ("item", "lfm")):  # one target, two shadows: one row
        _write_cell(root, _cell(t, sh, 0), STRENGTH[(t, sh)])
    (groups,) = build_groups(load_cells(root))
    assert (groups.targets, groups.shadows) == (["item"], ["item", "lfm"]) and not has_heatmap(groups)
    page = write_report(root).read_text()
    assert not list((root / "report" / "img").glob("heatmap-*")) and page.count(DATA_URI) == 2  # the ROC plots
    for metric, _ in TABLE_METRICS:  # the table holds what the heatmap would have
        assert page.count(f'data-metric="{metric}"') == 1
    _write_cell(root, _cell("lfm", "lfm", 0), STRENGTH[("lfm", "lfm")])  # now 2 x 2 (one cell missing): drawn
    write_report(root)
    assert len(list((root / "report" / "img").glob("heatmap-*"))) == 2


def test_a_miars_attack_out_folder_reports_as_one_cell(tmp_path):
    y, s = _scores(1.5, 0)
    _write_scores(tmp_path / "scores.tsv", y, s)
    config = {"dataset": "ml-100k", "target": "lfm", "shadow": "item", "defense": None, "defense_params": {},
              "top_k": 100, "seed": 4, "featurizer": "center-diff", "attack": "mlp"}
    (tmp_path / "result.json").write_text(json.dumps({"metrics": membership_metrics(y, s), "config": config}))
    page = write_report(tmp_path).read_text()
    rows = _csv_rows(tmp_path)
    assert {(r["target"], r["shadow"], r["dataset"], r["n_seeds"]) for r in rows} == {("lfm", "item", "ml-100k", "1")}
    assert page.count(DATA_URI) == 1  # the ROC plot; a one-cell matrix is a table, not a heatmap
    assert not list((tmp_path / "report" / "img").glob("heatmap-*"))
    assert page.count('data-metric="roc_auc"') == 1 and '<div class="figs">' not in page


# ------------------------------------------------------------------------- command line


def test_cli_report_writes_the_report(tmp_path):
    make_run(tmp_path)
    res = RUNNER.invoke(cli.app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "report" / "report.html") in res.output
    assert (tmp_path / "report" / "tables.csv").stat().st_size > 0


@pytest.mark.parametrize("kind", ["absent", "file", "empty", "no-cells"])
def test_cli_report_bad_run_dir_is_one_line_exit_2(tmp_path, kind):
    target = tmp_path / "run"
    if kind == "file":
        target.write_text("x")
    elif kind == "empty":
        (target / "cells").mkdir(parents=True)
    elif kind == "no-cells":
        target.mkdir()
    res = RUNNER.invoke(cli.app, ["report", str(target)])
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert err.startswith("miars: error:") and len(err.splitlines()) == 1 and str(target) in err
    assert "miars grid --out" in err
    assert "Traceback" not in res.output


def test_write_report_raises_miars_error_for_a_missing_folder(tmp_path):
    with pytest.raises(MiarsError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_installed_miars_report_exit_codes(tmp_path):
    """The console script itself: 0 on a run folder, 2 and one line (no traceback) on a missing one."""
    import subprocess
    import sys

    miars = Path(sys.executable).parent / "miars"
    y, s = _scores(1.0, 0)
    _write_scores(tmp_path / "scores.tsv", y, s)
    (tmp_path / "result.json").write_text(json.dumps({"metrics": membership_metrics(y, s), "config": {"dataset": "toy"}}))
    ok = subprocess.run([str(miars), "report", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "report" / "report.html").is_file()
    bad = subprocess.run([str(miars), "report", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("miars: error:") and len(bad.stderr.strip().splitlines()) == 1
