"""The command line for real: ``miars`` and ``miars-attack`` on a small synthetic dataset.

In-process runs use typer's CliRunner; a few tests run the installed console scripts in a
subprocess to check real exit codes and that no traceback ever reaches the user. Every
end-to-end run uses the ``small_dataset`` fixture (300 users x 150 items) with ``--top-k 10``,
``--min-interactions 5`` and 16-dim item vectors, so it takes about a second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import miars_core
from miars_core import cli

BIN = Path(sys.executable).parent
MIARS_ATTACK = BIN / "miars-attack"
MIARS = BIN / "miars"

ATTACK_APP = cli._attack_app()
RUNNER = CliRunner()
#: Wide terminal, so rich never wraps a table cell or a help line.
ENV = {"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"}

TOP_K = 10
DIM = 16
FAST = ["--top-k", str(TOP_K), "--min-interactions", "5", "--featurizer-param", f"dim={DIM}"]

METRIC_KEYS = ("roc_auc", "balanced_accuracy", "accuracy", "precision", "recall",
               "tpr_at_fpr_0.01", "tpr_at_fpr_0.001", "advantage")
STAGES = ("load", "split", "shadow_recommender", "target_recommender", "featurize", "attack")


def invoke_attack(args):
    return RUNNER.invoke(ATTACK_APP, [str(a) for a in args], env=ENV)


def invoke_miars(args):
    return RUNNER.invoke(cli.app, [str(a) for a in args], env=ENV)


def assert_one_line_error(exit_code: int, stderr: str, output: str, *needles: str) -> str:
    """Exit 2, exactly one stderr line starting ``miars: error:`` that contains every needle."""
    assert exit_code == 2, f"exit {exit_code}; output:\n{output}"
    assert "Traceback" not in output and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    line = lines[0]
    assert line.startswith("miars: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_cli_error(result, *needles: str) -> str:
    # The error exits through typer.Exit(2): no other exception may escape.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return assert_one_line_error(result.exit_code, result.stderr, result.output, *needles)


def plain(text: str) -> str:
    """Text without rich's box drawing and with whitespace collapsed (for wrapped help text)."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def read_tsv(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    assert lines, f"{path} is empty"
    bad = [ln for ln in lines[:50] + lines[-50:] if not re.fullmatch(r"\d+\t\d+\t\d+", ln)]
    assert not bad, f"{path.name}: not 'UserID<TAB>ItemID<TAB>Score' int lines: {bad[:3]}"
    return np.loadtxt(path, dtype=np.int64, delimiter="\t", ndmin=2)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run_attack_cli(small_dataset, tmp_path_factory):
    """Run ``miars-attack`` in process once per distinct name; returns (result, result.json, folder)."""
    cache: dict = {}

    def go(name: str, *args, export: bool = False):
        if name not in cache:
            folder = tmp_path_factory.mktemp(f"run-{name}")
            argv = ["--dataset", small_dataset, *FAST, "--out", folder / "out", *args]
            if export:
                argv += ["--export-miars", folder / "export"]
            result = invoke_attack(argv)
            assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
            assert "Traceback" not in result.output
            data = json.loads((folder / "out" / "result.json").read_text())
            cache[name] = (result, data, folder)
        return cache[name]

    return go


@pytest.fixture(scope="module")
def item_run(run_attack_cli):
    """The headline run: item-based CF target and shadow, seed 3, with the authors' TSV export."""
    return run_attack_cli("item-seed3", "--target", "item", "--seed", "3", export=True)


@pytest.fixture
def bad_files(tmp_path):
    one_column = tmp_path / "one_column.tsv"
    one_column.write_text("".join(f"{u}\n" for u in range(200)))
    tiny = tmp_path / "tiny.tsv"
    rng = np.random.default_rng(1)
    tiny.write_text("".join(
        f"{u}\t{i}\n" for u in range(10) for i in np.sort(rng.choice(150, int(rng.integers(25, 61)), replace=False))
    ))
    regular = tmp_path / "regular_file"
    regular.write_text("keep me\n")
    return {"one_column": one_column, "tiny": tiny, "regular": regular}


# --------------------------------------------------------------------------- errors

