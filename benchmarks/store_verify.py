"""Cost of the stage store's verification on a cached rerun, as ratios measured in the same run.

Fills a stage cache with one cell (once), then, interleaved over several rounds, reads it back:

* every stored output of the cell (``DiskStore.get`` on a fresh store, as a new process would)
  with verification (checksums of every array) and without (the same reads, no array checksum);
* the whole cached cell in-process (``run_attack`` on a fresh store: reads, checks, metrics);
* ``miars-attack`` on the cached cell as a user runs it (a new process: imports, reads, metrics).

It also hashes the cell's arrays with SHA-256 (the store's) and BLAKE2b, to show the choice of checksum. The
minimum over rounds is kept; read the ratios, not the seconds.

    python benchmarks/store_verify.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz --cache /tmp/store-cache
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--target", default="item")
    ap.add_argument("--cache", default="/tmp/store-cache")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from miars_core.contracts.plugins import get_plugins
    from miars_core.engine.pipeline import AttackConfig, run_attack
    from miars_core.engine.stages import Cell
    from miars_core.engine.store import DiskStore

    class Unverified(DiskStore):
        """The same reads without the arrays' checksums (sizes, dtypes, shapes still checked)."""

        def _load(self, folder, name, spec):
            self._check_size(folder / f"{name}.npy", spec)
            return np.load(folder / f"{name}.npy", allow_pickle=False)

    config = AttackConfig(dataset=args.dataset, target=args.target, shadow=args.target)
    plugins = get_plugins()
    start = time.perf_counter()
    first = run_attack(config, plugins=plugins, store=DiskStore(args.cache))
    print(f"filled the cache ({time.perf_counter() - start:.1f} s; computed: {sorted(first.cache['computed'])})")
    graph = Cell(config, plugins).graph()

    def read_all(store_cls) -> tuple[float, int]:
        store = store_cls(args.cache)
        t = time.perf_counter()
        outs = [store.get(stage, key) for stage, _, key in graph]
        elapsed = time.perf_counter() - t
        assert all(o is not None for o in outs) and not store.problems
        return elapsed, sum(a.nbytes for o in outs for a in o.arrays.values())

    def whole(store_cls) -> float:
        t = time.perf_counter()
        result = run_attack(config, plugins=plugins, store=store_cls(args.cache))
        assert result.metrics == first.metrics and not result.cache["computed"]
        return time.perf_counter() - t

    cli = [str(Path(sys.executable).parent / "miars-attack"), "--dataset", args.dataset, "--target", args.target,
           "--cache", args.cache, "--quiet"]
    times: dict[str, list[float]] = {k: [] for k in ("read_v", "read_u", "cell_v", "cell_u", "cli")}
    nbytes = 0
    for _ in range(args.rounds):
        for name, fn in (("read_v", lambda: read_all(DiskStore)[0]), ("read_u", lambda: read_all(Unverified)[0]),
                         ("cell_v", lambda: whole(DiskStore)), ("cell_u", lambda: whole(Unverified))):
            times[name].append(fn())
        t = time.perf_counter()
        subprocess.run(cli, check=True, stdout=subprocess.DEVNULL)
        times["cli"].append(time.perf_counter() - t)
    _, nbytes = read_all(DiskStore)
    best = {k: min(v) for k, v in times.items()}

    store = DiskStore(args.cache)
    arrays = [np.ascontiguousarray(a) for stage, _, key in graph for a in store.get(stage, key).arrays.values()]
    hashing = {}
    for algo in ("blake2b", "sha256"):
        runs = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for a in arrays:
                hashlib.new(algo, memoryview(a).cast("B")).hexdigest()
            runs.append(time.perf_counter() - t)
        hashing[algo] = min(runs)

    print(f"{len(graph)} stored outputs, {nbytes / 1e6:.1f} MB of arrays; min of {args.rounds} rounds")
    print(f"read every output:  verified {best['read_v'] * 1e3:.1f} ms, unverified {best['read_u'] * 1e3:.1f} ms, "
          f"ratio {best['read_v'] / best['read_u']:.2f}x")
    print(f"cached cell in-process: verified {best['cell_v']:.3f} s, unverified {best['cell_u']:.3f} s, "
          f"ratio {best['cell_v'] / best['cell_u']:.3f}x")
    print(f"miars-attack cached rerun (new process): {best['cli']:.2f} s wall; the checksums are "
          f"{(best['read_v'] - best['read_u']) / best['cli']:.1%} of it")
    print(f"hashing the arrays once: blake2b {hashing['blake2b'] * 1e3:.1f} ms, sha256 {hashing['sha256'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
