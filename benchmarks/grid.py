"""Grid engine overhead: wall time of a grid against the work it must do, measured in the same run.

Runs ``miars grid`` twice with a fresh stage cache: the first run computes everything, the
second finds every stage stored. Prints, as ratios of the same run:

* wall / (sum of recommender fits + sum of attacks), the fits and attacks timed inside the workers
  (the engine's overhead and how well the workers are packed: < 1 means parallel speed-up);
* the second run's wall seconds (everything cached).

    python benchmarks/grid.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz \\
        --target item,lfm,ncf --shadow item,lfm,ncf --seed 0,1,2 --out runs/bench-grid
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--target", default="item,lfm,ncf")
    ap.add_argument("--shadow", default="item,lfm,ncf")
    ap.add_argument("--seed", default="0,1,2")
    ap.add_argument("--out", default="runs/bench-grid")
    ap.add_argument("--workers", default=None)
    ap.add_argument("--keep-cache", action="store_true", help="reuse the cache of an earlier benchmark run")
    args = ap.parse_args()
    out = Path(args.out)
    cache = out.with_name(out.name + "-cache")
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "miars_core", "grid", "--dataset", args.dataset, "--target", args.target,
           "--shadow", args.shadow, "--seed", args.seed, "--out", str(out), "--cache", str(cache)]
    if args.workers:
        cmd += ["--workers", args.workers]
    first = run(cmd)
    record = json.loads((out / "grid.json").read_text())
    second = run(cmd + ["-q"])
    work = record["fit_seconds"] + record["attack_seconds"]
    fits = sum(1 for p in (cache / "v2" / "serve").rglob("meta.json"))
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores",
        "load_before": os.getloadavg(),
        "cells": len(record["cells"]),
        "failed": record["failed"],
        "recommender_fits": fits,
        "executor": record["executor"],
        "first_wall_s": round(first, 1),
        "grid_wall_s": record["wall_seconds"],
        "fit_seconds_sum": record["fit_seconds"],
        "attack_seconds_sum": record["attack_seconds"],
        "ratio_wall_to_fits_plus_attacks": round(record["wall_seconds"] / work, 3) if work else None,
        "second_wall_s": round(second, 2),
    }
    (out / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
