"""What a fold-in + query-recall cell costs against the paper's mlp cell, with fitted models stored.

    python benchmarks/stored_models.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz --target lfm
    python benchmarks/stored_models.py ... --baseline /path/to/an/older/checkout   # today's query cell in a grid too

Each step is one ``miars-attack`` (or ``miars grid``) process, one after the other, in one run
(read the ratios, not the seconds). Cost of a step = the stage seconds it computed (result.json
``timings`` of the stages it computed, from its cache record) and its wall time.

1. ``mlp``: the paper's cell (``--attack mlp``, popular service), fresh cache A.
2. ``query, fresh``: ``--service foldin --attack query-recall``, fresh cache B: every stage.
3. ``query, models stored``: the same query cell on cache A, after step 1: the shadow and target
   models are read (their key holds neither the service nor the attack), the fold-in lists,
   reference models and the attack are computed.
4. ``query, models + references stored``: the query cell again with ``--query-budget 6`` on cache
   A: only the attack stage (the query fold-ins) is computed; what is left is fold-in itself.
5. with ``--baseline``: today's query cell as a grid runs it (``miars grid --workers 2`` of an older
   checkout, fresh cache: the fits are tasks of their own, so the cell task fits both models again
   for query access), and its ROC-AUC against step 2's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("load", "split", "shadow_recommender", "target_recommender", "featurize", "attack", "reference_models")


def run(command: list[str], pythonpath: str | None = None) -> float:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def attack(dataset: str, target: str, cache: Path, out: Path, *extra: str) -> dict:
    exe = Path(sys.executable).with_name("miars-attack")
    wall = run([str(exe), "--dataset", dataset, "--target", target, "--quiet", "--cache", str(cache), "--out", str(out),
                *extra])
    result = json.loads((out / "result.json").read_text())
    return {"wall": wall, "result": result}


def computed_seconds(cache: Path) -> dict[str, float]:
    """Seconds of every stage stored in ``cache`` (each computed once), by stage folder."""
    out: dict[str, float] = {}
    for meta in (cache / "v2").glob("*/*/*/meta.json"):
        stage = meta.parts[-4]
        record = json.loads(meta.read_text())
        out[stage] = round(out.get(stage, 0.0) + float(record.get("seconds", 0.0)), 3)
        if record.get("warmup"):
            out["warmup"] = round(out.get("warmup", 0.0) + float(record["warmup"]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--target", default="lfm")
    ap.add_argument("--baseline", help="a checkout of an older miars: today's query cell in a grid (step 5)")
    ap.add_argument("--keep", help="keep the caches and outputs in this folder")
    args = ap.parse_args()
    dataset = str(Path(args.dataset).expanduser().resolve()) if Path(args.dataset).expanduser().exists() else args.dataset
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="miars-stored-"))
    tmp.mkdir(parents=True, exist_ok=True)
    query = ("--service", "foldin", "--attack", "query-recall")
    steps: dict[str, dict] = {}
    try:
        a, b = tmp / "cache-a", tmp / "cache-b"
        steps["mlp"] = attack(dataset, args.target, a, tmp / "out-mlp")
        steps["mlp"]["computed"] = computed_seconds(a)
        steps["query, fresh"] = attack(dataset, args.target, b, tmp / "out-query-fresh", *query)
        steps["query, fresh"]["computed"] = computed_seconds(b)
        before = computed_seconds(a)
        steps["query, models stored"] = attack(dataset, args.target, a, tmp / "out-query-stored", *query)
        after = computed_seconds(a)
        steps["query, models stored"]["computed"] = {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()
                                                     if v - before.get(k, 0.0) > 0}
        steps["query, models + references stored"] = attack(dataset, args.target, a, tmp / "out-query-again", *query,
                                                             "--query-budget", "6")
        again = computed_seconds(a)
        steps["query, models + references stored"]["computed"] = {k: round(v - after.get(k, 0.0), 3)
                                                                  for k, v in again.items() if v - after.get(k, 0.0) > 0}
        if args.baseline:
            grid = tmp / "grid-baseline"
            exe = Path(sys.executable).with_name("miars")
            wall = run([str(exe), "grid", "--dataset", dataset, "--target", args.target, *query, "--workers", "2",
                        "--quiet", "--no-report", "--cache", str(tmp / "cache-baseline"), "--out", str(grid)],
                       f"{args.baseline}:{args.baseline}/plugins")
            (cell,) = list((grid / "cells").glob("*/result.json"))
            record = json.loads((grid / "grid.json").read_text())
            steps["query, today (grid)"] = {"wall": wall, "result": json.loads(cell.read_text()),
                                            "computed": record.get("stage_seconds", {})}
        base = sum(v for k, v in steps["mlp"]["computed"].items() if k != "warmup")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}; target {args.target}; dataset {args.dataset}")
        print(f"{'step':<36} {'computed s':>10} {'x mlp':>6} {'wall s':>7}  roc_auc  computed stages")
        for name, step in steps.items():
            computed = {k: v for k, v in step["computed"].items() if k != "warmup"}
            total = sum(computed.values())
            auc = step["result"]["metrics"]["roc_auc"]
            print(f"{name:<36} {total:>10.1f} {total / base:>6.2f} {step['wall']:>7.1f}  {auc:.4f}  "
                  + ", ".join(f"{k} {v:.1f}" for k, v in sorted(computed.items(), key=lambda kv: -kv[1])))
            queries = step["result"].get("queries")
            if queries:
                print(f"{'':<36} queries: {json.dumps(queries['attack'])}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
