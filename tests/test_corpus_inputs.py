"""The engine's input corpus (issue 14): nothing requested is dropped, every value is checked by type and
range, huge grids are refused up front, standard output errors are one line, defaults run.

Each table case runs ``miars grid`` / ``miars bench-defenses`` / ``miars-attack`` in its own sandbox folder
(the working directory) and asserts: exit code 2, exactly one stderr line ``miars: error: ...`` holding
the case's needles (the flag or key named), no traceback, nothing on stdout, and no file created, changed or
removed anywhere in the sandbox: ``--out`` is never created. Every case fails before any work.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miars_core import cli
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import AUTOLOAD_VAR, get_plugins
from miars_core.engine.grid import GRID_RULES, GridSpec

RUNNER = CliRunner()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
BIN = Path(sys.executable).parent
FAST = ["--target", "pop", "--top-k", "5", "--min-interactions", "5", "--featurizer-param", "dim=8",
        "--attack-param", "epochs=20"]


def _toml(text: str):
    return lambda box: (box / "grid.toml").write_text(text)


def _file(name: str, text: str):
    def setup(box: Path) -> None:
        (box / name).parent.mkdir(parents=True, exist_ok=True)
        (box / name).write_text(text)
    return setup


SEEDS_2001 = ",".join(str(s) for s in range(2001))

# id: (command and flags, needles of the one error line, setup). {data} is the small dataset's copy in the sandbox.
CASES: dict[str, tuple[list[str], list[str], object]] = {
    # -- nothing requested is dropped
    "toml-empty-sweep": (["grid", "--config", "grid.toml"], ["defense_params.popularity-randomization.ratio", "is empty"],
                         _toml('defense = ["popularity-randomization"]\n[defense_params.popularity-randomization]\nratio = []\n')),
    "toml-empty-seed-list": (["grid", "--config", "grid.toml"], ["seed = []", "is empty"], _toml("seed = []\n")),
    "flag-empty-sweep": (["grid", "--defense", "popularity-randomization", "--defense-param", "ratio="],
                         ["--defense-param", "'ratio='", "no values"], None),
    "bench-defense-trains-no-target": (["bench-defenses", "--target", "item", "--defense", "dp-sgd"],
                                       ["--defense dp-sgd", "none of the grid's recommenders", "lfm", "--target item"], None),
    "toml-defense-targets-exclude-all": (["grid", "--config", "grid.toml"], ["--defense list-noise", "applies to none"],
                                         _toml('target = ["pop"]\ndefense = ["list-noise"]\n[defense_targets]\nlist-noise = ["item"]\n')),
    "grid-param-for-unselected-defense": (["grid", "--defense-param", "subsample.fraction=0.5"],
                                          ["--defense-param subsample.fraction", "does not select", "--defense none"], None),
    "bench-param-for-unbenchmarked-defense": (["bench-defenses", "--defense", "rank-shuffle", "--defense-param", "subsample.fraction=0.5"],
                                              ["--defense-param subsample.fraction", "not benchmarked", "rank-shuffle"], None),
    "grid-param-for-unselected-target": (["grid", "--target", "pop", "--target-param", "lfm.epochs=3"],
                                         ["--target-param lfm.epochs", "--target pop", "add lfm"], None),
    "grid-param-for-unselected-shadow": (["grid", "--target", "pop", "--shadow-param", "item.k=3"],
                                         ["--shadow-param item.k", "each target is its own shadow"], None),
    "grid-param-for-unselected-attack": (["grid", "--attack-param", "kmeans.n_init=3"], ["--attack-param kmeans.n_init", "--attack mlp"], None),
    "toml-param-for-unselected-featurizer": (["grid", "--config", "grid.toml"], ["--featurizer-param other.dim", "--featurizer center-diff"],
                                             _toml("[featurizer_params.other]\ndim = 3\n")),
    "grid-defense-param-without-defense": (["grid", "--defense-param", "ratio=0.1"], ["--defense-param ratio", "no defense"], None),
    "toml-defense-param-without-defense": (["grid", "--config", "grid.toml"], ["--defense-param ratio", "no defense"],
                                           _toml("[defense_params]\nratio = 0.1\n")),
    "attack-defense-param-without-defense": (["attack", "--defense-param", "ratio=0.1"], ["--defense-param ratio=0.1", "without a defense"], None),
    "bench-unscoped-key-nobody-takes": (["bench-defenses", "--defense", "rank-shuffle", "--defense-param", "ratio=0.1"],
                                        ["--defense-param ratio", "none of the benchmarked defenses"], None),
    "dotted-key-empty-name": (["grid", "--target-param", ".k=5"], ["--target-param '.k=5'", "name before the dot is empty"], None),
    "dotted-key-empty-key": (["grid", "--target-param", "pop.=5"], ["--target-param 'pop.=5'", "the key is empty"], None),
    "dotted-defense-key-empty-name": (["bench-defenses", "--defense-param", ".ratio=0.1"], ["--defense-param '.ratio=0.1'", "empty"], None),
    "scheduler-empty": (["grid", "--scheduler", ""], ["--scheduler is empty", "tcp://HOST:8786"], None),
    "scheduler-blank": (["grid", "--scheduler", "  "], ["--scheduler", "tcp://HOST:8786"], None),
    # -- every value by type and range, naming the key or flag
    "toml-min-interactions-text": (["grid", "--config", "grid.toml"], ["min_interactions = 'x'", "not an integer", ">= 1"],
                                   _toml('min_interactions = "x"\n')),
    "toml-data-dir-number": (["grid", "--config", "grid.toml"], ["data_dir = 5", "not a string"], _toml("data_dir = 5\n")),
    "toml-defense-targets-text": (["grid", "--config", "grid.toml"], ["defense_targets = 'x'", "not a table"],
                                  _toml('defense_targets = "x"\n')),
    "toml-split-number": (["grid", "--config", "grid.toml"], ["split = 3", "'interactions', 'users'"], _toml("split = 3\n")),
    "toml-download-text": (["grid", "--config", "grid.toml"], ["download = 'yes'", "true or false"], _toml('download = "yes"\n')),
    "toml-top-k-mixed-list": (["grid", "--config", "grid.toml"], ["top_k", "element 1 = 'x'"], _toml('top_k = [5, "x"]\n')),
    "toml-seed-float": (["grid", "--config", "grid.toml"], ["seed", "1.5"], _toml("seed = 1.5\n")),
    "toml-utility-holdout-tiny": (["grid", "--config", "grid.toml"], ["utility_holdout = 1e-300", "0.01"], _toml("utility_holdout = 1e-300\n")),
    "toml-query-budget-negative": (["grid", "--config", "grid.toml"], ["query_budget = -1", ">= 0"], _toml("query_budget = -1\n")),
    "toml-max-cells-zero": (["grid", "--config", "grid.toml"], ["max_cells = 0", ">= 1"], _toml("max_cells = 0\n")),
    "toml-target-empty-string": (["grid", "--config", "grid.toml"], ["target", "non-empty string"], _toml('target = ""\n')),
    "toml-params-not-a-table": (["grid", "--config", "grid.toml"], ["target_params = 5", "not a table"], _toml("target_params = 5\n")),
    "toml-defense-targets-empty-list": (["grid", "--config", "grid.toml"], ["defense_targets.dp-sgd = []", "is empty"],
                                        _toml('defense = ["dp-sgd"]\n[defense_targets]\ndp-sgd = []\n')),
    "toml-skipped-is-not-a-key": (["grid", "--config", "grid.toml"], ["unknown key(s) skipped"], _toml("skipped = []\n")),
    "flag-utility-holdout-tiny": (["grid", "--utility-holdout", "1e-300"], ["--utility-holdout 1e-300", ">= 0.01"], None),
    "flag-utility-holdout-one": (["bench-defenses", "--utility-holdout", "1"], ["--utility-holdout 1", "<= 0.9"], None),
    "flag-utility-holdout-nan": (["grid", "--utility-holdout", "nan"], ["--utility-holdout nan", "not finite"], None),
    "scheduler-garbage": (["grid", "--scheduler", "tcp://::::garbage"], ["--scheduler 'tcp://::::garbage'", "not a valid address"], None),
    "scheduler-unknown-scheme": (["grid", "--scheduler", "foo://127.0.0.1:8786"], ["--scheduler", "scheme 'foo'", "tcp, tls"], None),
    "scheduler-port-out-of-range": (["grid", "--scheduler", "127.0.0.1:99999"], ["--scheduler", "65535"], None),
    "scheduler-no-port": (["bench-defenses", "--scheduler", "tcp://somehost"], ["--scheduler 'tcp://somehost'", "port"], None),
    "scheduler-in-process-scheme": (["grid", "--scheduler", "inproc://x"], ["--scheduler", "scheme 'inproc'"], None),
    "workers-with-dask-local": (["grid", "--workers", "2", "--dask-local", "1"], ["--workers", "--dask-local"], None),
    "dask-local-zero": (["grid", "--dask-local", "0"], ["--dask-local", "got 0"], None),
    "threads-zero": (["grid", "--threads", "0"], ["--threads", "got 0"], None),
    "max-cells-zero": (["grid", "--max-cells", "0"], ["--max-cells", "got 0"], None),
    "grid-json-not-an-object": (["grid", "--out", "{box}/run"], ["grid.json", "--out"], _file("run/grid.json", "[1, 2, 3]\n")),
    # -- the grid's size
    "grid-too-large": (["grid", "--seed", SEEDS_2001], ["2,001 cells", "2,000", "--seed with 2,001 values", "--max-cells 2001"], None),
    "toml-limit-too-small": (["grid", "--config", "grid.toml"], ["3 cells", "limit of 2", "--max-cells 3"],
                             _toml("seed = [0, 1, 2]\nmax_cells = 2\n")),
    "bench-too-large": (["bench-defenses", "--target", "item", "--defense", "list-noise", "--max-cells", "5"],
                        ["the grid has 12 cells", "more than the limit of 5"], None),
    # -- a value the catalogue cannot serve, asked for explicitly
    "grid-impossible-ratio": (["grid", "--dataset", "{data}", "--top-k", "10", "--defense", "popularity-randomization",
                               "--defense-param", "ratio=0.05"], ["ratio=0.05", "pool of 200", "150 items", "ratio >= 0.0667"], None),
    "bench-impossible-ratio": (["bench-defenses", "--dataset", "{data}", "--target", "item", "--top-k", "10", "--defense",
                                "popularity-randomization", "--defense-param", "ratio=0.05,0.1"], ["ratio=0.05", "150 items"], None),
    # -- bad names still one line, before any planning line, on a grid of 600 cells
    "bad-name-on-a-large-grid": (["grid", "--seed", ",".join(str(s) for s in range(600)), "--target", "nosuch"],
                                 ["unknown recommender 'nosuch'"], None),
}


def _tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        out[str(d.relative_to(root))] = ("dir",)
        for name in filenames:
            data = (d / name).read_bytes()
            out[str((d / name).relative_to(root))] = ("file", len(data), hashlib.sha1(data).hexdigest())
    return out


@pytest.fixture
def box(tmp_path, small_dataset, monkeypatch):
    box = tmp_path / "box"
    box.mkdir()
    (box / "data.tsv").write_bytes(small_dataset.read_bytes())
    monkeypatch.chdir(box)
    monkeypatch.setenv("MIARS_CACHE", str(box / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return box


def _fill(args: list[str], box: Path) -> list[str]:
    return [a.replace("{box}", str(box)).replace("{data}", str(box / "data.tsv")) for a in args]


def assert_one_line(exit_code: int, stderr: str, stdout: str, needles: list[str]) -> str:
    assert exit_code == 2, f"exit {exit_code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    assert lines[0].startswith("miars: error: "), lines[0]
    assert "this is a bug" not in lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def invoke(argv: list[str], box: Path, out: bool = True):
    if out and argv[0] != "attack" and "--out" not in argv:
        argv = [*argv, "--out", str(box / "out")]
    if argv[0] == "attack":
        argv = [*argv, "--dataset", str(box / "data.tsv"), *FAST, "--quiet", "--out", str(box / "out")]
    return RUNNER.invoke(cli.app, [str(a) for a in argv], env=ENV)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_engine_input(case, box):
    argv, needles, setup = CASES[case]
    if setup is not None:
        setup(box)
    before = _tree(box)
    result = invoke(_fill(argv, box), box)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    line = assert_one_line(result.exit_code, result.stderr, result.stdout, _fill(needles, box))
    assert result.stdout == ""
    assert len(line) < 800
    assert _tree(box) == before, "a failed run wrote, changed or removed a file"
    assert not (box / "out").exists() and not (box / "cache").exists()
    assert not os.listdir(os.environ["TMPDIR"]), "a temporary file was left behind"


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


# --------------------------------------------------------------------------- the declaration behind the checks


def test_every_grid_key_is_declared_and_the_python_api_is_checked_too():
    from dataclasses import fields

    assert set(GRID_RULES) == {f.name for f in fields(GridSpec)}
    for kwargs, needle in (({"seed": []}, "--seed [] is empty"), ({"min_interactions": "x"}, "--min-interactions 'x'"),
                           ({"utility_holdout": 1e-300}, "--utility-holdout 1e-300"), ({"data_dir": 5}, "--data-dir 5"),
                           ({"defense_targets": "x"}, "defense_targets 'x'"), ({"shadow": []}, "--shadow [] is empty"),
                           ({"defense_params": {"subsample": {"fraction": []}}}, "--defense-param subsample.fraction=[]")):
        with pytest.raises(MiarsError, match=None) as err:
            GridSpec(**kwargs).configs()
        assert needle in str(err.value)


def test_grid_size_is_counted_without_building_cells():
    spec = GridSpec(target=["item", "lfm", "ncf"], shadow=["item", "lfm"], seed=list(range(5)),
                    defense=[None, "popularity-randomization", "dp-sgd"],
                    defense_params={"popularity-randomization": {"ratio": [0.1, 0.2]}},
                    defense_targets={"dp-sgd": ["lfm", "ncf"]})
    # (target, shadow) pairs: 3 x 2 for none and each ratio; dp-sgd only lfm/lfm and ncf/lfm
    assert spec.size() == len(spec.configs()) == 6 * 5 + 6 * 2 * 5 + 2 * 5


def test_a_grid_builds_each_distinct_component_once(monkeypatch, small_dataset):
    from miars_core.contracts.registry import Registry
    from miars_core.engine.run import plan
    from miars_core.engine.stages import Cell
    from miars_core.engine.store import MemoryStore

    calls = []
    real = Registry.create
    monkeypatch.setattr(Registry, "create", lambda self, name, **p: calls.append((self.kind, name)) or real(self, name, **p))
    spec = GridSpec(dataset=[str(small_dataset)], target=["pop", "item"], seed=list(range(100)), top_k=[5])
    shared: dict = {}
    cells = {i: Cell(c, get_plugins(), shared=shared) for i, c in enumerate(spec.configs())}
    tasks = plan(cells, MemoryStore(), None, 1)
    # pop and item as target and shadow, one featurizer, attack and service: 5 distinct components, not 5 per cell
    assert sorted(set(calls)) == sorted(calls) and len(calls) == 5
    assert sum(t.spec["kind"] == "cell" for t in tasks.values()) == 200
    assert sum(t.name.startswith("split:") for t in tasks.values()) == 100  # one split per seed, shared by both targets


def test_catalogue_problem_of_popularity_randomization():
    from miars_defenses import PopularityRandomization

    assert "pool of 2,000" in PopularityRandomization(ratio=0.05).catalogue_problem(1682, 100)
    assert "1,682 items" in PopularityRandomization(ratio=0.05).catalogue_problem(1682, 100)
    assert PopularityRandomization(ratio=0.1).catalogue_problem(1682, 100) is None
    assert PopularityRandomization(ratio=0.05).catalogue_problem(3706, 100) is None  # ml-1m


# --------------------------------------------------------------------------- progress, guard and debug switch


def test_a_large_grid_says_it_is_planning_before_planning(box):
    (box / "afile").write_text("keep me\n")
    seeds = ",".join(str(s) for s in range(600))
    result = RUNNER.invoke(cli.app, ["grid", "--seed", seeds, "--target", "pop", "--out", str(box / "afile")], env=ENV)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 2, result.stderr
    assert lines[0] == "planning 600 cells ..."
    assert lines[1].startswith("miars: error: --out") and "is a file" in lines[1]
    assert (box / "afile").read_text() == "keep me\n"


def test_max_cells_raises_the_limit(box):
    (box / "grid.toml").write_text("seed = [0, 1, 2]\nmax_cells = 2\n")
    (box / "afile").write_text("keep me\n")
    result = RUNNER.invoke(cli.app, ["grid", "--config", "grid.toml", "--max-cells", "3", "--out", "afile", "-q"], env=ENV)
    # past the guard: the next check (the output folder) is what fails now
    assert_one_line(result.exit_code, result.stderr, result.stdout, ["--out", "is a file"])


@pytest.mark.parametrize("value, shown", [("0", False), ("", False), ("yes", False), ("1", True)])
def test_only_miars_debug_1_shows_the_traceback_of_a_bug(box, monkeypatch, value, shown):
    def broken(self, *args):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(GridSpec, "check_size", broken)
    result = RUNNER.invoke(cli.app, ["grid", "--out", str(box / "out")], env={**ENV, "MIARS_DEBUG": value})
    if shown:
        assert isinstance(result.exception, RuntimeError)
    else:
        assert result.exit_code == 2 and "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("miars: error: unexpected RuntimeError: simulated bug")
        assert "this is a bug" in lines[0] and "MIARS_DEBUG=1" in lines[0]
    assert not (box / "out").exists()


def test_bench_defenses_names_the_defaults_it_leaves_out_only_when_it_runs(box):
    # refused: the error alone (notes print only once every check passed)
    result = RUNNER.invoke(cli.app, ["bench-defenses", "--target", "item", "--max-cells", "1", "--out", "out"], env=ENV)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and not (box / "out").exists()
    assert len(lines) == 1 and lines[0].startswith("miars: error: the grid has")
    # runs: the note names the default defense it leaves out
    result = RUNNER.invoke(cli.app, ["bench-defenses", "--dataset", "data.tsv", "--target", "item", "--defense-param",
                                     "list-noise.p=0.1", "--top-k", "10", "--seed", "0", "--attack-param", "epochs=20",
                                     "--workers", "1", "-q", "--no-report", "--max-cells", "40", "--out", "out",
                                     "--cache", "cache"], env=ENV)
    assert "miars: note: left out dp-sgd: trains only lfm, ncf" in result.stderr


# --------------------------------------------------------------------------- defaults that run


def test_bench_defenses_skips_a_default_sweep_value_the_catalogue_cannot_serve(box):
    """150 items and top-10 lists: ratio 0.05 (a pool of 200) is left out with a note, the rest of the sweep runs."""
    result = RUNNER.invoke(cli.app, ["bench-defenses", "--dataset", "data.tsv", "--target", "item", "--defense",
                                     "popularity-randomization", "--top-k", "10", "--seed", "0", "--attack-param",
                                     "epochs=20", "--workers", "1", "-q", "--out", "out", "--cache", "cache"], env=ENV)
    assert result.exit_code == 0, result.output
    note = "popularity-randomization ratio=0.05 on data.tsv: needs a pool of 200 popular items"
    assert f"miars: note: left out {note}" in result.stderr
    cells = sorted(p.name for p in (box / "out" / "cells").iterdir())
    assert len(cells) == 4 and not [c for c in cells if "ratio0.05" in c]  # none + ratios 0.1, 0.2, 0.5
    assert note in (box / "out" / "report" / "defenses.md").read_text()
    assert note in (box / "out" / "report" / "report.html").read_text()


# --------------------------------------------------------------------------- standard output in real processes


def _run(argv, stdout, env=None, **kw):
    return subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
                          env={**os.environ, **ENV, **(env or {})}, **kw)


STDOUT_COMMANDS = {
    "list": ["miars", "list", "recommender"],
    "list-json": ["miars", "list", "defense", "--json"],
    "plugins": ["miars", "plugins"],
    "plugins-json": ["miars", "plugins", "--json"],
    "help": ["miars", "--help"],
    "grid-help": ["miars", "grid", "--help"],
    "bench-help": ["miars", "bench-defenses", "--help"],
    "attack-help": ["miars-attack", "--help"],
}


@pytest.mark.parametrize("name", list(STDOUT_COMMANDS))
@pytest.mark.parametrize("target", ["/dev/full", "closed-pipe"])
def test_standard_output_errors_are_one_line(name, target, tmp_path):
    argv = [str(BIN / STDOUT_COMMANDS[name][0]), *STDOUT_COMMANDS[name][1:]]
    if target == "/dev/full":
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full here")
        with open("/dev/full", "w") as full:
            proc = _run(argv, full, cwd=tmp_path)
        needles = ["standard output", "No space left on device"]
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = _run(argv, write_end, cwd=tmp_path)
        finally:
            os.close(write_end)
        needles = ["standard output was closed", "broken pipe"]
    assert_one_line(proc.returncode, proc.stderr, "", needles)
    assert not os.listdir(tmp_path)


def test_report_on_a_full_standard_output_says_where_the_report_is(box, small_dataset):
    ok = RUNNER.invoke(cli.app, ["grid", "--dataset", "data.tsv", *FAST, "--workers", "1", "--no-report", "-q",
                                 "--out", "run", "--cache", "cache"], env=ENV)
    assert ok.exit_code == 0, ok.output
    with open("/dev/full", "w") as full:
        proc = _run([str(BIN / "miars"), "report", "run"], full, cwd=box)
    line = assert_one_line(proc.returncode, proc.stderr, "", ["cannot write", "No space left on device"])
    assert "run/report/report.html" in line and (box / "run" / "report" / "report.html").is_file()


# --------------------------------------------------------------------------- plugins installed elsewhere


def test_third_party_entry_points_are_blocked_for_the_suite(tmp_path, monkeypatch):
    info = tmp_path / "miars_example_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: miars-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[miars]\nexample = miars_example\n")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples" / "miars-example-plugin" / "src"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert os.environ.get(AUTOLOAD_VAR) == "1"  # set by conftest for every test
        blocked = get_plugins(reload=True)
        assert blocked.info["example"].status.startswith("blocked")
        assert "userknn" not in blocked.registry("recommender").names()
        assert blocked.pm.is_blocked("example")
        assert {"attacks", "datasets", "defenses", "recbole", "services"} <= {
            n for n, i in blocked.info.items() if i.status == "loaded"}
        monkeypatch.delenv(AUTOLOAD_VAR)
        loaded = get_plugins(reload=True)
        assert loaded.info["example"].status == "loaded" and "userknn" in loaded.registry("recommender").names()
    finally:
        monkeypatch.setenv(AUTOLOAD_VAR, "1")
        get_plugins(reload=True)
        for m in [m for m in sys.modules if m == "miars_example" or m.startswith("miars_example.")]:
            del sys.modules[m]


# --------------------------------------------------------------------------- dask's scratch space


def _dask_leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(("dask-", "miars-dask-")))


def test_dask_local_scratch_space_is_removed_on_success_and_on_sigterm(box, tmp_path):
    pytest.importorskip("distributed")
    tmp = tmp_path / "tmp"
    env = {"TMPDIR": str(tmp), "OMP_WAIT_POLICY": "PASSIVE"}
    argv = [str(BIN / "miars"), "grid", "--dataset", "data.tsv", *FAST, "--dask-local", "1", "--no-report", "-q",
            "--cache", "cache"]
    proc = _run([*argv, "--out", "ok"], subprocess.PIPE, env=env, cwd=box)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and _dask_leftovers(tmp) == []
    # SIGTERM while the cluster works: one line, exit 143, nothing of dask's left and no dask warning
    slow = [str(BIN / "miars"), "grid", "--dataset", "data.tsv", "--target", "lfm", "--top-k", "5", "--seed", "0,1,2",
            "--dask-local", "1", "--no-report", "-q", "--no-cache", "--out", "term"]
    p = subprocess.Popen(slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=box,
                         env={**os.environ, **ENV, **env})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp.glob("miars-dask-*/dask-scratch-space/worker-*")):
        time.sleep(0.2)  # the worker is up: a task is about to run
    time.sleep(2)
    p.send_signal(signal.SIGTERM)
    _, stderr = p.communicate(timeout=120)
    assert_one_line(p.returncode - 141, stderr, "", ["terminated by SIGTERM"])  # 143 = 128 + SIGTERM
    assert _dask_leftovers(tmp) == []


# --------------------------------------------------------------------------- values that pass the checks but cannot work


def test_a_hold_out_of_nothing_fails_in_one_line_not_with_nan_utility(small_dataset):
    from miars_core.engine.pipeline import AttackConfig, run_attack

    config = AttackConfig(dataset=str(small_dataset), target="pop", shadow="pop", top_k=5, min_interactions=5,
                          utility_holdout=0.01, featurizer_params={"dim": 8}, attack_params={"epochs": 20})
    with pytest.raises(MiarsError, match=r"--utility-holdout 0.01 holds out no interaction of any target member.*e.g. --utility-holdout 0.2"):
        run_attack(config)


def test_report_of_a_run_folder_whose_grid_json_is_not_an_object(box):
    (box / "run" / "cells").mkdir(parents=True)
    (box / "run" / "grid.json").write_text("[1, 2, 3]\n")
    before = _tree(box)
    result = RUNNER.invoke(cli.app, ["report", "run"], env=ENV)
    assert_one_line(result.exit_code, result.stderr, result.stdout, ["RUN_DIR 'run' has no cells yet"])
    assert _tree(box) == before
