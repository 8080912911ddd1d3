"""LiRA against the number of reference models, beside query-recall (issue 18).

    python benchmarks/lira_curve.py --dataset ml-100k --target item,lfm --seed 0,1,2 \\
        --references 1,2,4,8,16 --cache /tmp/lira-cache --out lira-curve.json

For each (target, seed) cell (``--service foldin``, the defaults of ``miars-attack`` otherwise)
the script asks the target the same queries ``lira`` asks (``queries`` random halves per user,
seed("attack")), and asks them of the largest number of offline and online reference models
(the engine's ``reference`` and ``online_reference`` stages, read from or stored in ``--cache``).
``lira`` with ``references=R`` uses models 0..R-1 and the same queries, so its scores are
:func:`miars_attacks.lira.lira_scores` of the first R rows: one pass gives the whole curve
(``--verify`` runs ``lira`` itself at references=8, or the largest count when that is smaller,
offline and online (offline only at 1), with the same ``--queries``, on the first seed and checks
the ROC-AUC is the same). ``query-recall`` (its defaults: zreg, 3 reference models) runs
as an attack on the same stored models. Metrics: ROC-AUC, TPR at 1% and 0.1% FPR on the target
part (with ~160-170 non-members on ml-100k, 0.1% FPR is TPR at zero false positives).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def statistics(cell, queries: int, largest: int):
    """The target's statistic, the offline and online reference statistics (largest x n), who each online model had."""
    from miars_attacks.query import half_splits, recall_of_lists
    from miars_core.contracts.seeds import stage_seed

    view = cell.view("target", False, cell.features("target", False), "queries")
    n = view.n_users
    q, t = half_splits(view.histories, queries, stage_seed(cell.config.seed, "attack"))

    def stat(access) -> np.ndarray:
        return recall_of_lists(access.recommend(q), t).reshape(queries, n).mean(axis=0)

    x = stat(view.query)
    offline = np.array([stat(view.reference(i)) for i in range(largest)])
    online = np.array([stat(view.online_reference(i)) for i in range(largest)])
    inside = np.array([view.online_reference.trained(i) for i in range(largest)])
    return x, offline, online, inside


