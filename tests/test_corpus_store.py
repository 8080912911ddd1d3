"""The engine corpus of issue 14 (storage half): a stage cache that cannot lie, outputs that never
clobber, faults that stay local.

Every case asserts the exit code, that stderr holds exactly the expected one-line messages
(``miars: warning: ...`` for a broken stored output computed again, ``miars: error: ...`` for a
refusal), no traceback, and, where the run exits 0, metrics equal to a clean run's. One clean
grid per module fills a stage cache; each case works on a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from miars_core import cli
from miars_core.engine.store import array_checksum, record_checksum

RUNNER = CliRunner()
APP = cli.app
ATTACK_APP = cli._attack_app()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
FAST = ["--target", "pop", "--top-k", "10", "--min-interactions", "5", "--featurizer-param", "dim=8",
        "--attack-param", "epochs=20", "-q"]
GRID = ["grid", *FAST, "--workers", "1", "--no-report"]


# --------------------------------------------------------------------------- machinery


def invoke(app, args: list[str]):
    result = RUNNER.invoke(app, [str(a) for a in args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    return result


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_refused(result, *needles: str) -> str:
    assert result.exit_code == 2, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("miars: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def metrics_of(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text())["metrics"] for p in sorted((run_dir / "cells").glob("*/result.json"))]


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def stored(cache: Path, stage: str, name: str) -> Path:
    """One stored file of a stage (the first of its outputs)."""
    found = sorted((cache / "v2" / stage).glob(f"*/*/{name}"))
    assert found, f"no {stage}/{name} in the cache"
    return found[0]


def drop(cache: Path, *stages: str) -> None:
    """Forget every output of these stages (so the stages before them are read back)."""
    for stage in stages:
        shutil.rmtree(cache / "v2" / stage, ignore_errors=True)


def save_consistent(path: Path, arr: np.ndarray) -> None:
    """Replace an array and update its record so that the checksums match (only a stage's own check can tell)."""
    np.save(path, arr, allow_pickle=False)
    meta_path = path.parent / "meta.json"
    record = json.loads(meta_path.read_text())
    record["_arrays"][path.stem] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "bytes": path.stat().st_size,
                                    "sha256": array_checksum(arr)}
    record["_record"] = record_checksum(record)
    meta_path.write_text(json.dumps(record, sort_keys=True))


@pytest.fixture(scope="module")
def clean(small_dataset, tmp_path_factory):
    """One clean grid cell (pop / pop on the small dataset) and the cache it filled."""
    root = tmp_path_factory.mktemp("clean")
    result = invoke(APP, [*GRID, "--dataset", small_dataset, "--out", root / "run", "--cache", root / "cache"])
    assert result.exit_code == 0, result.stderr
    assert stderr_lines(result) == []
    return {"dataset": small_dataset, "cache": root / "cache", "metrics": metrics_of(root / "run"), "root": root}


@pytest.fixture
def box(clean, tmp_path):
    """A copy of the clean cache; ``run()`` runs the clean grid against it."""
    cache = tmp_path / "cache"
    shutil.copytree(clean["cache"], cache)

    def run(*extra: str, out: Path | None = None, app=APP, base=GRID):
        args = [*base, "--dataset", clean["dataset"], "--cache", cache, *extra]
        if "--out" not in extra:
            args += ["--out", out or tmp_path / "run"]
        return invoke(app, args)

    return {"cache": cache, "run": run, "tmp": tmp_path, "metrics": clean["metrics"], "dataset": clean["dataset"]}


# --------------------------------------------------------------------------- broken stored outputs


def _negate(p):
    np.save(p, -np.load(p))


def _reverse(p):
    np.save(p, np.load(p)[::-1].copy())


def _zero(p):
    np.save(p, np.zeros_like(np.load(p)))


def _flip(p):
    np.save(p, ~np.load(p))


