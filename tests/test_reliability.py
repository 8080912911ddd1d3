"""Issue 9 beyond the corpus: outputs as a set, plugin validation, no-signal flag, deadlines, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from miars_core import cli
from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.plugins import get_plugins
from miars_core.kit import checks

RUNNER = CliRunner()
ATTACK_APP = cli._attack_app()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
FAST = ["--top-k", "5", "--min-interactions", "5", "--featurizer-param", "dim=8", "--quiet"]
MIARS_ATTACK = Path(sys.executable).parent / "miars-attack"


@pytest.fixture(autouse=True)
def _fresh_plugins():
    yield
    get_plugins(reload=True)


# --------------------------------------------------------------------------- outputs


def test_outputs_are_one_set_with_the_normal_file_mode(small_dataset, tmp_path):
    out, export = tmp_path / "out", tmp_path / "export"
    old_mask = os.umask(0o027)
    try:
        result = RUNNER.invoke(ATTACK_APP, ["--dataset", str(small_dataset), "--target", "pop", *FAST,
                                            "--out", str(out), "--export-miars", str(export)], env=ENV)
    finally:
        os.umask(old_mask)
    assert result.exit_code == 0, result.output
    files = [out / "result.json", out / "scores.tsv", *export.iterdir()]
    assert len(files) == 8
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path  # 0666 minus the umask, like any new file
    assert sorted(p.name for p in out.iterdir()) == [".miars.json", "result.json", "scores.tsv"]  # marker, no staging
    json.loads((out / "result.json").read_text())


def test_a_failed_write_never_leaves_a_new_scores_file_beside_an_old_result(small_dataset, tmp_path, monkeypatch):
    from miars_core.reports import report

    out = tmp_path / "out"
    base = ["--dataset", str(small_dataset), "--target", "pop", *FAST, "--out", str(out)]
    assert RUNNER.invoke(ATTACK_APP, [*base, "--seed", "1"], env=ENV).exit_code == 0
    old_scores = (out / "scores.tsv").read_bytes()

    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "result.json":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(report.os, "replace", failing_replace)
    result = RUNNER.invoke(ATTACK_APP, [*base, "--seed", "2"], env=ENV)
    assert result.exit_code == 2
    assert "No space left on device" in result.stderr and "roc_auc" in result.stdout  # the metrics are still shown
    # The old result.json went first: no result.json describes the new scores.tsv wrongly.
    assert not (out / "result.json").exists()
    assert (out / "scores.tsv").read_bytes() != old_scores
    assert not [p for p in out.iterdir() if p.name.startswith(".miars-")]


def test_non_utf8_and_tab_ids_are_escaped_not_fatal(tmp_path, small_dataset):
    raw = small_dataset.read_bytes().splitlines()
    lines = []
    for line in raw:
        user, item = line.split(b"\t")
        if int(user) % 7 == 0:
            user = b"caf\xe9-" + user  # Latin-1, not UTF-8
        elif int(user) % 7 == 1:
            user = b"back\\slash-" + user
        lines.append(user + b"," + item)
    data = tmp_path / "latin1.csv"
    data.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    result = RUNNER.invoke(ATTACK_APP, ["--dataset", str(data), "--target", "pop", *FAST, "--out", str(out)], env=ENV)
    assert result.exit_code == 0, result.output
    text = (out / "scores.tsv").read_bytes().decode("utf-8")  # valid UTF-8
    ids = [row.split("\t")[0] for row in text.splitlines()[1:]]
    assert any(i.startswith("caf\\xe9-") for i in ids)
    assert any(i.startswith("back\\\\slash-") for i in ids)
    assert all(len(row.split("\t")) == 3 for row in text.splitlines())


def test_tsv_id_escaping_is_reversible():
    from miars_core.contracts.files import tsv_id

    def unescape(text: str) -> bytes:
        out, i = bytearray(), 0
        while i < len(text):
            if text[i] == "\\":
                nxt = text[i + 1]
                if nxt == "x":
                    out.append(int(text[i + 2:i + 4], 16))
                    i += 4
                    continue
                out += {"\\": b"\\", "t": b"\t", "n": b"\n", "r": b"\r"}[nxt]
                i += 2
                continue
            out += text[i].encode()
            i += 1
        return bytes(out)

    for raw in (b"plain", b"caf\xe9", b"a\tb\nc\rd\\e", "caf\u00e9".encode(), b"\\xe9 literal"):
        assert unescape(tsv_id(raw.decode("utf-8", "surrogateescape"))) == raw


# --------------------------------------------------------------------------- parameters


def test_param_constraints_are_declared_on_the_builtin_components():
    from miars_core.contracts.params import constraints_of

    plugins = get_plugins()
    for kind, name, key in (("recommender", "item", "k"), ("recommender", "lfm", "embedding_size"),
                            ("recommender", "ncf", "mlp_embedding_size"), ("recommender", "recbole:EASE", "config"),
                            ("attack", "mlp", "hidden"), ("featurizer", "center-diff", "dim"),
                            ("defense", "popularity-randomization", "ratio")):
        assert key in constraints_of(plugins.registry(kind).get(name).factory), (kind, name, key)


def test_valid_boundary_values_are_accepted():
    plugins = get_plugins()
    assert plugins.create("recommender", "item", k=1, shrink=0).k == 1
    assert plugins.create("attack", "mlp", hidden=[1], epochs=1, batch_size=1, learning_rate=10).hidden == (1,)
    assert plugins.create("defense", "popularity-randomization", ratio=1).ratio == 1.0
    assert plugins.create("recommender", "recbole:EASE", learning_rate=None, config={"reg_weight": 250.0}).config


# --------------------------------------------------------------------------- plugins


def _module(name: str, **functions) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr, fn in functions.items():
        setattr(module, attr, fn)
    return module


class _Rec(Component):
    """A valid toy recommender (tests only)."""

    def __init__(self):
        pass

    def fit(self, train, seed=0):
        self.known_ = train.matrix.toarray() > 0
        return self

    def recommend(self, k):
        return np.argsort(self.known_, axis=1, kind="stable")[:, :k].astype(np.int64)


def _register(register):
    register("toy", _Rec)


def _fresh(fn):
    """A copy of ``fn``: @hookimpl marks the function object itself, so tests must not share one."""
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def test_a_misnamed_hook_fails_loading_and_check_plugin():
    misnamed = _module("misnamed_plugin", register_recommender=hookimpl(_fresh(_register)))
    plugins = get_plugins(extra=[misnamed])
    status = plugins.info["misnamed_plugin"].status
    assert status.startswith("failed:") and "register_recommender" in status and "did you mean register_recommenders" in status
    assert "toy" not in plugins.registry("recommender").names()
    with pytest.raises(AssertionError, match="did not register cleanly"):
        checks.check_plugin(misnamed)
    with pytest.raises(MiarsError, match="failed to load"):
        plugins.registry("recommender").get("toy")


def test_a_hook_without_hookimpl_fails_loading_and_check_plugin():
    unmarked = _module("unmarked_plugin", register_recommenders=_fresh(_register))
    plugins = get_plugins(extra=[unmarked])
    assert "not marked @hookimpl" in plugins.info["unmarked_plugin"].status
    with pytest.raises(AssertionError, match="not marked @hookimpl"):
        checks.check_plugin(unmarked)


def test_a_hook_with_wrong_arguments_fails_loading():
    def register_recommenders(register, extra):
        register("toy", _Rec)

    bad = _module("bad_args_plugin", register_recommenders=hookimpl(register_recommenders))
    plugins = get_plugins(extra=[bad])
    assert plugins.info["bad_args_plugin"].status.startswith("failed:")
    assert "extra" in plugins.info["bad_args_plugin"].status


def test_a_valid_plugin_still_loads_and_checks():
    good = _module("good_plugin", register_recommenders=hookimpl(_fresh(_register)))
    plugins = get_plugins(extra=[good])
    assert plugins.info["good_plugin"].status == "loaded"
    assert checks.check_plugin(good) == ["recommender:toy"]


def test_conflicting_plugin_is_reported_in_miars_plugins_and_other_commands_work(monkeypatch):
    from miars_core.contracts import plugins as plugins_module

    def register_recommenders(register):
        register("item", _Rec)

    dup = _module("dup_plugin", register_recommenders=hookimpl(register_recommenders))
    monkeypatch.setattr(plugins_module, "_cached", get_plugins(extra=[dup]))
    result = RUNNER.invoke(cli.app, ["plugins", "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["dup_plugin"]["status"].startswith("failed:") and "'recbole'" in rows["dup_plugin"]["status"]
    assert rows["recbole"]["status"] == "loaded"
    listed = RUNNER.invoke(cli.app, ["list", "recommender", "--json"], env=ENV)
    assert listed.exit_code == 0 and "lfm" in listed.stdout


class _Diverged(_Rec):
    """Valid lists, but training reports a NaN loss (tests only)."""

    def fit(self, train, seed=0):
        super().fit(train, seed)
        self.fit_info_ = {"final_train_loss": float("nan")}
        return self


class _NanLossError(_Rec):
    """Raises like RecBole's trainer when the loss becomes NaN (tests only)."""

    def fit(self, train, seed=0):
        raise ValueError("Training loss is nan")


