"""Length-robust shadows (``--shadow-lengths``): one shadow model per training length, features stacked.

A test recommender counts its fits and the length each was asked for, so "one shadow per length"
and "shared through the store" are counted, not timed.
"""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.plugins import get_plugins
from miars_core.engine.graph import Node
from miars_core.engine.lengths import auto_lengths, parse_shadow_lengths
from miars_core.engine.pipeline import AttackConfig, cell_result, run_attack
from miars_core.engine.stages import Cell
from miars_core.engine.store import DiskStore
from miars_core.science.ranking import top_k_excluding

FITS: list = []  # (rows, epochs given) of every fit


class Lengthy(Component):
    """Co-occurrence scores plus a seeded per-length perturbation (lists differ by length); ``epochs=None``
    "selects" a length from the data (rows % 3 + 4), reported as the RecBole models do (epochs_run)."""

    def __init__(self, epochs=None):
        self.epochs = epochs

    def fit(self, train, seed=0):
        chosen = train.n_users % 3 + 4 if self.epochs is None else int(self.epochs)
        FITS.append((train.n_users, self.epochs))
        x = sp.csr_matrix(train.matrix, dtype=np.float32)
        noise = np.random.default_rng([seed, chosen]).random(x.shape[1]).astype(np.float32) * chosen
        self.w_ = np.asarray((x.T @ x).todense()) + noise[None, :]
        self.train_ = x
        self.fit_info_ = {"epochs": "auto" if self.epochs is None else chosen, "epochs_run": chosen}
        return self

    def recommend(self, k):
        return top_k_excluding(lambda rows: self.train_[rows] @ self.w_, self.train_, k)

    def recommend_for(self, histories, k, seed=0, **fit):
        h = sp.csr_matrix(histories, dtype=np.float32)
        return top_k_excluding(lambda rows: h[rows] @ self.w_, h, k)

    def get_state(self):
        return {"w": self.w_, "train_data": self.train_.data, "train_indices": self.train_.indices,
                "train_indptr": self.train_.indptr}, {"shape": list(self.train_.shape), "fit_info": self.fit_info_}

    def set_state(self, arrays, record):
        self.w_ = arrays["w"]
        self.train_ = sp.csr_matrix((arrays["train_data"], arrays["train_indices"], arrays["train_indptr"]),
                                    shape=tuple(record["shape"]))
        self.fit_info_ = record["fit_info"]
        return self


def _plugins():
    module = types.ModuleType("test_shadow_lengths_plugin")

    @hookimpl
    def register_recommenders(register):
        register("lengthy", Lengthy)

    module.register_recommenders = register_recommenders
    return get_plugins(extra=[module])


def config(dataset, **kw) -> AttackConfig:
    base = dict(dataset=str(dataset), target="lengthy", top_k=10, attack="mlp", attack_params={"epochs": 5},
                featurizer_params={"dim": 8})
    base.update(kw)
    return AttackConfig(**base)


def shadow_fits() -> list:
    """The epochs given to every fit so far (None: auto), the target's included."""
    return [epochs for _, epochs in FITS]


def test_a_list_trains_one_shadow_per_length_and_stacks_their_features(small_dataset, tmp_path):
    plugins = _plugins()
    FITS.clear()
    cell = Cell(config(small_dataset, shadow_lengths=[2, 5, 9]), plugins, DiskStore(tmp_path))
    result = cell_result(cell)
    # one shadow per length and the target (auto): four fits, the shadow's own auto length never trained
    assert sorted(shadow_fits(), key=str) == sorted([2, 5, 9, None], key=str)
    lengths = result.recommenders["shadow"]["lengths"]
    assert lengths["asked"] == [2, 5, 9] and lengths["epochs"] == [2, 5, 9] and lengths["epochs_run"] == [2, 5, 9]
    assert result.recommenders["shadow"]["params"]["epochs"] == 2  # the cell reports its first length's shadow
    # the attack trained on the three lengths' features stacked, labels repeated
    xs = [cell.features("shadow", False, n) for n in (2, 5, 9)]
    assert not np.array_equal(xs[0], xs[2])  # the lengths' lists differ
    seen = {}
    original = cell.create  # the attack the cell trains, its fit recorded

    def spy(role):
        made = original(role)
        if role == "attack":
            fit = made.fit

            def recording(x, y, seed=0):
                seen["x"], seen["y"] = x, y
                return fit(x, y, seed=seed)

            made.fit = recording
        return made

    cell.create = spy
    cell.attack_outcome(False, xs[0], cell.features("target", False))
    np.testing.assert_array_equal(seen["x"], np.concatenate(xs))
    np.testing.assert_array_equal(seen["y"], np.tile(cell.part("shadow").is_member, 3))
    # the shadow recommender timing counts every length's fit (read from the stage records)
    assert result.timings["shadow_recommender"] >= sum(lengths["fit_seconds"]) > 0
    assert {stage for stage, _, _ in cell.graph()} >= {"model", "serve", "features"}
    assert len([1 for stage, _, _ in cell.graph() if stage == "model"]) == 4  # 3 shadow lengths + the target


