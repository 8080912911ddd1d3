"""The experiment engine: content-addressed stage store, cached cells, grids, resume, executors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from miars_core.cli import app
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.engine.grid import GridSpec, cell_id, load_toml, parse_scoped_params, split_list
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.engine.run import run_grid, write_cell
from miars_core.engine.stages import Cell
from miars_core.engine.store import DiskStore, MemoryStore

from conftest import write_clustered_interactions

FAST = {"attack_params": {"epochs": 20}}  # a small attack budget: these tests check the engine, not the attack


def config(dataset, **kw) -> AttackConfig:
    base = dict(dataset=str(dataset), target="pop", shadow="pop", top_k=10, **FAST)
    base.update(kw)
    return AttackConfig(**base)


# -- the store ---------------------------------------------------------------------------------------
def test_disk_store_round_trips_arrays_and_records(tmp_path):
    store = DiskStore(tmp_path)
    arrays = {"a": np.arange(5, dtype=np.int64), "ids": np.array(["x", "y"])}
    store.put("stage", "ab" * 32, arrays, {"seconds": 1.5, "report": {"k": [1, 2]}})
    fresh = DiskStore(tmp_path)  # another process: nothing in memory
    out = fresh.get("stage", "ab" * 32)
    assert out.meta == {"seconds": 1.5, "report": {"k": [1, 2]}}
    np.testing.assert_array_equal(out.arrays["a"], arrays["a"])
    np.testing.assert_array_equal(out.arrays["ids"], arrays["ids"])
    assert fresh.meta("stage", "ab" * 32)["seconds"] == 1.5
    assert fresh.get("stage", "cd" * 32) is None and fresh.meta("stage", "cd" * 32) is None
    # nothing but .npy and meta.json: no pickle anywhere
    files = {p.name for p in (tmp_path).rglob("*") if p.is_file()}
    assert files == {"a.npy", "ids.npy", "meta.json"}


def test_disk_store_refuses_object_arrays_and_leaves_nothing_half_written(tmp_path):
    store = DiskStore(tmp_path)
    with pytest.raises(TypeError):
        store.put("stage", "ef" * 32, {"ok": np.zeros(3), "bad": np.array([{}, 1], dtype=object)}, {})
    assert store.get("stage", "ef" * 32) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_second_writer_of_the_same_output_is_harmless(tmp_path):
    a, b = DiskStore(tmp_path), DiskStore(tmp_path)
    a.put("s", "12" * 32, {"x": np.ones(2)}, {"v": 1})
    b.put("s", "12" * 32, {"x": np.ones(2)}, {"v": 1})  # e.g. two workers computed the same stage
    assert DiskStore(tmp_path).get("s", "12" * 32).meta == {"v": 1}
    assert not list(tmp_path.rglob("*.tmp"))


# -- cells --------------------------------------------------------------------------------------------
def test_a_cached_cell_recomputes_nothing_and_gives_identical_results(small_dataset, tmp_path):
    cfg = config(small_dataset, target="item", shadow="item", defense="popularity-randomization")
    first = run_attack(cfg, store=DiskStore(tmp_path))
    assert set(first.cache["computed"]) >= {"load", "split", "serve:shadow", "serve:target", "defend", "attack"}
    again = run_attack(cfg, store=DiskStore(tmp_path))
    assert again.cache["computed"] == {}
    assert again.metrics == first.metrics and again.attackers == first.attackers
    assert again.timings == first.timings  # the seconds each stage took when it was computed
    np.testing.assert_array_equal(again.artifacts["scores"], first.artifacts["scores"])
    # memory-only and disk-backed runs agree
    assert run_attack(cfg, store=MemoryStore()).metrics == first.metrics


def test_keys_cover_exactly_what_a_stage_depends_on(small_dataset):
    plugins = get_plugins()
    base = Cell(config(small_dataset, target="item", shadow="item"), plugins)
    other_rec = Cell(config(small_dataset, target="item", shadow="item", target_params={"k": 10}), plugins)
    other_attack = Cell(config(small_dataset, target="item", shadow="item", attack_params={"epochs": 21}), plugins)
    other_seed = Cell(config(small_dataset, target="item", shadow="item", seed=1), plugins)
    assert other_rec.key("split", "target") == base.key("split", "target")
    assert other_rec.key("serve", "shadow") == base.key("serve", "shadow")
    assert other_rec.key("serve", "target") != base.key("serve", "target")
    assert other_rec.key("attack") != base.key("attack")
    assert other_attack.key("serve", "target") == base.key("serve", "target")
    assert other_attack.key("features", "target") == base.key("features", "target")
    assert other_attack.key("attack") != base.key("attack")
    assert all(other_seed.key(s, "target") != base.key(s, "target") for s in ("split", "serve", "vectors"))
    assert other_seed.key("load", "target") == base.key("load", "target")
    # explicit defaults are the same recommender as implicit ones
    explicit = Cell(config(small_dataset, target="item", shadow="item", target_params={"k": 100}), plugins)
    assert explicit.key("serve", "target") == base.key("serve", "target")


def test_the_dataset_key_follows_the_file_content(tmp_path):
    a = write_clustered_interactions(tmp_path / "a.tsv", seed=1)
    before = Cell(config(a), get_plugins()).key("load", "target")
    write_clustered_interactions(a, seed=2)
    os.utime(a, ns=(1, 1))
    assert Cell(config(a), get_plugins()).key("load", "target") != before


def test_a_bad_name_fails_before_any_stage_runs(small_dataset, tmp_path):
    store = DiskStore(tmp_path)
    with pytest.raises(MiarsError, match="unknown recommender"):
        run_attack(config(small_dataset, target="nosuch"), store=store)
    assert not list(tmp_path.rglob("meta.json"))


# -- grid specs ---------------------------------------------------------------------------------------
def test_grid_crosses_its_lists_and_pairs_each_target_with_itself_by_default():
    spec = GridSpec(target=["item", "lfm"], seed=[0, 1, 2])
    cells = spec.configs()
    assert [(c.target, c.shadow, c.seed) for c in cells] == [(t, t, s) for t in ("item", "lfm") for s in (0, 1, 2)]
    full = GridSpec(target=["item", "lfm"], shadow=["item", "lfm", "ncf"], seed=[0, 1], defense=[None, "popularity-randomization"],
                    defense_params={"popularity-randomization": {"ratio": [0.05, 0.1]}})
    cells = full.configs()
    assert len(cells) == 2 * 3 * 2 * (1 + 2)
    assert {c.defense_params.get("ratio") for c in cells if c.defense} == {0.05, 0.1}
    assert len({cell_id(c) for c in cells}) == len(cells)


def test_cell_ids_are_stable_readable_and_change_with_any_setting():
    a = AttackConfig(dataset="../data/ml-1m-pairs.tsv.gz", target="item", shadow="lfm", seed=2)
    assert cell_id(a) == cell_id(AttackConfig(dataset="../data/ml-1m-pairs.tsv.gz", target="item", shadow="lfm", seed=2))
    assert cell_id(a).startswith("ml-1m-pairs_item_lfm_none_k100_s2_")
    assert cell_id(a) != cell_id(AttackConfig(dataset="../data/ml-1m-pairs.tsv.gz", target="item", shadow="lfm", seed=2,
                                              attack_params={"epochs": 5}))


def test_parameter_flags_scope_to_a_component_and_sweep_lists():
    assert split_list('0.05,0.1,[1,2],"a,b"') == ["0.05", "0.1", "[1,2]", '"a,b"']
    assert parse_scoped_params(["lfm.epochs=10", "k=5"], "--target-param") == {"lfm": {"epochs": 10}, "*": {"k": 5}}
    assert parse_scoped_params(["ratio=0.05,0.1"], "--defense-param", sweep=True) == {"*": {"ratio": [0.05, 0.1]}}
    with pytest.raises(MiarsError, match="KEY=VALUE"):
        parse_scoped_params(["ratio"], "--defense-param", sweep=True)


def test_toml_grid_file(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('dataset = "ml-100k"\ntarget = ["item", "lfm"]\nseed = [0, 1]\ndefense = ["none", "popularity-randomization"]\n'
                    '[defense_params.popularity-randomization]\nratio = [0.05, 0.1]\n[target_params.lfm]\nepochs = 5\n')
    spec = GridSpec(**load_toml(path))
    cells = spec.configs()
    assert len(cells) == 2 * 2 * 3
    assert {c.target_params.get("epochs") for c in cells if c.target == "lfm"} == {5}
    assert all(c.target_params == {} for c in cells if c.target == "item")
    path.write_text('targets = ["item"]\n')
    with pytest.raises(MiarsError, match="unknown key.*targets"):
        load_toml(path)
    path.write_text('seed = ["zero"]\n')
    with pytest.raises(MiarsError, match="seed = .* not an integer"):
        load_toml(path)


# -- running grids ------------------------------------------------------------------------------------
def metrics_of(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text())["metrics"] for p in sorted((run_dir / "cells").glob("*/result.json"))}


def test_grid_trains_each_recommender_once_and_writes_every_cell(small_dataset, tmp_path):
    spec = GridSpec(dataset=[str(small_dataset)], target=["item", "pop"], shadow=["item", "pop"], top_k=[10], seed=[0],
                    attack_params={"*": {"epochs": 20}})
    events = []
    summary = run_grid(spec, tmp_path / "run", cache=tmp_path / "cache", progress=lambda *e: events.append(e))
    assert summary.ok and len(summary.cells) == 4
    serves = [e for e in events if e[0] == "done" and e[2]["what"].startswith("serve")]
    assert len(serves) == 4  # item and pop, on the shadow and on the target part: not one per cell (8)
    record = json.loads((tmp_path / "run" / "grid.json").read_text())
    assert record["status"] == "finished" and record["failed"] == [] and sorted(record["cells"]) == sorted(summary.cells)
    assert record["fit_seconds"] > 0
    for cid in summary.cells:
        result = json.loads((tmp_path / "run" / "cells" / cid / "result.json").read_text())
        assert result["cell"]["id"] == cid
        assert {"metrics", "timings", "config", "split", "recommenders", "components", "versions"} <= set(result)
        rows = (tmp_path / "run" / "cells" / cid / "scores.tsv").read_text().splitlines()
        assert rows[0] == "user_id\tis_member\tscore" and len(rows) - 1 == result["metrics"]["members"] + result["metrics"]["non_members"]
    # the same cell through miars-attack's code path gives the same metrics
    cfg = spec.configs()[0]
    assert run_attack(cfg).metrics == metrics_of(tmp_path / "run")[cell_id(cfg)]
    # run again: nothing is computed, results are identical
    events.clear()
    again = run_grid(spec, tmp_path / "run", cache=tmp_path / "cache", progress=lambda *e: events.append(e))
    assert again.stage_seconds == {} and metrics_of(tmp_path / "run") == metrics_of(tmp_path / "run")


def test_a_failing_cell_is_recorded_and_the_others_finish(small_dataset, tmp_path):
    # top-k 140 is impossible for users who know up to 60 of the 150 items: those cells fail in serve
    spec = GridSpec(dataset=[str(small_dataset)], target=["pop"], top_k=[10, 140], seed=[0], attack_params={"*": {"epochs": 20}})
    summary = run_grid(spec, tmp_path / "run", cache=tmp_path / "cache")
    assert len(summary.failed) == 1
    (bad,) = summary.failed
    error = json.loads((tmp_path / "run" / "cells" / bad / "error.json").read_text())
    assert "--top-k 140 is impossible" in error["error"] and error["cell"]["top_k"] == 140
    assert "\n" not in error["error"]
    good = [c for c in summary.cells if c != bad]
    assert (tmp_path / "run" / "cells" / good[0] / "result.json").is_file()


def test_a_run_folder_of_another_grid_is_refused(small_dataset, tmp_path):
    spec = GridSpec(dataset=[str(small_dataset)], target=["pop"], top_k=[10], attack_params={"*": {"epochs": 20}})
    run_grid(spec, tmp_path / "run", cache=tmp_path / "cache")
    other = GridSpec(dataset=[str(small_dataset)], target=["pop"], top_k=[10], seed=[5], attack_params={"*": {"epochs": 20}})
    with pytest.raises(MiarsError, match="holds a different grid"):
        run_grid(other, tmp_path / "run", cache=tmp_path / "cache")


def test_a_crash_while_replacing_a_cell_is_repaired_by_the_next_run(small_dataset, tmp_path, monkeypatch):
    spec = GridSpec(dataset=[str(small_dataset)], target=["pop"], top_k=[10], attack_params={"*": {"epochs": 20}})
    run_grid(spec, tmp_path / "run", cache=tmp_path / "cache")
    expected = metrics_of(tmp_path / "run")
    (cid,) = expected
    real_replace = os.replace
    calls = []

    def dies_after_the_first_file(src, dst):
        real_replace(src, dst)
        if Path(dst).parent.name == cid:
            calls.append(dst)
            raise KeyboardInterrupt  # killed after scores.tsv came in, before result.json

    monkeypatch.setattr(os, "replace", dies_after_the_first_file)
    with pytest.raises(KeyboardInterrupt):
        run_grid(spec, tmp_path / "run", cache=tmp_path / "cache")
    monkeypatch.setattr(os, "replace", real_replace)
    assert [Path(p).name for p in calls] == ["scores.tsv"]
    assert not (tmp_path / "run" / "cells" / cid / "result.json").exists()  # no result.json beside other scores
    assert json.loads((tmp_path / "run" / "grid.json").read_text())["status"] == "interrupted"
    run_grid(spec, tmp_path / "run", cache=tmp_path / "cache")
    assert metrics_of(tmp_path / "run") == expected
    assert not [p for p in (tmp_path / "run" / "cells").iterdir() if p.name.startswith(".")]


def test_dataset_transfer_cell_takes_the_shadow_part_from_another_dataset(small_dataset, tmp_path):
    other = write_clustered_interactions(tmp_path / "other.tsv", n_users=240, n_items=120, seed=7)
    cfg = config(small_dataset, target="item", shadow="item", shadow_dataset=str(other))
    cell = Cell(cfg, get_plugins())
    assert cell.key("split", "shadow") != cell.key("split", "target")
    assert cell.key("vectors", "shadow") != cell.key("vectors", "target")
    result = run_attack(cfg)
    assert result.split["shadow_dataset"]["users"] == 240
    assert result.split["dataset"]["users"] == 300
    assert 0.0 <= result.metrics["roc_auc"] <= 1.0


KILL_GRID = ["grid", "--target", "item,pop", "--shadow", "item,pop", "--seed", "0,1", "--top-k", "10",
             "--attack-param", "epochs=20", "--workers", "1", "--no-report", "-q"]


def _grid_cmd(dataset, out, cache):
    return [sys.executable, "-m", "miars_core", *KILL_GRID, "--dataset", str(dataset), "--out", str(out), "--cache", str(cache)]


def test_a_grid_killed_at_any_moment_resumes_to_the_same_results(small_dataset, tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    subprocess.run(_grid_cmd(small_dataset, tmp_path / "ref", tmp_path / "ref-cache"), check=True, env=env)
    full = time.perf_counter() - start
    reference = metrics_of(tmp_path / "ref")
    out, cache = tmp_path / "run", tmp_path / "cache"
    for fraction in (0.3, 0.6, 0.85):  # early (a fit), middle, late (writing cells)
        proc = subprocess.Popen(_grid_cmd(small_dataset, out, cache), env=env)
        time.sleep(full * fraction)
        proc.kill()  # SIGKILL: no clean-up code runs
        proc.wait()
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("meta.json")}
    assert before  # the killed runs had finished some stages
    subprocess.run(_grid_cmd(small_dataset, out, cache), check=True, env=env)
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("meta.json")}
    assert metrics_of(out) == reference
    assert all(after[p] == t for p, t in before.items())  # nothing finished was computed again
    assert len(list((cache / "v2" / "serve").rglob("meta.json"))) == 8  # 2 recommenders x 2 parts x 2 seeds


def test_cli_grid_end_to_end_and_exit_codes(small_dataset, tmp_path):
    runner = CliRunner()
    args = ["grid", "--dataset", str(small_dataset), "--target", "pop", "--top-k", "10,140", "--attack-param", "epochs=20",
            "--workers", "1", "--no-report", "-q", "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c")]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    assert "1 of 2 cells failed" in res.output
    res = runner.invoke(app, ["grid", "--dataset", str(small_dataset), "--target", "nosuch", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown recommender 'nosuch'" in res.output
    assert not (tmp_path / "x").exists()
    res = runner.invoke(app, ["grid", "--seed", "a,b", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "--seed 'a' is not an integer" in res.output


def test_dask_local_executor_gives_the_local_executors_metrics(small_dataset, tmp_path):
    pytest.importorskip("distributed")
    from miars_core.engine.executors import make_executor

    spec = GridSpec(dataset=[str(small_dataset)], target=["item", "pop"], shadow=["item", "pop"], top_k=[10], seed=[0],
                    attack_params={"*": {"epochs": 20}})
    run_grid(spec, tmp_path / "serial", cache=tmp_path / "c1", executor=make_executor(workers=1))
    run_grid(spec, tmp_path / "dask", cache=tmp_path / "c2", executor=make_executor(dask_local=2))
    assert metrics_of(tmp_path / "dask") == metrics_of(tmp_path / "serial")
    record = json.loads((tmp_path / "dask" / "grid.json").read_text())
    assert record["executor"]["executor"] == "dask"


# -- defenses at each point of action ---------------------------------------------------------------
class _HalfData:
    """Train on every other interaction of each member (a test data defense)."""

    acts_on = "data"

    def __init__(self):
        pass

    def get_params(self):
        return {}

    def apply_data(self, members, seed=0):
        import scipy.sparse as sp

        from miars_core.contracts.types import Interactions

        m = members.matrix.tocsr().copy()
        keep = np.ones(m.nnz, dtype=bool)
        keep[1::2] = False
        counts = np.diff(m.indptr)
        keep[m.indptr[:-1][counts > 0]] = True  # everyone keeps their first item
        coo = m.tocoo()
        sub = sp.csr_matrix((np.ones(keep.sum(), dtype=np.float32), (coo.row[keep], coo.col[keep])), shape=m.shape)
        return Interactions(sub, members.user_ids, members.item_ids)


class _PopularTraining:
    """Ignore the recommender and serve popular items (a test training defense)."""

    acts_on = "training"

    def __init__(self):
        pass

    def get_params(self):
        return {}

    def fit(self, recommender, members, seed=0):
        from miars_core.science.ranking import top_k_popular

        self.privacy_ = {"epsilon": 0.0, "delta": 0.0, "level": "user", "mechanism": "no model at all"}

        class Fitted:
            def recommend(self, k):
                return top_k_popular(members.item_popularity(), members.matrix, k)

        return Fitted()


def _defense_plugins():
    import types

    from miars_core.contracts.hookspecs import hookimpl

    module = types.ModuleType("test_defense_points")

    @hookimpl
    def register_defenses(register):
        register("half-data", _HalfData)
        register("popular-training", _PopularTraining)

    module.register_defenses = register_defenses
    return get_plugins(extra=[module])


def test_a_data_defense_retrains_on_its_data_and_never_serves_known_items(small_dataset):
    plugins = _defense_plugins()
    result = run_attack(config(small_dataset, target="item", shadow="item", defense="half-data"), plugins=plugins)
    rec = result.recommenders["target"]
    assert rec["trained_interactions"] < result.split["target"]["member_interactions"]
    assert "undefended" in rec
    lists = result.artifacts["target_lists"]
    target = result.artifacts["split"].target
    known = target.interactions.matrix
    rows = np.repeat(np.arange(len(lists)), lists.shape[1])
    assert not np.asarray(known[rows, lists.ravel()]).any()  # items left out of training are still never served
    assert {"defense_aware", "defense_unaware"} == set(result.attackers)


def test_a_training_defense_replaces_the_fit_and_reports_privacy(small_dataset):
    plugins = _defense_plugins()
    result = run_attack(config(small_dataset, target="item", shadow="item", defense="popular-training"), plugins=plugins)
    assert result.recommenders["target"]["privacy"]["mechanism"] == "no model at all"
    # members now get popular lists like non-members: the defense-aware attacker reads chance
    assert 0.3 <= result.attackers["defense_aware"]["roc_auc"] <= 0.7
    cell = Cell(config(small_dataset, target="item", shadow="item", defense="popular-training"), plugins)
    assert "serve-defended:target" in cell.task_keys()
    assert cell.lists_key("target", True) == cell.key("serve", "target", True) != cell.key("serve", "target")


def test_the_in_process_memo_of_a_disk_store_is_bounded(tmp_path):
    store = DiskStore(tmp_path, memo_bytes=3 * 8000)
    for i in range(6):
        store.put("s", f"{i:02d}" * 32, {"x": np.zeros(1000)}, {"i": i})  # 8,000 bytes each
    assert len(store._memo._items) == 3
    assert store.get("s", "00" * 32).meta == {"i": 0}  # evicted from memory, read back from disk
