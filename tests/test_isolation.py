"""What an attack receives on the target part holds no membership labels and no members' training data.

The target view, its query access and its reference models are walked object by object
(``miars_core.kit.checks.reachable``: instance attributes, slots, containers, bound methods,
closures, partials, array bases) for every service, defense kind, split mode and the paper's
recommenders; the walker itself is shown to find labels and training data wherever they hide.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.sparse as sp

from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.types import Interactions, Part, Split
from miars_core.engine.pipeline import AttackConfig
from miars_core.engine.stages import Cell
from miars_core.kit import checks
from miars_core.engine.graph import Walker
from miars_core.science.service import Fitted, Served
from miars_core.science.threat import QueryAccess

RNG = np.random.default_rng(3)
Y = RNG.random(40) < 0.5
TRAIN = sp.random(20, 30, density=0.2, format="csr", random_state=4)


class _Slotted:
    __slots__ = ("hidden",)

    def __init__(self, hidden):
        self.hidden = hidden


class _Holder:
    def __init__(self, hidden):
        self.hidden = hidden

    def method(self):
        return self.hidden


def _closure(hidden):
    return lambda: hidden


@pytest.mark.parametrize("hide", [
    lambda x: {"a": [1, (2, x)]},                        # containers
    lambda x: _Slotted(x),                                # __slots__
    lambda x: _Holder(x).method,                          # a bound method's __self__
    lambda x: _closure(x),                                # a closure cell
    lambda x: functools.partial(print, sep=x),            # partial keywords
    lambda x: functools.partial(print, x),                # partial args
    lambda x: _Holder({"deep": _Slotted([x])}),           # nested instance state
])
@pytest.mark.parametrize("secret", ["labels", "rows", "train", "train-reindexed", "labels-torch"])
def test_the_walker_finds_labels_and_training_data_wherever_they_hide(hide, secret):
    import torch

    value = {"labels": Y.astype(np.int8), "rows": np.flatnonzero(Y), "train": TRAIN.copy(),
             "train-reindexed": sp.csr_matrix(TRAIN[::-1]), "labels-torch": torch.as_tensor(Y)}[secret]
    with pytest.raises(AssertionError, match="reachable"):
        checks.check_isolation(hide(value), is_member=Y, train=TRAIN)
    view_of_labels = np.concatenate([Y, Y])[:40]  # a view: the walker follows .base too
    with pytest.raises(AssertionError, match="labels"):
        checks.check_isolation(hide(view_of_labels[:40]), is_member=Y, train=TRAIN)
    assert checks.check_isolation(hide(np.zeros(40)), is_member=Y, train=TRAIN) > 0  # nothing secret: passes


def test_query_access_through_a_service_without_new_accounts_holds_the_training_data():
    """The fallback for a third-party service (serve_others with the fitted model) is what the walk catches."""

    class OldService:
        def serve_others(self, fitted, train, histories, k, seed=0):
            from miars_core.science.ranking import top_k_popular

            return top_k_popular(train.item_popularity(), histories, k)

    train = Interactions(TRAIN, np.arange(20), np.arange(30))
    with pytest.raises(AssertionError, match="training interactions"):
        checks.check_isolation(QueryAccess.of(OldService(), None, train, 5), is_member=Y, train=TRAIN)
    from miars_services import PopularService

    access = QueryAccess.of(PopularService(), None, train, 5)
    assert checks.check_isolation(access, is_member=Y, train=TRAIN) > 0
    assert (access.recommend(TRAIN[:3]) == QueryAccess.of(OldService(), None, train, 5).recommend(TRAIN[:3])).all()


EPOCHS = {"epochs": 2}
CASES = {
    "item-popular": dict(target="item"),
    "item-foldin": dict(target="item", service="foldin"),
    "item-foldin-members-foldin": dict(target="item", service="foldin", service_params={"members": "foldin"}),
    "lfm-foldin": dict(target="lfm", service="foldin", target_params=EPOCHS, shadow_params=EPOCHS),
    "ncf-foldin": dict(target="ncf", service="foldin", target_params=EPOCHS, shadow_params=EPOCHS),
    "pop-foldin": dict(target="pop", service="foldin"),
    "item-foldin-split-users": dict(target="item", service="foldin", split="users"),
    "item-foldin-holdout": dict(target="item", service="foldin", utility_holdout=0.2),
    "item-foldin-list-defense": dict(target="item", service="foldin", defense="popularity-randomization",
                                     defense_params={"ratio": 0.5}),
    "item-foldin-data-defense": dict(target="item", service="foldin", defense="subsample",
                                     defense_params={"fraction": 0.5}),
    "item-foldin-dp-itemknn": dict(target="item", service="foldin", defense="dp-itemknn", defense_params={"epsilon": 1.0}),
    "lfm-foldin-dp-sgd": dict(target="lfm", service="foldin", target_params=EPOCHS, shadow_params=EPOCHS,
                              defense="dp-sgd", defense_params={"epsilon": 5.0, "epochs": 1}),
    "item-foldin-interaction": dict(target="item", service="foldin", attack="interaction"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_nothing_reachable_from_the_target_view_holds_labels_or_training_data(small_dataset, case):
    from recbole.model.abstract_recommender import AbstractRecommender

    from miars_recbole.session import FittedRecBole

    settings = {"attack": "query-recall", "top_k": 10, **CASES[case]}
    cell = Cell(AttackConfig(dataset=str(small_dataset), **settings), get_plugins())
    defended = bool(cell.config.defense)
    view = cell.view("target", defended, cell.features("target", defended), "queries")
    view.query.recommend(view.histories[:5])  # used once, as an attack would
    view.reference(0).recommend(view.histories[:5])  # a reference model built
    under_fit = defended and cell.defense_point in ("data", "training")
    served = cell.fitted("target", under_fit)
    fitted = served.model
    forbidden = [cell, served, fitted, getattr(fitted, "model_", None), getattr(getattr(fitted, "model_", None), "model", None),
                 cell.split("target"), cell.part("target"), cell.part("shadow")]
    walked = checks.check_isolation(view, is_member=cell.part("target").is_member, train=served.train.matrix,
                                    forbidden=[x for x in forbidden if x is not None],
                                    forbidden_types=(Cell, Walker, Part, Split, Served, Fitted, FittedRecBole,
                                                     AbstractRecommender))
    assert walked > 20
    assert view.labels is None and view.pair_labels is None


def test_check_service_refuses_a_new_account_server_that_keeps_the_members_data():
    from miars_core.contracts.components import Component
    from miars_core.science.ranking import top_k_popular
    from miars_services import FoldInService, PopularService

    class Leaky(Component):
        """Keeps the training data inside its server (example of what not to do)."""

        def __init__(self):
            pass

        def serve_others(self, fitted, train, histories, k, seed=0):
            return top_k_popular(train.item_popularity(), histories, k)

        def new_accounts(self, fitted, train, k, seed=0):
            return functools.partial(self.serve_others, fitted, train, k=k, seed=seed)

    with pytest.raises(AssertionError, match="new_accounts holds the members' data"):
        checks.check_service(Leaky)
    checks.check_service(PopularService)
    checks.check_service(FoldInService)
    checks.check_service(FoldInService, members="foldin")
