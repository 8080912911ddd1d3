"""Device support (issue 15): ``--device auto|cpu|cuda|cuda:N`` for every torch stage.

The device plumbing is tested on the CPU: names and errors, the context the engine sets around
each stage, what components receive and what result.json records, that the device is in no
stage key nor cell id, and that the CPU path gives the same numbers whichever way it is asked
for. The GPU branch of the plumbing runs with ``torch.cuda`` mocked (nothing touches a GPU);
the tests that need a real GPU are skipped without one.
"""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.engine.grid import GridSpec, cell_id, load_toml
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.engine.stages import Cell
from miars_core.engine.store import DiskStore
from miars_core.kit import checks, torch_utils
from miars_core.kit.torch_utils import (Device, check_device, current_device, device_problem, resolve_device,
                                        use_device)

from test_cli import assert_cli_error, invoke_attack, invoke_miars

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a usable CUDA GPU")

FAST = dict(top_k=10, min_interactions=5, featurizer_params={"dim": 16}, attack_params={"epochs": 20})


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch sees one GPU, ``Fake GPU``; selecting it does nothing (no tensor may go there)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch_utils, "_warm_cuda", lambda device: None)  # a GPU's first use: nothing to do here
    monkeypatch.setattr(torch_utils, "_WARM", {})


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


# -- names, resolution, errors -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:15"])
def test_device_names_allowed(name):
    assert device_problem(name) is None
    assert Device().problem(name) is None


@pytest.mark.parametrize("name", ["tpu", "CUDA", "gpu", "cuda:", "cuda:-1", "cuda:01", "cuda:x", " cpu", "", 0, None])
def test_other_device_names_are_refused_naming_the_allowed_ones(name):
    assert device_problem(name) is not None
    with pytest.raises(MiarsError, match=r"--device .* it must be auto, cpu, cuda or cuda:N"):
        check_device(name)


def test_auto_is_the_gpu_when_torch_sees_one_else_the_cpu(monkeypatch, fake_gpu):
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) == "cpu"


def test_cuda_without_a_usable_gpu_is_one_line_naming_the_flag_and_the_way_out(no_gpu):
    with pytest.raises(MiarsError, match=r"^--device cuda: no usable GPU here .*use --device cpu, or --device auto"):
        check_device("cuda")
    check_device("auto")  # fine: the CPU then
    check_device("cpu")


def test_a_gpu_index_past_the_last_gpu_is_refused(fake_gpu):
    check_device("cuda:0")
    with pytest.raises(MiarsError, match=r"--device cuda:1: this machine has 1 usable GPU \(cuda:0\)"):
        check_device("cuda:1")


def test_attack_config_validates_the_device_before_any_work(no_gpu):
    with pytest.raises(MiarsError, match=r"^--device 'tpu' is not a device; it must be auto, cpu, cuda or cuda:N"):
        AttackConfig(device="tpu").validate()
    with pytest.raises(MiarsError, match="no usable GPU"):
        AttackConfig(device="cuda").validate()
    assert AttackConfig().device == "auto"
    AttackConfig(device="cpu").validate()


# -- the context the engine sets -----------------------------------------------------------------------
def test_current_device_is_the_cpu_outside_the_engine_and_the_asked_one_inside():
    assert current_device() == "cpu"
    with use_device("cpu") as use:
        assert use.used is None  # resolved only when something asks
        assert current_device() == "cpu"
        assert use.record() == {"device": "cpu"}
    assert current_device() == "cpu"


def test_auto_is_resolved_lazily_so_cached_stages_never_ask_torch(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: asked.append(1) or False)
    with use_device("auto") as use:
        assert asked == [] and use.record() == {}
        assert current_device() == "cpu"
        assert current_device() == "cpu"
    assert asked == [1]


def test_use_device_on_a_gpu_picks_deterministic_kernels_and_restores_the_settings(fake_gpu):
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    with use_device("cuda") as use:
        assert current_device() == "cuda:0"
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert use.record() == {"device": "cuda:0", "device_name": "Fake GPU"}
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    assert current_device() == "cpu"