def _truncate(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _as_float64(p):
    np.save(p, np.load(p).astype(np.float64))


def _wrong_shape(p):
    a = np.load(p)
    np.save(p, a.reshape(-1)[: a.size // 2].copy())


def _garbage_same_size(p):
    p.write_bytes(b"\x00" * p.stat().st_size)


def _delete(p):
    p.unlink()


def _write(text: str):
    return lambda p: p.write_text(text)


def _edit_record(p):
    record = json.loads(p.read_text())
    record["seconds"] = 123.0
    p.write_text(json.dumps(record))


def _old_format(p):
    record = json.loads(p.read_text())
    del record["_record"]
    record["_arrays"] = sorted(record["_arrays"])
    p.write_text(json.dumps(record))


def _folder_is_a_file(p):
    folder = p.parent
    shutil.rmtree(folder)
    folder.write_text("not a folder")


def _out_of_range(value_of_n):
    def corrupt(p):
        a = np.load(p)
        a.reshape(-1)[0] = value_of_n(a)
        save_consistent(p, a)
    return corrupt


def _lists_shape(p):
    save_consistent(p, np.load(p)[:, :5].copy())


def _broken_indptr(p):
    a = np.load(p)
    a[1], a[2] = a[2], a[1] + 0  # rows of negative length
    a[1] += 1
    save_consistent(p, a)


def _members_as_ints(p):
    save_consistent(p, np.load(p).astype(np.int64))


def _nan_scores(p):
    a = np.load(p)
    a[0] = np.nan
    save_consistent(p, a)


# id: (stage, file, corruption, stages to forget first so the broken stage is read, needles of the warning)
BROKEN = {
    "scores-negated": ("attack", "scores.npy", _negate, (), ["scores.npy", "checksum", "attack stage again"]),
    "scores-truncated": ("attack", "scores.npy", _truncate, (), ["scores.npy", "bytes", "truncated"]),
    "scores-wrong-shape": ("attack", "scores.npy", _wrong_shape, (), ["scores.npy"]),
    "scores-garbage": ("attack", "scores.npy", _garbage_same_size, (), ["scores.npy", "not a readable .npy"]),
    "scores-nan-consistent": ("attack", "scores.npy", _nan_scores, (), ["scores.npy", "non-finite"]),
    "predicted-flipped": ("attack", "predicted.npy", _flip, (), ["predicted.npy", "checksum"]),
    "features-reversed": ("features", "X.npy", _reverse, ("attack",), ["X.npy", "checksum", "features stage"]),
    "features-zeroed": ("features", "X.npy", _zero, ("attack",), ["X.npy", "checksum"]),
    "features-float64": ("features", "X.npy", _as_float64, ("attack",), ["X.npy"]),
    "vectors-zeroed": ("vectors", "item_vectors_.npy", _zero, ("attack", "features"), ["item_vectors_.npy", "vectors stage"]),
    "vectors-truncated": ("vectors", "item_vectors_.npy", _truncate, ("attack", "features"), ["item_vectors_.npy", "truncated"]),
    "lists-negated": ("serve", "lists.npy", _negate, ("attack", "features"), ["lists.npy", "checksum", "serve stage"]),
    "lists-out-of-range": ("serve", "lists.npy", _out_of_range(lambda a: 10**9), ("attack", "features"),
                           ["lists.npy", "indices outside 0..149"]),
    "lists-negative-id": ("serve", "lists.npy", _out_of_range(lambda a: -1), ("attack", "features"), ["lists.npy", "outside"]),
    "lists-wrong-shape": ("serve", "lists.npy", _lists_shape, ("attack", "features"), ["lists.npy", "shape"]),
    "split-truncated": ("split", "target_indices.npy", _truncate, (), ["target_indices.npy", "truncated"]),
    "split-members-flipped": ("split", "target_is_member.npy", _flip, (), ["target_is_member.npy", "checksum"]),
    "split-members-as-ints": ("split", "target_is_member.npy", _members_as_ints, (), ["target_is_member.npy", "bool"]),
    "split-item-out-of-range": ("split", "target_indices.npy", _out_of_range(lambda a: 150), (), ["target_indices.npy", "outside"]),
    "split-indptr-broken": ("split", "shadow_indptr.npy", _broken_indptr, (), ["shadow_indptr.npy", "not a valid row index"]),
    "split-file-missing": ("split", "item_ids.npy", _delete, (), ["item_ids.npy", "is missing"]),
    "load-indices-changed": ("load", "m_indices.npy", _reverse, ("split", "vectors", "serve", "features", "attack"),
                             ["m_indices.npy", "load stage"]),
    "meta-not-json": ("serve", "meta.json", _write("{not json"), (), ["meta.json", "not valid JSON", "serve stage"]),
    "meta-empty": ("split", "meta.json", _write(""), (), ["meta.json", "is empty"]),
    "meta-a-list": ("attack", "meta.json", _write("[1, 2, 3]"), (), ["meta.json", "not a JSON object"]),
    "meta-edited": ("serve", "meta.json", _edit_record, (), ["meta.json", "does not match its checksum"]),
    "meta-without-checksums": ("attack", "meta.json", _old_format, (), ["meta.json", "no checksums"]),
    "meta-missing": ("attack", "meta.json", _delete, (), ["meta.json", "is missing"]),
    "output-folder-is-a-file": ("attack", "meta.json", _folder_is_a_file, (), ["is not a folder"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_stored_output_is_computed_again_with_one_line(case, box):
    stage, name, corrupt, forget, needles = BROKEN[case]
    drop(box["cache"], *forget)
    corrupt(stored(box["cache"], stage, name))
    result = box["run"]()
    assert result.exit_code == 0, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("miars: warning: cached file ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert metrics_of(box["tmp"] / "run") == box["metrics"]
    again = box["run"](out=box["tmp"] / "again")  # stored again, whole: nothing more to say
    assert again.exit_code == 0 and stderr_lines(again) == []
    assert metrics_of(box["tmp"] / "again") == box["metrics"]


def test_a_broken_record_found_at_planning_is_reported_once_with_workers(box):
    (box["cache"] / "v2" / "split").exists()
    stored(box["cache"], "split", "meta.json").write_text("")
    result = box["run"]("--workers", "2")
    assert result.exit_code == 0, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and "meta.json' is empty" in lines[0], lines
    assert metrics_of(box["tmp"] / "run") == box["metrics"]


def test_miars_attack_reads_a_broken_output_again_with_one_warning(box):
    ref = invoke(ATTACK_APP, ["--dataset", box["dataset"], *FAST, "--cache", box["cache"], "--out", box["tmp"] / "a"])
    assert ref.exit_code == 0 and stderr_lines(ref) == []
    _negate(stored(box["cache"], "attack", "scores.npy"))
    result = invoke(ATTACK_APP, ["--dataset", box["dataset"], *FAST, "--cache", box["cache"], "--out", box["tmp"] / "b"])
    assert result.exit_code == 0, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("miars: warning: cached file ") and "scores.npy" in lines[0]
    assert json.loads((box["tmp"] / "b" / "result.json").read_text())["metrics"] == \
        json.loads((box["tmp"] / "a" / "result.json").read_text())["metrics"]


def test_out_of_range_ids_in_cached_lists_do_not_crash_a_serial_grid(box):
    """The issue's segfault (rc 139 with --workers 1): now one warning, the lists computed again, exit 0."""
    drop(box["cache"], "attack", "features")
    for path in sorted((box["cache"] / "v2" / "serve").glob("*/*/lists.npy")):
        _out_of_range(lambda a: 10**9)(path)
    out = box["tmp"] / "run"
    cmd = [sys.executable, "-m", "miars_core", *GRID, "--dataset", str(box["dataset"]), "--cache", str(box["cache"]),
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **ENV})
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 2 and all("lists.npy" in l and "indices outside" in l for l in lines), lines
    assert json.loads((out / "grid.json").read_text())["status"] == "finished"
    assert metrics_of(out) == box["metrics"]


def test_a_broken_output_that_cannot_be_moved_away_is_used_for_this_run_only(box, monkeypatch):
    from miars_core.engine import store as store_module

    real = os.rename

    def refuse_moving_stage_outputs(src, dst):
        if str(dst).endswith("/x") and ".bad.tmp" in str(dst):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(store_module.os, "rename", refuse_moving_stage_outputs)
    path = stored(box["cache"], "attack", "scores.npy")
    _negate(path)
    result = box["run"]()
    assert result.exit_code == 0, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and "cannot be moved away" in lines[0] and "this run only" in lines[0], lines
    assert metrics_of(box["tmp"] / "run") == box["metrics"]
    assert path.exists()  # left where it was; never read as valid


def test_a_broken_output_that_cannot_be_computed_again_fails_the_cell_naming_the_file(box, monkeypatch):
    from miars_core.engine import stages

    def unavailable(*args, **kwargs):
        raise stages.MiarsError("the dataset is gone")

    monkeypatch.setattr(stages, "split_dataset", unavailable)
    stored(box["cache"], "split", "meta.json").write_text("{")
    result = box["run"]()
    assert result.exit_code == 1, result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("miars: error: 1 of 1 cells failed"), lines
    assert "meta.json' is not valid JSON, and computing the split stage again failed: the dataset is gone" in lines[0]
    (error,) = (box["tmp"] / "run" / "cells").glob("*/error.json")
    assert "meta.json" in json.loads(error.read_text())["error"]


def test_a_broken_defense_output_is_computed_again(small_dataset, tmp_path):
    from miars_core.engine.pipeline import AttackConfig, run_attack
    from miars_core.engine.store import DiskStore

    cfg = AttackConfig(dataset=str(small_dataset), target="pop", shadow="pop", top_k=10, min_interactions=5,
                       featurizer_params={"dim": 8}, attack_params={"epochs": 20}, defense="popularity-randomization")
    first = run_attack(cfg, store=DiskStore(tmp_path))
    drop(tmp_path, "attack", "features")
    _negate(stored(tmp_path, "defend", "lists.npy"))
    store = DiskStore(tmp_path)
    again = run_attack(cfg, store=store)
    assert len(store.problems) == 1 and "defend stage again" in store.problems[0]
    assert again.metrics == first.metrics and again.attackers == first.attackers


# --------------------------------------------------------------------------- outputs never clobber


def _plant(root: Path, files: dict[str, str]) -> dict[str, str]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return tree(root)


def test_grid_refuses_a_folder_that_is_not_a_run_folder(box):
    out = box["tmp"] / "u"
    before = _plant(out, {"report/report.html": "mine", "cells/x/notes.txt": "mine"})
    assert_refused(box["run"]("--out", out), "--out", "is not empty", "not a `miars grid` run folder", "--force")
    assert tree(out) == before


def test_grid_refuses_a_grid_json_that_is_not_json(box):
    out = box["tmp"] / "g"
    before = _plant(out, {"grid.json": "not json"})
    assert_refused(box["run"]("--out", out), "--out", "--force")
    assert tree(out) == before


@pytest.mark.parametrize("text", ["[1, 2, 3]", "{}", '{"cells": [1, 2]}', ""])
def test_a_grid_json_that_is_not_a_grid_record_in_a_run_folder_is_refused(box, text):
    out = box["tmp"] / "g"
    assert box["run"]("--out", out).exit_code == 0
    (out / "grid.json").write_text(text)
    before = tree(out)
    assert_refused(box["run"]("--out", out), "grid.json is not a grid record", "--force")
    assert tree(out) == before


def test_force_replaces_a_bad_grid_json_and_keeps_other_files(box):
    out = box["tmp"] / "g"
    _plant(out, {"grid.json": "[1, 2, 3]", "notes.txt": "mine"})
    result = box["run"]("--out", out, "--force")
    assert result.exit_code == 0 and stderr_lines(result) == []
    assert json.loads((out / "grid.json").read_text())["status"] == "finished"
    assert (out / "notes.txt").read_text() == "mine"
    assert metrics_of(out) == box["metrics"]
    assert box["run"]("--out", out).exit_code == 0  # a run folder now: no --force needed


def test_a_run_folder_of_another_command_is_refused(box):
    out = box["tmp"] / "a"
    assert invoke(ATTACK_APP, ["--dataset", box["dataset"], *FAST, "--cache", box["cache"], "--out", out]).exit_code == 0
    before = tree(out)
    assert_refused(box["run"]("--out", out), "a folder of `miars attack`, not of `miars grid`", "--force")
    grid_out = box["tmp"] / "grid"
    assert box["run"]("--out", grid_out).exit_code == 0
    result = invoke(APP, ["bench-defenses", "--dataset", box["dataset"], "--target", "pop", "--defense",
                          "popularity-randomization", "--seed", "0", "--out", grid_out, "--cache", box["cache"], "-q"])
    assert_refused(result, "`miars grid`, not of `miars bench-defenses`")
    result = invoke(ATTACK_APP, ["--dataset", box["dataset"], *FAST, "--cache", box["cache"], "--out", grid_out])
    assert_refused(result, "`miars grid`, not of `miars attack`")
    assert tree(out) == before


def test_a_marker_that_is_not_json_is_refused(box):
    out = box["tmp"] / "m"
    before = _plant(out, {".miars.json": "garbage"})
    assert_refused(box["run"]("--out", out), ".miars.json", "not a miars run marker")
    assert tree(out) == before


def test_miars_attack_refuses_a_folder_it_did_not_write_and_force_keeps_other_files(box):
    out = box["tmp"] / "mine"
    before = _plant(out, {"notes.txt": "mine", "result.json": "{\"mine\": true}"})
    args = ["--dataset", box["dataset"], *FAST, "--cache", box["cache"], "--out", out]
    assert_refused(invoke(ATTACK_APP, args), "--out", "not a `miars attack` run folder", "--force")
    assert tree(out) == before
    result = invoke(ATTACK_APP, [*args, "--force"])
    assert result.exit_code == 0, result.stderr
    assert (out / "notes.txt").read_text() == "mine" and "metrics" in json.loads((out / "result.json").read_text())
    (out / "more.txt").write_text("mine too")
    assert invoke(ATTACK_APP, args).exit_code == 0  # its own folder now: results replaced, other files kept
    assert (out / "more.txt").read_text() == "mine too" and (out / "notes.txt").read_text() == "mine"


def test_a_rerun_replaces_only_the_files_miars_wrote(box):
    out = box["tmp"] / "run"
    assert box["run"]("--out", out, base=[g for g in GRID if g != "--no-report"]).exit_code == 0
    (cell,) = (out / "cells").iterdir()
    (cell / "notes.txt").write_text("mine")
    (cell / "scores_mine.tsv").write_text("mine")
    (out / "report" / "notes.md").write_text("mine")
    (out / "report" / "img" / "mine.png").write_bytes(b"mine")
    (out / "cells" / ".mine.tmp").mkdir()  # not a staging folder of this grid
    result = box["run"]("--out", out, base=[g for g in GRID if g != "--no-report"])
    assert result.exit_code == 0, result.stderr
    assert (cell / "notes.txt").read_text() == "mine" and (cell / "scores_mine.tsv").read_text() == "mine"
    assert (out / "report" / "notes.md").read_text() == "mine"
    assert (out / "report" / "img" / "mine.png").read_bytes() == b"mine"
    assert (out / "cells" / ".mine.tmp").is_dir()
    assert metrics_of(out) == box["metrics"]


def test_a_report_file_miars_did_not_write_is_refused_before_the_grid_runs(box):
    out = box["tmp"] / "run"
    assert box["run"]("--out", out).exit_code == 0  # --no-report: report/ is not miars' yet
    (out / "report").mkdir()
    (out / "report" / "report.html").write_text("mine")
    before = tree(out)
    grid = [g for g in GRID if g != "--no-report"]
    assert_refused(box["run"]("--out", out, base=grid), "report", "did not write", "report.html", "--force")
    assert tree(out) == before
    assert_refused(invoke(APP, ["report", out]), "did not write", "report.html", "--force")
    assert tree(out) == before
    result = invoke(APP, ["report", out, "--force"])
    assert result.exit_code == 0 and "wrote" in result.stdout
    assert (out / "report" / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_a_report_removes_only_stale_files_it_listed(box):
    out = box["tmp"] / "run"
    assert box["run"]("--out", out).exit_code == 0
    assert invoke(APP, ["report", out]).exit_code == 0
    marker_path = out / "report" / ".miars.json"
    marker = json.loads(marker_path.read_text())
    assert marker["command"] == "report" and "report.html" in marker["files"]
    (out / "report" / "img" / "old.png").write_bytes(b"written by an earlier report")
    marker["files"].append("img/old.png")
    marker_path.write_text(json.dumps(marker))
    (out / "report" / "img" / "unlisted.png").write_bytes(b"mine")
    assert invoke(APP, ["report", out]).exit_code == 0
    assert not (out / "report" / "img" / "old.png").exists()
    assert (out / "report" / "img" / "unlisted.png").read_bytes() == b"mine"
    assert "img/old.png" not in json.loads(marker_path.read_text())["files"]


# --------------------------------------------------------------------------- faults stay local


def _spawned_children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the worker processes")
def test_a_worker_killed_by_the_kernel_fails_its_cell_and_a_rerun_resumes(small_dataset, tmp_path):
    grid = ["grid", *FAST[2:], "--target", "pop,item", "--no-report", "--dataset", str(small_dataset),
            "--cache", str(tmp_path / "cache")]
    env = {**os.environ, **ENV, "OMP_WAIT_POLICY": "PASSIVE"}
    reference = invoke(APP, [*grid, "--workers", "1", "--out", tmp_path / "ref", "--cache", tmp_path / "ref-cache"])
    assert reference.exit_code == 0
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "miars_core", *grid, "--workers", "2", "--out", str(out)],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (kids := _spawned_children(proc.pid)):  # a worker exists only once it holds a task
        assert proc.poll() is None and time.monotonic() < deadline, "no worker process appeared"
        time.sleep(0.01)
    os.kill(kids[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "cells failed" in lines[0] and "killed by SIGKILL" in lines[0], lines
    record = json.loads((out / "grid.json").read_text())
    assert record["status"] == "finished" and record["failed"]
    assert len(list((out / "cells").glob("*/error.json"))) == len(record["failed"])
    rerun = invoke(APP, [*grid, "--workers", "1", "--out", out])
    assert rerun.exit_code == 0 and stderr_lines(rerun) == []
    assert metrics_of(out) == metrics_of(tmp_path / "ref")


def test_grid_json_never_stays_running_after_an_error(box, monkeypatch):
    from miars_core.engine import run as engine

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "write_cell", disk_full)
    result = box["run"]()
    assert_refused(result, "No space left on device")
    record = json.loads((box["tmp"] / "run" / "grid.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["error"]


def test_a_dataset_and_out_path_with_bytes_that_are_not_utf8(box):
    data = box["tmp"] / "d\udcff.tsv"
    shutil.copy(box["dataset"], data)
    out = box["tmp"] / "out\udcff"
    grid = [g for g in GRID if g != "--no-report"]
    result = invoke(APP, [*grid, "--dataset", data, "--cache", box["cache"], "--out", out])
    assert result.exit_code == 0, result.stderr
    assert stderr_lines(result) == []
    assert metrics_of(out) == box["metrics"]  # same content, same stages
    assert "d\\xff.tsv" in (out / "report" / "tables.md").read_text(encoding="utf-8")
    assert "out\\xff" in (out / "report" / "report.html").read_text(encoding="utf-8")
    again = invoke(APP, ["report", out])
    assert again.exit_code == 0 and "out\\xff" in again.stdout


@pytest.mark.parametrize("command", ["grid", "bench-defenses", "attack"])
def test_a_cache_that_is_a_file_is_refused_before_any_work(box, command):
    cache = box["tmp"] / "afile"
    cache.write_text("keep me\n")
    out = box["tmp"] / "out"
    if command == "attack":
        result = invoke(ATTACK_APP, ["--dataset", box["dataset"], *FAST, "--cache", cache, "--out", out])
    elif command == "grid":
        result = invoke(APP, [*GRID, "--dataset", box["dataset"], "--cache", cache, "--out", out])
    else:
        result = invoke(APP, ["bench-defenses", "--dataset", box["dataset"], "--target", "pop", "--seed", "0", "-q",
                              "--cache", cache, "--out", out])
    assert_refused(result, "--cache", "is a file, not a folder", "--no-cache")
    assert cache.read_text() == "keep me\n"
    assert not out.exists() or not any(out.rglob("*.json"))  # nothing written to --out


def test_a_cache_that_cannot_be_written_is_refused_before_any_work(box):
    if os.geteuid() == 0:
        cache = Path("/proc/self/fdinfo")  # root ignores permission bits; procfs refuses new files even to root
    else:
        cache = box["tmp"] / "ro"
        cache.mkdir()
        cache.chmod(0o555)
    out = box["tmp"] / "out"
    assert_refused(box["run"]("--cache", cache, "--out", out), "--cache", "not writable", "--no-cache")
    assert not out.exists()


def test_the_corpus_is_large_enough():
    import inspect

    module = sys.modules[__name__]
    cases = len(BROKEN) + 4 + 3  # parametrized grid.json texts and --cache commands
    cases += sum(1 for name, fn in inspect.getmembers(module, inspect.isfunction)
                 if name.startswith("test_") and not hasattr(fn, "pytestmark") and name != "test_the_corpus_is_large_enough")
    assert cases >= 35
