"""The bad-input corpus (issue 9): every bad input is one line, exit 2, no traceback, nothing lost.

Each case runs ``miars-attack`` on the small synthetic dataset (a copy inside the case's own
sandbox folder) and asserts: exit code 2, exactly one stderr line starting ``miars: error:``
(holding the case's needles), no ``Traceback`` anywhere, and no file created, changed or
removed anywhere in the sandbox outside ``--out`` / ``--export-miars`` (the working directory
is the sandbox too). ``--out`` gets no result.json unless the case says results must survive.

Most cases fail before any training and run in process (typer's CliRunner); the few that need
a real process (a closed or full stdout, a file-size limit) run the console script.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from miars_core import cli
from miars_core.contracts.components import Component
from miars_core.contracts.hookspecs import hookimpl

RUNNER = CliRunner()
ATTACK_APP = cli._attack_app()
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
MIARS_ATTACK = Path(sys.executable).parent / "miars-attack"

#: Fast defaults: a non-personalized target and shadow, tiny lists and item vectors.
BASE = ["--top-k", "5", "--min-interactions", "5", "--featurizer-param", "dim=8", "--target", "pop", "--quiet"]

LONG = "x" * 300


def _inter(text: str):
    return lambda box: (box / "bad.inter").write_text(text)


def _write(name: str, data: bytes | str):
    def setup(box: Path) -> None:
        p = box / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _mkdir(name: str):
    return lambda box: (box / name).mkdir(parents=True, exist_ok=True)


def _copy_data_to(name: str):
    def setup(box: Path) -> None:
        dest = box / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(box / "data.tsv", dest)
    return setup


def _tiny(box: Path) -> None:
    rng = np.random.default_rng(1)
    (box / "tiny.tsv").write_text("".join(
        f"{u}\t{i}\n" for u in range(10) for i in np.sort(rng.choice(150, int(rng.integers(25, 61)), replace=False))))


def _truncated_gz(box: Path) -> None:
    data = gzip.compress((box / "data.tsv").read_bytes())
    (box / "cut.tsv.gz").write_bytes(data[: len(data) // 2])


# id: (args, needles, setup). {box} is the sandbox, {out}/{export} the output folders, {data} the dataset.
CASES: dict[str, tuple[list[str], list[str], object]] = {
    # -- recommender parameter values
    "item-k-zero": (["--target", "item", "--target-param", "k=0"], ["'item'", "k=0", ">= 1"], None),
    "item-k-negative": (["--target", "item", "--target-param", "k=-1"], ["k=-1", ">= 1"], None),
    "item-k-text": (["--target", "item", "--target-param", "k=abc"], ["abc"], None),
    "item-k-float": (["--target", "item", "--target-param", "k=2.5"], ["k=2.5"], None),
    "item-shrink-nan": (["--target", "item", "--target-param", "shrink=NaN"], ["shrink", "non-finite"], None),
    "item-shrink-inf": (["--target", "item", "--target-param", "shrink=Infinity"], ["shrink", "non-finite"], None),
    "item-shrink-neg-inf": (["--target", "item", "--target-param", "shrink=-Infinity"], ["shrink", "non-finite"], None),
    "item-shrink-negative": (["--target", "item", "--target-param", "shrink=-1"], ["shrink", ">= 0"], None),
    "item-unknown-key": (["--target", "item", "--target-param", "kk=3"], ["'kk'", "did you mean k?", "shrink"], None),
    "lfm-embedding-zero": (["--target", "lfm", "--target-param", "embedding_size=0"], ["embedding_size=0", ">= 1"], None),
    "lfm-embedding-negative": (["--target", "lfm", "--target-param", "embedding_size=-4"], ["embedding_size=-4"], None),
    "lfm-embedding-text": (["--target", "lfm", "--target-param", "embedding_size=big"], ["embedding_size", "big"], None),
    "lfm-lr-1e9": (["--target", "lfm", "--target-param", "learning_rate=1e9"], ["learning_rate", "<= 10"], None),
    "lfm-lr-nan": (["--target", "lfm", "--target-param", "learning_rate=NaN"], ["learning_rate", "non-finite"], None),
    "lfm-lr-inf": (["--target", "lfm", "--target-param", "learning_rate=Infinity"], ["learning_rate", "non-finite"], None),
    "lfm-lr-zero": (["--target", "lfm", "--target-param", "learning_rate=0"], ["learning_rate", "> 0"], None),
    "lfm-lr-negative": (["--target", "lfm", "--target-param", "learning_rate=-0.1"], ["learning_rate", "> 0"], None),
    "lfm-epochs-zero": (["--target", "lfm", "--target-param", "epochs=0"], ["epochs=0", ">= 1"], None),
    "foldin-solver-unknown": (["--service", "foldin", "--service-param", "solver=newton"],
                              ["solver", "newton", "'auto', 'ridge', 'gradient'"], None),
    "foldin-reg-zero": (["--service", "foldin", "--service-param", "reg=0"], ["reg=0", "> 0"], None),
    "foldin-reg-nan": (["--service", "foldin", "--service-param", "reg=NaN"], ["reg", "non-finite"], None),
    "foldin-ridge-ncf": (["--target", "ncf", "--service", "foldin", "--service-param", "solver=ridge"],
                         ["solver=ridge", "'ncf'", "no closed-form fold-in", "MLP", "solver=auto"], None),
    "query-budget-zero": (["--attack", "query-recall", "--service", "foldin", "--query-budget", "0"],
                          ["--query-budget 0", "'query-recall'", "--query-budget >= 1"], None),
    "lfm-batch-zero": (["--target", "lfm", "--target-param", "batch_size=0"], ["batch_size=0", ">= 1"], None),
    "lfm-unknown-key": (["--target", "lfm", "--target-param", "embeding_size=8"], ["did you mean embedding_size?"], None),
    "ncf-mf-embedding-zero": (["--target", "ncf", "--target-param", "mf_embedding_size=0"], ["mf_embedding_size=0"], None),
    "ncf-list-param": (["--target", "ncf", "--target-param", "epochs=[1,2]"], ["epochs", "[1, 2]"], None),
    "shadow-k-zero": (["--shadow", "item", "--shadow-param", "k=0"], ["'item'", "k=0"], None),
    "pop-takes-no-params": (["--target-param", "k=3"], ["'pop'", "no parameter 'k'"], None),
    # -- recbole:<Name> parameters whose default is None, and names
    "recbole-lr-text": (["--target", "recbole:EASE", "--target-param", "learning_rate=abc"], ["learning_rate", "abc", "not a number"], None),
    "recbole-config-text": (["--target", "recbole:EASE", "--target-param", "config=abc"], ["config", "JSON object"], None),
    "recbole-config-list": (["--target", "recbole:EASE", "--target-param", "config=[1]"], ["config", "JSON object"], None),
    "recbole-model-override": (["--target", "recbole:EASE", "--target-param", "model=Nope"], ["model", "fixed", "recbole:EASE"], None),
    "recbole-model-mismatch": (["--target", "recbole:BPR", "--target-param", "model=EASE"], ["model"], None),
    "recbole-generic-model-mismatch": (["--target", "recbole:SimpleX", "--target-param", "model=EASE"], ["model", "fixed", "SimpleX"], None),
    "recbole-config-model": (["--target", "recbole:EASE", "--target-param", 'config={"model": "BPR"}'], ["config", "'model'"], None),
    "recbole-config-seed": (["--target", "recbole:EASE", "--target-param", 'config={"seed": 3}'], ["config", "'seed'"], None),
    "recbole-config-embedding-zero": (["--target", "recbole:SimpleX", "--target-param", 'config={"embedding_size": 0}'], ["embedding_size"], None),
    "recbole-config-nan": (["--target", "recbole:SimpleX", "--target-param", 'config={"reg_weight": NaN}'], ["non-finite", "reg_weight"], None),
    "recbole-epochs-negative": (["--target", "recbole:EASE", "--target-param", "epochs=-1"], ["epochs=-1"], None),
    "recbole-batch-nan": (["--target", "recbole:EASE", "--target-param", "batch_size=NaN"], ["batch_size", "non-finite"], None),
    "recbole-unknown-model": (["--target", "recbole:Nope"], ["'recbole:Nope'", "valid recbole: names"], None),
    "recbole-typo": (["--target", "recbole:LightGNC"], ["did you mean recbole:LightGCN"], None),
    "recbole-convncf-memory": (["--target", "recbole:ConvNCF"], ["ConvNCF", "not supported", "GB"], None),
    "recbole-pop-broken-counts": (["--target", "recbole:Pop"], ["recbole:Pop", "not supported", "`pop`"], None),
    "recbole-nncf-model-override": (["--target", "recbole:NNCF", "--target-param", "model=BPR"], ["model", "fixed"], None),
    "recbole-nncf-score-batch-zero": (["--target", "recbole:NNCF", "--target-param", "score_batch_size=0"], ["score_batch_size=0"], None),
    "recbole-ract-stages": (["--target", "recbole:RaCT"], ["recbole:RaCT", "not supported", "stages"], None),
    "recbole-diffrec": (["--target", "recbole:DiffRec"], ["DiffRec", "not supported"], None),
    "recbole-ldiffrec": (["--target", "recbole:LDiffRec"], ["LDiffRec", "not supported"], None),
    # -- attack, featurizer and defense parameters
    "attack-hidden-negative": (["--attack-param", "hidden=[-1]"], ["hidden", ">= 1"], None),
    "attack-hidden-text": (["--attack-param", 'hidden=["a"]'], ["hidden", "'a'"], None),
    "attack-hidden-float": (["--attack-param", "hidden=[2.7]"], ["hidden", "2.7"], None),
    "attack-hidden-scalar": (["--attack-param", "hidden=5"], ["hidden"], None),
    "attack-epochs-zero": (["--attack-param", "epochs=0"], ["epochs=0", ">= 1"], None),
    "attack-batch-zero": (["--attack-param", "batch_size=0"], ["batch_size=0", ">= 1"], None),
    "attack-lr-nan": (["--attack-param", "learning_rate=NaN"], ["learning_rate", "non-finite"], None),
    "attack-momentum-big": (["--attack-param", "momentum=1.5"], ["momentum"], None),
    "attack-unknown-key": (["--attack-param", "epoch=3"], ["did you mean epochs?"], None),
    "featurizer-dim-zero": (["--featurizer-param", "dim=0"], ["dim=0", ">= 1"], None),
    "featurizer-dim-negative": (["--featurizer-param", "dim=-3"], ["dim=-3"], None),
    "featurizer-dim-nan": (["--featurizer-param", "dim=NaN"], ["dim"], None),
    "featurizer-dim-huge": (["--featurizer-param", "dim=1000"], ["dim 1000", "impossible"], None),
    "defense-ratio-zero": (["--defense", "popularity-randomization", "--defense-param", "ratio=0"], ["ratio", "> 0"], None),
    "defense-ratio-negative": (["--defense", "popularity-randomization", "--defense-param", "ratio=-0.5"], ["ratio"], None),
    "defense-ratio-nan": (["--defense", "popularity-randomization", "--defense-param", "ratio=NaN"], ["ratio", "non-finite"], None),
    "defense-ratio-two": (["--defense", "popularity-randomization", "--defense-param", "ratio=2"], ["ratio", "<= 1"], None),
    "param-not-key-value": (["--target-param", "noequals"], ["'noequals'", "KEY=VALUE"], None),
    "param-empty-key": (["--attack-param", "=5"], ["'=5'", "KEY=VALUE"], None),
    # -- plain values and seeds
    "seed-2-32": (["--seed", str(2**32)], ["--seed", str(2**32)], None),
    "seed-2-70": (["--seed", str(2**70)], ["--seed", str(2**70)], None),
    "seed-negative": (["--seed", "-1"], ["--seed", "-1"], None),
    "top-k-zero": (["--top-k", "0"], ["--top-k", "0"], None),
    "top-k-negative": (["--top-k", "-5"], ["--top-k", "-5"], None),
    "top-k-impossible": (["--top-k", "100000"], ["--top-k 100000", "impossible"], None),
    "min-interactions-zero": (["--min-interactions", "0"], ["--min-interactions", "0"], None),
    "split-unknown": (["--split", "foo"], ["--split", "'foo'", "interactions", "users"], None),
    # -- click usage errors: one line, not a box
    "usage-top-k-text": (["--top-k", "abc"], ["'--top-k'", "abc"], None),
    "usage-seed-text": (["--seed", "abc"], ["'--seed'", "abc"], None),
    "usage-min-interactions-float": (["--min-interactions", "1.5"], ["'--min-interactions'", "1.5"], None),
    "usage-unknown-option": (["--nosuch-option"], ["--nosuch-option"], None),
    "usage-missing-value": (["--top-k"], ["--top-k"], None),
    "usage-extra-argument": (["surplus"], ["surplus"], None),
    # -- names
    "unknown-target": (["--target", "nosuch"], ["'nosuch'", "item", "lfm", "ncf", "pop"], None),
    "unknown-shadow": (["--shadow", "nosuch"], ["'nosuch'", "recommender"], None),
    "unknown-featurizer": (["--featurizer", "nosuch"], ["'nosuch'", "center-diff"], None),
    "unknown-attack": (["--attack", "nosuch"], ["'nosuch'", "mlp"], None),
    "unknown-defense": (["--defense", "nosuch"], ["'nosuch'", "popularity-randomization"], None),
    "unknown-dataset-name": (["--dataset", "nosuchname"], ["'nosuchname'", "ml-100k"], None),
    # -- dataset files
    "dataset-missing": (["--dataset", "{box}/missing.tsv"], ["missing.tsv", "no such file"], None),
    "dataset-is-folder": (["--dataset", "{box}/folder.tsv"], ["folder.tsv"], _mkdir("folder.tsv")),
    "dataset-empty": (["--dataset", "{box}/empty.tsv"], ["empty.tsv", "empty"], _write("empty.tsv", "")),
    "dataset-one-column": (["--dataset", "{box}/one.tsv"], ["malformed", "one.tsv"], _write("one.tsv", "".join(f"{u}\n" for u in range(200)))),
    "dataset-binary": (["--dataset", "{box}/junk.tsv"], ["junk.tsv"], _write("junk.tsv", bytes(range(256)) * 8)),
    "dataset-truncated-gz": (["--dataset", "{box}/cut.tsv.gz"], ["cut.tsv.gz"], _truncated_gz),
    "dataset-too-few-users": (["--dataset", "{box}/tiny.tsv", "--min-interactions", "20"], ["only", "users", "--min-interactions"], _tiny),
    "inter-token-seq": (["--dataset", "{box}/bad.inter"], ["item_id:token_seq", "one row per interaction"],
                        _inter("user_id:token\titem_id:token_seq\n1\t242 3\n2\t5\n")),
    "inter-two-item-columns": (["--dataset", "{box}/bad.inter"], ["2 'item_id' columns"],
                               _inter("user_id:token\titem_id:token\titem_id:float\n1\t2\t3\n")),
    "inter-same-item-column-twice": (["--dataset", "{box}/bad.inter"], ["2 'item_id' columns"],
                                     _inter("user_id:token\titem_id:token\titem_id:token\n1\t2\t3\n")),
    "inter-unknown-type": (["--dataset", "{box}/bad.inter"], ["'item_id:tokn'", "unknown type"],
                           _inter("user_id:token\titem_id:tokn\n1\t2\n")),
    "inter-int-types": (["--dataset", "{box}/bad.inter"], ["'user_id:int'", "unknown type"],
                        _inter("user_id:int\titem_id:int\n1\t2\n")),
    "inter-float-item": (["--dataset", "{box}/bad.inter"], ["item_id:float", ":token"],
                         _inter("user_id:token\titem_id:float\n1\t2\n")),
    "inter-no-item-column": (["--dataset", "{box}/bad.inter"], ["'item_id'"],
                             _inter("user_id:token\trating:float\n1\t2\n")),
    "dataset-name-too-long": (["--dataset", "{box}/" + LONG + ".tsv"], ["--dataset", "File name too long"], None),
    "dataset-under-a-file": (["--dataset", "{box}/afile/data.tsv"], ["--dataset", "Not a directory"], _write("afile", "keep me\n")),
    "data-dir-name-too-long": (["--dataset", "ml-1m", "--data-dir", "{box}/" + LONG], ["--data-dir", "File name too long"], None),
    "data-dir-missing": (["--dataset", "ml-1m", "--data-dir", "{box}/nowhere"], ["nowhere", "does not exist"], None),
    "data-dir-without-file": (["--dataset", "ml-1m", "--data-dir", "{box}/emptydir"], ["ratings.dat"], _mkdir("emptydir")),
    "dataset-tilde-expanded": (["--dataset", "~/missing-in-home.tsv"], ["{box}/home/missing-in-home.tsv"], None),
    # -- output folders
    "out-is-a-file": (["--out", "{box}/afile"], ["--out", "is a file"], _write("afile", "keep me\n")),
    "export-is-a-file": (["--export-miars", "{box}/afile"], ["--export-miars", "is a file"], _write("afile", "keep me\n")),
    "out-under-a-file": (["--out", "{box}/afile/sub"], ["--out", "cannot be created"], _write("afile", "keep me\n")),
    "out-result-json-is-a-folder": (["--out", "{box}/res"], ["folder named result.json"], _mkdir("res/result.json")),
    "out-scores-is-a-folder": (["--out", "{box}/res"], ["folder named scores.tsv"], _mkdir("res/scores.tsv")),
    "export-file-is-a-folder": (["--export-miars", "{box}/exp"], ["folder named item_ids.tsv"], _mkdir("exp/item_ids.tsv")),
    "out-would-overwrite-input": (["--dataset", "{box}/res/scores.tsv", "--out", "{box}/res"],
                                  ["would overwrite the input file", "scores.tsv"], _copy_data_to("res/scores.tsv")),
    "export-would-overwrite-input": (["--dataset", "{box}/exp/item_ids.tsv", "--export-miars", "{box}/exp"],
                                     ["would overwrite the input file", "item_ids.tsv"], _copy_data_to("exp/item_ids.tsv")),
    "out-name-too-long": (["--out", "{box}/" + LONG], ["--out", "File name too long"], None),
    "out-read-only": (["--out", "{readonly}"], ["--out"], None),
    "out-tilde-expanded": (["--out", "~/afile"], ["{box}/home/afile", "is a file"], _write("home/afile", "keep me\n")),
}


if importlib.util.find_spec("faiss") is None:
    CASES["recbole-ncl-without-faiss"] = (["--target", "recbole:NCL"], ["recbole:NCL", "faiss", "pip install faiss-cpu"], None)


# -- plugin components that break their contract (run through the real command line)


class _Lists(Component):
    """A recommender returning a fixed kind of broken lists (corpus only)."""

    mode = "floats"

    def __init__(self):
        pass

    def fit(self, train, seed=0):
        self.known_ = train.matrix.toarray() > 0
        if self.mode == "raise":
            raise RuntimeError("plugin bug")
        return self

    def recommend(self, k):
        n, m = self.known_.shape
        order = np.argsort(self.known_, axis=1, kind="stable")[:, :k]  # unknown items first: valid lists
        if self.mode == "floats":
            return order.astype(np.float64)
        if self.mode == "known":
            return np.argsort(~self.known_, axis=1, kind="stable")[:, :k]
        if self.mode == "repeated":
            order[:, 1] = order[:, 0]
            return order
        if self.mode == "shape":
            return order[:, : k - 1]
        if self.mode == "range":
            order[0, 0] = m + 5
            return order
        return order


def _broken(mode):
    return type(f"Broken{mode.title()}", (_Lists,), {"mode": mode})


class _RepeatDefense(Component):
    """A defense that repeats items (corpus only)."""

    def __init__(self):
        pass

    def apply(self, recommendations, context, seed=0):
        out = np.array(recommendations, copy=True)
        out[:, 1] = out[:, 0]
        return out


class _NanFeatures(Component):
    """A featurizer whose features are NaN (corpus only)."""

    def __init__(self, dim: int = 4):
        self.dim = dim

    def fit(self, vectorization, seed=0):
        return self

    def transform(self, interactions, recommendations):
        return np.full((interactions.n_users, 4), np.nan, dtype=np.float32)


def _corpus_plugin():
    @hookimpl
    def register_recommenders(register):
        for mode in ("floats", "known", "repeated", "shape", "range", "raise"):
            register(f"broken-{mode}", _broken(mode))
        register("item", _broken("floats"))  # conflicts with the built-in: this plugin is skipped

    return types.SimpleNamespace(__name__="corpus_conflicting", register_recommenders=register_recommenders)


def _corpus_good_plugin():
    @hookimpl
    def register_recommenders(register):
        for mode in ("floats", "known", "repeated", "shape", "range", "raise"):
            register(f"broken-{mode}", _broken(mode))

    @hookimpl
    def register_defenses(register):
        register("repeat-defense", _RepeatDefense)

    @hookimpl
    def register_featurizers(register):
        register("nan-features", _NanFeatures)

    return types.SimpleNamespace(__name__="corpus_plugin", register_recommenders=register_recommenders,
                                 register_defenses=register_defenses, register_featurizers=register_featurizers)


def _misnamed_plugin():
    @hookimpl
    def register_recommender(register):  # a typo: no such hook
        register("hidden-gem", _broken("floats"))

    return types.SimpleNamespace(__name__="corpus_misnamed", register_recommender=register_recommender)


PLUGIN_CASES = {
    "plugin-floats": (["--target", "broken-floats"], ["'broken-floats'", "'corpus_plugin'", "float item indices"]),
    "plugin-known-items": (["--target", "broken-known"], ["'broken-known'", "'corpus_plugin'", "already knows"]),
    "plugin-repeated-items": (["--target", "broken-repeated"], ["'broken-repeated'", "repeats an item"]),
    "plugin-wrong-shape": (["--target", "broken-shape"], ["'broken-shape'", "shape"]),
    "plugin-out-of-range": (["--target", "broken-range"], ["'broken-range'", "outside the valid columns"]),
    "plugin-raises": (["--target", "broken-raise"], ["'broken-raise'", "'corpus_plugin'", "RuntimeError", "plugin bug"]),
    "plugin-shadow-floats": (["--shadow", "broken-floats"], ["'broken-floats'", "float item indices"]),
    "plugin-defense-repeats": (["--defense", "repeat-defense"], ["'repeat-defense'", "'corpus_plugin'", "repeats an item"]),
    "plugin-nan-features": (["--featurizer", "nan-features"], ["non-finite"]),
    "plugin-conflicting-name-used": (["--target", "item"], ["'item'", "'recbole'", "'corpus_conflicting'"]),
    "plugin-failed-may-provide": (["--target", "hidden-gem"], ["unknown recommender 'hidden-gem'", "'corpus_misnamed'", "failed"]),
}


# --------------------------------------------------------------------------- machinery


def _tree(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple]:
    """Every path under ``root`` (outside ``skip``) with its type, size and content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not any((d / n) == s or s in (d / n).parents for s in skip) and (d / n) != d]
        if any(d == s or s in d.parents for s in skip):
            continue
        out[str(d.relative_to(root))] = ("dir",)
        for name in filenames:
            p = d / name
            if any(p == s or s in p.parents for s in skip):
                continue
            try:
                data = p.read_bytes()
            except OSError:
                data = b"?"
            out[str(p.relative_to(root))] = ("file", len(data), hashlib.sha1(data).hexdigest())
    return out


