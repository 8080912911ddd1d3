"""How many epochs until a recommender's quality stops improving? (chooses the built-in defaults)

Trains the built-in ``lfm`` or ``ncf`` on the target part's members with 20% of each member's
interactions held out, and after every ``--every`` epochs prints recall@k on the held-out items
and the share of the members' top-k lists that lies in the popular top-k.

    python benchmarks/convergence.py --dataset ml-100k --model lfm --epochs 300 --every 25
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.seeds import stage_seed
from miars_core.contracts.types import binary_csr
from miars_core.engine.datasets import load_dataset
from miars_core.engine.pipeline import AttackConfig
from miars_core.science.protocol import split_dataset
from miars_core.science.ranking import top_k_excluding
from miars_core.science.service import popularity_order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--model", default="lfm", help="a RecBole-backed built-in: lfm, ncf or recbole:<Name>")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--param", action="append", default=[], help="KEY=VALUE hyperparameter (JSON value)")
    args = ap.parse_args()

    from miars_core.cli import parse_params

    plugins = get_plugins()
    data = load_dataset(AttackConfig(dataset=args.dataset), plugins)
    split = split_dataset(data, seed=stage_seed(args.seed, "split"))
    part = split.target
    members = part.members.matrix.tocoo()
    rng = np.random.default_rng(args.seed)
    held = rng.random(members.nnz) < args.holdout
    train = binary_csr(members.row[~held], members.col[~held], members.shape)
    test = binary_csr(members.row[held], members.col[held], members.shape)
    popular_k = popularity_order(part)[: args.top_k]
    wrapper = plugins.create("recommender", args.model, epochs=args.epochs, **parse_params(args.param, "--param"))
    batch, lr, lr_scale = wrapper._sizes(train.nnz)
    print(f"{args.dataset} target members: {members.shape[0]} users, {train.nnz} train / {test.nnz} held-out "
          f"interactions; {args.model} = RecBole {wrapper.model} {wrapper._recbole_config()}, batch {batch}, lr {lr}")
    print(f"{'epoch':>6} {'recall@%d' % args.top_k:>10} {'popular share':>14} {'seconds':>8}")
    start = time.perf_counter()

    def report(epoch: int, fitted) -> None:
        if epoch % args.every and epoch != args.epochs:
            return
        lists = top_k_excluding(fitted.score_rows, train, args.top_k, batch_size=256)
        hits = np.asarray(test[np.repeat(np.arange(train.shape[0]), args.top_k), lists.ravel()]).sum()
        share = np.isin(lists, popular_k).mean()
        print(f"{epoch:>6} {hits / test.nnz:>10.4f} {share:>14.3f} {time.perf_counter() - start:>8.1f}", flush=True)

    run = wrapper._start(train, stage_seed(args.seed, "target"), batch, lr, lr_scale, args.epochs)
    for epoch in range(1, args.epochs + 1):
        run.epoch()
        report(epoch, run.fitted())


if __name__ == "__main__":
    main()
