"""``ncf``'s automatic training length: today's selection against cheaper ones, replayed on the same training runs.

For each seed and part (shadow, target) of a data set, the part's members and the fit seed are
the engine's (``Cell``); NeuMF is trained on the selection's fit matrix (the same hold-out, eval
users, ``k``, batch and learning rate as ``miars_recbole.lean.select_epochs``), and after every
``eval_every`` epochs **every** eval user (up to 2,000) is scored against every item, recording
per user the held-out hits in the top-k, plus the hits of sampled-candidate recall (each
held-out item against a fixed seeded sample of C items, top round(k C / items)). Training goes
on ``--extra`` epochs past today's stop, so rules that stop later can be replayed. Then the
stop rule (patience, min_delta) is replayed offline for each scheme:

- ``today``: all eval users, full ranking (must reproduce the selection's own choice);
- ``users=N``: the rule on the first N of a seeded permutation of the eval users;
- ``sampled=C``: the rule on sampled-candidate recall;
- ``patience=P``: the rule with a shorter patience (all eval users);
- ``users=N+confirm=M``: the rule on N users, then the M best epochs by that curve re-scored on
  all eval users (snapshots), the best of them chosen.

Each scheme reports the chosen length, the held-out recall of that length **on all eval users**
(from the records: the quality of the choice), its ratio to today's, and an estimated cost
(training epochs to the stop x measured epoch time + evaluations x measured time per user).
With ``--measure`` the library's own ``select_epochs`` then runs as configured now and its
chosen length, recall and seconds are printed beside a fit of the chosen length, so the
selection's cost is a share of the whole fit (time it only on a quiet machine).

    python benchmarks/selection.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def record(members, seed: int, extra: int, cands: list[int], crit: dict) -> dict:
    """Train as the selection does and score every eval user after every ``eval_every`` epochs."""
    from miars_core.science.ranking import top_k_excluding
    from miars_recbole.lean import holdout_split
    from miars_recbole.models import NeuralCF

    fit, held = holdout_split(members, float(crit["holdout"]), seed)
    rows = np.flatnonzero(np.diff(held.indptr) > 0)
    rng = np.random.default_rng(seed + 1)
    if len(rows) > int(crit["eval_users"]):
        rows = np.sort(rng.choice(rows, int(crit["eval_users"]), replace=False))
    most = int(np.diff(fit.indptr).max())
    k = max(1, min(int(crit["k"]), (fit.shape[1] - most), max(10, fit.shape[1] // 10)))
    model = NeuralCF()
    batch, lr, lr_scale = model._sizes(members.nnz)
    run = model._start(fit, seed, batch, lr, lr_scale, int(crit["max_epochs"]))
    n_items = fit.shape[1]
    crng = np.random.default_rng(12345 + seed)
    cand_sets = {c: np.sort(crng.choice(n_items, min(c, n_items), replace=False)) for c in cands}
    sub_fit, sub_held = fit[rows], held[rows]
    held_counts = np.diff(sub_held.indptr)
    out = {"k": k, "n_items": n_items, "eval_users": len(rows), "held": held_counts.tolist(), "epochs": [], "hits": [],
           "sampled": {c: [] for c in cands}, "epoch_s": [], "eval_s": []}
    every, patience, md = int(crit["eval_every"]), int(crit["patience"]), float(crit["min_delta"])
    best, since, stop = -1.0, 0, None
    epoch = 0
    while True:
        epoch += 1
        t = time.perf_counter()
        run.epoch()
        out["epoch_s"].append(time.perf_counter() - t)
        if epoch % every:
            continue
        fitted = run.fitted()
        t = time.perf_counter()
        lists = top_k_excluding(lambda r: fitted.score_rows(rows[r]), sub_fit, k, batch_size=512, scratch=True)
        out["eval_s"].append(time.perf_counter() - t)
        hits = np.asarray(sub_held[np.repeat(np.arange(len(rows)), k), lists.ravel()]).reshape(len(rows), k).sum(1)
        out["epochs"].append(epoch)
        out["hits"].append(hits.tolist())
        for c, cset in cand_sets.items():
            out["sampled"][c].append(sampled_hits(fitted, rows, sub_fit, sub_held, cset, k, n_items).tolist())
        recall = hits.sum() / max(1, held_counts.sum())
        if stop is None:  # today's rule, to know how far to go
            if recall > best:
                since = 0 if (recall > best * (1 + md) or best <= 0) else since + 1
                best = recall
            else:
                since += 1
            if since >= patience or epoch >= int(crit["max_epochs"]):
                stop = epoch
        if stop is not None and epoch >= stop + extra:
            break
    return out


def sampled_hits(fitted, rows, sub_fit, sub_held, cset, k, n_items):
    """Per user: held-out items ranked within the top round(k C / items) among the fixed candidates C
    (candidates the user knows or holds out excluded)."""
    import torch

    kc = max(1, int(round(k * len(cset) / n_items)))
    hits = np.zeros(len(rows), dtype=np.int64)
    in_c = np.zeros(n_items, dtype=bool)
    in_c[cset] = True
    cpos = np.full(n_items, -1)
    cpos[cset] = np.arange(len(cset))
    for start in range(0, len(rows), 512):
        r = np.arange(start, min(start + 512, len(rows)))
        with torch.no_grad():
            s = fitted.score_rows(rows[r]).numpy()
        sc = s[:, cset].copy()
        for m in (sub_fit[r], sub_held[r]):  # not a negative: known or held out
            rr = np.repeat(np.arange(len(r)), np.diff(m.indptr))
            keep = in_c[m.indices]
            sc[rr[keep], cpos[m.indices[keep]]] = -np.inf
        top = -np.sort(-sc, axis=1)[:, kc - 1]  # the kc-th best negative
        h = sub_held[r]
        rr = np.repeat(np.arange(len(r)), np.diff(h.indptr))
        hit = s[rr, h.indices] > top[rr]
        hits[r] = np.bincount(rr, weights=hit, minlength=len(r)).astype(np.int64)
    return hits


def replay(values: list[float], epochs: list[int], patience: int, min_delta: float) -> tuple[int, int]:
    """(chosen epoch, stop epoch) of select_epochs' rule on a curve."""
    best, best_epoch, since = -1.0, 0, 0
    for value, epoch in zip(values, epochs):
        if value > best:
            improved = value > best * (1 + min_delta) or best <= 0
            best, best_epoch = value, epoch
            since = 0 if improved else since + 1
        else:
            since += 1
        if since >= patience:
            return best_epoch, epoch
    return best_epoch, epochs[-1]


