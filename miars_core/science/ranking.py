"""Batched top-k over users x all items, excluding what each user already knows."""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

from ..contracts.errors import MiarsError

ScoreRows = Callable[[np.ndarray], np.ndarray]

#: Largest users x items score block scored at once (2^25 float32 = 128 MiB).
MAX_BLOCK_ELEMENTS = 1 << 25


def check_k(k: int, known: sp.csr_matrix, who: str = "users") -> None:
    """Fail clearly when some user cannot be given ``k`` items they do not know."""
    n_items = known.shape[1]
    if k < 1:
        raise MiarsError(f"--top-k must be >= 1, got {k}")
    most = int(np.diff(known.indptr).max()) if known.shape[0] else 0
    if k > n_items - most:
        raise MiarsError(
            f"--top-k {k} is impossible: some of the {who} already know {most} of the {n_items} items; "
            f"use --top-k <= {n_items - most}"
        )


def top_k_popular(popularity: np.ndarray, known: sp.csr_matrix, k: int) -> np.ndarray:
    """The ``k`` most popular items each row does not know (ties: lower item column first)."""
    order = np.argsort(-np.asarray(popularity), kind="stable")
    rank_score = np.empty(len(order), dtype=np.float32)
    rank_score[order] = -np.arange(len(order), dtype=np.float32)
    return top_k_excluding(lambda rows: np.broadcast_to(rank_score, (len(rows), len(rank_score))), known, k)


def top_k_excluding(scores: np.ndarray | ScoreRows, known: sp.csr_matrix, k: int, batch_size: int = 1024,
                    scratch: bool = False) -> np.ndarray:
    """Top-``k`` item columns per row, best first, never an item the row already knows.

    ``scores`` is a dense (users x items) array or a function returning the score rows of the
    given user indices; rows are processed in batches (one GEMM-sized block at a time).
    The same scores always give the same lists. ``scratch=True`` says the score function returns
    fresh float32 tensors that may be overwritten (saves one copy of every block). A score block
    on a GPU is masked and ranked there; only the lists come back to the CPU.
    """
    import torch

    check_k(k, known)
    known = sp.csr_matrix(known)
    n_users, n_items = known.shape
    batch_size = max(1, min(batch_size, MAX_BLOCK_ELEMENTS // max(n_items, 1)))  # bound memory on huge catalogs
    out = np.empty((n_users, k), dtype=np.int64)
    lowest = float(-np.finfo(np.float32).max)
    for start in range(0, n_users, batch_size):
        rows = np.arange(start, min(start + batch_size, n_users))
        block = scores[rows] if isinstance(scores, np.ndarray) else scores(rows)
        if torch.is_tensor(block):
            s = block.to(torch.float32)
            if s.data_ptr() == block.data_ptr() and not scratch:
                s = s.clone()  # never write into the caller's tensor
        else:
            s = torch.from_numpy(np.array(block, dtype=np.float32))  # one copy
        if s.shape != (len(rows), n_items):
            raise ValueError(f"score block has shape {tuple(s.shape)}, expected {(len(rows), n_items)}")
        # Items the model cannot score (nan, -inf) rank just above known items, which rank last.
        torch.nan_to_num_(s, nan=lowest / 2, neginf=lowest / 2, posinf=-lowest)
        sub = known[rows]
        r = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
        s[torch.as_tensor(r, device=s.device), torch.as_tensor(sub.indices.astype(np.int64), device=s.device)] = lowest
        out[rows] = torch.topk(s, k, dim=1, sorted=True).indices.cpu().numpy()
    return out