def test_a_stage_using_a_model_already_on_a_gpu_records_it_and_runs_deterministic(fake_gpu):
    """A serve stage handed a model fitted on a GPU by the model stage never asks current_device(); device_of()
    (where scoring and fold-in start) tells the stage where its work runs."""
    from miars_core.kit.torch_utils import device_of

    on_gpu = types.SimpleNamespace(device=torch.device("cuda", 0))  # a model's .device; no tensor goes there
    with use_device("auto") as use:
        assert use.record() == {}
        assert device_of(on_gpu) == torch.device("cuda", 0)
        assert torch.are_deterministic_algorithms_enabled()
        assert use.record() == {"device": "cuda:0", "device_name": "Fake GPU"}
    assert not torch.are_deterministic_algorithms_enabled()
    with use_device("auto") as use:  # e.g. item (ItemKNN, on the CPU) in a GPU run
        assert device_of(torch.zeros(1)) == torch.device("cpu")
        assert use.record() == {"device": "cpu"} and not torch.are_deterministic_algorithms_enabled()
    assert device_of(on_gpu) == torch.device("cuda", 0)  # outside a stage: nothing to tell


def test_a_gpus_first_use_is_warm_up_not_the_time_of_the_stage_that_paid_it(fake_gpu, monkeypatch):
    import time

    from miars_core.engine import warmup
    from miars_core.engine.graph import Clock

    monkeypatch.setattr(warmup, "_done", True)  # the process's own warm-up: paid already
    monkeypatch.setattr(torch_utils, "_warm_cuda", lambda device: time.sleep(0.6))
    clock = Clock()

    def stage(inner=None):
        with use_device("cuda"):
            if inner:
                clock.run(inner)
            current_device()  # the first use of the GPU in this process: 0.6 s of warm-up

    _, seconds, warm = clock.run(stage)
    assert seconds < 0.5 and warm >= 0.6
    assert clock.run(stage)[2] == 0  # paid once per process and GPU
    monkeypatch.setattr(torch_utils, "_WARM", {})
    results = []
    _, outer_seconds, outer_warm = clock.run(lambda: stage(lambda: results.append(clock.run(stage))))
    (_, inner_seconds, inner_warm), = results
    assert inner_warm >= 0.6 and inner_seconds < 0.5  # the inner stage paid it
    assert outer_warm == 0 and outer_seconds < 0.5  # and the stage it ran inside counts neither


def test_use_device_refuses_a_bad_name_before_its_body():
    ran = []
    with pytest.raises(MiarsError, match="--device 'tpu'"):
        with use_device("tpu"):
            ran.append(1)
    assert ran == []


# -- what components receive, what result.json records -----------------------------------------------
class _Recording(Component):
    """A recommender that records the device the engine offered to fit and to recommend."""

    seen: list = []

    def __init__(self):
        pass

    def fit(self, train, seed=0):
        from miars_core.kit.torch_utils import current_device

        _Recording.seen.append(("fit", current_device()))
        self.pop_, self.train_ = train.item_popularity(), train.matrix
        self.fit_info_ = {"epochs_run": 0}
        return self

    def recommend(self, k):
        from miars_core.kit.torch_utils import current_device
        from miars_core.science.ranking import top_k_popular

        _Recording.seen.append(("recommend", current_device()))
        return top_k_popular(self.pop_, self.train_, k)


def _recording_plugins():
    from miars_core.contracts.hookspecs import hookimpl

    module = types.ModuleType("test_device_recording")

    @hookimpl
    def register_recommenders(register):
        register("recording", _Recording)

    module.register_recommenders = register_recommenders
    return get_plugins(extra=[module])


def _config(data, **kw) -> AttackConfig:
    return AttackConfig(**{"dataset": str(data), "target": "recording", "shadow": "recording", **FAST, **kw})


def test_components_receive_the_run_device_in_fit_and_recommend_and_result_json_records_it(small_dataset):
    _Recording.seen = []
    result = run_attack(_config(small_dataset, device="cpu"), plugins=_recording_plugins())
    assert set(_Recording.seen) == {("fit", "cpu"), ("recommend", "cpu")} and len(_Recording.seen) == 4
    out = result.to_json()
    assert out["config"]["device"] == "cpu"
    device = out["versions"]["device"]
    assert device["asked"] == "cpu"
    # the stages whose code asked for a device: both fits and the MLP attack (the featurizer is numpy only)
    assert device["stages"] == {"shadow_recommender": "cpu", "target_recommender": "cpu", "attack": "cpu"}
    assert "gpus" not in device
    json.dumps(out, allow_nan=False)


