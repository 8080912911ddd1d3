"""Complete, generated contracts (docs/hooks.md), and conformance checks that take what authors have.

* every hook, kind and variant has a documented contract (miars_core/contracts/protocols.py) and a
  check that enforces it; the reference lists every member;
* the checks accept a class, a factory or an instance, and check a training defense with a
  recommender class before its plugin is installed;
* ``check_recommender`` checks ``recommend_for`` (and ``new_accounts``) when the recommender has them.
"""

from __future__ import annotations

import functools
import types
from typing import ClassVar, Protocol

import numpy as np
import pytest

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.hookspecs import hookimpl
from miars_core.docgen import contract_problems, hook_reference, protocol_members, protocols
from miars_core.kit import checks
from miars_core.science.ranking import top_k_excluding, top_k_popular


def test_every_hook_kind_and_variant_has_a_documented_contract_and_a_check():
    assert contract_problems() == []
    names = {p.__name__ for p in protocols()}
    assert {"Recommender", "FoldInRecommender", "StatefulRecommender", "ListDefense", "DataDefense", "TrainingDefense", "Service",
            "FeatureAttack", "ListAttack", "QueryAttack", "InteractionAttack", "Dataset", "Featurizer",
            "Namespace"} <= names


def test_the_reference_lists_every_contract_member_and_its_check():
    text = hook_reference()
    for proto in protocols():
        attributes, methods = protocol_members(proto)
        assert f"# {proto.__name__}\n" in text
        for name, *_ in attributes:
            assert f"| `{name}` |" in text, f"{proto.__name__}.{name}"
        for name, *_ in methods:
            assert f"| `{name}()` |" in text and f"def {name}(" in text, f"{proto.__name__}.{name}"
        assert f"miars_core.kit.checks.{proto.check}(" in text
    for check in ("check_service", "check_view_attack", "check_training_defense", "check_data_defense"):
        assert f"checks.{check}(" in text


def test_a_contract_without_its_doc_is_found():
    class Undocumented(Protocol):
        hook: ClassVar[str] = "register_recommenders"
        selected_by: ClassVar[str] = "never"
        check: ClassVar[str] = "check_nothing"

        size_: int

        def fit(self, train, seed=0): ...

    problems = contract_problems([*protocols(), Undocumented])
    assert "contract Undocumented has no docstring" in problems
    assert "contract Undocumented: attribute size_ has no #: comment" in problems
    assert "contract Undocumented: method fit has no docstring" in problems
    assert "contract Undocumented names check 'check_nothing', which miars_core.kit.checks does not export" in problems
    only = [p for p in protocols() if p.hook != "register_services"]
    assert "hook register_services has no contract in miars_core/contracts/protocols.py" in contract_problems(only)


# --------------------------------------------------------------------------- classes, factories, instances


class Popular(Component):
    """Most popular unknown items (a test recommender)."""

    def __init__(self, boost: float = 0.0):
        self.boost = boost

    def fit(self, train, seed=0):
        self.pop_ = train.item_popularity() + self.boost
        self.known_ = train.matrix
        return self

    def recommend(self, k):
        return top_k_popular(self.pop_, self.known_, k)


class OnlyPopular(Component):
    """Serves popular items, trained with noise; trains nc-pop only (Dwork et al., TCC 2006)."""

    acts_on = "training"
    sweep = {"epsilon": [0.5, 1.0, 2.0]}
    recommenders = ["nc-pop"]

    def __init__(self, epsilon: float = 1.0):
        self.epsilon = epsilon

    def fit(self, recommender, members, seed=0):
        if type(recommender).__name__ != "Popular":
            raise MiarsError(f"only-popular trains nc-pop only, not {type(recommender).__name__}")
        if not isinstance(self.epsilon, (int, float)) or not self.epsilon > 0:
            raise MiarsError(f"only-popular: epsilon must be > 0, got {self.epsilon!r}")
        self.privacy_ = {"epsilon": float(self.epsilon), "delta": 0.0, "level": "user", "mechanism": "none (a test)"}
        return recommender.fit(members, seed=seed)


