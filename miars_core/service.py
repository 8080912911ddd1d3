"""The recommendation service of the paper: members get personalized lists, non-members popular ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .components import get_params
from .ranking import check_k, top_k_popular
from .types import Part, ServiceContext


@dataclass
class Served:
    """The lists one part's users see, plus what is worth reporting about how they were made."""

    lists: np.ndarray  # (users of the part, k) item columns, rows aligned with part.interactions
    context: ServiceContext
    report: dict = field(default_factory=dict)


def popularity_order(part: Part) -> np.ndarray:
    """Item columns from most to least popular among the part's members (ties: lower column first)."""
    pop = part.members.item_popularity()
    return np.argsort(-pop, kind="stable")


def serve(part: Part, recommender: Any, name: str, k: int, seed: int) -> Served:
    """Fit ``recommender`` on the part's members; members get its top-k, non-members the popular top-k."""
    check_k(k, part.interactions.matrix, who=f"{part.name} users")
    members = np.flatnonzero(part.is_member)
    others = np.flatnonzero(~part.is_member)
    recommender.fit(part.members, seed=seed)
    member_lists = np.asarray(recommender.recommend(k), dtype=np.int64)
    if member_lists.shape != (len(members), k):
        raise ValueError(f"recommender {name!r} returned lists of shape {member_lists.shape}, expected {(len(members), k)}")
    popularity = part.members.item_popularity()
    popular = np.argsort(-popularity, kind="stable")
    other_lists = top_k_popular(popularity, part.interactions.matrix[others], k)
    lists = np.empty((part.interactions.n_users, k), dtype=np.int64)
    lists[members] = member_lists
    lists[others] = other_lists
    overlap = np.isin(member_lists, popular[:k]).mean() if len(members) else 0.0
    report = {
        "name": name,
        "params": get_params(recommender),
        "fit_info": dict(getattr(recommender, "fit_info_", {}) or {}),
        "members_popular_overlap": round(float(overlap), 4),
    }
    return Served(lists, ServiceContext(part.interactions, part.is_member, popular, k), report)


def defend(served: Served, defense: Any, seed: int) -> np.ndarray:
    """The lists after ``defense`` rewrote them (shape and validity checked)."""
    out = np.asarray(defense.apply(served.lists.copy(), served.context, seed=seed), dtype=np.int64)
    if out.shape != served.lists.shape:
        raise ValueError(f"defense returned lists of shape {out.shape}, expected {served.lists.shape}")
    if out.size and (out.min() < 0 or out.max() >= served.context.interactions.n_items):
        raise ValueError("defense returned item indices outside the item range")
    return out