def test_the_engine_hands_a_gpu_to_components_when_one_is_asked_for(small_dataset, fake_gpu):
    """The whole GPU branch of the plumbing, on the CPU: torch.cuda says there is a GPU, the recorder takes no tensor there."""
    _Recording.seen = []
    result = run_attack(_config(small_dataset, device="cuda", attack="overlap", attack_params={}), plugins=_recording_plugins())
    assert set(_Recording.seen) == {("fit", "cuda:0"), ("recommend", "cuda:0")}
    device = result.versions["device"]
    assert device == {"asked": "cuda", "stages": {"shadow_recommender": "cuda:0", "target_recommender": "cuda:0"},
                      "gpus": {"cuda:0": "Fake GPU"}}
    assert not torch.are_deterministic_algorithms_enabled()  # restored after each stage


class _Stored(Component):
    """A recommender with the state contract that records the device offered to fit, restore and serve (co-counts)."""

    seen: list = []

    def __init__(self):
        pass

    def _saw(self, what):
        from miars_core.kit.torch_utils import current_device

        _Stored.seen.append((what, current_device()))

    def fit(self, train, seed=0):
        import scipy.sparse as sp

        self._saw("fit")
        x = sp.csr_matrix(train.matrix, dtype=np.float32)
        self.w_, self.train_, self.fit_info_ = sp.csr_matrix(x.T @ x), x, {"epochs_run": 0}
        return self

    def recommend(self, k):
        from miars_core.science.ranking import top_k_excluding

        self._saw("recommend")
        return top_k_excluding(lambda rows: np.asarray((self.train_[rows] @ self.w_).todense()), self.train_, k)

    def recommend_for(self, histories, k, seed=0, **fit):
        import scipy.sparse as sp

        from miars_core.science.ranking import top_k_excluding

        self._saw("recommend_for")
        h = sp.csr_matrix(histories, dtype=np.float32)
        return top_k_excluding(lambda rows: np.asarray((h[rows] @ self.w_).todense()), h, k)

    def get_state(self):
        from miars_core.contracts.state import csr_arrays

        return {**csr_arrays("w", self.w_), **csr_arrays("train", self.train_)}, {"shape": list(self.train_.shape)}

    def set_state(self, arrays, record):
        from miars_core.contracts.state import csr_from_arrays

        self._saw("set_state")
        n_users, n_items = record["shape"]
        self.w_ = csr_from_arrays(arrays, "w", (n_items, n_items))
        self.train_ = csr_from_arrays(arrays, "train", (n_users, n_items))
        self.fit_info_ = {"epochs_run": 0}
        return self


def _stored_plugins():
    from miars_core.contracts.hookspecs import hookimpl

    module = types.ModuleType("test_device_stored")

    @hookimpl
    def register_recommenders(register):
        register("stored", _Stored)

    module.register_recommenders = register_recommenders
    return get_plugins(extra=[module])


def test_stored_models_and_reference_models_are_fitted_and_restored_on_the_run_device(small_dataset, tmp_path, fake_gpu):
    """The declared graph's walker computes every stage (reference models too) and decodes every stored model in
    the run's device context; torch.cuda is mocked (the recorder puts nothing on a GPU)."""
    plugins = _stored_plugins()
    cfg = dict(dataset=str(small_dataset), target="stored", top_k=10, service="foldin", attack="query-recall",
               attack_params={"queries": 2})
    _Stored.seen = []
    first = run_attack(AttackConfig(**cfg, device="cuda"), plugins=plugins, store=DiskStore(tmp_path))
    assert [w for w, _ in _Stored.seen].count("fit") == 5  # shadow, target, 3 reference models
    assert {d for _, d in _Stored.seen} == {"cuda:0"}
    stages = first.versions["device"]["stages"]
    assert stages["reference_models"] == stages["target_recommender"] == stages["shadow_recommender"] == "cuda:0"
    assert not torch.are_deterministic_algorithms_enabled()
    for device, expected, both, k in (("cuda", "cuda:0", "cuda:0", 12), ("cpu", "cpu", "cpu,cuda:0", 14)):
        _Stored.seen = []  # another list length: the stored models are read back (restored), never fitted again
        again = run_attack(AttackConfig(**{**cfg, "top_k": k}, device=device), plugins=plugins, store=DiskStore(tmp_path))
        assert "fit" not in [w for w, _ in _Stored.seen]
        assert ("set_state", expected) in _Stored.seen and {d for _, d in _Stored.seen} == {expected}
        # the reference models were stored by the first run: read back, they report where they were computed
        assert again.versions["device"]["stages"]["reference_models"] == "cuda:0"
        # the model stage (stored by the first run) and the lists computed now count under one timing name
        assert again.versions["device"]["stages"]["target_recommender"] == both


