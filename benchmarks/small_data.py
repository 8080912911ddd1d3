"""Auto training length on a small dataset built from ml-1m: is it converged, and what does the attack read?

    python benchmarks/small_data.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz

Builds a small dataset (``--users`` users drawn at random, at most ``--max-per-user`` interactions
each, seeded), splits it as the attack does (``--min-interactions`` 10 so that users survive; the
target part's members then hold a few thousand interactions) and, for ``lfm`` and ``ncf``:
1. holds out 20% of every target member's interactions (seeded), fits with ``epochs=None`` (auto)
   on the rest and measures held-out recall@k of the fitted model;
2. trains the same model (same batch size and learning rate) for a long run on the same data,
   measuring recall@k every ``--every`` epochs, and reports auto / best-of-long-run;
3. reports the recall of the previous fixed defaults (lfm 50 epochs, ncf 40 epochs, batch 4,096);
then runs the whole attack ``ncf``/``ncf`` (and ``lfm``/``lfm``) with auto epochs and with the
previous defaults, and prints ROC-AUC of each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

OLD = {"lfm": {"epochs": 50, "batch_size": 4096, "learning_rate": 0.005},
       "ncf": {"epochs": 40, "batch_size": 4096, "learning_rate": 0.002}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="../shared/data/movielens-1m/ml-1m-pairs.tsv.gz")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--max-per-user", type=int, default=50)
    ap.add_argument("--min-interactions", type=int, default=10)
    ap.add_argument("--models", default="lfm,ncf")
    ap.add_argument("--long", type=int, default=200, help="epochs of the long run")
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-attack", action="store_true")
    ap.add_argument("--attack-only", action="store_true")
    args = ap.parse_args()

    from miars_core.contracts.plugins import get_plugins
    from miars_core.contracts.seeds import stage_seed
    from miars_core.contracts.types import Interactions
    from miars_core.engine.datasets import load_dataset
    from miars_core.engine.pipeline import AttackConfig, run_attack
    from miars_core.science.protocol import split_dataset
    from miars_core.science.synth import sample_users
    from miars_recbole.lean import heldout_recall, holdout_split
    from miars_recbole.session import LeanRun

    plugins = get_plugins()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}")
    full = load_dataset(AttackConfig(dataset=args.dataset), plugins)
    small = sample_users(full, args.users, args.max_per_user, seed=args.seed)
    split = split_dataset(small, min_interactions=args.min_interactions, seed=stage_seed(args.seed, "split"))
    members = split.target.members
    print(f"small dataset: {small.n_users} users x {small.n_items} items, {small.n_interactions} interactions; "
          f"target members {members.n_users} with {members.n_interactions} interactions")
    fit, held = holdout_split(members.matrix, 0.2, seed=args.seed + 7)
    rows = np.flatnonzero(np.diff(held.indptr) > 0)
    k = min(args.k, fit.shape[1] // 10)

    def recall(fitted):
        return heldout_recall(fitted.score_rows, fit, held, rows, k)

    fit_inter = Interactions(fit, members.user_ids, members.item_ids)
    for name in args.models.split(",") if not args.attack_only else []:
        t = time.perf_counter()
        auto = plugins.create("recommender", name).fit(fit_inter, seed=args.seed)
        auto_s = time.perf_counter() - t
        info = auto.fit_info_
        r_auto = recall(auto.model_)
        run = LeanRun(auto.model, fit, auto._recbole_config(), args.seed, info["batch_size"], info["learning_rate"])
        curve = []
        for epoch in range(1, args.long + 1):
            run.epoch()
            if epoch % args.every == 0:
                curve.append((epoch, recall(run.fitted())))
        best_epoch, best = max(curve, key=lambda c: c[1])
        old = plugins.create("recommender", name, **OLD[name]).fit(fit_inter, seed=args.seed)
        r_old = recall(old.model_)
        print(f"\n{name}: auto chose {info['chosen_epochs']} epochs (batch {info['batch_size']}, lr {info['learning_rate']:.5f}, "
              f"{auto_s:.1f} s): held-out recall@{k} {r_auto:.4f}; long run best {best:.4f} at epoch {best_epoch} "
              f"-> auto / best = {r_auto / best:.3f}; previous defaults {OLD[name]}: {r_old:.4f} ({r_old / best:.3f} of best)")
        print("  selection curve (its own 80/20 split of the fit data):", info["curve"])
        print("  long-run curve:", [(e, round(r, 4)) for e, r in curve])

    if args.skip_attack:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "small.tsv")
        coo = small.matrix.tocoo()
        np.savetxt(path, np.column_stack([small.user_ids[coo.row], small.item_ids[coo.col]]), fmt="%s", delimiter="\t")
        print()
        for name in args.models.split(","):
            for label, params in (("auto", {}), ("previous defaults", OLD[name])):
                t = time.perf_counter()
                res = run_attack(AttackConfig(dataset=path, target=name, shadow=name, seed=args.seed,
                                              min_interactions=args.min_interactions,
                                              target_params=params, shadow_params=params))
                f = res.recommenders["target"]["fit_info"]
                print(f"attack {name}/{name} ({label}): ROC-AUC {res.metrics['roc_auc']:.4f}, balanced acc. "
                      f"{res.metrics['balanced_accuracy']:.4f}, target epochs {f['epochs_run']}, members' lists "
                      f"{res.recommenders['target']['members_popular_overlap']:.2f} popular, "
                      f"{res.split['target']['members']} members, {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
