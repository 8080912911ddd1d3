"""Fold-in: a trained model recommends to accounts it was not trained on, from their histories.

Deployed services serve new or logged-out users without retraining. For RecBole's ItemKNN the
scores are the history times the trained item-item similarity (what the model computes for a
member); for BPR (matrix factorization) the user's vector is either the closed-form ridge
solution against the frozen item factors (``solver="ridge"``: one Cholesky factorization serves
every account) or fitted with the BPR loss (``solver="gradient"``: full-batch Adam), then scored
as a member would be (``u . v_i``); for NeuMF, whose MLP tower has no closed form, both user
embeddings (GMF and MLP) are fitted with NeuMF's BCE loss against the frozen item embeddings and
layers. Accounts are solved in batches: one sparse product and one triangular solve (ridge), or
chunks of accounts fitted together (gradient); scoring is one GEMM and a top-k per batch of
accounts. Items the model never saw cannot be scored (-inf).

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

#: Full-batch Adam steps and learning rate that fit a folded-in user vector (the ``gradient`` solver).
FOLDIN_STEPS = 50
FOLDIN_LR = 0.005

#: How a folded-in user vector is found: ``ridge`` (closed form: BPR), ``gradient`` (Adam on the model's own loss:
#: BPR and NeuMF) or ``auto`` (the closed form where the model has one, else the gradient fit).
SOLVERS = ("auto", "ridge", "gradient")
#: The solver ``auto`` picks for each item-side kind (docs/threats.md: measured).
AUTO_SOLVER = {"bpr": "ridge", "neumf": "gradient"}
#: The ridge penalty, relative to the mean eigenvalue of the item factors' Gram matrix (tr(V'V) / d).
FOLDIN_REG = 10.0
#: Largest number of (account, item) pairs fitted at once by the gradient solver (bounds memory: a few
#: pairs x embedding-size float32 tensors per step, 4 MiB each at 64 dimensions: they stay in cache; 2^16 pairs
#: were 2x and 2^18 6x slower per step on the ml-1m queries).
FOLDIN_CHUNK_PAIRS = 1 << 14

#: Why a model's user vectors have no closed form (the ``ridge`` solver refuses these kinds).
NO_CLOSED_FORM = {
    "neumf": "NeuMF scores a user through its MLP tower, ReLU layers over user and item, whose loss has no "
             "closed-form minimiser in the user embeddings; only the GMF part alone would have one",
}


def check_solver(solver: str, kind: str, who: str = "this model") -> str:
    """The solver that fits ``kind``'s user vectors for ``solver`` (``auto`` resolved); one line when it cannot."""
    if solver not in SOLVERS:
        raise MiarsError(f"fold-in solver {solver!r} is unknown; allowed: {', '.join(SOLVERS)} "
                         "(e.g. --service-param solver=ridge)")
    if solver == "auto":
        return AUTO_SOLVER.get(kind, "gradient")
    if solver == "ridge" and kind in NO_CLOSED_FORM:
        raise MiarsError(f"--service-param solver=ridge: {who} has no closed-form fold-in ({NO_CLOSED_FORM[kind]}); "
                         "use --service-param solver=gradient (or auto)")
    return solver


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (a counter-based generator: one draw per counter value)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _negatives(seed: int, step: int, pairs: np.ndarray, n_items: int):
    """One uniform item in 1..n_items-1 per global pair index, fixed by (seed, step, pair): the same draw whatever
    the chunk a pair is fitted in, so the fold-in does not depend on the chunk size."""
    import torch

    key = _splitmix64(np.array([(int(seed) & 0xFFFFFFFF) << 20 | (int(step) & 0xFFFFF)], dtype=np.uint64))
    with np.errstate(over="ignore"):
        z = _splitmix64(pairs.astype(np.uint64) + key[0])
    return torch.from_numpy((z % np.uint64(n_items - 1)).astype(np.int64) + 1)