def test_a_cell_read_back_from_the_cache_reports_where_its_stages_ran(small_dataset, tmp_path):
    store = DiskStore(tmp_path)
    first = run_attack(_config(small_dataset, device="cpu"), plugins=_recording_plugins(), store=store)
    _Recording.seen = []
    again = run_attack(_config(small_dataset, device="auto"), plugins=_recording_plugins(), store=DiskStore(tmp_path))
    assert _Recording.seen == []  # every stage read back: the device key does not differ
    assert again.versions["device"]["stages"] == first.versions["device"]["stages"]
    assert again.versions["device"]["asked"] == "auto"
    assert np.array_equal(again.artifacts["scores"], first.artifacts["scores"])


def test_the_device_is_in_no_stage_key_nor_cell_id(small_dataset):
    plugins = _recording_plugins()
    cells = [Cell(_config(small_dataset, device=d), plugins) for d in ("auto", "cpu")]
    for stage, part in (("split", "target"), ("model", "target"), ("serve", "target"), ("serve", "shadow"),
                        ("vectors", "target"), ("attack", "")):
        assert cells[0].key(stage, part) == cells[1].key(stage, part)
    assert cell_id(_config(small_dataset, device="cpu")) == cell_id(_config(small_dataset))
    spec = GridSpec(dataset=[str(small_dataset)], target=["pop"], device="cpu")
    assert [c.device for c in spec.configs()] == ["cpu"]
    assert [cell_id(c) for c in spec.configs()] == [cell_id(c) for c in GridSpec(dataset=[str(small_dataset)],
                                                                                   target=["pop"]).configs()]


# -- the CPU path gives the same numbers however it is asked for -------------------------------------
def test_cpu_explicit_and_auto_give_byte_identical_results_on_this_machine(small_dataset, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what auto means on a CPU-only machine
    runs = [run_attack(AttackConfig(dataset=str(small_dataset), target="lfm", shadow="lfm",
                                    target_params={"epochs": 2}, shadow_params={"epochs": 2}, device=d, **FAST))
            for d in ("auto", "cpu")]
    assert runs[0].artifacts["scores"].tobytes() == runs[1].artifacts["scores"].tobytes()
    assert np.array_equal(runs[0].artifacts["target_lists"], runs[1].artifacts["target_lists"])
    assert runs[0].versions["device"]["stages"]["target_recommender"] == "cpu"


@pytest.mark.parametrize("name, params", [("lfm", {"epochs": 2}), ("ncf", {"epochs": 1})])
def test_lean_fits_on_the_cpu_device_equal_fits_outside_the_engine(name, params):
    small = checks.make_interactions(n_users=60, n_items=70, seed=3)
    factory = get_plugins().registry("recommender").get(name).factory
    plain = factory(**params).fit(small, seed=1)
    with use_device("cpu"):
        inside = factory(**params).fit(small, seed=1)
    assert str(inside.model_.model.device) == "cpu"
    rows = np.arange(small.n_users)
    assert torch.equal(plain.model_.score_rows(rows), inside.model_.score_rows(rows))
    assert np.array_equal(plain.recommend(5), inside.recommend(5))


def test_recbole_config_takes_miars_device_and_leaves_the_environment_alone(monkeypatch):
    from miars_recbole.training import apply_compat, recbole_config

    apply_compat()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    config = recbole_config("BPR", {}, seed=0)
    assert config["device"] == torch.device("cpu")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # RecBole's Config wrote gpu_id ('0') there
    with use_device("cpu"):
        assert recbole_config("NeuMF", {}, seed=0)["device"] == torch.device("cpu")


def test_recboles_own_trainer_runs_on_the_stage_device(small_dataset):
    from miars_recbole.models import RecBoleModel

    small = checks.make_interactions(n_users=60, n_items=70, seed=3)
    with use_device("cpu"):
        fitted = RecBoleModel(model="LightGCN", epochs=1).fit(small, seed=0)
    assert str(fitted.model_.model.device) == "cpu"
    assert fitted.recommend(5).shape == (small.n_users, 5)


@pytest.mark.parametrize("key", ["device", "gpu_id", "use_gpu"])
def test_recbole_device_settings_are_refused_pointing_at_the_flag(key):
    with pytest.raises(MiarsError, match=f"{key}.*--device"):
        get_plugins().create("recommender", "recbole:LightGCN", config={key: "cuda"})


def test_the_mlp_attack_on_the_cpu_device_equals_the_one_outside_the_engine():
    from miars_attacks.mlp import MLPAttack

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 6)).astype(np.float32), np.repeat([0, 1], 40)
    plain = MLPAttack(epochs=30, batch_size=16, optimizer="sgd").fit(x, y, seed=2).decision_function(x)
    with use_device("cpu"):
        inside = MLPAttack(epochs=30, batch_size=16, optimizer="sgd").fit(x, y, seed=2).decision_function(x)
    assert plain.tobytes() == inside.tobytes()