@pytest.mark.parametrize("factory, needle", [(_Diverged, "final_train_loss=nan"), (_NanLossError, "Training loss is nan")])
def test_a_non_finite_training_loss_fails_the_run(small_dataset, factory, needle):
    from miars_core.engine.pipeline import AttackConfig, run_attack

    plugin = _module("diverging_plugin", register_recommenders=hookimpl(lambda register: register("diverging", factory)))
    config = AttackConfig(dataset=str(small_dataset), target="diverging", shadow="pop", top_k=5, min_interactions=5,
                          featurizer_params={"dim": 8})
    with pytest.raises(MiarsError) as err:
        run_attack(config, plugins=get_plugins(extra=[plugin]))
    message = str(err.value)
    assert needle in message and "'diverging'" in message and "learning_rate" in message and "\n" not in message


# --------------------------------------------------------------------------- no signal


class _RandomLists(Component):
    """Random unknown items for every member: an untrained recommender (tests only)."""

    def __init__(self):
        pass

    def fit(self, train, seed=0):
        self.known_ = train.matrix.toarray() > 0
        self.seed_ = seed
        return self

    def recommend(self, k):
        keys = np.random.default_rng(self.seed_).random(self.known_.shape)
        keys[self.known_] = 2.0
        return np.argsort(keys, axis=1, kind="stable")[:, :k].astype(np.int64)


