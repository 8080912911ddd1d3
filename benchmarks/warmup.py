"""Cold against warm: featurize + attack of a one-shot ``miars-attack`` against the same stages in a warm process.

    python benchmarks/warmup.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz
    python benchmarks/warmup.py ... --baseline /path/to/an/older/checkout   # its cold run too, same load

1. ``miars-attack --target item --shadow item`` in a new process with a fresh cache (cold): its
   result.json timings (featurize, attack, warmup). With ``--baseline``, the same command from
   another checkout (PYTHONPATH), interleaved with the cold runs of this one.
2. In this process, warmed up: the same cell's vectors, features and attack stages computed
   again ``--repeat`` times (every other stage read from the cold run's cache), minimum kept.

Printed: featurize + attack cold / warm (the acceptance: within 2x), and the warm-up seconds.
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

RECOMPUTED = ("vectors", "features", "attack")


def cold_run(dataset: str, cache: Path, out: Path, pythonpath: str | None = None) -> dict:
    exe = Path(sys.executable).with_name("miars-attack")
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    subprocess.run([str(exe), "--dataset", dataset, "--target", "item", "--shadow", "item", "--quiet",
                    "--cache", str(cache), "--out", str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    timings = json.loads((out / "result.json").read_text())["timings"]
    return {"wall": wall, **timings}


class Hiding:
    """A disk store that hides the stages to recompute (they are computed and kept in memory)."""

    def __init__(self, root: Path):
        from miars_core.engine.store import DiskStore, MemoryStore

        self.disk, self.memory = DiskStore(root), MemoryStore()
        self.problems: list[str] = []

    def get(self, stage, key):
        return self.memory.get(stage, key) if stage in RECOMPUTED else self.disk.get(stage, key)

    def meta(self, stage, key):
        return self.memory.meta(stage, key) if stage in RECOMPUTED else self.disk.meta(stage, key)

    def put(self, stage, key, arrays, meta):
        return (self.memory if stage in RECOMPUTED else self.disk).put(stage, key, arrays, meta)

    def reject(self, stage, key, reason, name=None):
        (self.memory if stage in RECOMPUTED else self.disk).reject(stage, key, reason, name)


def warm_runs(dataset: str, cache: Path, repeat: int) -> list[float]:
    from miars_core.contracts.plugins import get_plugins
    from miars_core.engine.config import AttackConfig
    from miars_core.engine.stages import Cell
    from miars_core.engine.warmup import warm_up

    warm_up()
    plugins = get_plugins()
    out = []
    for _ in range(repeat + 1):  # the first round warms what is left (the stages' own first calls)
        cell = Cell(AttackConfig(dataset=dataset, target="item", shadow="item"), plugins, Hiding(cache))
        cell.attackers()
        out.append(sum(v for k, v in cell.computed.items() if k in RECOMPUTED))
    return out[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cold", type=int, default=2, help="cold runs (each a new process and a fresh cache)")
    ap.add_argument("--baseline", help="a checkout of an older miars: its cold runs too (PYTHONPATH), interleaved")
    args = ap.parse_args()
    dataset = str(Path(args.dataset).expanduser().resolve()) if Path(args.dataset).expanduser().exists() else args.dataset
    tmp = Path(tempfile.mkdtemp(prefix="miars-warmup-"))
    try:
        rows = []
        for i in range(args.cold):
            for label, path in (("this", None), *((("baseline", f"{args.baseline}:{args.baseline}/plugins"),)
                                                  if args.baseline else ())):
                run = cold_run(dataset, tmp / f"cache-{label}-{i}", tmp / f"out-{label}-{i}", path)
                run["label"] = label
                rows.append(run)
        warm = warm_runs(dataset, tmp / "cache-this-0", args.repeat)
        floor = min(warm)
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        print(f"warm featurize + attack (this process, min of {args.repeat}): {floor:.3f} s  (all: "
              f"{', '.join(f'{w:.3f}' for w in warm)})")
        for run in rows:
            cold = run.get("featurize", 0.0) + run.get("attack", 0.0)
            print(f"cold {run['label']:<8} featurize {run.get('featurize', 0):.3f} + attack {run.get('attack', 0):.3f} = "
                  f"{cold:.3f} s -> {cold / floor:.2f}x warm; warmup {run.get('warmup', '-')}; wall {run['wall']:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
