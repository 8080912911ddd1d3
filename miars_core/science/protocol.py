"""The CCS'21 split: shadow, target and vectorization parts, members and non-members."""

from __future__ import annotations

import numpy as np

from ..contracts.errors import MiarsError
from ..contracts.types import Interactions, Part, Split, binary_csr, canonical, ordered_csr

SPLIT_MODES = ("interactions", "users")


def split_dataset(data: Interactions, *, mode: str = "interactions", min_interactions: int = 20, seed: int = 0) -> Split:
    """Split ``data`` into shadow, target and vectorization parts (seeded).

    ``mode="interactions"`` (the paper's): every interaction goes at random to one of three
    equal parts, so one person can appear in several parts. ``mode="users"``: every user goes
    wholly to one part. In shadow and target, users with fewer than ``min_interactions``
    interactions are dropped and the rest are cut into equal halves of members and non-members.
    """
    if mode not in SPLIT_MODES:
        raise MiarsError(f"unknown split {mode!r}; choose from: {', '.join(SPLIT_MODES)}")
    if min_interactions < 1:
        raise MiarsError(f"--min-interactions must be >= 1, got {min_interactions}")
    rng = np.random.default_rng(seed)
    coo = canonical(data.matrix).tocoo()  # entries in CSR order: aligned with data.order
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    if mode == "interactions":
        part_of = _equal_thirds(len(users), rng)
    else:
        part_of = _equal_thirds(data.n_users, rng)[users]
    parts = []
    for p, name in enumerate(("shadow", "target", "vectorization")):
        sel = part_of == p
        if data.order is None:
            parts.append(Interactions(binary_csr(users[sel], items[sel], data.matrix.shape), data.user_ids, data.item_ids))
        else:
            m, order = ordered_csr(users[sel], items[sel], np.asarray(data.order)[sel], data.matrix.shape)
            parts.append(Interactions(m, data.user_ids, data.item_ids, order))
    shadow = _members_part("shadow", parts[0], min_interactions, rng)
    target = _members_part("target", parts[1], min_interactions, rng)
    return Split(shadow, target, parts[2], data.item_ids)


def _equal_thirds(n: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.arange(n) % 3
    rng.shuffle(labels)
    return labels


def _members_part(name: str, part: Interactions, min_interactions: int, rng: np.random.Generator) -> Part:
    keep = np.flatnonzero(part.user_counts() >= min_interactions)
    if len(keep) < 4:
        raise MiarsError(
            f"the {name} part has only {len(keep)} users with >= {min_interactions} interactions; "
            "use a larger dataset or lower --min-interactions"
        )
    keep = rng.permutation(keep)
    half = len(keep) // 2
    keep = np.sort(keep[: 2 * half])  # equal halves: an odd user out is dropped
    is_member = np.zeros(len(keep), dtype=bool)
    is_member[rng.permutation(len(keep))[:half]] = True
    return Part(name, part.rows(keep), is_member)
