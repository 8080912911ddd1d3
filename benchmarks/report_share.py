"""The report's share of a small defense benchmark's wall time, as ratios measured in the same run.

Runs ``miars bench-defenses --target item --seed 0 --no-report`` on the embedded ml-100k into a
fresh cache (timed: the benchmark without its report), then, interleaved over ``--rounds``,
writes its report from scratch (``python -m miars_core report RUN_DIR`` in a new process, so
imports count, with ``report/`` removed first so no stored ROC plot is reused):

* with this checkout's report code;
* with another checkout's ``miars_core`` (``--old-src DIR``, e.g. ``git archive main miars_core |
  tar -x -C /tmp/old``), to compare before and after.

Then, in this process, where this checkout's report spends its time (heatmaps, ROC plots, the
frontier, the rest) and how much it writes. The minimum over rounds is kept; read the ratios,
not the seconds (the machine is shared).

    python benchmarks/report_share.py --work /tmp/report-share [--old-src /tmp/old] [--reuse]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _wall(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the command and the processes it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"report_share.py: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return took, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len([p for p in files if p.suffix == ".png"]), sum(p.stat().st_size for p in files)


def _report(run: Path, src: str | None) -> tuple[float, float]:
    """Write RUN_DIR/report/ from scratch in a new process with ``src``'s miars_core (None: the installed one)."""
    shutil.rmtree(run / "report", ignore_errors=True)
    env = {"PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")} if src else None
    # not from the repository root: `python -m` puts the working folder first on sys.path
    return _wall([sys.executable, "-m", "miars_core", "report", str(run)], env, cwd=str(run.parent))


def _breakdown(run: Path) -> dict[str, float]:
    """Seconds of each kind of drawing in one write_report of this checkout (in this process)."""
    from miars_core.reports import defensereport, gridreport

    spent = {"heatmaps": 0.0, "ROC plots": 0.0, "frontier": 0.0}
    counts = dict.fromkeys(spent, 0)

    def timed(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
                counts[key] += 1

        setattr(module, name, wrapper)

    timed(gridreport, "heatmap_png", "heatmaps")
    timed(gridreport, "roc_png", "ROC plots")
    timed(defensereport, "frontier_png", "frontier")
    import matplotlib.figure  # noqa: F401  (imports are the new process's cost, measured above)

    shutil.rmtree(run / "report", ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    gridreport.write_report(run)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    out = {f"{k} ({counts[k]})": v for k, v in spent.items()}
    out["everything else (tables, HTML, writing)"] = total - sum(spent.values())
    out["write_report in all"] = total
    out["write_report in all, CPU s (first in this process: imports matplotlib, sklearn.metrics, scipy.stats)"] = cpu
    shutil.rmtree(run / "report", ignore_errors=True)
    cpu = time.process_time()
    gridreport.write_report(run)
    out["write_report again, CPU s (imports done)"] = time.process_time() - cpu
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/report-share", help="Folder for the run and its cache.")
    ap.add_argument("--target", default="item")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--old-src", help="Folder holding another checkout's miars_core/ to compare with.")
    ap.add_argument("--reuse", action="store_true", help="Keep WORK/run if it is there (its bench time is then "
                                                         "read from WORK/bench_seconds).")
    args = ap.parse_args()

    work = Path(args.work)
    run, record = work / "run", work / "bench_seconds"
    if args.reuse and (run / "grid.json").is_file() and record.is_file():
        bench = tuple(map(float, record.read_text().split()))
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        miars = Path(sys.executable).with_name("miars")
        bench = _wall([str(miars), "bench-defenses", "--target", args.target, "--seed", args.seed, "--out", str(run),
                       "--cache", str(work / "cache"), "--no-report", "-q"])
        record.write_text(" ".join(map(repr, bench)))
    variants = {"this checkout": None} | ({"--old-src": args.old_src} if args.old_src else {})
    best: dict[str, tuple[float, float]] = {}
    written: dict[str, tuple[int, int]] = {}
    for _ in range(args.rounds):
        for name, src in variants.items():
            wall, cpu = _report(run, src)
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], wall), min(old[1], cpu))
            written[name] = _size(run / "report")
    cells = len(list((run / "cells").iterdir()))
    print(f"bench-defenses --target {args.target} --seed {args.seed} on ml-100k: {cells} cells, without its report "
          f"{bench[0]:.1f} s wall, {bench[1]:.1f} s CPU (load average {os.getloadavg()[0]:.1f})\n")
    print("| report code | report s wall / CPU (new process) | PNGs | report/ MB | report / (bench + report): wall | CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (wall, cpu) in best.items():
        pngs, size = written[name]
        print(f"| {name} | {wall:.1f} / {cpu:.1f} | {pngs} | {size / 1e6:.2f} | **{wall / (bench[0] + wall):.1%}** | "
              f"**{cpu / (bench[1] + cpu):.1%}** |")
    print("\nwhere this checkout's report spends its time (in-process, imports done):\n")
    print("| part | wall s |")
    print("|---|---:|")
    for part, seconds in _breakdown(run).items():
        print(f"| {part} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