def test_a_target_whose_lists_carry_no_signal_is_flagged(small_dataset):
    from miars_core.engine.pipeline import AttackConfig, run_attack
    from miars_core.reports.report import flag_no_signal, render_result

    plugin = _module("random_plugin", register_recommenders=hookimpl(lambda register: register("random-lists", _RandomLists)))
    plugins = get_plugins(extra=[plugin])
    common = dict(dataset=str(small_dataset), shadow="pop", top_k=10, min_interactions=5, featurizer_params={"dim": 8})
    random_run = run_attack(AttackConfig(target="random-lists", **common), plugins=plugins)
    warning = flag_no_signal(random_run)
    assert warning and "no signal" in warning
    utility = json.loads(render_result(random_run))["recommenders"]["target"]["utility"]
    assert utility["warning"] == warning and utility["lift"] < 1.5

    item_run = run_attack(AttackConfig(target="item", **common), plugins=plugins)
    assert flag_no_signal(item_run) is None
    assert item_run.recommenders["target"]["utility"]["lift"] > 1.5


# --------------------------------------------------------------------------- RecBole


@pytest.mark.parametrize("name", ["LightGCN", "DGCF"])
def test_recbole_models_fixed_by_compat_train_on_a_small_member_part(name):
    small = checks.make_interactions(n_users=60, n_items=70, seed=3)
    reg = get_plugins().registry("recommender")
    lists = reg.create(f"recbole:{name}", epochs=1).fit(small, seed=0).recommend(5)
    assert lists.shape == (60, 5)
    assert not small.matrix[np.repeat(np.arange(60), 5), lists.ravel()].any()


def test_unsupported_recbole_models_are_not_offered_and_are_refused_with_a_reason():
    from miars_recbole import UNSUPPORTED, general_model_names, supported_model_names

    assert set(UNSUPPORTED) <= set(general_model_names())
    assert not set(UNSUPPORTED) & set(supported_model_names())
    reg = get_plugins().registry("recommender")
    for name, reason in UNSUPPORTED.items():
        with pytest.raises(MiarsError, match="not supported") as err:
            reg.get(f"recbole:{name}")
        assert reason in str(err.value)


