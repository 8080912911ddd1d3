"""Two attacks on the same cells of grid runs: each one's mean, and the paired difference per seed.

    python benchmarks/attack_pairs.py RUN_DIR [RUN_DIR ...] --a mlp --b dl-mia [--metric roc_auc,...]

Cells are matched on everything but the attack (dataset, shadow dataset, target, shadow,
service, defense, k, seed), so each seed gives one difference b - a computed on the same
recommenders, lists and features. Printed per (target, shadow) and metric: the mean of a, the
mean of b, and the mean difference with its Student-t 95% interval over seeds
(:func:`miars_core.science.intervals.mean_ci`, unbounded). A paired interval is narrower than
the difference of the two unpaired intervals, because the seeds' shared variation cancels.
Attack parameters may differ between runs (an ablation run against a default one): ``--b-run``
takes b's cells only from that run directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = ("roc_auc", "balanced_accuracy", "tpr_at_fpr_0.01")


def cells(run_dirs: list[str]) -> list[dict]:
    out = []
    for run in run_dirs:
        for path in sorted(Path(run, "cells").glob("*/result.json")):
            r = json.loads(path.read_text())
            out.append({**r["config"], "metrics": r["metrics"], "run": run})
    return out


def match_key(c: dict) -> tuple:
    return (c["dataset"], c.get("shadow_dataset"), c["target"], c["shadow"], c["service"], c.get("defense"),
            c["top_k"], c["seed"])


def paired(rows: list[dict], a: str, b: str, b_run: str | None, metrics: tuple[str, ...]) -> str:
    from miars_core.science.intervals import mean_ci

    first = {match_key(c): c for c in rows if c["attack"] == a and (b_run is None or c["run"] != b_run)}
    second = {match_key(c): c for c in rows if c["attack"] == b and (b_run is None or c["run"] == b_run)}
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for key, ca in first.items():
        if key in second:
            groups.setdefault((ca["target"], ca["shadow"], ca["service"]), []).append((ca, second[key]))
    if not groups:
        sys.exit(f"no cell of attack {a!r} has a twin of attack {b!r}; check --a/--b and the run directories")
    head = "| target | shadow | service | seeds | " + " | ".join(
        f"{m}: {a} | {m}: {b} | {m}: {b} - {a} [95% CI]" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (4 + 3 * len(metrics))]
    for (target, shadow, service), pairs in sorted(groups.items()):
        pairs.sort(key=lambda p: p[0]["seed"])
        row = [target, shadow, service, ",".join(str(p[0]["seed"]) for p in pairs)]
        for m in metrics:
            va = [p[0]["metrics"][m] for p in pairs]
            vb = [p[1]["metrics"][m] for p in pairs]
            d = mean_ci([y - x for x, y in zip(va, vb)], bounds=None)
            ci = f" [{d.ci_low:+.3f}, {d.ci_high:+.3f}]" if d.ci_low is not None else ""
            row += [f"{sum(va) / len(va):.3f}", f"{sum(vb) / len(vb):.3f}", f"{d.mean:+.3f}{ci}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="grid run directories (each holding cells/*/result.json)")
    p.add_argument("--a", required=True, help="the baseline attack's name")
    p.add_argument("--b", required=True, help="the compared attack's name")
    p.add_argument("--b-run", default=None, help="take b's cells only from this run directory (ablations)")
    p.add_argument("--metric", default=",".join(METRICS), help=f"comma-separated (default: {','.join(METRICS)})")
    args = p.parse_args(argv)
    print(paired(cells(args.runs), args.a, args.b, args.b_run, tuple(args.metric.split(","))))


if __name__ == "__main__":
    main()