@pytest.fixture
def sandbox(tmp_path, small_dataset, monkeypatch):
    box = tmp_path / "box"
    box.mkdir()
    (box / "home").mkdir()
    shutil.copy(small_dataset, box / "data.tsv")
    monkeypatch.chdir(box)
    monkeypatch.setenv("HOME", str(box / "home"))
    monkeypatch.setenv("MIARS_CACHE", str(box / "cache"))
    return box


def _readonly_dir(box: Path) -> str:
    if os.geteuid() == 0:
        return "/proc/self/fdinfo"  # root ignores permission bits; procfs refuses new files even to root
    ro = box / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return str(ro)


def _fill(args: list[str], box: Path, **extra: str) -> list[str]:
    values = {"box": str(box), "out": str(box / "out"), "export": str(box / "export"), "data": str(box / "data.tsv"), **extra}
    out = []
    for a in args:
        for key, value in values.items():
            a = a.replace("{" + key + "}", value)
        out.append(a)
    return out


def assert_one_line(exit_code: int, stderr: str, stdout: str, needles: list[str]) -> str:
    assert exit_code == 2, f"exit {exit_code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert "Traceback" not in stderr and "Traceback" not in stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    assert lines[0].startswith("miars: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # e.g. a name too long
        return False


def _run_case(box: Path, args: list[str], needles: list[str], setup) -> str:
    if setup is not None:
        setup(box)
    out, export = box / "out", box / "export"
    flags = [] if "--out" in args else ["--out", str(out)]
    flags += [] if "--export-miars" in args else ["--export-miars", str(export)]
    argv = ["--dataset", str(box / "data.tsv"), *BASE, *args, *flags]
    outputs = tuple(Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in ("--out", "--export-miars"))
    outputs = tuple(Path(os.path.expanduser(str(p))) for p in outputs)
    # $MIARS_CACHE holds the stage store: only whole stage outputs by design (docs/engine.md), not compared.
    skip = (*outputs, box / "cache")
    before = _tree(box, skip)
    result = RUNNER.invoke(ATTACK_APP, argv, env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    line = assert_one_line(result.exit_code, result.stderr, result.stdout, needles)
    assert result.stdout == ""
    assert _tree(box, skip) == before, "a file outside --out/--export-miars changed"
    for folder in outputs:
        if _is_dir(folder):
            assert not (folder / "result.json").is_file(), "a failed run wrote result.json"
            assert not [p for p in folder.iterdir() if p.name.startswith(".miars-")], "staging files were left behind"
    return line


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, sandbox):
    args, needles, setup = CASES[case]
    extra = {"readonly": _readonly_dir(sandbox)} if "{readonly}" in " ".join(args) else {}
    args = _fill(args, sandbox, **extra)
    needles = _fill(needles, sandbox)
    line = _run_case(sandbox, args, needles, setup)
    assert len(line) < 800


