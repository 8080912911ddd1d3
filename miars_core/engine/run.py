"""Running a grid: plan the unique stages of all cells, run them on an executor, write each cell.

Tasks, in dependency order:
1. ``split:<side>``: load + split, once per (dataset, split settings, seed);
2. ``serve:<part>``: one recommender fit + its lists, once per (split, part, recommender, params, k, seed),
   however many cells share it;
3. ``cell``: defense, item vectors, features, attack and metrics of one cell (seconds).
A task runs as soon as the tasks it needs are done. Stage outputs go to the store (``--cache``);
each finished cell is written to ``RUN_DIR/cells/<id>/`` as a set (staged, then renamed), so a
grid killed at any moment and started again recomputes nothing it finished.
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ..contracts.errors import MiarsError
from .config import AttackConfig
from .executors import SerialExecutor, WorkerDied, pinned_threads
from .grid import GridSpec, cell_id, cell_record
from .pipeline import cell_result
from .store import DiskStore, MemoryStore

FAILED_EXIT = 1  # some cells failed (bad input is exit 2, before anything runs)


# -- the task function (runs in any process) -------------------------------------------------------
def run_task(task: dict, plugins=None, store=None) -> dict:
    """Run one task; return what the grid needs to know. Never raises: failures are returned."""
    from ..contracts.plugins import get_plugins
    from .stages import Cell

    cell = None
    if store is None:
        store = DiskStore(task["cache"]) if task.get("cache") else MemoryStore()
    seen = len(store.problems)  # broken stored outputs this task found (and computed again)
    try:
        with pinned_threads(task.get("threads")):
            plugins = plugins or get_plugins()
            cell = Cell(AttackConfig(**task["config"]), plugins, store)
            if task["kind"] == "prepare":
                cell.prepare(task["what"])
                return {"ok": True, "computed": cell.computed, "problems": store.problems[seen:]}
            result = cell_result(cell)
            result.cell = cell_record(result.config)
            payload = result.to_json()
            json.dumps(payload, allow_nan=False)  # a NaN anywhere fails the cell, never the JSON
            target = cell.part("target")
            return {"ok": True, "computed": cell.computed, "result": payload, "problems": store.problems[seen:],
                    "users": list(target.interactions.user_ids), "is_member": target.is_member.tolist(),
                    "scores": {k: v.tolist() for k, v in result.artifacts["attacker_scores"].items()}}
    except Exception as exc:  # noqa: BLE001 - reported per cell; the grid goes on
        line = " ".join((str(exc) if isinstance(exc, MiarsError) else f"{type(exc).__name__}: {exc}").split())
        return {"ok": False, "error": line or type(exc).__name__,
                "stage": getattr(cell, "stage", None) or task.get("what") or "setup",
                "traceback": traceback.format_exc(), "computed": getattr(cell, "computed", {}),
                # a broken file the error already names is not reported twice
                "problems": [p for p in store.problems[seen:] if _quoted(p) not in line]}


def _quoted(line: str) -> str:
    """The first quoted text of a line (the file a store problem names), or the whole line."""
    parts = line.split("'")
    return parts[1] if len(parts) > 2 else line


# -- planning ---------------------------------------------------------------------------------------
@dataclass
class Task:
    name: str
    spec: dict
    needs: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)


def plan(cells: dict[str, Any], store, cache: str | None, threads: int | None) -> dict[str, Task]:
    """Tasks for every unique split and fit, and one per cell; stages already stored are skipped.

    Which stages are tasks, and what each needs, comes from the stage declarations
    (:meth:`~miars_core.engine.stages.Cell.tasks`: the stages declared with ``task=True``).
    """
    tasks: dict[str, Task] = {}
    stored: set[str] = set()  # each stage is looked up in the store once, however many cells share it
    for cid, cell in cells.items():
        base = {"config": {f.name: getattr(cell.config, f.name) for f in fields(cell.config)}, "cache": cache,
                "threads": threads}
        own = cell.tasks()
        names = {what: f"{stage}:{key}" for what, (stage, key, _) in own.items()}
        needs = []
        for what, (stage, key, upstream) in own.items():
            name = names[what]
            if name in stored:
                continue
            if name not in tasks and store.meta(stage, key) is not None:
                stored.add(name)
                continue  # stored by an earlier run
            if name not in tasks:
                tasks[name] = Task(name, {**base, "kind": "prepare", "what": what},
                                   [names[u] for u in upstream if names[u] in tasks])
            tasks[name].cells.append(cid)
            needs.append(name)
        tasks[f"cell:{cid}"] = Task(f"cell:{cid}", {**base, "kind": "cell"}, needs, [cid])
    return tasks


# -- writing the run folder ---------------------------------------------------------------------------
def _atomic_json(path: Path, data: dict) -> None:
    from ..contracts.files import atomic_write

    atomic_write(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_cell(run_dir: Path, cid: str, outcome: dict, config: AttackConfig) -> None:
    """Write one cell's files as a set into ``cells/<id>/``, replacing only the files miars writes there.

    The files are staged in a folder beside it; then the old commit files (result.json,
    error.json) go first, the other files miars wrote there before go, the new files are renamed
    in and the new commit file last: a result.json always describes the scores beside it, and
    files that are not miars' (:data:`~miars_core.engine.rundir.CELL_FILES`) are never touched.
    """
    from ..contracts.files import file_mode, scores_tsv
    from .rundir import CELL_COMMIT, CELL_FILES

    files: dict[str, str] = {}
    if outcome["ok"]:
        scores = outcome["scores"]
        main = "defense_aware" if config.defense else "attack"
        files["scores.tsv"] = scores_tsv(outcome["users"], outcome["is_member"], scores[main])
        for name, values in scores.items():
            if name != main:
                files[f"scores_{name}.tsv"] = scores_tsv(outcome["users"], outcome["is_member"], values)
        files["result.json"] = json.dumps(outcome["result"], indent=2, allow_nan=False) + "\n"
    else:
        record = {"cell": cell_record(config), "stage": outcome["stage"], "error": outcome["error"]}
        files["traceback.txt"] = outcome.get("traceback", "")
        files["error.json"] = json.dumps(record, indent=2) + "\n"
    cells = run_dir / "cells"
    final = cells / cid
    staging = Path(tempfile.mkdtemp(dir=cells, prefix=f".{cid}.", suffix=".tmp"))
    try:
        for name, text in files.items():
            (staging / name).write_bytes(text.encode("utf-8", "surrogateescape"))
            os.chmod(staging / name, file_mode())
        if not final.is_dir():
            os.chmod(staging, file_mode() | ((file_mode() & 0o444) >> 2))  # a folder: readable means listable
            os.rename(staging, final)  # a new cell folder: all at once
            return
        owned = set(CELL_FILES) | set(files)
        for name in [*CELL_COMMIT, *sorted(owned - set(CELL_COMMIT))]:  # commit files first
            if name not in files or name in CELL_COMMIT:
                (final / name).unlink(missing_ok=True)
        for name in files:  # the commit file is the last key
            os.replace(staging / name, final / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _clean_stale(run_dir: Path, ids: list[str]) -> None:
    """Remove the staging folders of this grid's cells that a killed grid left behind (and nothing else).

    A ``.old`` folder (earlier versions swapped whole cell folders) goes back into place when the
    kill came between the two renames, so no file of the cell folder is lost.
    """
    import re

    wanted = set(ids)
    cells = run_dir / "cells"
    for entry in os.listdir(cells):
        m = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}\.(tmp|old)", entry)
        if not m or m.group(1) not in wanted:
            continue
        stale = cells / entry
        if m.group(2) == "old" and (stale / "x").is_dir() and not (cells / m.group(1)).exists():
            os.rename(stale / "x", cells / m.group(1))
        shutil.rmtree(stale, ignore_errors=True)


# -- the grid -------------------------------------------------------------------------------------
@dataclass
class GridSummary:
    run_dir: Path
    cells: list[str]
    failed: dict[str, str]
    wall_seconds: float
    stage_seconds: dict[str, float]
    executor: dict

    @property
    def ok(self) -> bool:
        return not self.failed


Progress = Callable[[str, str, dict], None]  # (event, task name, info)


def run_grid(spec: GridSpec, out: str | Path, *, cache: str | Path | None, executor=None, threads: int | None = 1,
             plugins=None, progress: Progress | None = None, command: str = "grid", force: bool = False) -> GridSummary:
    """Run every cell of ``spec`` into ``out``; reuse stored stages; return what ran and failed.

    ``out`` must be new, empty, or a run folder of ``command`` (``force``: any folder;
    :mod:`miars_core.engine.rundir`). Planning treats a broken stored output as missing; the task that
    reads it computes it again and reports it through ``progress`` as ``("warning", task,
    {"message": line})``, once per file (unless the task fails: its error names the file).

    ``executor`` is an executor or a function returning one (called once every cell is checked,
    so a bad name or folder never starts a cluster).
    """
    from ..contracts.plugins import get_plugins
    from .rundir import new_marker, write_marker
    from .stages import Cell

    start = time.perf_counter()
    plugins = plugins or get_plugins()
    configs = spec.configs()
    run_dir = Path(out).expanduser()
    ids = [cell_id(c) for c in configs]
    shared: dict = {}  # component and dataset identities, computed once for all cells
    cells = {cid: Cell(c, plugins, shared=shared) for cid, c in zip(ids, configs)}  # bad names fail before any write
    marker = _check_run_dir(run_dir, ids, command, force)
    if cache is None:
        tmp_cache = tempfile.mkdtemp(prefix="miars-grid-cache-")
        store_root = tmp_cache
    else:
        tmp_cache = None
        store_root = str(Path(cache).expanduser())
    notify = _once_per_message(progress)
    store = DiskStore(store_root)
    given, executor = executor, None
    grid_record: dict | None = None
    try:
        if given is not None and not hasattr(given, "submit"):  # a factory: start workers only now, after the checks
            given = given()
        executor = given or SerialExecutor()
        store.clean_partial()
        tasks = plan(cells, store, store_root, threads)
        if marker is None or marker.get("command") != command:
            write_marker(run_dir, new_marker(command, marker))
        (run_dir / "cells").mkdir(parents=True, exist_ok=True)
        _clean_stale(run_dir, ids)
        by_id = dict(zip(ids, configs))
        runs = _previous_runs(run_dir)
        grid_record = {"spec": spec.to_json(), "cells": ids, "status": "running", "executor": executor.describe(), "runs": runs}
        _atomic_json(run_dir / "grid.json", grid_record)
        if not executor.in_process and _all_cached(tasks, cells, store):
            executor.close()  # only reading is left: workers would spend longer importing torch
            executor = SerialExecutor()
        local = executor.in_process
        failed, stage_seconds = _execute(tasks, executor, by_id, run_dir, plugins if local else None,
                                         store if local else None, notify)
    except BaseException as exc:
        if grid_record is not None:  # never left "running" by a process that ended on an error
            _record_end(run_dir, grid_record, exc)
        raise
    finally:
        if executor is not None:
            executor.close()
        elif given is not None and hasattr(given, "close"):
            given.close()
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)
    wall = round(time.perf_counter() - start, 3)
    this_run = {"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "executor": executor.describe(),
                "failed": sorted(failed), "wall_seconds": wall, "stage_seconds": stage_seconds,
                "fit_seconds": round(sum(v for k, v in stage_seconds.items() if k.startswith("serve")), 3),
                "attack_seconds": stage_seconds.get("attack", 0.0)}
    # Top level: this run; ``runs``: every run of this grid, oldest first (a resumed grid keeps its history).
    grid_record.update(status="finished", **this_run, runs=[*grid_record["runs"], this_run])
    _atomic_json(run_dir / "grid.json", grid_record)
    return GridSummary(run_dir, ids, failed, wall, stage_seconds, executor.describe())


def _once_per_message(progress: Progress | None) -> Progress:
    """``progress``, passing each warning line once (several tasks may find the same broken file)."""
    seen: set[str] = set()
    forward = progress or (lambda *a: None)

    def notify(event: str, name: str, info: dict) -> None:
        if event == "warning":
            if info["message"] in seen:
                return
            seen.add(info["message"])
        forward(event, name, info)

    return notify


def _record_end(run_dir: Path, grid_record: dict, exc: BaseException) -> None:
    from ..contracts.errors import Terminated

    status = "interrupted" if isinstance(exc, (KeyboardInterrupt, Terminated)) else "failed"
    line = " ".join(str(exc).split()) or type(exc).__name__
    try:
        _atomic_json(run_dir / "grid.json", {**grid_record, "status": status, "error": line[:500]})
    except BaseException:  # noqa: BLE001 - the original error is what the user must see
        pass


def _all_cached(tasks: dict[str, Task], cells: dict[str, Any], store) -> bool:
    """Whether every stage of every cell is stored already (a finished grid run again)."""
    if any(t.spec["kind"] != "cell" for t in tasks.values()):
        return False
    return all(store.meta(stage, key) is not None for cell in cells.values() for stage, _, key in cell.graph())


def _previous_runs(run_dir: Path) -> list[dict]:
    try:
        record = json.loads((run_dir / "grid.json").read_text())
    except (OSError, ValueError):
        return []
    runs = record.get("runs") if isinstance(record, dict) else None
    if isinstance(runs, list):
        return runs
    if isinstance(record, dict) and "wall_seconds" in record:  # written before grids kept a history
        return [{k: record.get(k) for k in ("executor", "failed", "wall_seconds", "stage_seconds", "fit_seconds",
                                            "attack_seconds")}]
    return []


def _check_run_dir(run_dir: Path, ids: list[str], command: str = "grid", force: bool = False) -> dict | None:
    """Before any work: ``run_dir`` is new, empty or this grid's run folder (:func:`miars_core.engine.rundir.claim`),
    its grid.json (if any) is a grid record of the same cells, and it can be written. Returns its marker."""
    from .rundir import claim, shown

    marker = claim(run_dir, command, "--out", force)
    record = run_dir / "grid.json"
    if os.path.lexists(record):
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            data = None
        except OSError as exc:
            raise MiarsError(f"--out {shown(run_dir)}: grid.json cannot be read ({exc.strerror or exc}); move it away or "
                             "pass another --out folder") from None
        previous = data.get("cells") if isinstance(data, dict) else None
        if not isinstance(previous, list) or not all(isinstance(c, str) for c in previous):
            if not force:
                raise MiarsError(f"--out {shown(run_dir)}: grid.json is not a grid record of miars (a JSON object with a "
                                 "list of cells); move it away, pass another --out folder, or --force to replace it")
        elif sorted(previous) != sorted(ids):
            raise MiarsError(f"--out {shown(run_dir)} holds a different grid (grid.json); pass a new --out folder, "
                             "or the same arguments to resume that grid")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=run_dir, prefix=".probe-")
        probe.close()
    except OSError as exc:
        raise MiarsError(f"--out {shown(run_dir)} is not writable ({exc.strerror}); pass a writable folder") from None
    return marker


def _execute(tasks: dict[str, Task], executor, by_id: dict[str, AttackConfig], run_dir: Path, plugins, store,
             progress: Progress | None) -> tuple[dict[str, str], dict[str, float]]:
    """Submit tasks as their needs finish, in planning order; write each cell as soon as it is done.

    Each task counts its unfinished needs, so finishing one task looks only at the tasks that
    need it (an 80,000-cell grid is not rescanned after every task). A failed split or fit fails
    every task downstream of it, with its error.
    """
    done: set[str] = set()
    failed_tasks: dict[str, str] = {}
    failed_cells: dict[str, str] = {}
    stage_seconds: dict[str, float] = {}
    running: dict[Any, str] = {}
    order = {name: i for i, name in enumerate(tasks)}
    missing = {name: set(task.needs) for name, task in tasks.items()}
    dependents: dict[str, list[str]] = {}
    for name, task in tasks.items():
        for need in task.needs:
            dependents.setdefault(need, []).append(name)
    ready = [(order[name], name) for name, needs in missing.items() if not needs]
    heapq.heapify(ready)
    notify = progress or (lambda *a: None)
    notify("plan", "", {"tasks": {k: sum(1 for t in tasks.values() if t.spec["kind"] == "prepare" and t.spec["what"].startswith(k))
                                  for k in ("split", "serve")} | {"cell": len(by_id)}})

    def run(task: Task) -> Any:
        if store is not None:
            return executor.submit(run_task, task.spec, plugins, store)
        return executor.submit(run_task, task.spec)

    def finish(task: Task, outcome: dict) -> None:
        for line in outcome.get("problems") or []:
            notify("warning", task.name, {"message": line})
        for stage, secs in (outcome.get("computed") or {}).items():
            stage_seconds[stage] = round(stage_seconds.get(stage, 0.0) + secs, 3)
        if task.spec["kind"] == "cell":
            cid = task.cells[0]
            write_cell(run_dir, cid, outcome, by_id[cid])
            if not outcome["ok"]:
                failed_cells[cid] = outcome["error"]
        elif not outcome["ok"]:
            failed_tasks[task.name] = outcome["error"]
        done.add(task.name)
        notify("done", task.name, {"ok": outcome["ok"], "kind": task.spec["kind"], "what": task.spec.get("what", "cell"),
                                   "error": outcome.get("error")})
        for name in dependents.get(task.name, ()):
            if name in done:
                continue
            if outcome["ok"]:
                missing[name].discard(task.name)
                if not missing[name]:
                    heapq.heappush(ready, (order[name], name))
            else:  # the first failed need fails the task, with that error
                finish(tasks[name], {"ok": False, "error": failed_tasks[task.name], "stage": task.name.split(":")[0]})

    cap = max(1, executor.workers) * 2
    while ready or running:
        while ready and len(running) < cap:
            _, name = heapq.heappop(ready)
            if name in done:
                continue
            notify("start", name, {"kind": tasks[name].spec["kind"], "what": tasks[name].spec.get("what", "cell")})
            running[run(tasks[name])] = name
        if not running:
            continue
        finished, _ = executor.wait_any(list(running))
        for future in finished:
            name = running.pop(future)
            try:
                outcome = future.result()
            except WorkerDied as exc:  # killed by the kernel or a signal: this task fails, the others go on
                outcome = {"ok": False, "error": str(exc), "stage": "worker"}
            except BaseException as exc:  # noqa: BLE001 - a worker failed otherwise
                outcome = {"ok": False, "error": f"worker failed: {type(exc).__name__}: {exc}", "stage": "worker"}
            finish(tasks[name], outcome)
    for name in [n for n in tasks if n not in done]:  # cannot happen with a consistent plan; never drop a cell silently
        finish(tasks[name], {"ok": False, "error": "not run: a task it needs never finished", "stage": "plan"})
    return failed_cells, stage_seconds
