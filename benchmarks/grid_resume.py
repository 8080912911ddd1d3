"""Kill a grid with SIGKILL at chosen moments, restart it, and compare with an uninterrupted run.

Moments: ``fit`` (while a recommender is training: some but not all fits are stored), ``write``
(the instant a cell folder is being staged: a ``cells/.*.tmp`` folder exists), and ``random``.
After the last kill the grid is run to the end; the script then checks that

* its metrics equal those of the uninterrupted reference run (``--reference RUN_DIR``), and
* no stage output stored before the final restart was computed again (meta.json untouched).

    python benchmarks/grid_resume.py --reference runs/bench-grid --out runs/resume \\
        --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz --target item,lfm,ncf \\
        --shadow item,lfm,ncf --seed 0,1,2 --moments fit,write,random
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def metrics(run_dir: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["metrics"] for p in sorted((run_dir / "cells").glob("*/result.json"))}


def stored(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in cache.rglob("meta.json")}


def wait_for(moment: str, proc: subprocess.Popen, out: Path, cache: Path, n_fits: int, rng: random.Random) -> str:
    """Block until ``moment`` comes (or the grid ends); return what was seen when killing."""
    deadline = time.time() + rng.uniform(20, 120) if moment == "random" else None
    while proc.poll() is None:
        if moment == "fit":
            done = len(list((cache / "v2" / "serve").rglob("meta.json"))) if (cache / "v2" / "serve").exists() else 0
            if 0 < done < n_fits:
                time.sleep(rng.uniform(1, 5))  # inside the next fit
                return f"during fits ({done} of {n_fits} stored)"
            time.sleep(0.2)
        elif moment == "write":
            cells = out / "cells"
            if cells.exists() and any(e.name.endswith(".tmp") for e in os.scandir(cells)):
                return "while a cell folder was being written"
            time.sleep(0.0005)
        elif time.time() >= deadline:
            return "at a random moment"
        else:
            time.sleep(0.1)
    return "grid had already finished"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="run folder of the same grid, uninterrupted")
    ap.add_argument("--out", default="runs/resume")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--target", default="item,lfm,ncf")
    ap.add_argument("--shadow", default="item,lfm,ncf")
    ap.add_argument("--seed", default="0,1,2")
    ap.add_argument("--moments", default="fit,write,random")
    ap.add_argument("--rng", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    cache = out.with_name(out.name + "-cache")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, "-m", "miars_core", "grid", "--dataset", args.dataset, "--target", args.target,
           "--shadow", args.shadow, "--seed", args.seed, "--out", str(out), "--cache", str(cache), "-q", "--no-report"]
    reference = metrics(Path(args.reference))
    n_fits = len(json.loads((Path(args.reference) / "grid.json").read_text())["cells"])  # upper bound
    n_fits = sum(1 for _ in (Path(args.reference).with_name(Path(args.reference).name + "-cache") / "v2" / "serve").rglob("meta.json")) or n_fits
    rng = random.Random(args.rng)
    log = []
    for moment in args.moments.split(","):
        proc = subprocess.Popen(cmd, start_new_session=True)
        seen = wait_for(moment, proc, out, cache, n_fits, rng)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the grid and its workers, as a killed job would be
        proc.wait()
        log.append({"moment": moment, "killed": seen, "stages_stored": len(stored(cache)),
                    "cells_written": len(list((out / "cells").glob("*/result.json"))) if (out / "cells").exists() else 0})
        print(log[-1], flush=True)
    before = stored(cache)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    after = stored(cache)
    recomputed = [str(p) for p, t in before.items() if after.get(p) != t]
    final = metrics(out)
    summary = {"kills": log, "final_run_s": round(time.perf_counter() - start, 1), "stages_before_restart": len(before),
               "stages_after": len(after), "recomputed_after_restart": recomputed,
               "metrics_equal_reference": final == reference, "cells": len(final)}
    print(json.dumps(summary, indent=2))
    (out / "resume.json").write_text(json.dumps(summary, indent=2) + "\n")
    if recomputed or final != reference:
        sys.exit(1)


if __name__ == "__main__":
    main()