@pytest.fixture
def corpus_plugins(monkeypatch):
    """The installed plugins plus the corpus's broken ones, as the command line sees them."""
    from miars_core.contracts import plugins as plugins_module

    loaded = plugins_module.get_plugins(extra=[_corpus_good_plugin(), _corpus_plugin(), _misnamed_plugin()])
    monkeypatch.setattr(plugins_module, "_cached", loaded)
    yield loaded
    plugins_module.get_plugins(reload=True)


@pytest.mark.parametrize("case", list(PLUGIN_CASES))
def test_plugin_that_breaks_its_contract(case, sandbox, corpus_plugins):
    args, needles = PLUGIN_CASES[case]
    _run_case(sandbox, list(args), list(needles), None)


def test_corpus_is_large_enough():
    assert len(CASES) + len(PLUGIN_CASES) + len(PROCESS_CASES) >= 80


# --------------------------------------------------------------------------- real processes

def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))


PROCESS_CASES = {
    # id: (shell-free stdout target, preexec, needles, results kept in --out)
    "stdout-broken-pipe": ("pipe-closed", None, ["broken pipe", "results were written to"], True),
    "stdout-dev-full": ("/dev/full", None, ["standard output", "No space left on device"], True),
    "file-size-limit": ("pipe", _limit_file_size, ["cannot write", "File too large", "nothing was written"], False),
}


