"""Each torch stage on the CPU and, when torch sees one, on the GPU: seconds, GPU speed-up, repeatability, agreement.

    python benchmarks/device.py                          # ml-100k (embedded); CPU, plus cuda when present
    python benchmarks/device.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz
    python benchmarks/device.py --devices cpu,cuda:0 --repeat 3 --json /tmp/device.json

Stages (the target part of a seeded split; each one inside ``use_device(device)``, as the engine
runs them): ``lfm`` and ``ncf`` fits for a fixed number of epochs, the members' top-k of each
(scoring), fold-in of the non-members (gradient, 50 Adam steps) for each, the attack MLP
(fit + scores, center-diff features of those lists) and, unless ``--no-dp-sgd``, one epoch
of ``dp-sgd`` training of ``lfm``. Each stage runs ``--repeat`` times per device (interleaved
over devices, minimum kept); the first use of a device (CUDA context, cuBLAS handles) is timed
apart as ``warm-up``. Besides seconds it reports, per device, whether two runs gave the same
output (``same twice``: lists or scores bit for bit) and, for the GPU, how close it is to the
CPU (``vs cpu``: share of list positions equal, or the largest attack-score difference).
Measured, never asserted; read the ratios, not the seconds (machines are shared).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _warm_up(device: str) -> float:
    """Seconds of a device's first use (context, allocator, cuBLAS): kept out of the stage timings."""
    import torch

    from miars_core.kit.torch_utils import current_device, use_device

    start = time.perf_counter()
    with use_device(device):
        current_device()  # the engine's own first use of a GPU (deterministic settings, warm-up kernels)
    x = torch.ones((256, 256), device=device)
    float((x @ x).sum())
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda when torch sees a GPU)")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--lfm-epochs", type=int, default=10)
    ap.add_argument("--ncf-epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-dp-sgd", action="store_true", help="leave out the dp-sgd stage (opacus)")
    ap.add_argument("--json", default=None, help="also write the measurements to this file")
    args = ap.parse_args()

    import torch

    from miars_attacks.features import CenterDiff
    from miars_attacks.mlp import MLPAttack
    from miars_core.contracts.plugins import get_plugins
    from miars_core.engine.datasets import load_dataset
    from miars_core.engine.pipeline import AttackConfig
    from miars_core.kit.torch_utils import check_device, resolve_device, use_device
    from miars_core.science.protocol import split_dataset
    from miars_recbole.models import LatentFactorModel, NeuralCF

    if args.threads:
        torch.set_num_threads(args.threads)
    asked = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in asked:
        check_device(name)
    devices = list(dict.fromkeys(resolve_device(d) for d in asked))
    k = args.top_k
    data = load_dataset(AttackConfig(dataset=args.dataset), get_plugins())
    split = split_dataset(data, seed=0)
    part = split.target
    members, member_mask = part.members, part.is_member
    others = part.interactions.matrix[~member_mask]
    gpus = {d: torch.cuda.get_device_name(d) for d in devices if d != "cpu"}
    print(f"{args.dataset}: target part {part.interactions.n_users} users x {part.interactions.n_items} items, "
          f"{members.n_interactions} member interactions, {others.shape[0]} non-members; k={k}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.get_num_threads()} CPU threads; devices: "
          + ", ".join(f"{d}" + (f" ({gpus[d]})" if d in gpus else "") for d in devices)
          + ("" if torch.cuda.is_available() else "; torch sees no GPU, so the CPU alone is measured"))

    vectors = CenterDiff(dim=100).fit(split.vectorization, seed=0)
    state: dict[str, dict] = {d: {} for d in devices}

    def fit(cls, epochs):
        return lambda st: cls(epochs=epochs).fit(members, seed=1)

    def top_k(name):
        return lambda st: st[name].recommend(k)

    def fold_in(name):
        return lambda st: st[name].recommend_for(others, k, seed=2)

    def attack(st):
        lists = np.empty((part.interactions.n_users, k), dtype=np.int64)
        lists[member_mask], lists[~member_mask] = st["lfm_lists"], st["lfm_foldin"]
        x = vectors.transform(part.interactions, lists)
        model = MLPAttack().fit(x, member_mask.astype(int), seed=3)
        return model.decision_function(x)

    def dp_sgd(st):
        from miars_defenses.dp_sgd import DPSGD

        return DPSGD(epsilon=3.0, epochs=1).fit(LatentFactorModel(), members, seed=4).recommend(k)

    # (name, function of the device's state, state key its output is kept under, what the output is)
    stages = [
        (f"lfm fit ({args.lfm_epochs} epochs)", fit(LatentFactorModel, args.lfm_epochs), "lfm", "model"),
        (f"ncf fit ({args.ncf_epochs} epochs)", fit(NeuralCF, args.ncf_epochs), "ncf", "model"),
        ("lfm scoring (members' top-k)", top_k("lfm"), "lfm_lists", "lists"),
        ("ncf scoring (members' top-k)", top_k("ncf"), "ncf_lists", "lists"),
        ("lfm fold-in (non-members' top-k)", fold_in("lfm"), "lfm_foldin", "lists"),
        ("ncf fold-in (non-members' top-k)", fold_in("ncf"), "ncf_foldin", "lists"),
        ("attack MLP (fit + scores)", attack, "attack", "scores"),
    ]
    if not args.no_dp_sgd:
        stages.append(("dp-sgd lfm fit (1 epoch)", dp_sgd, "dp_sgd", "lists"))

    from miars_core.engine.warmup import warm_up

    process_warm_up = warm_up()  # the engine's once-per-process warm-up (imports, thread pools, first Adam step)
    warm = {d: _warm_up(d) for d in devices}
    rows = []
    for name, fn, key, kind in stages:
        seconds = {d: [] for d in devices}
        outputs = {d: [] for d in devices}
        for _ in range(max(1, args.repeat)):
            for d in devices:  # interleaved: a busy moment of the machine hits every device alike
                with use_device(d):
                    _sync(d)
                    start = time.perf_counter()
                    out = fn(state[d])
                    _sync(d)
                    seconds[d].append(time.perf_counter() - start)
                outputs[d].append(out)
        row = {"stage": name, "seconds": {d: min(s) for d, s in seconds.items()}, "same_twice": {}, "vs_cpu": {}}
        for d in devices:
            state[d][key] = outputs[d][-1]
            if kind != "model" and len(outputs[d]) > 1:
                row["same_twice"][d] = all(np.array_equal(outputs[d][0], o) for o in outputs[d][1:])
            if kind != "model" and d != "cpu" and "cpu" in devices:
                a, b = np.asarray(outputs["cpu"][-1]), np.asarray(outputs[d][-1])
                row["vs_cpu"][d] = (f"{(a == b).mean():.1%} positions" if kind == "lists"
                                    else f"max |diff| {np.abs(a - b).max():.2e}")
        rows.append(row)

    gpu_devices = [d for d in devices if d != "cpu"]
    head = f"{'stage':<36}" + "".join(f"{d + ' s':>11}" for d in devices)
    head += "".join(f"{'cpu/' + d:>11}" for d in gpu_devices if "cpu" in devices)
    head += f"  {'same twice':<14}" + ("  vs cpu" if gpu_devices and "cpu" in devices else "")
    print("\n" + head)
    print(f"{'warm-up (process, once)':<36}{process_warm_up:>11.3f}")
    print(f"{'warm-up (first use)':<36}" + "".join(f"{warm[d]:>11.3f}" for d in devices))
    for row in rows:
        line = f"{row['stage']:<36}" + "".join(f"{row['seconds'][d]:>11.3f}" for d in devices)
        if "cpu" in devices:
            line += "".join(f"{row['seconds']['cpu'] / row['seconds'][d]:>10.2f}x" for d in gpu_devices)
        same = ", ".join(f"{d}: {'yes' if v else 'NO'}" for d, v in row["same_twice"].items()) or "-"
        line += f"  {same:<14}"
        if row["vs_cpu"]:
            line += "  " + ", ".join(f"{v}" for v in row["vs_cpu"].values())
        print(line)
    if args.json:
        record = {"dataset": args.dataset, "torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus,
                  "threads": torch.get_num_threads(), "k": k, "repeat": args.repeat, "warm_up": warm,
                  "process_warm_up": process_warm_up, "stages": rows,
                  "argv": sys.argv[1:]}
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
