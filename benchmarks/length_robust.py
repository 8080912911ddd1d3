"""The fixed-shadow attacker against the length-robust one (``--shadow-lengths auto``) when the target's length is unknown.

    python benchmarks/length_robust.py --data small --rec lfm --seeds 0,1,2 --out runs/lengths.jsonl
    python benchmarks/length_robust.py --data synth-1M --rec lfm

Data: ``small`` is benchmarks/small_data.py's sample of ml-1m (2,000 users drawn at random, at most 50
interactions each, seeded by ``--data-seed``; split with ``--min-interactions`` 10); ``synth-1M`` is
benchmarks/scale.py's synthetic MovieLens-shaped set (6,040 x 3,706, ~950k interactions, seed 0; split
with the default 20). Each recommender is its own shadow, every model with auto training length.

For each seed, three attackers on the same cell (one stage store, so the target and the shadow are
fitted once): ``fixed`` (today: one shadow, its own auto length), ``robust`` (the shadow at its own
length x 0.5, 1, 2, features stacked), and ``matched``, an oracle no real attacker has: one shadow
trained for exactly the target's length. Prints ROC-AUC, balanced accuracy and TPR at 1% FPR of
each, and the lengths: the target's and the shadow's own, and those the robust attacker trained.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def build(kind: str, path: str, data_seed: int, ml1m: str) -> int:
    """Write the dataset to ``path`` (user<TAB>item); return the --min-interactions it is split with."""
    from miars_core.contracts.plugins import get_plugins
    from miars_core.engine.pipeline import AttackConfig, load_dataset
    from miars_core.science.synth import sample_users, synthetic_interactions

    if kind == "small":
        full = load_dataset(AttackConfig(dataset=ml1m), get_plugins())
        data, min_interactions = sample_users(full, 2000, 50, seed=data_seed), 10
    else:
        data, min_interactions = synthetic_interactions(1_000_000, 6_040, 3_706, seed=0), 20
    coo = data.matrix.tocoo()
    np.savetxt(path, np.column_stack([data.user_ids[coo.row], data.item_ids[coo.col]]), fmt="%s", delimiter="\t")
    print(f"{kind}: {data.n_users} users x {data.n_items} items, {data.n_interactions} interactions", flush=True)
    return min_interactions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("small", "synth-1M"), default="small")
    ap.add_argument("--rec", default="lfm")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the small sample (small_data.py's --seed)")
    ap.add_argument("--ml1m", default="../shared/data/movielens-1m/ml-1m-pairs.tsv.gz")
    ap.add_argument("--attackers", default="fixed,robust,matched")
    ap.add_argument("--out", help="append one JSON line per attacker")
    args = ap.parse_args()

    from miars_core.engine.pipeline import AttackConfig, run_attack
    from miars_core.engine.store import MemoryStore

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.tsv")
        min_interactions = build(args.data, path, args.data_seed, args.ml1m)
        print("| data | rec | seed | attacker | ROC-AUC | bal. acc. | TPR@1%FPR | target epochs | shadow epochs "
              "(own) | shadow lengths trained | s |", flush=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            store = MemoryStore()  # one per seed: the attackers share the target and shadow fits
            base = dict(dataset=path, target=args.rec, shadow=args.rec, seed=seed, min_interactions=min_interactions)
            target_epochs = None
            for attacker in args.attackers.split(","):
                extra: dict = {}
                if attacker == "robust":
                    extra = {"shadow_lengths": "auto"}
                elif attacker == "matched":
                    if target_epochs is None:  # the target's length, from a fixed run in this store
                        target_epochs = run_attack(AttackConfig(**base), store=store).recommenders["target"][
                            "fit_info"]["epochs_run"]
                    extra = {"shadow_params": {"epochs": int(target_epochs)}}
                start = time.perf_counter()
                res = run_attack(AttackConfig(**base, **extra), store=store)
                seconds = time.perf_counter() - start
                m, recs = res.metrics, res.recommenders
                target_epochs = recs["target"]["fit_info"]["epochs_run"]
                lengths = recs["shadow"].get("lengths", {}).get("epochs", [recs["shadow"]["fit_info"]["epochs_run"]])
                row = {"data": args.data, "rec": args.rec, "seed": seed, "attacker": attacker,
                       "roc_auc": round(m["roc_auc"], 4), "balanced_accuracy": round(m["balanced_accuracy"], 4),
                       "tpr_at_fpr_0.01": round(m["tpr_at_fpr_0.01"], 4), "target_epochs": target_epochs,
                       "shadow_epochs": recs["shadow"]["fit_info"]["epochs_run"], "shadow_lengths": lengths,
                       "members": res.split["target"]["members"], "seconds": round(seconds, 1),
                       "timings": res.timings, "load": os.getloadavg()[0],
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
                print(f"| {args.data} | {args.rec} | {seed} | {attacker} | {row['roc_auc']:.4f} | "
                      f"{row['balanced_accuracy']:.4f} | {row['tpr_at_fpr_0.01']:.4f} | {target_epochs} | "
                      f"{row['shadow_epochs']} | {','.join(map(str, lengths))} | {seconds:.0f} |", flush=True)
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
