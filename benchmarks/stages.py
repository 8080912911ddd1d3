"""Each hot stage against the obvious per-user implementation, timed in one run, reported as ratios.

    python benchmarks/stages.py                 # ml-100k (embedded)
    python benchmarks/stages.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz

Stages: center-diff features (sparse products vs a loop over users), top-k excluding known
items (batched torch.topk vs a loop of per-user argsort), NeuMF full ranking (split first layer
vs RecBole's predict over every (user, item) pair). Also prints the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--ncf-users", type=int, default=64, help="users scored in the NeuMF comparison")
    args = ap.parse_args()

    import torch

    from miars_attacks.features import CenterDiff, rank_weights
    from miars_core.contracts.plugins import get_plugins
    from miars_core.engine.datasets import load_dataset
    from miars_core.engine.pipeline import AttackConfig
    from miars_core.science.protocol import split_dataset
    from miars_core.science.ranking import top_k_excluding
    from miars_recbole.models import NeuralCF
    from miars_recbole.session import _neumf_logits

    k = args.top_k
    data = load_dataset(AttackConfig(dataset=args.dataset), get_plugins())
    split = split_dataset(data, seed=0)
    part = split.target
    m = part.interactions.matrix
    n_users, n_items = m.shape
    print(f"{args.dataset}: target part {n_users} users x {n_items} items, {m.nnz} interactions, k={k}")
    rows = []

    # 1. center-diff features
    feat = CenterDiff(dim=100).fit(split.vectorization, seed=0)
    rng = np.random.default_rng(0)
    recs = np.argsort(rng.random((n_users, n_items)), axis=1)[:, :k]
    v, w = feat.item_vectors_, rank_weights(k)

    def features_loop():
        out = np.empty((n_users, v.shape[1]), dtype=np.float32)
        for u in range(n_users):
            items = m.indices[m.indptr[u] : m.indptr[u + 1]]
            out[u] = v[items].mean(axis=0) - (w[:, None] * v[recs[u]]).sum(axis=0)
        return out

    fast_t, fast = timed(lambda: feat.transform(part.interactions, recs))
    slow_t, slow = timed(features_loop, repeat=1)
    assert np.allclose(fast, slow, atol=1e-4)
    rows.append(("center-diff features", fast_t, slow_t))

    # 2. top-k excluding known items
    scores = rng.normal(size=(n_users, n_items)).astype(np.float32)

    def topk_loop():
        out = np.empty((n_users, k), dtype=np.int64)
        for u in range(n_users):
            s = scores[u].copy()
            s[m.indices[m.indptr[u] : m.indptr[u + 1]]] = -np.inf
            out[u] = np.argsort(-s, kind="stable")[:k]
        return out

    fast_t, fast = timed(lambda: top_k_excluding(scores, m, k))
    slow_t, slow = timed(topk_loop, repeat=1)
    assert (fast == slow).mean() > 0.999
    rows.append(("top-k excluding known", fast_t, slow_t))

    # 3. NeuMF full ranking
    members = part.members
    fitted = NeuralCF(epochs=1).fit(members, seed=0).model_
    model = fitted.model
    users = torch.as_tensor(fitted.user_rb[: args.ncf_users])
    n_rb = len(fitted.item_cols)
    from recbole.data.interaction import Interaction

    def neumf_pairs():
        with torch.no_grad():
            inter = Interaction({model.USER_ID: users.repeat_interleave(n_rb), model.ITEM_ID: torch.arange(n_rb).repeat(len(users))})
            return model.predict(inter).view(len(users), n_rb)

    with torch.no_grad():
        fast_t, _ = timed(lambda: _neumf_logits(model, users))
    slow_t, _ = timed(neumf_pairs)
    rows.append((f"NeuMF scoring ({len(users)} users x all items)", fast_t, slow_t))

    print(f"\n{'stage':<44} {'miars s':>9} {'naive s':>9} {'speed-up':>9}")
    for name, fast_t, slow_t in rows:
        print(f"{name:<44} {fast_t:>9.4f} {slow_t:>9.4f} {slow_t / fast_t:>8.1f}x")
    print(f"\npeak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
