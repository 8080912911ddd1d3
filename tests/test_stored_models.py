"""Fitted models are stage outputs: stored once, read by query access, reference models, other services and reruns.

A test recommender counts its fits, so "never refit what the store holds" is counted, not timed.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.state import csr_arrays, csr_from_arrays
from miars_core.engine.graph import Node
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.engine.stages import Cell
from miars_core.engine.store import DiskStore, MemoryStore
from miars_core.kit import checks
from miars_core.science.ranking import top_k_excluding

FITS: list[int] = []  # rows of every training matrix CoCount was fitted on, in order


class CoCount(Component):
    """Test recommender: history x item co-occurrence counts; counts its fits (FITS) and stores its state."""

    def __init__(self, shrink: float = 1.0):
        self.shrink = shrink

    def fit(self, train, seed=0):
        FITS.append(train.n_users)
        x = sp.csr_matrix(train.matrix, dtype=np.float32)
        self.w_ = sp.csr_matrix(x.T @ x) / np.float32(self.shrink)
        self.train_ = x
        self.fit_info_ = {"nnz": int(self.w_.nnz)}
        return self

    def recommend(self, k):
        return top_k_excluding(lambda rows: np.asarray((self.train_[rows] @ self.w_).todense()), self.train_, k)

    def recommend_for(self, histories, k, seed=0, **fit):
        h = sp.csr_matrix(histories, dtype=np.float32)
        return top_k_excluding(lambda rows: np.asarray((h[rows] @ self.w_).todense()), h, k)

    def get_state(self):
        return ({**csr_arrays("w", self.w_), **csr_arrays("train", self.train_)},
                {"shape": list(self.train_.shape), "fit_info": self.fit_info_})

    def set_state(self, arrays, record):
        n_users, n_items = record["shape"]
        self.w_ = csr_from_arrays(arrays, "w", (n_items, n_items))
        self.train_ = csr_from_arrays(arrays, "train", (n_users, n_items))
        self.fit_info_ = record["fit_info"]
        return self


class NoState(CoCount):
    """The same model without the state contract (a third-party recommender of today)."""

    get_state = None  # type: ignore[assignment]
    set_state = None  # type: ignore[assignment]


LENGTHS: list = []  # (rows, epochs given) of every AutoLength fit


class AutoLength(CoCount):
    """CoCount with a training length: ``epochs=None`` "selects" a length from the data (rows % 5 + 2), as the
    RecBole models' auto criterion reports it (fit_info epochs='auto', epochs_run=n)."""

    def __init__(self, shrink: float = 1.0, epochs=None):
        self.shrink, self.epochs = shrink, epochs

    def fit(self, train, seed=0):
        super().fit(train, seed)
        LENGTHS.append((train.n_users, self.epochs))
        chosen = train.n_users % 5 + 2 if self.epochs is None else int(self.epochs)
        self.fit_info_ = {"epochs": "auto" if self.epochs is None else chosen, "epochs_run": chosen}
        return self


def _plugins():
    module = types.ModuleType("test_stored_models_plugin")

    @hookimpl
    def register_recommenders(register):
        register("cocount", CoCount)
        register("nostate", NoState)
        register("autolength", AutoLength)

    module.register_recommenders = register_recommenders
    return get_plugins(extra=[module])


def config(dataset, **kw) -> AttackConfig:
    base = dict(dataset=str(dataset), target="cocount", top_k=10, service="foldin", attack="query-recall",
                attack_params={"queries": 2})
    base.update(kw)
    return AttackConfig(**base)


def test_a_query_cell_fits_each_recommender_once_in_all(small_dataset, tmp_path):
    plugins = _plugins()
    FITS.clear()
    first = run_attack(config(small_dataset), plugins=plugins, store=DiskStore(tmp_path))
    # the shadow and the target, and the 3 reference models of query-recall, each once
    assert len(FITS) == 5
    FITS.clear()
    # another process, another attack on the same models, another service, another list length: no fit at all
    again = run_attack(config(small_dataset, attack_params={"queries": 3}), plugins=plugins, store=DiskStore(tmp_path))
    run_attack(config(small_dataset, service="popular", top_k=12), plugins=plugins, store=DiskStore(tmp_path))
    assert FITS == []
    assert again.queries["refit_seconds"] == 0.0
    assert first.metrics["members"] == again.metrics["members"]
    # reference models are stages of their own, read back: the timings report the seconds they took when fitted
    assert again.timings["reference_models"] == first.timings["reference_models"] > 0