def _chunks(indptr: np.ndarray, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive account ranges [a, b) of at most ``max_pairs`` pairs each (an account larger than that alone)."""
    n = len(indptr) - 1
    out, a = [], 0
    while a < n:
        b = int(np.searchsorted(indptr, indptr[a] + max_pairs, side="right")) - 1
        b = min(n, max(b, a + 1))
        out.append((a, b))
        a = b
    return out


def _fit_user_vectors(h_rb: sp.csr_matrix, item_tables: list, make_loss, seed: int, steps: int, lr: float,
                      max_pairs: int = FOLDIN_CHUNK_PAIRS) -> list:
    """New users' vectors, one per item table, fitted by Adam against frozen item tables (the ``gradient`` solver).

    Each starts at the mean of its table's rows over the user's history (a warm start); every
    step draws one uniform negative item per (user, positive) pair and minimises the sum of
    ``loss`` over all pairs divided by their number (full-batch: every user's gradient is that of
    the mean loss over all accounts). Accounts are fitted in chunks of at most ``max_pairs``
    pairs, each chunk its own ``steps`` Adam steps: Adam is elementwise and a user's gradient
    involves only its own pairs, and negatives are drawn per (seed, step, pair), so the chunk
    size bounds memory without changing the result. ``make_loss(pos)`` returns
    ``loss(vectors, users, neg) -> sum over the chunk's pairs`` (``pos``: the chunk's positives).
    Non-finite vectors fail in one line. Everything runs on the item tables' device; negatives are
    drawn on the CPU (the same draws on every device).
    """
    import torch

    from miars_core.kit.torch_utils import device_of

    device = device_of(item_tables[0])

    indptr = h_rb.indptr.astype(np.int64)
    total = max(1, int(indptr[-1]))
    n_items = item_tables[0].shape[0]
    out = [torch.zeros((h_rb.shape[0], t.shape[1]), dtype=torch.float32, device=device) for t in item_tables]
    for a, b in _chunks(indptr, max_pairs):
        lo, hi = int(indptr[a]), int(indptr[b])
        if hi == lo:
            continue
        counts = np.diff(indptr[a:b + 1])
        users = torch.as_tensor(np.repeat(np.arange(b - a), counts), device=device)
        pos = torch.as_tensor(h_rb.indices[lo:hi].astype(np.int64), device=device)
        pairs = np.arange(lo, hi, dtype=np.int64)
        denom = torch.clamp(torch.as_tensor(counts, dtype=torch.float32, device=device), min=1)[:, None]
        vectors = []
        for table in item_tables:
            u = torch.zeros((b - a, table.shape[1]), dtype=torch.float32, device=device)
            u.index_add_(0, users, table[pos])
            vectors.append((u / denom).requires_grad_(True))
        loss = make_loss(pos)
        opt = torch.optim.Adam(vectors, lr=lr)
        for step in range(steps):
            neg = _negatives(seed, step, pairs, n_items).to(device)
            value = loss(vectors, users, neg) / total
            opt.zero_grad()
            value.backward()
            opt.step()
        for o, u in zip(out, vectors):
            o[a:b] = u.detach()
    if not all(torch.isfinite(u).all() for u in out):
        raise MiarsError("fold-in of new users diverged (non-finite user vectors); the service cannot serve them: "
                         "lower --service-param learning_rate")
    return out


def _bpr_user_vectors(h_rb: sp.csr_matrix, v, seed: int, steps: int = FOLDIN_STEPS, lr: float = FOLDIN_LR,
                      max_pairs: int = FOLDIN_CHUNK_PAIRS):
    """User vectors that minimise the BPR loss of their histories against frozen item factors ``v`` (gradient).

    The gradient of -log sigmoid(u . (v_pos - v_neg)) is written out (no autograd graph):
    -sigmoid(-x) (v_pos - v_neg) per pair, summed per user."""
    import torch

    def make_loss(pos):
        v_pos = v[pos]

        class _BPR(torch.autograd.Function):
            @staticmethod
            def forward(ctx, u, users, neg):
                diff = v.index_select(0, neg)
                torch.sub(v_pos, diff, out=diff)  # v_pos - v_neg, in place of the gathered negatives
                x = u.index_select(0, users).mul_(diff).sum(dim=1)
                ctx.save_for_backward(users, diff, torch.sigmoid(-x))
                ctx.n = u.shape[0]
                return torch.nn.functional.softplus(-x).sum()

            @staticmethod
            def backward(ctx, grad):
                users, diff, w = ctx.saved_tensors
                diff.mul_((-grad * w)[:, None])
                return (torch.zeros((ctx.n, diff.shape[1]), dtype=diff.dtype, device=diff.device)
                        .index_add_(0, users, diff), None, None)

        return lambda vectors, users, neg: _BPR.apply(vectors[0], users, neg)

    return _fit_user_vectors(h_rb, [v], make_loss, seed, steps, lr, max_pairs)[0]


def _ridge_user_vectors(h_rb: sp.csr_matrix, v, reg: float = FOLDIN_REG):
    """User vectors of a ridge regression of each history's 0/1 row on the frozen item factors (the ``ridge`` solver).

    ``u = (V'V + lambda I)^-1 V' x`` for the history's indicator ``x`` over the model's items
    (padding row excluded), ``lambda = reg * tr(V'V) / d``: implicit ALS's user step with one
    confidence for every item (Hu, Koren & Volinsky, ICDM 2008, with alpha = 0), so one
    Cholesky factorization (float64) serves every account, which differ only in ``V'x``, the
    sum of their items' factors. As ``reg`` grows the ranking tends to that of ``V'x`` (the
    gradient solver's warm start); as it shrinks, to the projection of ``x`` on the factors'
    span (PureSVD's fold-in, Cremonesi, Koren & Turrin, RecSys 2010). Non-finite factors or
    vectors fail in one line.
    """
    import torch

    items = v[1:].to(torch.float64)
    if not torch.isfinite(items).all():
        raise MiarsError("the model's item factors hold non-finite values; fold-in cannot serve new users "
                         "(retrain the model, e.g. with a lower learning_rate)")
    gram = items.T @ items
    d = gram.shape[0]
    lam = float(reg) * max(float(torch.trace(gram)) / d, np.finfo(np.float64).tiny)
    chol = torch.linalg.cholesky(gram + lam * torch.eye(d, dtype=torch.float64, device=items.device))
    rhs = torch.from_numpy(np.asarray(h_rb[:, 1:] @ items.cpu().numpy())).to(items.device)  # (accounts, d): V'x
    u = torch.cholesky_solve(rhs.T, chol).T.to(torch.float32).contiguous()
    if not torch.isfinite(u).all():
        raise MiarsError("ridge fold-in of new users gave non-finite user vectors; the service cannot serve them")
    return u


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

    def solvers(self) -> tuple[str, ...]:
        """The values of ``solver`` this item side accepts (``ridge`` only where the model has a closed form)."""
        return tuple(s for s in SOLVERS if s != "ridge" or self.side.kind not in NO_CLOSED_FORM)

    def recommend_for(self, histories, k: int, seed: int = 0, **fit) -> np.ndarray:
        """Top-k for new accounts from their histories, known items excluded.

        ``fit``: ``solver`` (``auto``, ``ridge``, ``gradient``), ``reg`` (ridge), ``steps`` and
        ``learning_rate`` (gradient); see :func:`foldin_scorer`.
        """
        from miars_core.science.ranking import top_k_excluding

        histories = sp.csr_matrix(histories)
        score = foldin_scorer(self.side, histories, seed, **fit)
        return top_k_excluding(score, histories, k, batch_size=self.score_batch_size, scratch=True)


def foldin_scorer(side, histories: sp.csr_matrix, seed: int = 0, steps: int = FOLDIN_STEPS,
                  learning_rate: float = FOLDIN_LR, solver: str = "auto", reg: float = FOLDIN_REG,
                  max_pairs: int = FOLDIN_CHUNK_PAIRS) -> Callable[[np.ndarray], "object"]:
    """``rows -> scores`` (len(rows) x all items, torch) for the accounts with these ``histories``.

    ``side``: an :class:`ItemSide` (or a fitted RecBole model, whose item side is taken).
    ``solver``: how user vectors are found (BPR, NeuMF; ItemKNN has none to find): ``ridge``
    (closed form, :func:`_ridge_user_vectors`, penalty ``reg``), ``gradient`` (``steps`` Adam
    steps at ``learning_rate`` on the model's own loss, chunks of ``max_pairs`` pairs) or
    ``auto`` (:data:`AUTO_SOLVER`). ``ridge`` for NeuMF fails in one line.
    """
    import torch

    if not isinstance(side, ItemSide):
        side = ItemSide.of(side)
    solver = check_solver(solver, side.kind, {"bpr": "BPR (lfm)", "neumf": "NeuMF (ncf)"}.get(side.kind, side.kind))
    if not (isinstance(reg, (int, float, np.integer, np.floating)) and np.isfinite(reg) and reg > 0):
        raise MiarsError(f"fold-in reg must be a finite number > 0, got {reg!r} (e.g. --service-param reg=1.0)")
    n_rb = len(side.item_cols)
    col_to_rb = np.full(side.n_items, -1, dtype=np.int64)
    col_to_rb[side.item_cols[1:]] = np.arange(1, n_rb)
    h = sp.csr_matrix(histories, dtype=np.float32)
    coo = h.tocoo()
    keep = col_to_rb[coo.col] >= 0
    h_rb = sp.csr_matrix((coo.data[keep], (coo.row[keep], col_to_rb[coo.col[keep]])), shape=(h.shape[0], n_rb))
    h_rb.sort_indices()
    targets = torch.as_tensor(side.item_cols[1:])
    n_items = side.n_items
    in_order = n_rb - 1 == n_items and np.array_equal(side.item_cols[1:], np.arange(n_items))

    def place(block) -> "torch.Tensor":
        """Scores over the model's items (padding column 0 included; numpy or a tensor on the model's device)
        -> scores over every column, on the same device."""
        block = torch.as_tensor(block)
        if in_order:
            return block[:, 1:].to(torch.float32).contiguous()
        out = torch.full((block.shape[0], n_items), -torch.inf, device=block.device)
        out[:, targets.to(block.device)] = block[:, 1:].to(torch.float32)
        return out

    if side.kind == "itemknn":
        w = side.table
        return lambda rows: place(torch.from_numpy((h_rb[rows] @ w).toarray().astype(np.float32, copy=False)))
    if side.kind == "bpr":
        v = side.table
        if solver == "ridge":
            u = _ridge_user_vectors(h_rb, v, reg)
        else:
            u = _bpr_user_vectors(h_rb, v, seed, steps, learning_rate, max_pairs)

        def scores(rows):
            with torch.no_grad():
                return place(u[torch.as_tensor(np.asarray(rows), device=u.device)] @ v.T)

        return scores
    from .session import neumf_logits_for

    items = side.table
    u_mf, u_mlp = _neumf_user_vectors(items, h_rb, seed, steps, learning_rate, max_pairs)

    def neumf_scores(rows):
        index = torch.as_tensor(np.asarray(rows), device=u_mf.device)
        with torch.no_grad():
            block = neumf_logits_for(items, u_mf[index], u_mlp[index])
        if block is None:
            raise MiarsError("NeuMF with batch normalisation cannot fold in new users; use --service popular")
        return place(block)

    return neumf_scores


def _neumf_user_vectors(model, h_rb: sp.csr_matrix, seed: int, steps: int = FOLDIN_STEPS, lr: float = FOLDIN_LR,
                        max_pairs: int = FOLDIN_CHUNK_PAIRS):
    """GMF and MLP user embeddings fitted with NeuMF's own loss (BCE, one sampled negative per positive)
    against the frozen item side and layers, warm-started at the mean embeddings of the history's items.

    ``model``: NeuMF's item side (item embeddings, ``mlp_layers``, ``predict_layer``; the model itself works too).
    The first MLP layer acts on [user; item]: its item half is computed once for every item (frozen),
    so a step costs one gather per pair there instead of a matrix product (as NeuMF's scoring).
    """
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        i_mf = model.item_mf_embedding.weight.detach().to(torch.float32)
        i_mlp = model.item_mlp_embedding.weight.detach().to(torch.float32)
    layers = list(model.mlp_layers.mlp_layers)
    first = next(i for i, layer in enumerate(layers) if isinstance(layer, torch.nn.Linear))
    split = not any("BatchNorm" in type(layer).__name__ for layer in layers)
    if split:
        w1, b1 = layers[first].weight.detach(), layers[first].bias.detach()
        d_u = i_mlp.shape[1]
        with torch.no_grad():
            h_item = i_mlp @ w1[:, d_u:].T  # (items, hidden): the item half of the first layer, once
        rest = torch.nn.Sequential(*layers[first + 1:])

    def make_loss(pos):
        mf_pos = i_mf[pos]
        h_pos = h_item[pos] if split else None

        def loss(vectors, users, neg):
            u_mf, u_mlp = vectors
            mf_user = u_mf[users]
            h_user = (u_mlp @ w1[:, :d_u].T + b1)[users] if split else None

            def logits(mf_items, items, h_items):
                mf = mf_user * mf_items
                if split:
                    mlp = rest(h_user + h_items)
                else:
                    mlp = model.mlp_layers(torch.cat([u_mlp[users], i_mlp[items]], dim=1))
                return model.predict_layer(torch.cat([mf, mlp], dim=1)).squeeze(-1)

            pos_logits = logits(mf_pos, pos, h_pos)
            neg_logits = logits(i_mf[neg], neg, h_item[neg] if split else None)
            return (torch.nn.functional.softplus(-pos_logits) + torch.nn.functional.softplus(neg_logits)).sum()

        return loss

    for p in model.parameters():
        p.requires_grad_(False)
    try:
        u_mf, u_mlp = _fit_user_vectors(h_rb, [i_mf, i_mlp], make_loss, seed, steps, lr, max_pairs)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was_training)
    return u_mf, u_mlp
