"""benchmarks/attack_pairs.py: two attacks matched cell by cell, the paired difference per seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("attack_pairs", ROOT / "benchmarks" / "attack_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_cell(run: Path, attack: str, seed: int, auc: float, target: str = "item") -> None:
    cell = run / "cells" / f"{target}_{attack}_{seed}"
    cell.mkdir(parents=True)
    config = dict(dataset="d", shadow_dataset=None, target=target, shadow="lfm", service="popular", defense=None,
                  top_k=100, seed=seed, attack=attack)
    metrics = {"roc_auc": auc, "balanced_accuracy": auc, "tpr_at_fpr_0.01": auc / 2}
    (cell / "result.json").write_text(json.dumps({"config": config, "metrics": metrics}))


def test_pairs_are_matched_per_seed_and_the_difference_is_their_mean(tmp_path, capsys):
    pairs = load()
    for seed, (a, b) in enumerate([(0.90, 0.92), (0.80, 0.83), (0.85, 0.86)]):
        write_cell(tmp_path, "mlp", seed, a)
        write_cell(tmp_path, "dl-mia", seed, b)
    write_cell(tmp_path, "mlp", 0, 0.5, target="lfm")  # no twin: left out
    pairs.main([str(tmp_path), "--a", "mlp", "--b", "dl-mia", "--metric", "roc_auc"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3  # header, rule, one (target, shadow) row
    row = [x.strip() for x in out[2].strip("|").split("|")]
    assert row[:4] == ["item", "lfm", "popular", "0,1,2"]
    assert row[4:6] == ["0.850", "0.870"]
    assert row[6].startswith("+0.020 [")  # mean of +0.02, +0.03, +0.01
    low, high = (float(x) for x in row[6].split("[")[1].rstrip("]").split(","))
    assert low < 0.02 < high and high - low < 0.1


def test_no_twin_is_a_one_line_exit(tmp_path):
    pairs = load()
    write_cell(tmp_path, "mlp", 0, 0.9)
    with pytest.raises(SystemExit, match="no cell of attack 'mlp' has a twin of attack 'dl-mia'"):
        pairs.main([str(tmp_path), "--a", "mlp", "--b", "dl-mia"])
