"""benchmarks/lira_curve.py: the reference-model curve, its --verify check and its summary table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lira_curve.py"


def _curve(dataset, tmp_path, *args):
    out = tmp_path / "curve.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--dataset", str(dataset), "--target", "item", "--seed", "0",
                          "--queries", "2", "--cache", str(tmp_path / "cache"), "--out", str(out), *args],
                         capture_output=True, text=True, timeout=600)
    return run, (json.loads(out.read_text()) if out.exists() else None)


def test_a_curve_below_eight_models_verifies_at_its_largest_count_with_its_own_queries(small_dataset, tmp_path):
    # ml-1m `ncf` affords only a few reference models: --verify must check a count the curve has
    # (it looked for references=8 and stopped) and ask lira the curve's --queries (it asked lira's default 5).
    run, rows = _curve(small_dataset, tmp_path, "--references", "1,2,4", "--verify")
    assert run.returncode == 0, run.stderr
    verified = [line for line in run.stderr.splitlines() if line.startswith("verify ")]
    assert len(verified) == 2 and all("references=4" in v and v.endswith(" ok") for v in verified), run.stderr
    assert {"online=False", "online=True"} == {w.rstrip(":") for v in verified for w in v.split() if w.startswith("online=")}
    lira = [(r["online"], r["references"], r["variance"]) for r in rows if r["attack"] == "lira"]
    assert lira == [(False, 1, "auto"), (False, 2, "auto"), (True, 2, "auto"), (False, 4, "auto"), (True, 4, "auto"),
                    (False, 4, "per-user"), (True, 4, "per-user"), (False, 4, "global"), (True, 4, "global")]
    assert [r["attack"] for r in rows[len(lira):]] == ["raw recall", "query-recall"]
    n = rows[0]["members"] + rows[0]["non_members"]
    assert n > 0 and all(0.0 <= r["roc_auc"] <= 1.0 for r in rows)


def test_one_reference_model_gives_offline_rows_only_and_verifies_them(small_dataset, tmp_path):
    run, rows = _curve(small_dataset, tmp_path, "--references", "1", "--verify")
    assert run.returncode == 0, run.stderr
    verified = [line for line in run.stderr.splitlines() if line.startswith("verify ")]
    assert len(verified) == 1 and "references=1 online=False" in verified[0] and verified[0].endswith(" ok")
    lira = [(r["online"], r["variance"]) for r in rows if r["attack"] == "lira"]
    assert lira == [(False, "auto"), (False, "per-user"), (False, "global")]  # online needs 2 models


def test_summarize_gives_each_seed_and_their_mean(tmp_path):
    def row(seed, auc):
        return {"target": "ncf", "seed": seed, "attack": "lira", "online": False, "references": 4, "variance": "auto",
                "roc_auc": auc, "tpr_at_fpr_0.01": auc / 10, "tpr_at_fpr_0.001": auc / 100}

    paths = []
    for seed, auc in ((0, 0.6), (1, 0.8)):
        paths.append(tmp_path / f"c{seed}.json")
        paths[-1].write_text(json.dumps([row(seed, auc)]))
    run = subprocess.run([sys.executable, str(SCRIPT), "--summarize", *map(str, paths)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "| ncf | lira offline | 4 | 0.600 / 0.800: 0.700 | 0.060 / 0.080: 0.070 | 0.006 / 0.008: 0.007 |" \
        in run.stdout.splitlines()