def test_auto_brackets_the_shadows_own_length_and_reuses_its_fit(small_dataset, tmp_path):
    plugins = _plugins()
    FITS.clear()
    result = run_attack(config(small_dataset, shadow_lengths="auto"), plugins=plugins, store=DiskStore(tmp_path))
    lengths = result.recommenders["shadow"]["lengths"]
    own = result.recommenders["shadow"]["fit_info"]["epochs_run"]
    assert lengths["asked"] == "auto" and lengths["epochs"] == auto_lengths(own) == [(own + 1) // 2, own, 2 * own]
    assert lengths["epochs_run"] == lengths["epochs"]
    # the shadow (auto), the target (auto) and two more shadows: the own length's model is the shadow model itself
    assert sorted(shadow_fits(), key=str) == sorted([None, None, (own + 1) // 2, 2 * own], key=str)
    assert auto_lengths(1) == [1, 2] and auto_lengths(5) == [3, 5, 10]


def test_length_models_are_shared_through_the_store_across_cells(small_dataset, tmp_path):
    plugins = _plugins()
    FITS.clear()
    first = run_attack(config(small_dataset, shadow_lengths=[3, 6]), plugins=plugins, store=DiskStore(tmp_path))
    assert len(FITS) == 3
    FITS.clear()
    # another cell (another list length, another seed of nothing the model reads): the same fits, read back;
    # a cell given --shadow-param epochs=6 is the length-6 shadow model of the first
    again = run_attack(config(small_dataset, shadow_lengths=[6, 3], top_k=12), plugins=plugins,
                       store=DiskStore(tmp_path))
    run_attack(config(small_dataset, shadow_params={"epochs": 6}), plugins=plugins, store=DiskStore(tmp_path))
    assert FITS == []
    assert again.recommenders["shadow"]["lengths"]["epochs"] == [6, 3]
    # the same seed, the same result; the option is in the attack's key (a one-shadow cell is another attack)
    same = run_attack(config(small_dataset, shadow_lengths=[3, 6]), plugins=plugins, store=DiskStore(tmp_path))
    assert same.metrics == first.metrics
    plain = Cell(config(small_dataset), plugins)
    assert plain.key("attack") != Cell(config(small_dataset, shadow_lengths=[3, 6]), plugins).key("attack")


def test_result_json_records_the_lengths(small_dataset, tmp_path):
    from miars_core import api
    from miars_core.engine.schema import validate

    config_ = api.attack_config(dataset=str(small_dataset), target="lfm", shadow_lengths="2,4")
    assert config_.shadow_lengths == [2, 4]  # the flag's text, parsed
    result = run_attack(config(small_dataset, shadow_lengths=[2, 4]), plugins=_plugins(), store=DiskStore(tmp_path))
    api.write_attack(result, str(tmp_path / "out"), None)
    data = json.loads((tmp_path / "out" / "result.json").read_text())
    assert data["config"]["shadow_lengths"] == [2, 4]
    assert data["recommenders"]["shadow"]["lengths"]["epochs"] == [2, 4]
    validate(data)
    plain = run_attack(config(small_dataset), plugins=_plugins(), store=DiskStore(tmp_path)).to_json()
    assert plain["config"]["shadow_lengths"] is None and "lengths" not in plain["recommenders"]["shadow"]
    validate(plain)


@pytest.mark.parametrize("given, says", [
    ("", "--shadow-lengths [] is empty"),
    ("0,4", "has element 0 = 0, not a length >= 1 epoch"),
    ("-3", "has element 0 = -3, not a length >= 1 epoch"),
    ("4,8,4", "repeats 4"),
    ("4,x", "has element 1 = 'x', not an integer"),
    ("often", "is not 'auto' nor a list"),
])
def test_bad_lengths_are_refused_in_one_line(given, says):
    value = parse_shadow_lengths(given) if given != "often" else "often"
    with pytest.raises(MiarsError) as info:
        AttackConfig(target="lfm", shadow_lengths=value).validate()
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("shadow, attack, says", [
    ("item", "mlp", "'item' has no epochs parameter"),
    ("pop", "mlp", "'pop' has no epochs parameter"),
    ("lfm", "query-recall", "attack 'query-recall' has threat 'queries'"),
])
def test_a_shadow_without_epochs_or_an_attack_without_features_is_refused_before_work(small_dataset, shadow, attack,
                                                                                        says):
    with pytest.raises(MiarsError) as info:
        Cell(AttackConfig(dataset=str(small_dataset), target="lfm", shadow=shadow, attack=attack,
                          shadow_lengths=[2, 4]), get_plugins())
    assert says in str(info.value) and "\n" not in str(info.value)


def test_the_command_line_and_the_grid_refuse_bad_lengths_with_exit_2(small_dataset, tmp_path):
    from typer.testing import CliRunner

    from miars_core.cli import app

    runner = CliRunner()
    for args in (["attack", "--dataset", str(small_dataset), "--target", "item", "--shadow-lengths", "4,8"],
                 ["attack", "--dataset", str(small_dataset), "--target", "lfm", "--shadow-lengths", "4,4"],
                 ["grid", "--dataset", str(small_dataset), "--target", "item", "--shadow-lengths", "auto",
                  "--out", str(tmp_path / "g")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.startswith("miars: error:")]
        assert len(lines) == 1 and "--shadow-lengths" in lines[0], res.output
    assert not (tmp_path / "g").exists()


def test_a_grid_file_carries_the_lengths_to_every_cell(tmp_path):
    from miars_core.engine.grid import GridSpec, load_toml

    f = tmp_path / "grid.toml"
    f.write_text('target = ["lfm", "ncf"]\nshadow_lengths = [4, 8]\n')
    spec = GridSpec(**load_toml(f))
    assert [c.shadow_lengths for c in spec.configs()] == [[4, 8], [4, 8]]
    f.write_text('target = "lfm"\nshadow_lengths = [4, 0]\n')
    with pytest.raises(MiarsError, match="shadow_lengths"):
        load_toml(f)


def test_tasks_of_a_length_cell_name_their_length(small_dataset):
    cell = Cell(config(small_dataset, shadow_lengths=[3, 6]), _plugins())
    tasks = cell.tasks()
    assert "serve:shadow@3" in tasks and "serve:shadow" not in tasks and "serve:target" in tasks
    assert cell.walker.key(Node("model", "shadow", False, 3)) == Cell(
        config(small_dataset, shadow_params={"epochs": 3}), _plugins()).key("model", "shadow")


@pytest.mark.parametrize("defense, fits", [("popularity-randomization", 3), ("subsample", 6)])
def test_both_attackers_of_a_defended_cell_train_on_every_length(small_dataset, tmp_path, defense, fits):
    """A lists defense reuses the undefended fits (2 shadow lengths + the target); a data defense fits each again."""
    FITS.clear()
    result = run_attack(config(small_dataset, shadow_lengths=[2, 5], defense=defense), plugins=_plugins(),
                        store=DiskStore(tmp_path))
    assert len(FITS) == fits
    assert set(result.attackers) == {"defense_aware", "defense_unaware"}
    assert result.recommenders["shadow"]["lengths"]["epochs"] == [2, 5]
