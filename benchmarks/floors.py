"""Each stage against its compute floor, measured in the same run and printed as ratios.

    python benchmarks/floors.py --dataset ../shared/data/movielens-1m/ml-1m-pairs.tsv.gz
    python benchmarks/floors.py --itemknn-rss sparse     # peak RSS of one ItemKNN fit, own process
    python benchmarks/floors.py --itemknn-rss recbole

Timings on a shared machine are noisy, so every comparison is interleaved (miars, floor, miars,
floor, ...) and the minimum of ``--repeat`` runs is kept; the ratio miars / floor is what to read.

Stages (target part of the split, seed 0):
- features: ``CenterDiff.transform`` vs the two sparse products on prebuilt matrices;
- item vectors: ``item_vectors`` (randomized SVD) vs its sparse x dense products alone;
- attack: ``MLPAttack`` fit + score vs a bare full-batch torch loop with the same steps; also the
  previous default (SGD, 128-user batches, 100 epochs) with its ROC-AUC beside the new one;
- top-k: ``recommend(100)`` of a trained BPR vs one GEMM + mask known + ``torch.topk``;
- training: ``lfm`` / ``ncf`` fits for fixed epochs vs a bare torch loop computing the same model
  (plain embeddings / GMF+MLP), loss, negative sampling, batch size and epochs, and vs RecBole's own
  trainer (its DataLoader) for the same epochs;
- ItemKNN: sparse item-item top-k vs RecBole's dense ``ComputeSimilarity`` (time; RSS with --itemknn-rss).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np


def interleaved(fns: dict, repeat: int) -> dict:
    """Min wall time of each function over ``repeat`` interleaved rounds, and its last output."""
    best = {name: float("inf") for name in fns}
    out = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], out[name]) for name in fns}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# floors
def bpr_floor(train, epochs: int, batch: int, lr: float, seed: int, dim: int = 64):
    """BPR-MF in bare torch: the same sampling, batches, loss (-log sigmoid diff) and Adam."""
    import torch

    from miars_recbole.lean import index_members, sample_negatives

    d = index_members(train)
    torch.manual_seed(seed)
    ue, ie = torch.nn.Embedding(d.n_users, dim), torch.nn.Embedding(d.n_items, dim)
    torch.nn.init.xavier_normal_(ue.weight)
    torch.nn.init.xavier_normal_(ie.weight)
    opt = torch.optim.Adam([ue.weight, ie.weight], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(d.user)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        u, i = d.user[perm], d.item[perm]
        j = sample_negatives(d, u, gen)
        for s in range(0, n, batch):
            bu, bi, bj = u[s : s + batch], i[s : s + batch], j[s : s + batch]
            eu = ue(bu)
            diff = (eu * ie(bi)).sum(1) - (eu * ie(bj)).sum(1)
            loss = -torch.log(1e-10 + torch.sigmoid(diff)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return ue, ie


def neumf_floor(train, epochs: int, batch: int, lr: float, seed: int, dim: int = 64, hidden=(128, 64), dropout=0.1):
    """NeuMF (GMF + MLP towers) in bare torch, pointwise BCE on positives + one uniform negative each."""
    import torch
    from torch import nn

    from miars_recbole.lean import index_members, sample_negatives

    d = index_members(train)
    torch.manual_seed(seed)
    umf, imf, umlp, imlp = (nn.Embedding(n, dim) for n in (d.n_users, d.n_items, d.n_users, d.n_items))
    sizes = [2 * dim, *hidden]
    mlp = nn.Sequential(*[m for a, b in zip(sizes[:-1], sizes[1:]) for m in (nn.Dropout(dropout), nn.Linear(a, b), nn.ReLU())])
    out = nn.Linear(dim + hidden[-1], 1)
    params = [p for m in (umf, imf, umlp, imlp, mlp, out) for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    n, half = len(d.user), max(1, batch // 2)
    mlp.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        u, i = d.user[perm], d.item[perm]
        j = sample_negatives(d, u, gen)
        for s in range(0, n, half):
            bu = u[s : s + half]
            uu, ii = torch.cat([bu, bu]), torch.cat([i[s : s + half], j[s : s + half]])
            label = torch.cat([torch.ones(len(bu)), torch.zeros(len(bu))])
            x = torch.cat([umf(uu) * imf(ii), mlp(torch.cat([umlp(uu), imlp(ii)], -1))], -1)
            loss = loss_fn(out(x).squeeze(-1), label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return out


def mlp_floor(X, y, steps: int = 300, lr: float = 0.01, seed: int = 0):
    from miars_core.kit.torch_utils import single_thread

    with single_thread():  # as MLPAttack: small tensors run faster on one thread
        return _mlp_floor(X, y, steps, lr, seed)


def _mlp_floor(X, y, steps, lr, seed):
    import torch

    torch.manual_seed(seed)
    xt = torch.from_numpy(((X - X.mean(0)) / (X.std(0) + 1e-12)).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 8),
                              torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        z = net(xt)
    return z


# --------------------------------------------------------------------------------------------
def itemknn_rss(which: str, dataset: str) -> None:
    """Fit one ItemKNN on the target members in this process; print the peak RSS before and after."""
    from miars_core.contracts.plugins import get_plugins
    from miars_core.engine.datasets import load_dataset
    from miars_core.engine.pipeline import AttackConfig
    from miars_core.science.protocol import split_dataset
    from miars_recbole.session import RecBoleRun, fit_itemknn

    data = load_dataset(AttackConfig(dataset=dataset), get_plugins())
    members = split_dataset(data, seed=0).target.members.matrix
    import recbole.model.general_recommender.itemknn  # noqa: F401  (imports counted before the fit)

    before = peak_rss_mib()
    start = time.perf_counter()
    if which == "sparse":
        fitted = fit_itemknn(members, 100, 0.0, seed=0)
    else:
        run = RecBoleRun("ItemKNN", members, {"k": 100, "epochs": 1}, seed=0)
        run.epoch()
        fitted = run.fitted()
    from miars_core.science.ranking import top_k_excluding

    top_k_excluding(fitted.score_rows, members, 100, batch_size=512)
    print(f"{which}: fit + top-100 {time.perf_counter() - start:.2f} s, peak RSS before fit {before:.0f} MiB, "
          f"after {peak_rss_mib():.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--train-repeat", type=int, default=2)
    ap.add_argument("--lfm-epochs", type=int, default=10)
    ap.add_argument("--ncf-epochs", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated stages to skip: features,vectors,attack,topk,train,itemknn")
    ap.add_argument("--itemknn-rss", choices=("sparse", "recbole"))
    args = ap.parse_args()
    if args.itemknn_rss:
        return itemknn_rss(args.itemknn_rss, args.dataset)
    skip = set(filter(None, args.skip.split(",")))

    import torch
    from sklearn.metrics import roc_auc_score

    from miars_attacks.features import CenterDiff, item_vectors, rank_weights
    from miars_attacks.mlp import MLPAttack
    from miars_core.contracts.plugins import get_plugins
    from miars_core.engine.datasets import load_dataset
    from miars_core.engine.pipeline import AttackConfig
    from miars_core.science.protocol import split_dataset
    from miars_core.science.ranking import top_k_excluding
    from miars_core.science.service import serve
    from miars_recbole.models import ItemKNN, LatentFactorModel, NeuralCF
    from miars_recbole.session import RecBoleRun, fit_itemknn
    import scipy.sparse as sp

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, torch threads {torch.get_num_threads()}")
    data = load_dataset(AttackConfig(dataset=args.dataset), get_plugins())
    split = split_dataset(data, seed=0)
    part = split.target
    members = part.members.matrix
    print(f"{args.dataset}: target part {part.interactions.n_users} users x {part.interactions.n_items} items, "
          f"{members.shape[0]} members with {members.nnz} interactions")
    rows = []  # (stage, miars s, floor s, note)

    # -- recommenders serving the parts (lists for features and attack) ---------------------------------
    served = {}
    for name, factory in (("item", lambda: ItemKNN()), ("lfm", lambda: LatentFactorModel(epochs=args.lfm_epochs))):
        served[name] = (serve(split.shadow, factory(), name, 100, 1), serve(part, factory(), name, 100, 2))

    feat = CenterDiff(dim=100)
    if "vectors" not in skip:
        vec = split.vectorization.matrix

        def vectors_floor(n_iter=7, dim=110):
            from threadpoolctl import threadpool_limits

            rng = np.random.default_rng(0)
            q = rng.normal(size=(vec.shape[1], dim)).astype(np.float32)
            x = vec.astype(np.float32)
            with threadpool_limits(limits=1, user_api="blas"):  # as item_vectors
                for _ in range(n_iter):
                    q = x.T @ (x @ q)
                return x @ q

        r = interleaved({"miars": lambda: item_vectors(vec, 100, seed=0), "floor": vectors_floor}, args.repeat)
        rows.append(("item vectors (rank-100 randomized SVD)", r["miars"][0], r["floor"][0], "floor: its 2x7+1 sparse x dense products"))
    feat.fit(split.vectorization, seed=0)

    if "features" not in skip:
        lists = served["item"][1].lists
        m = part.interactions.matrix
        counts = np.maximum(np.diff(m.indptr), 1).astype(np.float32)
        h = sp.diags(1 / counts) @ m
        k = lists.shape[1]
        wmat = sp.csr_matrix((np.tile(rank_weights(k), m.shape[0]), lists.ravel(), np.arange(0, m.shape[0] * k + 1, k)), shape=m.shape)
        v = feat.item_vectors_
        r = interleaved({"miars": lambda: feat.transform(part.interactions, lists), "floor": lambda: h @ v - wmat @ v},
                        args.repeat * 3)
        assert np.allclose(r["miars"][1], r["floor"][1], atol=1e-4)
        rows.append(("features (center-diff)", r["miars"][0], r["floor"][0], "floor: two products on prebuilt matrices"))

    if "attack" not in skip:
        for name in ("item", "lfm"):
            sh, tg = served[name]
            xs = feat.transform(split.shadow.interactions, sh.lists)
            xt = feat.transform(part.interactions, tg.lists)
            ys, yt = split.shadow.is_member, part.is_member

            def run(model):
                return model.fit(xs, ys, seed=0).decision_function(xt)

            r = interleaved({"miars": lambda: run(MLPAttack()), "floor": lambda: mlp_floor(xs, ys),
                             "old": lambda: run(MLPAttack(epochs=100, batch_size=128, optimizer="sgd", weight_decay=1e-4))}, args.repeat)
            auc_new, auc_old = roc_auc_score(yt, r["miars"][1]), roc_auc_score(yt, r["old"][1])
            rows.append((f"attack MLP on {name}/{name} features", r["miars"][0], r["floor"][0],
                         f"ROC-AUC {auc_new:.4f} (full-batch Adam 300 steps) vs {auc_old:.4f} (previous: SGD, "
                         f"batch 128, 100 epochs, {r['old'][0]:.2f} s)"))

    if "topk" not in skip:
        lfm = LatentFactorModel(epochs=args.lfm_epochs).fit(part.members, seed=0)
        fitted = lfm.model_
        mdl = fitted.model

        item_rb = np.zeros(members.shape[1], dtype=np.int64)
        item_rb[fitted.item_cols[1:]] = np.arange(1, len(fitted.item_cols))
        coo = members.tocoo()
        mask_r, mask_c = torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(item_rb[coo.col])

        def topk_floor():
            with torch.no_grad():
                u = mdl.user_embedding.weight[torch.as_tensor(fitted.user_rb)]
                s = u @ mdl.item_embedding.weight.T  # internal item ids; column order does not change the cost
                s[mask_r, mask_c] = -torch.inf
                return torch.topk(s, 100, dim=1).indices

        r = interleaved({"miars": lambda: lfm.recommend(100), "floor": topk_floor}, args.repeat)
        rows.append((f"top-100 of BPR ({members.shape[0]} members x all items)", r["miars"][0], r["floor"][0],
                     "floor: one GEMM + mask + torch.topk"))

    if "train" not in skip:
        e, b = args.lfm_epochs, 4096
        r = interleaved({
            "miars": lambda: LatentFactorModel(epochs=e, batch_size=b, learning_rate=0.005).fit(part.members, seed=0),
            "floor": lambda: bpr_floor(members, e, b, 0.005, 0),
            "recbole": lambda: _recbole_fit("BPR", members, e, b, 0.005),
        }, args.train_repeat)
        rows.append((f"lfm (BPR) fit, {e} epochs, batch {b}", r["miars"][0], r["floor"][0],
                     f"RecBole's own trainer: {r['recbole'][0]:.2f} s ({r['recbole'][0] / r['floor'][0]:.2f}x floor)"))
        e = args.ncf_epochs
        r = interleaved({
            "miars": lambda: NeuralCF(epochs=e, batch_size=b, learning_rate=0.002).fit(part.members, seed=0),
            "floor": lambda: neumf_floor(members, e, b, 0.002, 0),
            "recbole": lambda: _recbole_fit("NeuMF", members, e, b, 0.002),
        }, args.train_repeat)
        rows.append((f"ncf (NeuMF) fit, {e} epochs, batch {b}", r["miars"][0], r["floor"][0],
                     f"RecBole's own trainer: {r['recbole'][0]:.2f} s ({r['recbole'][0] / r['floor'][0]:.2f}x floor)"))

    if "itemknn" not in skip:
        def rb_knn():
            run = RecBoleRun("ItemKNN", members, {"k": 100, "epochs": 1}, seed=0)
            run.epoch()

        r = interleaved({"miars": lambda: fit_itemknn(members, 100, 0.0, 0), "floor": rb_knn}, args.train_repeat)
        rows.append(("ItemKNN similarity: sparse top-k (miars) vs RecBole dense", r["miars"][0], r["floor"][0],
                     "here 'floor' is RecBole's ItemKNN, the ratio < 1 is the speed-up"))

    print(f"\n{'stage':<52} {'miars s':>9} {'floor s':>9} {'ratio':>7}  note")
    for stage, a, f, note in rows:
        print(f"{stage:<52} {a:>9.4f} {f:>9.4f} {a / f:>6.2f}x  {note}")
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB; load now {os.getloadavg()[0]:.2f}")


def _recbole_fit(name, members, epochs, batch, lr):
    from miars_recbole.session import RecBoleRun

    run = RecBoleRun(name, members, {"epochs": epochs, "train_batch_size": batch, "learning_rate": lr}, seed=0)
    for _ in range(epochs):
        run.epoch()
    return run.fitted()


if __name__ == "__main__":
    main()