def schemes(rec: dict, crit: dict, users: list[int], cands: list[int], confirm: int, seed: int,
            patiences: tuple = ()) -> list[dict]:
    hits = np.asarray(rec["hits"], dtype=np.float64)  # evals x users
    held = np.asarray(rec["held"], dtype=np.float64)
    epochs = rec["epochs"]
    full = hits.sum(1) / held.sum()
    n = len(held)
    perm = np.random.default_rng(seed + 7).permutation(n)
    epoch_s = np.asarray(rec["epoch_s"])
    per_user = float(np.median(rec["eval_s"])) / n
    patience, md = int(crit["patience"]), float(crit["min_delta"])

    def cost(stop, evals_users):
        return float(epoch_s[:stop].sum() + per_user * evals_users)

    out = []
    chosen, stop = replay(full.tolist(), epochs, patience, md)
    n_evals = epochs.index(stop) + 1
    base = full[epochs.index(chosen)]
    out.append({"scheme": "today", "epochs": chosen, "recall": base, "cost": cost(stop, n_evals * n)})
    for u in users:
        if u >= n:
            continue
        sel = perm[:u]
        curve = hits[:, sel].sum(1) / held[sel].sum()
        c, s = replay(curve.tolist(), epochs, patience, md)
        e = epochs.index(s) + 1
        out.append({"scheme": f"users={u}", "epochs": c, "recall": full[epochs.index(c)], "cost": cost(s, e * u)})
        if confirm:
            upto = epochs.index(s) + 1
            order = np.argsort(-curve[:upto], kind="stable")[:confirm]
            pick = order[np.argmax(full[order])]
            out.append({"scheme": f"users={u}+confirm={confirm}", "epochs": epochs[pick], "recall": full[pick],
                        "cost": cost(s, e * u + len(order) * n)})
    for p in patiences:  # stopping earlier: fewer training epochs past the best
        c, s = replay(full.tolist(), epochs, p, md)
        out.append({"scheme": f"patience={p}", "epochs": c, "recall": full[epochs.index(c)],
                    "cost": cost(s, (epochs.index(s) + 1) * n)})
    for c in cands:
        sh = np.asarray(rec["sampled"][c], dtype=np.float64).sum(1) / held.sum()
        ch, s = replay(sh.tolist(), epochs, patience, md)
        e = epochs.index(s) + 1
        out.append({"scheme": f"sampled={c}", "epochs": ch, "recall": full[epochs.index(ch)],
                    "cost": cost(s, e * n * min(1.0, c / rec["n_items"]))})  # scoring C of the items
    for row in out:
        row["recall_ratio"] = row["recall"] / base
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="../shared/data/movielens-1m/ml-1m-pairs.tsv.gz")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--parts", default="shadow,target")
    ap.add_argument("--extra", type=int, default=8, help="epochs recorded past today's stop")
    ap.add_argument("--users", default="250,500,1000")
    ap.add_argument("--cands", default="500,1000")
    ap.add_argument("--confirm", type=int, default=3)
    ap.add_argument("--patience", default="2,3", help="shorter patience values to replay (all eval users)")
    ap.add_argument("--records", default=None, help="JSON file: reuse (if it exists) or write the training records")
    ap.add_argument("--measure", action="store_true", help="also time the library's select_epochs and the final fit")
    args = ap.parse_args()

    import torch

    from miars_core.engine.pipeline import AttackConfig
    from miars_core.contracts.plugins import get_plugins
    from miars_core.contracts.seeds import stage_seed
    from miars_core.engine.stages import Cell
    from miars_recbole.lean import SELECTION_DEFAULTS

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, torch threads {torch.get_num_threads()}")
    crit = dict(SELECTION_DEFAULTS)
    crit.update(eval_users=2000)  # today's selection (the records keep every one of these users)
    users = [int(x) for x in args.users.split(",") if x]
    cands = [int(x) for x in args.cands.split(",") if x]
    records = {}
    if args.records and os.path.exists(args.records):
        records = json.load(open(args.records))
    plugins = get_plugins()
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        cell = Cell(AttackConfig(dataset=args.dataset, target="ncf", shadow="ncf", seed=seed), plugins)
        for part in args.parts.split(","):
            key = f"{seed}-{part}"
            members = cell.part(part).members.matrix
            fit_seed = stage_seed(seed, part)
            if key not in records:
                t = time.perf_counter()
                records[key] = record(members, fit_seed, args.extra, cands, crit)
                records[key]["sampled"] = {str(c): v for c, v in records[key]["sampled"].items()}
                print(f"{key}: recorded {records[key]['epochs'][-1]} epochs in {time.perf_counter() - t:.0f} s "
                      f"(epoch {np.median(records[key]['epoch_s']):.2f} s, eval of {records[key]['eval_users']} users "
                      f"{np.median(records[key]['eval_s']):.2f} s)", flush=True)
                if args.records:
                    json.dump(records, open(args.records, "w"))
            rec = dict(records[key])
            rec["sampled"] = {int(c): v for c, v in rec["sampled"].items()}
            patiences = [int(x) for x in args.patience.split(",") if x]
            for row in schemes(rec, crit, users, cands, args.confirm, fit_seed, patiences):
                rows.append({"seed": seed, "part": part, **row})
            if args.measure:
                measure(members, fit_seed)
    print(f"\n{'seed':>4} {'part':<7} {'scheme':<22} {'epochs':>6} {'recall (all eval users)':>24} {'/ today':>8} "
          f"{'est. selection s':>16}")
    for r in rows:
        print(f"{r['seed']:>4} {r['part']:<7} {r['scheme']:<22} {r['epochs']:>6} {r['recall']:>24.4f} "
              f"{r['recall_ratio']:>8.4f} {r['cost']:>16.1f}")
    print("\nper scheme: same length as today (of runs), worst recall ratio, mean estimated cost / today's")
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        sel = [r for r in rows if r["scheme"] == scheme]
        today = {(r["seed"], r["part"]): r for r in rows if r["scheme"] == "today"}
        same = sum(r["epochs"] == today[(r["seed"], r["part"])]["epochs"] for r in sel)
        ratio = np.mean([r["cost"] / today[(r["seed"], r["part"])]["cost"] for r in sel])
        print(f"  {scheme:<22} {same}/{len(sel)} same length, worst recall ratio {min(r['recall_ratio'] for r in sel):.4f}, "
              f"cost {ratio:.2f}x today's")


def measure(members, seed: int) -> None:
    """The library's selection as configured now: chosen length, recall and seconds, and the final fit's seconds."""
    from miars_core.contracts.types import Interactions
    from miars_recbole.models import NeuralCF

    data = Interactions(members, np.arange(members.shape[0]), np.arange(members.shape[1]))
    t = time.perf_counter()
    model = NeuralCF().fit(data, seed=seed)
    total = time.perf_counter() - t
    info = model.fit_info_
    sel = info["selection_seconds"]
    crit = info["criterion"]
    best = max(v for e, v in info["curve"] if e == info["chosen_epochs"]) if info["curve"] else float("nan")
    print(f"  measured: chosen {info['chosen_epochs']} epochs, recall {best:.4f} ({crit.get('eval_users')} users), "
          f"selection {sel:.1f} s of a {total:.1f} s fit ({sel / total:.0%}); scoring {info.get('selection_scoring_seconds', float('nan')):.1f} s of it",
          flush=True)


if __name__ == "__main__":
    main()