# -- the command line ------------------------------------------------------------------------------------
def test_miars_attack_refuses_an_unknown_device_before_any_work(tmp_path):
    out = tmp_path / "out"
    result = invoke_attack(["--device", "tpu", "--out", out])
    assert_cli_error(result, "--device 'tpu' is not a device", "auto, cpu, cuda or cuda:N")
    assert not out.exists()


def test_miars_attack_refuses_cuda_without_a_usable_gpu(tmp_path, no_gpu):
    out = tmp_path / "out"
    result = invoke_attack(["--device", "cuda", "--out", out])
    assert_cli_error(result, "--device cuda: no usable GPU", "--device cpu")
    assert not out.exists()


@pytest.mark.parametrize("command", ["grid", "bench-defenses"])
def test_grid_commands_refuse_a_bad_device_before_any_folder(tmp_path, command, no_gpu):
    out = tmp_path / "run"
    assert_cli_error(invoke_miars([command, "--device", "cuda:x", "--out", out]), "--device 'cuda:x'",
                     "auto, cpu, cuda or cuda:N")
    assert_cli_error(invoke_miars([command, "--device", "cuda", "--out", out]), "--device cuda: no usable GPU")
    assert not out.exists()


def test_a_grid_toml_takes_the_device_and_checks_it(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('target = ["pop"]\ndevice = "cpu"\n')
    assert GridSpec(**load_toml(path)).check().device == "cpu"
    path.write_text('device = "tpu"\n')
    with pytest.raises(MiarsError, match=r"device = 'tpu' is not a device; it must be auto, cpu, cuda or cuda:N"):
        load_toml(path)


def test_audit_dp_refuses_cuda_without_a_usable_gpu(tmp_path, no_gpu):
    out = tmp_path / "audit"
    result = invoke_miars(["audit-dp", "--target", "lfm", "--defense", "dp-sgd", "--device", "cuda", "--out", out])
    assert_cli_error(result, "--device cuda: no usable GPU")
    assert not out.exists()


def test_device_help_names_the_values():
    for args in (["attack", "--help"], ["grid", "--help"], ["bench-defenses", "--help"], ["audit-dp", "--help"]):
        text = " ".join(invoke_miars(args).output.split())
        assert "--device" in text and "auto" in text and "cuda:N" in text


# -- on a real GPU --------------------------------------------------------------------------------------
@needs_gpu
def test_on_a_gpu_the_same_seed_gives_the_same_result_and_close_to_the_cpu(small_dataset):
    def run(device):
        return run_attack(AttackConfig(dataset=str(small_dataset), target="lfm", shadow="lfm", device=device,
                                       target_params={"epochs": 3}, shadow_params={"epochs": 3}, **FAST))

    gpu, again, cpu = run("cuda"), run("cuda"), run("cpu")
    assert gpu.versions["device"]["stages"]["target_recommender"].startswith("cuda")
    assert gpu.artifacts["scores"].tobytes() == again.artifacts["scores"].tobytes()
    assert abs(gpu.metrics["roc_auc"] - cpu.metrics["roc_auc"]) < 0.05
    agree = (gpu.artifacts["target_lists"] == cpu.artifacts["target_lists"]).mean()
    assert agree > 0.5  # float differences reorder some near-ties


@needs_gpu
@pytest.mark.parametrize("name, params", [("lfm", {"epochs": 2}), ("ncf", {"epochs": 1})])
def test_on_a_gpu_fits_fold_in_and_scores_stay_on_the_gpu(name, params):
    small = checks.make_interactions(n_users=60, n_items=70, seed=3)
    factory = get_plugins().registry("recommender").get(name).factory
    with use_device("cuda"):
        model = factory(**params).fit(small, seed=1)
        assert model.model_.model.device.type == "cuda"
        assert model.model_.score_rows(np.arange(5)).device.type == "cuda"
        lists = model.recommend_for(small.matrix[:10], 5, seed=0)
    assert lists.shape == (10, 5)