def test_docs_table_lists_every_recbole_model():
    from miars_recbole import UNSUPPORTED, general_model_names

    doc = (Path(__file__).resolve().parents[1] / "docs" / "recbole.md").read_text()
    for name in general_model_names():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"docs/recbole.md has no row for {name}"
        assert ("not supported" in row) == (name in UNSUPPORTED), row


# --------------------------------------------------------------------------- downloads


def _trickle_server(stop: threading.Event):
    """A loopback HTTP server that sends one byte every 50 ms, for at most 20 s."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(20)

    def serve():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n")
            end = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < end:
                try:
                    conn.sendall(b"x")
                except OSError:
                    return
                time.sleep(0.05)
        srv.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv.getsockname()[1], thread


def test_a_trickling_download_hits_its_overall_deadline(tmp_path):
    from miars_datasets import fetch

    stop = threading.Event()
    port, thread = _trickle_server(stop)
    start = time.monotonic()
    try:
        with pytest.raises(MiarsError, match="deadline") as err:
            fetch.download(f"http://127.0.0.1:{port}/slow.dat", tmp_path / "slow.dat", deadline=1.5)
    finally:
        stop.set()
        thread.join(5)
    assert time.monotonic() - start < 10  # cut off at the deadline, not after the server gave up
    assert "download it by hand" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_download_deadline_from_the_environment(monkeypatch):
    from miars_datasets import fetch

    monkeypatch.setenv(fetch.DEADLINE_ENV, "12.5")
    assert fetch.download_deadline() == 12.5
    for bad in ("abc", "0", "-3", "inf", "nan"):
        monkeypatch.setenv(fetch.DEADLINE_ENV, bad)
        with pytest.raises(MiarsError, match=fetch.DEADLINE_ENV):
            fetch.download_deadline()


# --------------------------------------------------------------------------- signals


def test_sigterm_during_training_removes_recbole_temporary_files(small_dataset, tmp_path):
    """A run killed by SIGTERM while RecBole trains leaves no members' data in $TMPDIR."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cache = tmp_path / "cache"
    env = {**os.environ, **ENV, "TMPDIR": str(tmp), "OMP_WAIT_POLICY": "PASSIVE", "PYTHONDONTWRITEBYTECODE": "1",
           "MIARS_CACHE": str(cache)}
    argv = [str(MIARS_ATTACK), "--dataset", str(small_dataset), "--target", "lfm", "--shadow", "lfm",
            "--target-param", "epochs=100000", "--shadow-param", "epochs=100000", *FAST, "--out", str(tmp_path / "out")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        # RecBole's temporary folder lives while it builds its dataset; the split is stored just before
        while time.monotonic() < deadline and not (list(tmp.glob("miars-recbole-*"))
                                                   or list(cache.glob("stages/v2/split/*/*/meta.json"))):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert list(cache.glob("stages/v2/split/*/*/meta.json")), "training never started"
        time.sleep(3.0)  # inside the recommender's training loop (100,000 epochs)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines() == [stderr.strip()] and stderr.startswith("miars: error: terminated by SIGTERM")
    assert "Traceback" not in stderr
    assert not list(tmp.glob("miars-recbole-*")), list(tmp.iterdir())
    assert not (tmp_path / "out" / "result.json").exists()


def test_a_conflicting_namespace_skips_the_later_plugin_and_blocks_the_prefix():
    from miars_core.contracts.errors import DuplicateNameError

    def register_namespaces(register):
        register("recommender", "recbole", lambda rest: _Rec, lambda: ["X"])

    plugins = get_plugins(extra=[_module("ns_dup_plugin", register_namespaces=hookimpl(register_namespaces))])
    assert "'recbole:'" in plugins.info["ns_dup_plugin"].status and plugins.info["ns_dup_plugin"].status.startswith("failed:")
    with pytest.raises(DuplicateNameError, match="'recbole' and 'ns_dup_plugin'"):
        plugins.registry("recommender").get("recbole:BPR")
    assert plugins.registry("recommender").get("pop").plugin == "recbole"