@pytest.mark.parametrize("case", list(PROCESS_CASES))
def test_bad_environment_in_a_real_process(case, sandbox):
    target, preexec, needles, kept = PROCESS_CASES[case]
    out = sandbox / "out"
    argv = [str(MIARS_ATTACK), "--dataset", str(sandbox / "data.tsv"), *BASE, "--out", str(out)]
    before = _tree(sandbox, (out, sandbox / "cache"))
    env = {**os.environ, **ENV, "PYTHONDONTWRITEBYTECODE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    if target == "/dev/full":
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full here")
        with open("/dev/full", "w") as full:
            proc = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=180, env=env)
        stdout = ""
    elif target == "pipe-closed":
        read_end, write_end = os.pipe()
        os.close(read_end)  # like `| true`: the reader is gone before anything is written
        try:
            proc = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=180, env=env)
        finally:
            os.close(write_end)
        stdout = ""
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env, preexec_fn=preexec)
        stdout = proc.stdout
    assert_one_line(proc.returncode, proc.stderr, stdout, needles)
    assert _tree(sandbox, (out, sandbox / "cache")) == before
    if kept:
        assert (out / "result.json").is_file() and (out / "scores.tsv").is_file()
    else:
        assert not (out / "result.json").exists() and not (out / "scores.tsv").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".miars-")] if out.is_dir() else True