def test_reference_models_are_shared_by_cells_with_the_same_adversary(small_dataset, tmp_path):
    plugins = _plugins()
    FITS.clear()
    store = DiskStore(tmp_path)
    run_attack(config(small_dataset, target="pop", shadow="cocount"), plugins=plugins, store=store)
    assert len(FITS) == 4  # the shadow and 3 reference models (the target is pop)
    FITS.clear()
    # another target, attack, list length: the same shadow recommender on the same data; its references are read
    run_attack(config(small_dataset, target="random", shadow="cocount", attack="interaction", attack_params={}),
               plugins=plugins, store=DiskStore(tmp_path))
    assert FITS == []


def test_reference_models_train_for_the_shadow_models_automatic_length(small_dataset, tmp_path):
    """The adversary selects a length once, on its shadow; its reference models (offline and online) reuse it."""
    from miars_core.engine.stages import shadow_length

    plugins = _plugins()
    LENGTHS.clear()
    run_attack(config(small_dataset, target="pop", shadow="autolength"), plugins=plugins, store=DiskStore(tmp_path))
    (shadow_rows, given), *references = LENGTHS
    assert given is None and len(references) == 3  # the shadow selects its own length
    assert {epochs for _, epochs in references} == {shadow_rows % 5 + 2}
    LENGTHS.clear()  # online lira: its references on halves of the candidates, at the shadow's length too
    run_attack(config(small_dataset, target="pop", shadow="autolength", attack="lira",
                      attack_params={"references": 2, "online": True}, query_budget=8),
               plugins=plugins, store=DiskStore(tmp_path))
    assert LENGTHS and {epochs for _, epochs in LENGTHS} == {shadow_rows % 5 + 2}
    LENGTHS.clear()  # a length given explicitly is every model's: nothing to reuse
    run_attack(config(small_dataset, target="pop", shadow="autolength", shadow_params={"epochs": 9}),
               plugins=plugins, store=DiskStore(tmp_path))
    assert {epochs for _, epochs in LENGTHS} == {9} and len(LENGTHS) == 4
    auto = {"params": {"epochs": None}, "fit_info": {"epochs": "auto", "epochs_run": 7}}
    assert shadow_length(auto) == {"epochs": 7}
    assert shadow_length({**auto, "params": {"epochs": "auto"}}) == {"epochs": 7}
    assert shadow_length({"params": {"epochs": 7}, "fit_info": {"epochs": 7, "epochs_run": 7}}) == {}
    assert shadow_length({"params": {}, "fit_info": {"epochs_run": 1}}) == {}  # ItemKNN: no length to choose
    assert shadow_length({"params": {"epochs": None}, "fit_info": {"epochs": "auto", "epochs_run": True}}) == {}


def test_a_stored_model_serves_the_lists_the_fitted_one_served(small_dataset, tmp_path):
    plugins = get_plugins()
    cfg = config(small_dataset, target="lfm", target_params={"epochs": 2}, shadow_params={"epochs": 2},
                 attack="mlp", attack_params={"epochs": 20})
    first = Cell(cfg, plugins, DiskStore(tmp_path))
    lists = {part: first.served(part).arrays["lists"] for part in ("shadow", "target")}
    for part in ("shadow", "target"):  # the lists go, the models stay: serving again reads the stored models
        DiskStore(tmp_path).reject("serve", first.key("serve", part), "removed by the test")
    again = Cell(cfg, plugins, DiskStore(tmp_path))
    for part in ("shadow", "target"):
        np.testing.assert_array_equal(again.served(part).arrays["lists"], lists[part])
    assert set(again.computed) == {"serve:shadow", "serve:target"}
    assert not again.computed.get("load") and again.walker.hits.count("serve:shadow") == 1  # the model was read