def summarize(paths: list[str]) -> str:
    """A markdown table of curve files: per (target, attack, references), ROC-AUC and TPRs per seed and their mean."""
    rows = [r for path in paths for r in json.load(open(path))]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        name = r["attack"] if r["attack"] != "lira" else f"lira {'online' if r['online'] else 'offline'}"
        if r["attack"] == "lira" and r.get("variance") != "auto":
            name += f", {r['variance']} variance"
        groups.setdefault((r["target"], name, r.get("references", "")), []).append(r)
    out = ["| target | attack | references | ROC-AUC per seed: mean | TPR@1%FPR per seed: mean | TPR@0.1%FPR per seed: mean |",
           "|---|---|---:|---|---|---|"]
    for (target, name, refs), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        cells = []
        for key in ("roc_auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001"):
            values = [r[key] for r in rs]
            cells.append(" / ".join(f"{v:.3f}" for v in values) + f": {np.mean(values):.3f}")
        out.append(f"| {target} | {name} | {refs} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(paths: list[str], target: str, out: str) -> None:
    """The reference-model curve of ``target`` as a PNG: ROC-AUC and TPR at 1% FPR against the number of
    reference models (mean over seeds, each seed a faint dot), offline and online LiRA with the default
    variance, the per-user variance where measured, and ``query-recall`` as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for path in paths for r in json.load(open(path)) if r["target"] == target]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    series = [("lira offline", dict(online=False, variance="auto"), "C0", "o-"),
              ("lira online", dict(online=True, variance="auto"), "C1", "s-"),
              ("lira offline, per-user variance", dict(online=False, variance="per-user"), "C2", "D"),
              ("lira online, per-user variance", dict(online=True, variance="per-user"), "C3", "^")]
    seeds = sorted({r["seed"] for r in rows})
    for ax, key, label in zip(axes, ("roc_auc", "tpr_at_fpr_0.01"), ("ROC-AUC", "TPR at 1% FPR")):
        for name, want, color, style in series:
            pts = [r for r in rows if r["attack"] == "lira" and all(r.get(k) == v for k, v in want.items())]
            refs = sorted({r["references"] for r in pts})
            if not refs:
                continue
            means = [np.mean([r[key] for r in pts if r["references"] == n]) for n in refs]
            ax.plot(refs, means, style, color=color, label=name)
            for r in pts:
                ax.plot(r["references"], r[key], ".", color=color, alpha=0.3)
        qr = [r[key] for r in rows if r["attack"] == "query-recall"]
        if qr:
            ax.axhline(np.mean(qr), color="k", ls="--", lw=1, label="query-recall (3 models)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("reference models")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"LiRA against the number of reference models: {target}, seeds {', '.join(map(str, seeds))}")
    fig.savefig(out, dpi=100)


def main() -> int:
    from miars_attacks.lira import lira_scores
    from miars_core.contracts.plugins import get_plugins
    from miars_core.engine.pipeline import AttackConfig, run_attack
    from miars_core.engine.stages import Cell
    from miars_core.engine.store import DiskStore
    from miars_core.science.metrics import membership_metrics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--target", default="item,lfm")
    ap.add_argument("--seed", default="0,1,2")
    ap.add_argument("--references", default="1,2,4,8,16")
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--cache")
    ap.add_argument("--out")
    ap.add_argument("--summarize", nargs="+", metavar="JSON", help="print a markdown table of curve files and exit")
    ap.add_argument("--plot", metavar="PNG", help="with --summarize: also draw the first --target's curve into PNG")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--save", help="folder: each cell's statistics as <target>-<seed>.npz (x, offline, online, inside, y)")
    a = ap.parse_args()
    if a.summarize:
        print(summarize(a.summarize))
        if a.plot:
            plot(a.summarize, a.target.split(",")[0], a.plot)
        return 0
    if not (a.cache and a.out):
        ap.error("--cache and --out are required (or --summarize)")
    counts = [int(r) for r in a.references.split(",")]
    plugins, rows = get_plugins(), []
    for target in a.target.split(","):
        for seed in [int(s) for s in a.seed.split(",")]:
            start = time.perf_counter()
            config = AttackConfig(dataset=a.dataset, target=target, shadow=target, service="foldin", attack="lira",
                                  attack_params={"references": max(counts), "queries": a.queries}, seed=seed)
            cell = Cell(config, plugins, store=DiskStore(a.cache))
            y = cell.part("target").is_member
            x, offline, online, inside = statistics(cell, a.queries, max(counts))
            if a.save:
                np.savez(f"{a.save}/{target}-{seed}.npz", x=x, offline=offline, online=online, inside=inside, y=y)

            def record(attack: str, scores: np.ndarray, **extra) -> None:
                m = membership_metrics(y, scores)
                rows.append({"target": target, "seed": seed, "attack": attack, **extra,
                             **{k: round(float(m[k]), 4) for k in ("roc_auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001")},
                             "members": int(y.sum()), "non_members": int((~y).sum())})

            for r in counts:
                record("lira", lira_scores(x, offline[:r]), online=False, references=r, variance="auto")
                if r >= 2:
                    record("lira", lira_scores(x, online[:r], inside[:r]), online=True, references=r, variance="auto")
            for variance in ("per-user", "global"):
                record("lira", lira_scores(x, offline, variance=variance), online=False, references=max(counts),
                       variance=variance)
                if max(counts) >= 2:  # online LiRA needs models with and without each user
                    record("lira", lira_scores(x, online, inside, variance=variance), online=True,
                           references=max(counts), variance=variance)
            record("raw recall", x)
            qr = run_attack(AttackConfig(dataset=a.dataset, target=target, service="foldin", attack="query-recall",
                                         seed=seed), plugins=plugins, store=DiskStore(a.cache))
            rows.append({"target": target, "seed": seed, "attack": "query-recall", "references": 3,
                         **{k: round(float(qr.metrics[k]), 4) for k in ("roc_auc", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001")}})
            if a.verify and seed == int(a.seed.split(",")[0]):
                at = min(8, max(counts))  # a count the curve has: 8, or the largest when --references stops below
                for on in (False, True) if at >= 2 else (False,):
                    res = run_attack(AttackConfig(dataset=a.dataset, target=target, service="foldin", attack="lira",
                                                  attack_params={"references": at, "online": on, "queries": a.queries},
                                                  seed=seed),
                                     plugins=plugins, store=DiskStore(a.cache))
                    mine = next(r["roc_auc"] for r in rows if r["target"] == target and r["seed"] == seed
                                and r.get("online") is on and r.get("references") == at and r.get("variance") == "auto")
                    ok = abs(res.metrics["roc_auc"] - mine) < 1e-4
                    print(f"verify {target} seed {seed} references={at} online={on}: lira {res.metrics['roc_auc']:.4f},"
                          f" curve {mine:.4f} {'ok' if ok else 'DIFFERENT'}", file=sys.stderr)
                    if not ok:
                        return 1
            print(f"{target} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
            with open(a.out, "w") as fh:
                json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
