"""Fold-in and query serving against their floor, in one run (interleaved, min of repeats): read the ratios.

The workload is a ``query-recall`` one: ``--queries`` (5) random halves of the history of every
user of the target part (~20k fresh accounts on the ml-1m pairs), served by the target's
``lfm`` (BPR, ``--epochs`` fixed so the fit is not timed) under each fold-in solver; ``ncf``
(NeuMF) folds in the target's non-members (its gradient path; no closed form).

The **floor** is what no fold-in can avoid: scoring every account against every item once and
taking its top-k, known items excluded (one GEMM per batch of accounts, the mask, ``torch.topk``),
given the user vectors. Rows:

- ``ridge``: the closed-form fold-in (one Cholesky factorization, one sparse product, one
  triangular solve) + scoring;
- ``gradient``: 50 Adam steps on the BPR loss (chunked, gradient written out) + scoring;
- ``gradient, previous``: the implementation before issue 15 (one full-batch autograd graph
  over every pair, one global negative draw per step), kept here for the ratio;
- ``ncf gradient``: NeuMF's fold-in (first layer split) + scoring, against NeuMF's own floor
  (scoring every account through the MLP once + top-k).

    python benchmarks/foldin.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


from floors import interleaved  # noqa: E402 - the benchmarks' one timing loop (this folder is on sys.path)


def previous_bpr_foldin(h_rb, v, seed: int, steps: int = 50, lr: float = 0.005):
    """The fold-in before issue 15: one autograd graph over every (account, item) pair, full-batch Adam."""
    import torch

    coo = h_rb.tocoo()
    users = torch.as_tensor(coo.row.astype(np.int64))
    pos = torch.as_tensor(coo.col.astype(np.int64))
    gen = torch.Generator().manual_seed(int(seed))
    counts = torch.clamp(torch.as_tensor(np.diff(h_rb.indptr), dtype=torch.float32), min=1)[:, None]
    u = torch.zeros((h_rb.shape[0], v.shape[1]), dtype=torch.float32)
    u.index_add_(0, users, v[pos])
    u = (u / counts).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    for _ in range(steps):
        neg = torch.randint(1, v.shape[0], (len(users),), generator=gen)
        loss = -torch.nn.functional.logsigmoid((u[users] * (v[pos] - v[neg])).sum(dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return u.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10, help="lfm / ncf training epochs (fixed: the fit is not timed)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--skip", default="", help="comma-separated: previous,ncf")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import scipy.sparse as sp
    import torch

    from miars_attacks.query import half_splits
    from miars_core.engine.pipeline import AttackConfig
    from miars_core.contracts.plugins import get_plugins
    from miars_core.science.ranking import top_k_excluding
    from miars_core.engine.stages import Cell
    from miars_recbole import foldin
    from miars_recbole.models import LatentFactorModel, NeuralCF
    from miars_recbole.session import neumf_logits_for

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}")
    cell = Cell(AttackConfig(dataset=args.dataset, target="lfm", seed=0), get_plugins())
    part = cell.part("target")
    queries, _ = half_splits(part.interactions.matrix, args.queries, seed=1)
    queries = queries[np.diff(queries.indptr) > 0]
    lfm = LatentFactorModel(epochs=args.epochs).fit(part.members, seed=0)
    side = foldin.ItemSide.of(lfm.model_)
    model = foldin.FoldInModel(side, lfm.score_batch_size)
    print(f"{args.dataset}: {queries.shape[0]:,} query accounts x {queries.shape[1]:,} items, {queries.nnz:,} "
          f"(account, item) pairs; lfm {args.epochs} epochs, embedding {side.table.shape[1]}")

    v = side.table
    n_rb = len(side.item_cols)
    col_to_rb = np.full(side.n_items, -1)
    col_to_rb[side.item_cols[1:]] = np.arange(1, n_rb)
    coo = queries.tocoo()
    keep = col_to_rb[coo.col] >= 0
    h_rb = sp.csr_matrix((coo.data[keep], (coo.row[keep], col_to_rb[coo.col[keep]])), shape=(queries.shape[0], n_rb))
    u_fixed = foldin._ridge_user_vectors(h_rb, v)
    cols = torch.as_tensor(side.item_cols[1:])

    def serve(u):
        """Score every account against every item once, mask known items, top-k: the floor given user vectors."""
        def scores(rows):
            with torch.no_grad():
                block = u[torch.as_tensor(rows)] @ v[1:].T
            out = torch.full((len(rows), side.n_items), -torch.inf)
            out[:, cols] = block
            return out
        return top_k_excluding(scores, queries, args.k, batch_size=lfm.score_batch_size, scratch=True)

    fns = {
        "floor": lambda: serve(u_fixed),
        "ridge": lambda: model.recommend_for(queries, args.k, seed=0, solver="ridge"),
        "gradient": lambda: model.recommend_for(queries, args.k, seed=0, solver="gradient"),
    }
    if "previous" not in skip:
        fns["gradient, previous"] = lambda: serve(previous_bpr_foldin(h_rb, v, 0))
    r = interleaved(fns, args.repeat)
    t_solve = interleaved({"ridge solve": lambda: foldin._ridge_user_vectors(h_rb, v),
                           "gradient fit": lambda: foldin._bpr_user_vectors(h_rb, v, 0)}, args.repeat)
    floor = r["floor"][0]
    print(f"\n{'lfm (BPR), ' + format(queries.shape[0], ',') + ' accounts':<44} {'seconds':>9} {'/ floor':>9}")
    for name, (sec, _) in r.items():
        print(f"{name:<44} {sec:>9.3f} {sec / floor:>8.2f}x")
    for name, (sec, _) in t_solve.items():
        print(f"  of which {name:<35} {sec:>9.3f} {sec / floor:>8.2f}x")
    same = (r["ridge"][1][:, :, None] == r["gradient"][1][:, None, :]).any(axis=2).mean()
    print(f"ridge vs gradient lists: {same:.3f} of the top-{args.k} shared")

    if "ncf" not in skip:
        ncf = NeuralCF(epochs=max(1, args.epochs // 2)).fit(part.members, seed=0)
        others = part.interactions.matrix[~part.is_member]
        nside = foldin.ItemSide.of(ncf.model_)
        nmodel = foldin.FoldInModel(nside, ncf.score_batch_size)
        items = nside.table
        d = items.item_mf_embedding.weight.shape[1]
        gen = torch.Generator().manual_seed(0)
        u_mf = torch.randn((others.shape[0], d), generator=gen) * 0.1
        u_mlp = torch.randn((others.shape[0], items.item_mlp_embedding.weight.shape[1]), generator=gen) * 0.1
        ncols = torch.as_tensor(nside.item_cols[1:])

        def nserve():
            def scores(rows):
                idx = torch.as_tensor(rows)
                with torch.no_grad():
                    block = neumf_logits_for(items, u_mf[idx], u_mlp[idx])
                out = torch.full((len(rows), nside.n_items), -torch.inf)
                out[:, ncols] = block[:, 1:]
                return out
            return top_k_excluding(scores, others, args.k, batch_size=ncf.score_batch_size, scratch=True)

        r = interleaved({"floor": nserve, "gradient": lambda: nmodel.recommend_for(others, args.k, seed=0)},
                        max(1, args.repeat - 1))
        print(f"\n{'ncf (NeuMF), ' + format(others.shape[0], ',') + ' non-members':<44} {'seconds':>9} {'/ floor':>9}")
        for name, (sec, _) in r.items():
            print(f"{name:<44} {sec:>9.3f} {sec / r['floor'][0]:>8.2f}x")
    print(f"\nload now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