@pytest.mark.parametrize("damage", ["array", "version"])
def test_a_damaged_or_stale_stored_model_is_fitted_again_in_one_line(small_dataset, tmp_path, damage, monkeypatch):
    plugins = _plugins()
    FITS.clear()
    cfg = config(small_dataset)
    first = run_attack(cfg, plugins=plugins, store=DiskStore(tmp_path))
    model = Path(DiskStore(tmp_path).path("model", Cell(cfg, plugins).key("model", "target")))
    if damage == "array":
        target = model / "state.w.data.npy"
        raw = bytearray(target.read_bytes())
        raw[-4:] = b"\x00\x00\x80\x7f"  # one value becomes infinity: the checksum no longer matches
        target.write_bytes(bytes(raw))
    else:  # a model written by another version of its recommender (the store's checksums still hold)
        monkeypatch.setattr(CoCount, "set_state", lambda self, a, r: (_ for _ in ()).throw(ValueError("format 0")))
    FITS.clear()
    store = DiskStore(tmp_path)
    again = run_attack(config(small_dataset, attack_params={"queries": 3}), plugins=plugins, store=store)
    assert all("\n" not in p and p.endswith(" stage again") for p in store.problems), store.problems
    models = [p for p in store.problems if "/model/" in p]
    if damage == "array":
        assert len(models) == 1 and "does not match its checksum" in models[0], store.problems
        assert "computing the model stage again" in models[0]
        assert len(FITS) == 1  # the target, fitted again once (and stored again)
    else:  # every stored CoCount model refuses: shadow, target and the 3 reference models, each fitted again
        assert len(models) == 2 and all("cannot be restored (ValueError: format 0)" in p for p in models), store.problems
        assert len([p for p in store.problems if "/reference/" in p]) == 3
        assert len(FITS) == 5
        monkeypatch.undo()
    assert again.metrics["members"] == first.metrics["members"]
    FITS.clear()
    run_attack(config(small_dataset, attack_params={"queries": 4}), plugins=plugins, store=DiskStore(tmp_path))
    assert FITS == []


def test_a_model_without_the_state_contract_is_fitted_again_where_needed(small_dataset, tmp_path):
    plugins = _plugins()
    FITS.clear()
    cfg = config(small_dataset, target="nostate")
    first = run_attack(cfg, plugins=plugins, store=DiskStore(tmp_path))
    assert len(FITS) == 5  # shadow, target, 3 reference models
    record = json.loads(next((tmp_path / "v2" / "model").rglob("meta.json")).read_text())
    assert record["storable"] is False and not [k for k in record["_arrays"] if k.startswith("state.")]
    FITS.clear()
    again = run_attack(config(small_dataset, target="nostate", attack_params={"queries": 3}), plugins=plugins,
                       store=DiskStore(tmp_path))
    assert len(FITS) == 5 and again.queries["refit_seconds"] > 0  # today's path: fitted again, checked
    assert first.metrics["members"] == again.metrics["members"]


def test_memory_and_disk_stores_and_a_stored_model_give_the_same_scores(small_dataset, tmp_path):
    plugins = _plugins()
    cfg = config(small_dataset)
    memory = run_attack(cfg, plugins=plugins, store=MemoryStore())
    run_attack(config(small_dataset, attack_params={"queries": 3}), plugins=plugins, store=DiskStore(tmp_path))
    stored = run_attack(cfg, plugins=plugins, store=DiskStore(tmp_path))  # its models and references were stored
    np.testing.assert_array_equal(memory.artifacts["scores"], stored.artifacts["scores"])
    assert memory.metrics == stored.metrics


def test_the_conformance_check_of_the_state_contract():
    from miars_recbole import ItemKNN, LatentFactorModel, Popularity, RandomItems

    for factory, params in ((CoCount, {}), (ItemKNN, {}), (LatentFactorModel, {"epochs": 1}), (Popularity, {}),
                            (RandomItems, {})):
        checks.check_state(factory, **params)

    class Forgetful(CoCount):
        """Restores the similarity but not the training rows."""

        def set_state(self, arrays, record):
            super().set_state(arrays, record)
            self.train_ = sp.csr_matrix(self.train_.shape, dtype=np.float32)
            return self

    with pytest.raises(AssertionError, match="serves other lists to members"):
        checks.check_state(Forgetful)

    class Pickly(CoCount):
        def get_state(self):
            return {"w": np.array([{}], dtype=object)}, {}

    with pytest.raises(AssertionError, match="dtype object"):
        checks.check_state(Pickly)