def test_checks_take_a_class_a_factory_or_an_instance():
    checks.check_recommender(Popular)
    checks.check_recommender(functools.partial(Popular, boost=1.0))
    checks.check_recommender(Popular(boost=2.0))  # rebuilt from its get_params, like scikit-learn's clone
    checks.check_init(Popular(boost=3.0), boost=3.0)
    factory = checks.as_factory(OnlyPopular(epsilon=2.0))
    assert factory.acts_on == "training" and factory.recommenders == ["nc-pop"] and factory().epsilon == 2.0
    assert factory(epsilon=5.0).epsilon == 5.0


def test_a_training_defense_is_checked_with_a_recommender_class_before_its_plugin_is_installed():
    checks.check_training_defense(OnlyPopular, recommender=Popular, bad_params=[{"epsilon": 0}])
    checks.check_training_defense(OnlyPopular(), recommender=Popular(), bad_params=[{"epsilon": -1}])
    with pytest.raises(AssertionError, match=r"no plugin here registers 'nc-pop'.*pass recommender="):
        checks.check_training_defense(OnlyPopular)
    # check_plugin resolves the names the plugin itself registers: nothing needs installing
    plugin = types.ModuleType("nc_plugin")

    @hookimpl
    def register_recommenders(register):
        register("nc-pop", Popular)

    @hookimpl
    def register_defenses(register):
        register("only-popular", OnlyPopular)

    plugin.register_recommenders, plugin.register_defenses = register_recommenders, register_defenses
    assert checks.check_plugin(plugin) == ["recommender:nc-pop", "defense:only-popular"]


# --------------------------------------------------------------------------- recommend_for


class FoldsIn(Popular):
    """Popular items for new accounts too (a test recommender)."""

    def recommend_for(self, histories, k, seed=0):
        return top_k_popular(self.pop_, histories, k)

    def new_accounts(self):
        return _Side(self.pop_.copy())


class _Side:
    def __init__(self, pop):
        self.pop = pop

    def recommend_for(self, histories, k, seed=0):
        return top_k_popular(self.pop, histories, k)


class ServesKnown(FoldsIn):
    """recommend_for forgets to mask the history (a test recommender)."""

    def recommend_for(self, histories, k, seed=0):
        scores = np.asarray(histories.sum(axis=0)).ravel() + self.pop_
        return np.argsort(-scores, kind="stable")[:k][None, :].repeat(histories.shape[0], axis=0).astype(np.int64)

    def new_accounts(self):
        return self


class KeepsMembers(FoldsIn):
    """new_accounts() keeps the members' matrix (a test recommender)."""

    def new_accounts(self):
        side = _Side(self.pop_.copy())
        side.known = self.known_
        return side


class Random(FoldsIn):
    """recommend_for draws without the seed (a test recommender)."""

    def recommend_for(self, histories, k, seed=0):
        return top_k_excluding(np.random.default_rng().random(histories.shape).astype(np.float32), histories, k)

    def new_accounts(self):
        return self


class EmptyFails(FoldsIn):
    """recommend_for breaks on an account without history (a test recommender)."""

    def recommend_for(self, histories, k, seed=0):
        assert np.diff(histories.indptr).min() > 0, "no history"
        return super().recommend_for(histories, k, seed)


def test_check_recommender_checks_recommend_for_and_new_accounts():
    checks.check_recommender(FoldsIn)
    with pytest.raises(AssertionError, match="recommend_for recommends items the account knows"):
        checks.check_recommender(ServesKnown)
    with pytest.raises(AssertionError, match=r"new_accounts\(\) holds the members' data"):
        checks.check_recommender(KeepsMembers)
    with pytest.raises(AssertionError, match="serves other lists"):
        checks.check_recommender(Random)
    with pytest.raises(AssertionError, match="no history"):
        checks.check_recommender(EmptyFails)  # a fresh account without history is part of the contract
