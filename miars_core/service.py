"""The recommendation service of the paper: members get personalized lists, non-members popular ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .components import get_params
from .errors import MiarsError
from .ranking import check_k, top_k_popular
from .types import Part, ServiceContext
from .utility import holdout, utility_metrics


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


def defense_point(defense: Any) -> str:
    """Where a defense acts: ``lists`` (served lists; the default), ``data`` (training data) or ``training``."""
    point = getattr(defense, "acts_on", "lists")
    if point not in DEFENSE_POINTS:
        raise ValueError(f"defense {type(defense).__name__} has acts_on={point!r}; use one of {', '.join(DEFENSE_POINTS)}")
    return point


DEFENSE_POINTS = ("lists", "data", "training")


def serve(part: Part, recommender: Any, name: str, k: int, seed: int, defense: Any = None, defense_seed: int = 0,
          holdout_fraction: float = 0.0, holdout_seed: int = 0) -> Served:
    """Fit ``recommender`` on the part's members; members get its top-k, non-members the popular top-k.

    A ``data`` defense rewrites the members' training data first; a ``training`` defense fits
    the recommender its own way (``defense.fit(recommender, members, seed)``). Members' lists
    never hold an item the member knows, even one a data defense left out of training.
    With ``holdout_fraction`` > 0 that share of each member's interactions is held out of
    training (the service never saw them, so they may be served) and the report's ``utility``
    says how well the members' lists find them (Recall / NDCG / HR at k).
    """
    check_k(k, part.interactions.matrix, who=f"{part.name} users")
    members = np.flatnonzero(part.is_member)
    others = np.flatnonzero(~part.is_member)
    point = defense_point(defense) if defense is not None else None
    seen, held = part.members, None
    if holdout_fraction > 0:
        seen, held = holdout(part.members, holdout_fraction, holdout_seed)
    train = seen
    if point == "data":
        train = defense.apply_data(seen, seed=defense_seed)
        if train.matrix.shape != seen.matrix.shape:
            raise ValueError(f"defense {type(defense).__name__}.apply_data changed the shape of the members' data")
    if point == "training":
        fitted = defense.fit(recommender, train, seed=defense_seed)
    else:
        fitted = recommender.fit(train, seed=seed)
    member_lists = _unknown_top_k(fitted, train.matrix, seen.matrix, k, name)
    popularity = train.item_popularity()
    popular = np.argsort(-popularity, kind="stable")
    other_lists = top_k_popular(popularity, part.interactions.matrix[others], k)
    lists = np.empty((part.interactions.n_users, k), dtype=np.int64)
    lists[members] = member_lists
    lists[others] = other_lists
    overlap = np.isin(member_lists, popular[:k]).mean() if len(members) else 0.0
    report = {
        "name": name,
        "params": get_params(recommender),
        "fit_info": dict(getattr(fitted, "fit_info_", {}) or {}),
        "members_popular_overlap": round(float(overlap), 4),
    }
    if held is not None:
        report["utility"] = {"holdout": holdout_fraction, **utility_metrics(member_lists, held, k)}
    if point in ("data", "training"):
        report["trained_interactions"] = int(train.n_interactions)
        privacy = getattr(defense, "privacy_", None)
        if privacy:
            report["privacy"] = dict(privacy)
    return Served(lists, ServiceContext(part.interactions, part.is_member, popular, k), report)


def _unknown_top_k(fitted: Any, trained: Any, known: Any, k: int, name: str) -> np.ndarray:
    """``fitted.recommend`` lists cut to ``k`` items the users do not know (asks for more if needed)."""
    n = known.shape[0]
    extra = int(np.diff(known.indptr).max() - np.diff(trained.indptr).min()) if n else 0
    lists = np.asarray(fitted.recommend(k), dtype=np.int64)
    if lists.shape != (n, k):
        raise ValueError(f"recommender {name!r} returned lists of shape {lists.shape}, expected {(n, k)}")
    if (known.nnz == trained.nnz) or extra <= 0:
        return lists
    is_known = np.asarray(known[np.repeat(np.arange(n), k), lists.ravel()]).reshape(n, k) > 0
    if not is_known.any():
        return lists
    # Items left out of training but known to the user: ask for enough more and drop them.
    wider = np.asarray(fitted.recommend(min(k + extra, known.shape[1] - int(np.diff(trained.indptr).max()))), dtype=np.int64)
    width = wider.shape[1]
    is_known = np.asarray(known[np.repeat(np.arange(n), width), wider.ravel()]).reshape(n, width) > 0
    if (width - is_known.sum(axis=1)).min() < k:
        raise MiarsError(f"recommender {name!r} cannot serve {k} unknown items to every member after the defense "
                         "removed training data; lower --top-k")
    order = np.argsort(is_known, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(wider, order, axis=1)


def defend(served: Served, defense: Any, seed: int) -> np.ndarray:
    """The lists after ``defense`` rewrote them (shape and validity checked)."""
    out = np.asarray(defense.apply(served.lists.copy(), served.context, seed=seed), dtype=np.int64)
    if out.shape != served.lists.shape:
        raise ValueError(f"defense returned lists of shape {out.shape}, expected {served.lists.shape}")
    if out.size and (out.min() < 0 or out.max() >= served.context.interactions.n_items):
        raise ValueError("defense returned item indices outside the item range")
    return out
