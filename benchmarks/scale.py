"""The whole attack on synthetic MovieLens-shaped data at 1M / 5M / 20M interactions: time and peak RSS per stage.

    python benchmarks/scale.py --size 1M --rec item        # one run per process (clean RSS)
    python benchmarks/scale.py --size 20M --rec lfm --out runs/scale.jsonl

Sizes (users x items): 1M = ml-1m's shape (6,040 x 3,706), 5M = 35,000 x 10,000, 20M = ml-20m's
shape (138,000 x 27,000). Data from ``miars_core.science.synth`` (seed 0). Stages run as in the pipeline:
generate, split, shadow and target recommenders (fit on members + top-100 for every user),
featurize (rank-100 SVD of the vectorization part + center-diff features), attack (MLP) and
metrics. Peak RSS per stage is sampled from /proc/self/statm every 20 ms (the process's largest
resident size while that stage ran). Nothing in any stage is a dense users x items matrix: scores
are computed in bounded user blocks, similarities and features are sparse products.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from contextlib import contextmanager

SIZES = {"1M": (1_000_000, 6_040, 3_706), "5M": (5_000_000, 35_000, 10_000), "20M": (20_000_000, 138_000, 27_000)}


class RSSSampler:
    def __init__(self, every: float = 0.02):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def current(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.every)

    def reset(self):
        self.peak = self.current()

    def stop(self):
        self._stop.set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="1M")
    ap.add_argument("--rec", default="item", help="recommender for shadow and target: item, lfm, ...")
    ap.add_argument("--param", action="append", default=[], help="KEY=VALUE recommender hyperparameter (JSON)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="append one JSON line with the result")
    args = ap.parse_args()

    import numpy as np

    from miars_attacks.features import CenterDiff
    from miars_attacks.mlp import MLPAttack
    from miars_core.cli import parse_params
    from miars_core.contracts.plugins import get_plugins
    from miars_core.contracts.seeds import stage_seed
    from miars_core.science.metrics import membership_metrics
    from miars_core.science.protocol import split_dataset
    from miars_core.science.service import serve
    from miars_core.science.synth import synthetic_interactions

    n, n_users, n_items = SIZES[args.size]
    params = parse_params(args.param, "--param")
    plugins = get_plugins()
    sampler = RSSSampler()
    stages: dict[str, dict] = {}

    @contextmanager
    def stage(name):
        sampler.reset()
        start = time.perf_counter()
        yield
        sampler.peak = max(sampler.peak, sampler.current())
        stages[name] = {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mib": round(sampler.peak / 2**20)}
        print(f"{name:<20} {stages[name]['seconds']:>8.1f} s  peak RSS {stages[name]['peak_rss_mib']:>6} MiB", flush=True)

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}; "
          f"{args.size}: {n_users} x {n_items}, rec {args.rec} {params}", flush=True)
    seed = args.seed
    with stage("generate"):
        data = synthetic_interactions(n, n_users, n_items, seed=seed)
    with stage("split"):
        split = split_dataset(data, seed=stage_seed(seed, "split"))
    recs = {}
    with stage("shadow_recommender"):
        recs["shadow"] = serve(split.shadow, plugins.create("recommender", args.rec, **params), args.rec, 100,
                               stage_seed(seed, "shadow"))
    with stage("target_recommender"):
        recs["target"] = serve(split.target, plugins.create("recommender", args.rec, **params), args.rec, 100,
                               stage_seed(seed, "target"))
    with stage("featurize"):
        feat = CenterDiff(dim=100).fit(split.vectorization, seed=stage_seed(seed, "featurizer"))
        xs = feat.transform(split.shadow.interactions, recs["shadow"].lists)
        xt = feat.transform(split.target.interactions, recs["target"].lists)
    with stage("attack"):
        model = MLPAttack().fit(xs, split.shadow.is_member, seed=stage_seed(seed, "attack"))
        metrics = membership_metrics(split.target.is_member, model.decision_function(xt), model.predict(xt))
    sampler.stop()
    fit = {k: {key: v for key, v in r.report["fit_info"].items() if key not in ("settings", "criterion")}
           for k, r in recs.items()}
    result = {
        "size": args.size, "rec": args.rec, "params": params, "interactions": data.n_interactions,
        "users": data.n_users, "items": data.n_items, "split": split.summary(), "stages": stages,
        "total_seconds": round(sum(s["seconds"] for s in stages.values()), 1),
        "peak_rss_mib": max(s["peak_rss_mib"] for s in stages.values()),
        "roc_auc": round(float(metrics["roc_auc"]), 4), "fit_info": fit,
        "load": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps({k: result[k] for k in ("size", "rec", "interactions", "total_seconds", "peak_rss_mib", "roc_auc")}))
    for k, f in fit.items():
        print(k, json.dumps(f))
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