def test_the_stage_graph_is_declared_once_and_walked_for_keys_and_tasks(small_dataset):
    from miars_core.engine.graph import Graph
    from miars_core.engine.stages import GRAPH

    cell = Cell(config(small_dataset, defense="dp-itemknn", target="item"), get_plugins())
    # every stored stage's key record holds the keys of its inputs under their names
    for node in GRAPH.upstream(cell, cell.roots()):
        record = cell.walker.record(node)
        for name, up in GRAPH.edges(cell, node).items():
            assert record[name] == cell.walker.key(up)
    # the grid's tasks come from the declarations (task=True): splits and fits, each with the splits it needs
    tasks = cell.tasks()
    assert set(tasks) == {"split:shadow", "split:target", "serve:shadow", "serve:target", "serve-defended:shadow",
                          "serve-defended:target"}
    assert tasks["serve-defended:target"][2] == ["split:target"]
    # the model key holds neither the list length nor the service: they share one fit
    other = Cell(config(small_dataset, defense="dp-itemknn", target="item", top_k=12, service="popular"), get_plugins())
    assert other.key("model", "target", True) == cell.key("model", "target", True)
    assert other.key("serve", "target", True) != cell.key("serve", "target", True)
    # a declaration's parameters are its inputs
    graph = Graph()
    with pytest.raises(TypeError, match="must be its inputs"):
        @graph.stage(inputs={"a": lambda c, n: Node("a")})
        def b(cell, node, x):
            return {}, {}


def test_a_restored_recbole_model_folds_in_with_both_solvers(small_dataset, tmp_path):
    """A FoldInModel / ItemSide built from stored state serves new accounts as the fitted model's does, with the
    closed-form (ridge) and the gradient solver; a stored NeuMF folds in by gradient and still refuses ridge."""
    from miars_core.contracts.errors import MiarsError
    from miars_core.contracts.types import Interactions

    plugins = get_plugins()
    part = Cell(config(small_dataset, target="pop"), plugins).part("target")
    known = part.interactions.matrix
    members = Interactions(known[part.is_member], part.interactions.user_ids[part.is_member],
                           part.interactions.item_ids)
    others = known[~part.is_member][:16]
    for name, params, solvers in (("lfm", {"epochs": 2}, ("ridge", "gradient")), ("ncf", {"epochs": 1}, ("gradient",))):
        fitted = plugins.create("recommender", name, **params).fit(members, seed=0)
        arrays, record = fitted.get_state()
        arrays = {key: np.array(value) for key, value in arrays.items()}  # as the store gives them back
        restored = plugins.create("recommender", name, **params).set_state(arrays, json.loads(json.dumps(record)))
        for solver in solvers:
            fit = {"solver": solver, "steps": 5, "learning_rate": 0.01}
            want = fitted.recommend_for(others, 10, seed=1, **fit)
            np.testing.assert_array_equal(restored.recommend_for(others, 10, seed=1, **fit), want)
            np.testing.assert_array_equal(restored.new_accounts().recommend_for(others, 10, seed=1, **fit), want)
        if name == "ncf":
            with pytest.raises(MiarsError, match="solver=ridge.*no closed-form fold-in"):
                restored.recommend_for(others, 10, solver="ridge")
    # through the engine: cells that differ only in the solver share the stored models (keyed without the service)
    base = dict(target="lfm", target_params={"epochs": 2}, shadow_params={"epochs": 2}, attack="mlp",
                attack_params={"epochs": 20})
    lists = {}
    for solver in ("ridge", "gradient"):
        cell = Cell(config(small_dataset, **base, service_params={"solver": solver, "steps": 5}), plugins,
                    DiskStore(tmp_path))
        lists[solver] = {p: cell.served(p).arrays["lists"] for p in ("shadow", "target")}
        if solver == "gradient":  # the ridge cell's models were read, not fitted again
            assert set(cell.computed) == {"serve:shadow", "serve:target"}, cell.computed
    assert not all(np.array_equal(lists["ridge"][p], lists["gradient"][p]) for p in lists["ridge"])