ERROR_CASES = {
    # id: (extra args, needles in the error line); {name} is replaced by a bad_files path
    "unknown-target": (["--target", "nosuch"], ["'nosuch'", "recommender", "item", "lfm", "ncf", "pop"]),
    "unknown-shadow": (["--shadow", "nosuch"], ["'nosuch'", "recommender", "item", "lfm", "ncf", "pop"]),
    "unknown-featurizer": (["--featurizer", "nosuch"], ["'nosuch'", "featurizer", "center-diff"]),
    "unknown-attack": (["--attack", "nosuch"], ["'nosuch'", "attack", "mlp"]),
    "unknown-defense": (["--defense", "nosuch"], ["'nosuch'", "defense", "popularity-randomization"]),
    "bad-split": (["--split", "foo"], ["--split", "'foo'", "interactions", "users"]),
    "top-k-zero": (["--top-k", "0"], ["--top-k", "0"]),
    "top-k-impossible": (["--target", "pop", "--top-k", "100000"], ["--top-k", "100000", "impossible"]),
    "min-interactions-zero": (["--min-interactions", "0"], ["--min-interactions", "0"]),
    "param-not-key-value": (["--target-param", "noequals"], ["--target-param", "'noequals'", "KEY=VALUE"]),
    "param-rejected": (["--target-param", "nosuchparam=1"], ["'item'", "nosuchparam"]),
    "dim-too-large": (["--target", "pop", "--featurizer-param", "dim=1000"], ["dim 1000", "impossible"]),
    "defense-ratio": (["--target", "pop", "--defense", "popularity-randomization", "--defense-param", "ratio=2"],
                      ["ratio", "2"]),
    "missing-file": (["--dataset", "/nonexistent/file.tsv"], ["'/nonexistent/file.tsv'", "no such file"]),
    "unknown-dataset-name": (["--dataset", "nosuchname"], ["'nosuchname'", "ml-100k"]),
    "malformed-file": (["--dataset", "{one_column}"], ["malformed", "one_column.tsv"]),
    "too-few-users": (["--dataset", "{tiny}", "--min-interactions", "20", "--featurizer-param", "dim=100"],
                      ["only", "users", "--min-interactions"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_attack_errors_are_one_line_exit_2_and_write_nothing(case, small_dataset, bad_files, tmp_path):
    extra, needles = ERROR_CASES[case]
    extra = [a.format(**bad_files) for a in extra]
    out, export = tmp_path / "out", tmp_path / "export"
    args = ["--dataset", small_dataset, *FAST, "--quiet", *extra, "--out", out, "--export-miars", export]
    result = invoke_attack(args)
    line = assert_cli_error(result, *(n.format(**bad_files) for n in needles))
    assert len(line) < 600
    assert result.stdout == ""
    assert not (out / "result.json").exists()
    assert not export.exists() or list(export.iterdir()) == []  # no export file, no staging folder


BAD_PARAM_VALUES = {
    "featurizer-dim": ["--target", "pop", "--featurizer-param", "dim=abc"],
    "defense-ratio": ["--target", "pop", "--defense", "popularity-randomization", "--defense-param", "ratio=abc"],
    "attack-epochs": ["--target", "pop", "--attack-param", "epochs=abc"],
    "recommender-k": ["--target", "item", "--target-param", "k=abc"],
}


@pytest.mark.parametrize("case", list(BAD_PARAM_VALUES))
def test_wrongly_typed_param_value_is_a_one_line_error(case, small_dataset, tmp_path):
    args = ["--dataset", small_dataset, *FAST, "--quiet", *BAD_PARAM_VALUES[case], "--out", tmp_path / "out"]
    result = invoke_attack(args)
    assert_cli_error(result, "abc")
    assert not (tmp_path / "out" / "result.json").exists()


def test_unknown_name_fails_before_any_progress_message(small_dataset, tmp_path):
    """Without --quiet, a bad name still prints just the error: components are built before any work."""
    result = invoke_attack(["--dataset", small_dataset, "--target", "nosuch", "--out", tmp_path / "out"])
    assert_cli_error(result, "'nosuch'", "item, lfm, ncf, pop")
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.parametrize("flag", ["--out", "--export-miars"])
def test_output_folder_that_is_a_regular_file(flag, small_dataset, bad_files):
    regular = bad_files["regular"]
    result = invoke_attack(["--dataset", small_dataset, *FAST, "--quiet", flag, regular])
    assert_cli_error(result, flag, "is a file")
    assert regular.read_text() == "keep me\n"


def test_miars_attack_subcommand_reports_errors_the_same_way(small_dataset):
    result = invoke_miars(["attack", "--dataset", small_dataset, "--attack", "nosuch"])
    assert_cli_error(result, "'nosuch'", "mlp")


# --------------------------------------------------------------------------- a successful run


def test_run_prints_the_metrics_table(item_run):
    result, _, _ = item_run
    for key in METRIC_KEYS:
        assert key in result.stdout
    assert "what the CCS'21 paper calls 'AUC'" in plain(result.stdout)
    assert "target: " in result.stdout and "members" in result.stdout
    assert "wrote" in result.stderr and "result.json" in result.stderr


def test_result_json_contents(item_run, small_dataset):
    _, data, _ = item_run
    assert {"metrics", "timings", "config", "split", "versions", "recommenders", "components"} <= set(data)
    assert "attackers" not in data  # only written with a defense

    metrics = data["metrics"]
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["members"] == data["split"]["target"]["members"]
    assert metrics["non_members"] == data["split"]["target"]["non_members"]

    timings = data["timings"]
    assert set(STAGES) <= set(timings) and "total" in timings
    assert set(timings) <= {*STAGES, "warmup", "total"}  # the process's one-time warm-up is a timing of its own
    assert all(v >= 0 for v in timings.values())
    assert timings["total"] == pytest.approx(sum(timings[s] for s in (*STAGES, "warmup") if s in timings), abs=0.01)

    config = data["config"]
    assert config["dataset"] == str(small_dataset)
    assert (config["target"], config["shadow"]) == ("item", "item")  # --shadow defaults to --target
    assert (config["featurizer"], config["attack"], config["defense"]) == ("center-diff", "mlp", None)
    assert (config["top_k"], config["seed"], config["split"], config["min_interactions"]) == (TOP_K, 3, "interactions", 5)
    assert config["featurizer_params"] == {"dim": DIM}

    split = data["split"]
    n_lines = len(small_dataset.read_text().splitlines())
    assert split["dataset"] == {"users": 300, "items": 150, "interactions": n_lines}
    assert split["mode"] == "interactions"
    for part in ("shadow", "target"):
        p = split[part]
        assert p["members"] == p["non_members"] > 50
        assert p["users"] == 2 * p["members"]
        assert p["interactions"] == p["member_interactions"] + p["non_member_interactions"] > 0
    # interactions mode: every interaction lands in exactly one of the three parts
    total = split["shadow"]["interactions"] + split["target"]["interactions"] + split["vectorization"]["interactions"]
    assert total <= n_lines

    versions = data["versions"]
    assert versions["miars"] == miars_core.__version__
    for dist in ("recbole", "torch", "numpy"):
        assert isinstance(versions[dist], str) and versions[dist]
    assert {"attacks", "datasets", "defenses", "recbole"} <= set(versions["plugins"])
    assert all(p["status"] == "loaded" for p in versions["plugins"].values())

    for role in ("shadow", "target"):
        rec = data["recommenders"][role]
        assert rec["name"] == "item"
        assert isinstance(rec["fit_info"], dict) and rec["fit_info"]
        assert 0.0 <= rec["members_popular_overlap"] <= 1.0
    assert data["components"]["featurizer"] == {"name": "center-diff", "params": {"dim": DIM}}


def test_export_miars_files(item_run):
    _, data, folder = item_run
    export = folder / "export"
    names = {p.name for p in export.iterdir()}
    assert names == {"shadow_interactions.tsv", "shadow_recommendations.tsv", "target_interactions.tsv",
                     "target_recommendations.tsv", "item_vectors.tsv", "item_ids.tsv"}, names

    vector_lines = (export / "item_vectors.tsv").read_text().splitlines()
    n_items = len(vector_lines)
    assert n_items == data["split"]["items"]
    for line in vector_lines:
        fields = line.split("\t")
        assert len(fields) == DIM
        assert all(np.isfinite(float(f)) for f in fields)
    item_ids = [line.split("\t") for line in (export / "item_ids.tsv").read_text().splitlines()]
    assert [int(i) for i, _ in item_ids] == list(range(n_items))
    assert {int(orig) for _, orig in item_ids} <= set(range(150))

    for part in ("shadow", "target"):
        n_users, n_members = data["split"][part]["users"], data["split"][part]["members"]
        inter = read_tsv(export / f"{part}_interactions.tsv")
        recs = read_tsv(export / f"{part}_recommendations.tsv")

        assert len(inter) == data["split"][part]["interactions"]
        assert set(np.unique(inter[:, 0])) == set(range(n_users))
        assert (inter[:, 2] == 1).all()
        assert inter[:, 1].min() >= 0 and inter[:, 1].max() < n_items

        assert len(recs) == n_users * TOP_K
        assert (recs[:, 0] == np.repeat(np.arange(n_users), TOP_K)).all()  # every user exactly k lines, in order
        assert (recs[:, 2] == np.tile(np.arange(TOP_K, 0, -1), n_users)).all()  # score k - rank
        assert recs[:, 1].min() >= 0 and recs[:, 1].max() < n_items
        lists = recs[:, 1].reshape(n_users, TOP_K)
        known = np.zeros((n_users, n_items), dtype=bool)
        known[inter[:, 0], inter[:, 1]] = True
        assert not known[np.arange(n_users)[:, None], lists].any(), "a recommended item is already known"
        assert all(len(set(row)) == TOP_K for row in lists.tolist())

        # Members are the first n/2 users: the others get the members' popular items they do not know.
        popularity = known[:n_members].sum(axis=0)
        order = np.argsort(-popularity, kind="stable")
        for user in range(n_members, n_users):
            expected = [i for i in order if not known[user, i]][:TOP_K]
            assert lists[user].tolist() == expected, f"{part} user {user} is not served the popular list"
        # ... and the members get personalized lists (item CF), not all the popular one.
        member_popular = [lists[u].tolist() == [i for i in order if not known[u, i]][:TOP_K] for u in range(n_members)]
        assert sum(member_popular) < n_members / 2


# --------------------------------------------------------------------------- seeds and signal


def test_same_seed_same_metrics_other_seed_other_split(run_attack_cli, item_run):
    _, first, _ = item_run
    _, again, _ = run_attack_cli("item-seed3-again", "--target", "item", "--seed", "3", "--quiet")
    _, other, _ = run_attack_cli("item-seed4", "--target", "item", "--seed", "4", "--quiet")
    assert again["metrics"] == first["metrics"]
    assert again["split"] == first["split"]
    assert again["config"] == first["config"]
    assert other["config"]["seed"] == 4 != first["config"]["seed"]
    assert other["metrics"] != first["metrics"] or other["split"] != first["split"]


def test_popularity_target_leaks_nothing_item_cf_leaks(run_attack_cli, item_run):
    """Members and non-members get the same service from `pop`: the attack reads chance."""
    _, pop, _ = run_attack_cli("pop", "--target", "pop", "--shadow", "pop", "--seed", "1", "--quiet")
    assert pop["config"]["shadow"] == "pop"
    assert 0.3 <= pop["metrics"]["roc_auc"] <= 0.7, pop["metrics"]
    _, item, _ = item_run
    assert item["metrics"]["roc_auc"] > 0.7, item["metrics"]


def test_defense_reports_aware_and_unaware_attackers(run_attack_cli):
    result, data, _ = run_attack_cli("defense", "--target", "item", "--seed", "2", "--defense",
                                     "popularity-randomization", "--defense-param", "ratio=0.5")
    assert set(data["attackers"]) == {"defense_aware", "defense_unaware"}
    for metrics in data["attackers"].values():
        for key in METRIC_KEYS:
            assert 0.0 <= metrics[key] <= 1.0
    assert data["metrics"] == data["attackers"]["defense_aware"]  # the headline attacker knows the defense
    assert data["config"]["defense"] == "popularity-randomization"
    assert data["config"]["defense_params"] == {"ratio": 0.5}
    assert data["components"]["defense"] == {"name": "popularity-randomization", "params": {"ratio": 0.5}}
    assert "defense" in data["timings"]
    assert "defense-aware" in result.stdout and "defense-unaware" in result.stdout
    assert "popularity-randomization" in result.stdout  # in the table title


def test_split_users_mode(run_attack_cli):
    _, data, _ = run_attack_cli("split-users", "--target", "pop", "--split", "users", "--quiet")
    split = data["split"]
    assert data["config"]["split"] == split["mode"] == "users"
    # each user wholly in one part: the three parts hold disjoint users
    assert split["shadow"]["users"] + split["target"]["users"] + split["vectorization"]["users"] <= 300
    assert split["shadow"]["interactions"] + split["target"]["interactions"] + split["vectorization"]["interactions"] \
        <= split["dataset"]["interactions"]


# --------------------------------------------------------------------------- plugins, list, help


def test_plugins_json():
    result = invoke_miars(["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    by_name = {r["name"]: r for r in rows}
    assert {"attacks", "datasets", "defenses", "recbole"} <= set(by_name)
    for name in ("attacks", "datasets", "defenses", "recbole"):
        assert by_name[name]["status"] == "loaded"
        assert by_name[name]["hooks"]
    assert set(by_name["recbole"]["provides"]["recommender"]) >= {"item", "lfm", "ncf", "pop", "recbole:<Name>"}
    assert "file" in by_name["datasets"]["provides"]["dataset"]
    assert by_name["defenses"]["provides"]["defense"] == ["popularity-randomization", "list-noise", "rank-shuffle",
                                                          "subsample", "dp-itemknn", "dp-sgd"]


def test_plugins_table():
    result = invoke_miars(["plugins"])
    assert result.exit_code == 0, result.output
    for name in ("attacks", "datasets", "defenses", "recbole", "loaded"):
        assert name in result.stdout


@pytest.mark.parametrize("kind", ["recommender", "recommenders"])
def test_list_recommender_json(kind):
    result = invoke_miars(["list", kind, "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name in ("item", "lfm", "ncf", "pop", "recbole:<Name>"):
        assert rows[name]["plugin"] == "recbole"
        assert rows[name]["summary"].strip()
    assert "BPR" in rows["recbole:<Name>"]["summary"]


def test_list_other_kinds():
    for kind, name in (("dataset", "ml-100k"), ("featurizer", "center-diff"), ("attack", "mlp"),
                       ("defense", "popularity-randomization")):
        result = invoke_miars(["list", kind])
        assert result.exit_code == 0, result.output
        assert name in result.stdout


def test_list_unknown_kind():
    result = invoke_miars(["list", "nosuchkind"])
    assert_cli_error(result, "'nosuchkind'", "recommender", "dataset")


def test_miars_help():
    result = invoke_miars(["--help"])
    assert result.exit_code == 0, result.output
    for command in ("attack", "plugins", "list"):
        assert command in result.stdout


def test_miars_attack_help_explains_balanced_accuracy():
    result = invoke_attack(["--help"])
    assert result.exit_code == 0, result.output
    text = plain(result.stdout)
    assert "balanced accuracy (what the CCS'21 paper calls 'AUC'" in text
    assert "--top-k" in text and "--export-miars" in text


# --------------------------------------------------------------------------- real processes


def run_script(*args, timeout=120):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ENV})


def test_script_unknown_target_exits_2_without_traceback(small_dataset, tmp_path):
    assert MIARS_ATTACK.is_file(), f"console script not installed: {MIARS_ATTACK}"
    proc = run_script(MIARS_ATTACK, "--dataset", small_dataset, "--target", "nosuch", "--out", tmp_path / "out")
    assert_one_line_error(proc.returncode, proc.stderr, proc.stdout + proc.stderr,
                          "'nosuch'", "item", "lfm", "ncf", "pop")
    assert proc.stdout == ""
    assert not (tmp_path / "out" / "result.json").exists()


def test_script_malformed_dataset_exits_2_without_traceback(bad_files, tmp_path):
    proc = run_script(MIARS_ATTACK, "--dataset", bad_files["one_column"], "--quiet", "--out", tmp_path / "out")
    assert_one_line_error(proc.returncode, proc.stderr, proc.stdout + proc.stderr, "malformed", "one_column.tsv")
    assert not (tmp_path / "out" / "result.json").exists()


def test_script_successful_run(small_dataset, tmp_path):
    proc = run_script(MIARS_ATTACK, "--dataset", small_dataset, "--target", "pop", *FAST, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "roc_auc" in proc.stdout and "balanced_accuracy" in proc.stdout
    data = json.loads((tmp_path / "out" / "result.json").read_text())
    assert data["config"]["target"] == "pop"


def test_script_miars_help_and_list_unknown_kind():
    proc = run_script(MIARS, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "attack" in proc.stdout and "plugins" in proc.stdout
    proc = run_script(MIARS, "list", "nosuchkind", timeout=60)
    assert_one_line_error(proc.returncode, proc.stderr, proc.stdout + proc.stderr, "'nosuchkind'")


LAZY = "import sys; {setup}; print('torch' in sys.modules, 'recbole' in sys.modules)"


@pytest.mark.parametrize("setup", [
    "import miars_core.cli",
    "import miars_core.cli; from miars_core.contracts.plugins import get_plugins; get_plugins()",
])
def test_heavy_imports_are_lazy(setup):
    """`miars --help`, `miars plugins` and `miars list` must not pay for torch or RecBole."""
    proc = run_script(sys.executable, "-c", LAZY.format(setup=setup), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"


def test_scores_file_reproduces_the_reported_roc_auc(item_run):
    from sklearn.metrics import roc_auc_score

    _, data, folder = item_run
    lines = (folder / "out" / "scores.tsv").read_text().splitlines()
    assert lines[0] == "user_id\tis_member\tscore"
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == data["split"]["target"]["users"]
    labels = [int(r[1]) for r in rows]
    scores = [float(r[2]) for r in rows]
    assert sum(labels) == data["split"]["target"]["members"]
    assert roc_auc_score(labels, scores) == pytest.approx(data["metrics"]["roc_auc"], abs=1e-6)
