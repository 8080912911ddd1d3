"""Fold-in: a trained model recommends to accounts it was not trained on, from their histories.

Deployed services serve new or logged-out users without retraining. For RecBole's ItemKNN the
scores are the history times the trained item-item similarity (what the model computes for a
member); for BPR (matrix factorization) the user's vector is fitted with the BPR loss against
the frozen item factors (full-batch Adam), then scored as a member would be (``u . v_i``); for
NeuMF both user embeddings (GMF and MLP) are fitted with NeuMF's BCE loss against the frozen
item embeddings and layers. Items the model never saw cannot be scored (-inf).

Fold-in needs only the model's *item side* (:class:`ItemSide`: the similarity, the item
factors, NeuMF's item embeddings and layers), never the members' user vectors or training
interactions; :class:`FoldInModel` serves new accounts from it, and that is all query access
to a fold-in service holds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.errors import MiarsError

#: Full-batch Adam steps and learning rate that fit a folded-in user vector (BPR).
FOLDIN_STEPS = 50
FOLDIN_LR = 0.005


def _fit_user_vectors(h_rb: sp.csr_matrix, item_tables: list, loss, seed: int, steps: int, lr: float) -> list:
    """New users' vectors, one per item table, fitted by full-batch Adam against frozen item tables.

    Each starts at the mean of its table's rows over the user's history (a warm start); every
    step draws one uniform negative item per (user, positive) pair and minimises
    ``loss(vectors, users, pos, neg)``. Non-finite vectors fail in one line. Everything runs on
    the item tables' device; negatives are drawn on the CPU (the same draws on every device).
    """
    import torch

    from miars_core.kit.torch_utils import device_of

    device = device_of(item_tables[0])
    coo = h_rb.tocoo()
    users = torch.as_tensor(coo.row.astype(np.int64), device=device)
    pos = torch.as_tensor(coo.col.astype(np.int64), device=device)
    gen = torch.Generator().manual_seed(int(seed))
    counts = torch.clamp(torch.as_tensor(np.diff(h_rb.indptr), dtype=torch.float32, device=device), min=1)[:, None]
    vectors = []
    for table in item_tables:
        u = torch.zeros((h_rb.shape[0], table.shape[1]), dtype=torch.float32, device=device)
        if len(users):
            u.index_add_(0, users, table[pos])
            u /= counts
        vectors.append(u.requires_grad_(True))
    opt = torch.optim.Adam(vectors, lr=lr)
    for _ in range(steps):
        neg = torch.randint(1, item_tables[0].shape[0], (len(users),), generator=gen).to(device)
        value = loss(vectors, users, pos, neg)
        opt.zero_grad()
        value.backward()
        opt.step()
    if not all(torch.isfinite(u).all() for u in vectors):
        raise MiarsError("fold-in of new users diverged (non-finite user vectors); the service cannot serve them")
    return [u.detach() for u in vectors]


def _bpr_user_vectors(h_rb: sp.csr_matrix, v, seed: int, steps: int = FOLDIN_STEPS, lr: float = FOLDIN_LR):
    """User vectors that minimise the BPR loss of their histories against frozen item factors ``v``."""
    import torch

    def bpr(vectors, users, pos, neg):
        u = vectors[0]
        return -torch.nn.functional.logsigmoid((u[users] * (v[pos] - v[neg])).sum(dim=1)).mean()

    return _fit_user_vectors(h_rb, [v], bpr, seed, steps, lr)[0]


class ItemSide:
    """The item side of a trained RecBole model: all that fold-in needs, nothing of the members.

    ``kind``: ``itemknn`` (``table`` = the item-item similarity, scipy CSR), ``bpr`` (the item
    factors, a torch tensor) or ``neumf`` (a ``torch.nn.ModuleDict`` of copies of NeuMF's item
    embeddings, MLP layers and output layer). ``item_cols``: the global column of each RecBole
    item id (index 0 is padding); ``n_items``: the catalogue's size.
    """

    __slots__ = ("kind", "table", "item_cols", "n_items")

    def __init__(self, kind: str, table, item_cols: np.ndarray, n_items: int):
        self.kind = kind
        self.table = table
        self.item_cols = np.asarray(item_cols).copy()
        self.n_items = int(n_items)

    @classmethod
    def of(cls, fitted) -> "ItemSide":
        """The item side of a :class:`~miars_recbole.session.FittedRecBole` (copies; the model is not kept)."""
        import copy

        import torch

        model = fitted.model
        name = type(model).__name__
        if hasattr(model, "w") and "ItemKNN" in name:
            return cls("itemknn", sp.csr_matrix(model.w, copy=True), fitted.item_cols, fitted.n_items)
        if name == "BPR":
            with torch.no_grad():
                v = model.item_embedding.weight.detach().to(torch.float32).clone()
            return cls("bpr", v, fitted.item_cols, fitted.n_items)
        if name == "NeuMF" and model.mf_train and model.mlp_train:
            parts = {key: copy.deepcopy(getattr(model, key))
                     for key in ("item_mf_embedding", "item_mlp_embedding", "mlp_layers", "predict_layer")}
            return cls("neumf", torch.nn.ModuleDict(parts).eval(), fitted.item_cols, fitted.n_items)
        raise MiarsError(f"RecBole {name} cannot serve new users from their history yet (fold-in exists for ItemKNN, "
                         "BPR and NeuMF: item, lfm, ncf); use --service popular")


class FoldInModel:
    """Serves accounts a RecBole model was not trained on from its :class:`ItemSide` (``recommend_for``)."""

    __slots__ = ("side", "score_batch_size")

    def __init__(self, side: ItemSide, score_batch_size: int = 256):
        self.side = side
        self.score_batch_size = int(score_batch_size)

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        """Top-k for new accounts from their histories, known items excluded (``fit``: ``steps``, ``learning_rate``)."""
        from miars_core.science.ranking import top_k_excluding

        histories = sp.csr_matrix(histories)
        score = foldin_scorer(self.side, histories, seed, **fit)
        return top_k_excluding(score, histories, k, batch_size=self.score_batch_size, scratch=True)


def foldin_scorer(side, histories: sp.csr_matrix, seed: int = 0, steps: int = FOLDIN_STEPS,
                  learning_rate: float = FOLDIN_LR) -> Callable[[np.ndarray], "object"]:
    """``rows -> scores`` (len(rows) x all items, torch) for the accounts with these ``histories``.

    ``side``: an :class:`ItemSide` (or a fitted RecBole model, whose item side is taken).
    ``steps`` and ``learning_rate``: the Adam fit of the folded-in user vectors (BPR, NeuMF).
    """
    import torch

    if not isinstance(side, ItemSide):
        side = ItemSide.of(side)
    n_rb = len(side.item_cols)
    col_to_rb = np.full(side.n_items, -1, dtype=np.int64)
    col_to_rb[side.item_cols[1:]] = np.arange(1, n_rb)
    h = sp.csr_matrix(histories, dtype=np.float32)
    coo = h.tocoo()
    keep = col_to_rb[coo.col] >= 0
    h_rb = sp.csr_matrix((coo.data[keep], (coo.row[keep], col_to_rb[coo.col[keep]])), shape=(h.shape[0], n_rb))
    targets = torch.as_tensor(side.item_cols[1:])
    n_items = side.n_items

    def place(block) -> "torch.Tensor":
        """Scores over the model's items (numpy or a tensor on the model's device) -> over every column, same device."""
        block = torch.as_tensor(block)
        out = torch.full((block.shape[0], n_items), -torch.inf, device=block.device)
        out[:, targets.to(block.device)] = block[:, 1:].to(torch.float32)
        return out

    if side.kind == "itemknn":
        w = side.table
        return lambda rows: place((h_rb[rows] @ w).toarray())
    if side.kind == "bpr":
        v = side.table
        u = _bpr_user_vectors(h_rb, v, seed, steps, learning_rate)

        def scores(rows):
            with torch.no_grad():
                return place(u[torch.as_tensor(np.asarray(rows), device=u.device)] @ v.T)

        return scores
    from .session import neumf_logits_for

    items = side.table
    u_mf, u_mlp = _neumf_user_vectors(items, h_rb, seed, steps, learning_rate)

    def neumf_scores(rows):
        index = torch.as_tensor(np.asarray(rows), device=u_mf.device)
        with torch.no_grad():
            block = neumf_logits_for(items, u_mf[index], u_mlp[index])
        if block is None:
            raise MiarsError("NeuMF with batch normalisation cannot fold in new users; use --service popular")
        return place(block)

    return neumf_scores


def _neumf_user_vectors(model, h_rb: sp.csr_matrix, seed: int, steps: int = FOLDIN_STEPS, lr: float = FOLDIN_LR):
    """GMF and MLP user embeddings fitted with NeuMF's own loss (BCE, one sampled negative per positive)
    against the frozen item side and layers, warm-started at the mean embeddings of the history's items.

    ``model``: NeuMF's item side (item embeddings, ``mlp_layers``, ``predict_layer``; the model itself works too)."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        i_mf = model.item_mf_embedding.weight.detach().to(torch.float32)
        i_mlp = model.item_mlp_embedding.weight.detach().to(torch.float32)

    def bce(vectors, users, pos, neg):
        u_mf, u_mlp = vectors

        def logits(items):
            mf = u_mf[users] * i_mf[items]
            mlp = model.mlp_layers(torch.cat([u_mlp[users], i_mlp[items]], dim=1))
            return model.predict_layer(torch.cat([mf, mlp], dim=1)).squeeze(-1)

        return (torch.nn.functional.softplus(-logits(pos)) + torch.nn.functional.softplus(logits(neg))).mean()

    for p in model.parameters():
        p.requires_grad_(False)
    try:
        u_mf, u_mlp = _fit_user_vectors(h_rb, [i_mf, i_mlp], bce, seed, steps, lr)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
    return u_mf, u_mlp
