"""The example plugin (examples/miars-example-plugin), the conformance checks and plugin loading.

Only ``test_end_to_end_userknn_attack`` depends on ``miars_core.engine.pipeline`` (and on the
built-in dataset, featurizer and attack plugins); it is skipped while that is missing.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from miars_core.contracts.errors import DuplicateNameError, UnknownNameError
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.types import ServiceContext
from miars_core.kit import checks

EXAMPLE_SRC = Path(__file__).resolve().parents[1] / "examples" / "miars-example-plugin" / "src"


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Keep fake plugins and imported example modules from leaking into other tests.

    Autouse fixtures are set up first, so this teardown runs after monkeypatch has
    restored ``sys.path``: the reload then sees only the really installed plugins.
    """
    before = {m for m in sys.modules if m == "miars_example" or m.startswith("miars_example.")}
    yield
    for m in [m for m in sys.modules if m == "miars_example" or m.startswith("miars_example.")]:
        if m not in before:
            del sys.modules[m]
    get_plugins(reload=True)


@pytest.fixture
def example(monkeypatch):
    """The example plugin's package, imported from its source tree."""
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    import miars_example

    return miars_example


def fake_distribution(root: Path, dist: str, entry_points: dict[str, str]) -> None:
    """Write ``<dist>-0.1.0.dist-info`` under ``root``: what ``pip install`` leaves behind."""
    info = root / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "".join(f"{name} = {module}\n" for name, module in entry_points.items())
    (info / "entry_points.txt").write_text(f"[miars]\n{lines}")


# --------------------------------------------------------------------------- (a) conformance


def test_userknn_passes_checks(example):
    from miars_example.userknn import UserKNN

    checks.check_recommender(UserKNN)
    checks.check_recommender(UserKNN, n_neighbors=3, chunk_size=7)  # chunk boundaries mid-data
    checks.check_recommender(UserKNN, n_neighbors=1000, chunk_size=1)  # more neighbors than users


def test_popular_mix_passes_checks(example):
    from miars_example.popular_mix import PopularMix

    checks.check_defense(PopularMix)
    checks.check_defense(PopularMix, rate=1.0)
    checks.check_defense(PopularMix, rate=0.0, chunk_size=3)


def test_check_plugin_covers_every_component(example):
    assert checks.check_plugin(example) == ["recommender:userknn", "defense:popular-mix", "defense:popular-blur"]


def test_userknn_matches_brute_force(example):
    from miars_example.userknn import UserKNN

    data = checks.make_interactions(seed=5)
    x = data.matrix.toarray().astype(np.float64)
    n_nb, k = 4, 8
    got = UserKNN(n_neighbors=n_nb, chunk_size=9).fit(data).recommend(k)
    xn = x / np.sqrt(x.sum(axis=1, keepdims=True))
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    pop = x.sum(axis=0)
    for u in range(data.n_users):
        nb = sorted(range(data.n_users), key=lambda v: (-sim[u, v], v))[:n_nb]
        score = sum(max(sim[u, v], 0.0) * x[v] for v in nb)
        unseen = [i for i in range(data.n_items) if x[u, i] == 0]
        want = sorted(unseen, key=lambda i: (-round(score[i], 5), -pop[i], i))[:k]
        assert got[u].tolist() == want, u


def test_userknn_rejects_too_large_k(example):
    from miars_example.userknn import UserKNN

    from miars_core.contracts.errors import MiarsError

    data = checks.make_interactions()
    with pytest.raises(MiarsError, match="at most k="):
        UserKNN().fit(data).recommend(data.n_items)


def test_popular_mix_rewrites_members_tail_only(example):
    from miars_example.popular_mix import PopularMix

    data = checks.make_interactions(seed=6)
    known = data.matrix.toarray() > 0
    is_member = np.arange(data.n_users) % 2 == 0
    popular = np.lexsort((np.arange(data.n_items), -known[is_member].sum(axis=0))).astype(np.int64)
    recs = np.argsort(np.where(known, np.inf, np.arange(data.n_items)[::-1]), axis=1, kind="stable")[:, :10]
    ctx = ServiceContext(data, is_member, popular, 10)
    out = PopularMix(rate=0.3).apply(recs, ctx)
    assert np.array_equal(out[~is_member], recs[~is_member])
    assert np.array_equal(out[:, :7], recs[:, :7])
    for u in np.flatnonzero(is_member):
        allowed = [i for i in popular if not known[u, i] and i not in recs[u, :7]]
        assert out[u, 7:].tolist() == allowed[:3]


# --------------------------------------------------------------------------- the checks themselves


class _GoodFeaturizer:
    """Item-mean features: the mean popularity of a user's items and of her recommendations."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def get_params(self):
        return {"scale": self.scale}

    def fit(self, vectorization, seed=0):
        self.popularity_ = vectorization.item_popularity().astype(np.float32)
        return self

    def transform(self, interactions, recommendations):
        own = interactions.matrix @ self.popularity_ / np.maximum(interactions.user_counts(), 1)
        rec = self.popularity_[recommendations].mean(axis=1)
        return (self.scale * np.stack([own, rec], axis=1)).astype(np.float32)


class _GoodAttack:
    """Nearest class mean."""

    def __init__(self):
        pass

    def fit(self, X, y, seed=0):
        y = np.asarray(y).astype(bool)
        self.w_ = X[y].mean(axis=0) - X[~y].mean(axis=0)
        self.b_ = -float(self.w_ @ (X[y].mean(axis=0) + X[~y].mean(axis=0))) / 2
        return self

    def decision_function(self, X):
        return (np.asarray(X, dtype=np.float64) @ self.w_ + self.b_).astype(np.float64)

    def predict(self, X):
        return self.decision_function(X) > 0


def test_checks_accept_conforming_featurizer_and_attack():
    checks.check_featurizer(_GoodFeaturizer, scale=2.0)
    checks.check_attack(_GoodAttack)


def test_checks_name_the_broken_rule(example):
    from miars_example.userknn import UserKNN

    class LeaksTraining(UserKNN):
        """Recommends whatever, including known items."""

        def recommend(self, k):
            return np.tile(np.arange(k, dtype=np.int64), (self.train_.shape[0], 1))

    class EagerState(UserKNN):
        """Sets learned state in __init__."""

        def __init__(self, n_neighbors=20, chunk_size=256):
            super().__init__(n_neighbors, chunk_size)
            self.cache_ = {}

    class NoSelf(UserKNN):
        """fit returns nothing."""

        def fit(self, train, seed=0):
            super().fit(train, seed)

    class FlippedAttack(_GoodAttack):
        """Scores members low."""

        def decision_function(self, X):
            return -super().decision_function(X)

    with pytest.raises(AssertionError, match="recommends training items"):
        checks.check_recommender(LeaksTraining)
    with pytest.raises(AssertionError, match=r"sets learned-state attributes \['cache_'\]"):
        checks.check_recommender(EagerState)
    with pytest.raises(AssertionError, match="fit must return self"):
        checks.check_recommender(NoSelf)
    with pytest.raises(AssertionError, match="members score lower"):
        checks.check_attack(FlippedAttack)


# --------------------------------------------------------------------------- (b)-(c) entry points


def test_entry_point_plugin_loads_without_core_changes(tmp_path, monkeypatch, third_party_plugins):
    fake_distribution(tmp_path, "miars-example-plugin", {"example": "miars_example"})
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = get_plugins(reload=True)
    info = plugins.info["example"]
    assert info.status == "loaded", info.status
    assert info.version == "0.1.0"
    assert info.module == "miars_example"
    assert info.provides == {"recommender": ["userknn"], "defense": ["popular-mix", "popular-blur"]}
    assert plugins.registry("recommender").get("userknn").plugin == "example"
    assert plugins.registry("defense").get("popular-mix").plugin == "example"
    assert plugins.registry("recommender").get("userknn").summary.startswith("User-based kNN")
    rec = plugins.create("recommender", "userknn", n_neighbors=7)
    assert rec.get_params() == {"n_neighbors": 7, "chunk_size": 256}
    assert plugins.create("defense", "popular-mix").get_params() == {"rate": 0.2, "chunk_size": 1024}


def test_broken_plugin_is_reported_and_others_load(tmp_path, monkeypatch, third_party_plugins):
    fake_distribution(tmp_path, "miars-example-plugin", {"example": "miars_example"})
    fake_distribution(tmp_path, "miars-broken-plugin", {"broken": "miars_no_such_module_for_tests"})
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = get_plugins(reload=True)
    broken = plugins.info["broken"]
    assert broken.status.startswith("failed"), broken.status
    assert "miars_no_such_module_for_tests" in broken.status
    assert broken.provides == {}
    assert plugins.info["example"].status == "loaded"
    assert "userknn" in plugins.registry("recommender").names()
    for name in ("datasets", "attacks", "defenses"):  # built-in plugins are unaffected
        if name in plugins.info:
            assert plugins.info[name].status == "loaded", (name, plugins.info[name].status)


# --------------------------------------------------------------------------- (d)-(e) names


def _plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def test_duplicate_recommender_name_fails_the_second_plugin_and_the_name(example):
    """A conflict skips the later plugin (reported failed), never other commands; the name itself is unusable."""
    from miars_example.userknn import UserKNN

    def register_recommenders(register):
        register("dup-knn", UserKNN)

    one = _plugin_module("plugin_one", register_recommenders=register_recommenders)
    two = _plugin_module("plugin_two", register_recommenders=register_recommenders)
    plugins = get_plugins(extra=[one, two])
    assert plugins.info["plugin_one"].status == "loaded"
    status = plugins.info["plugin_two"].status
    assert status.startswith("failed:") and "'dup-knn'" in status and "'plugin_one'" in status
    assert "item" in plugins.registry("recommender").names()  # unrelated names still work
    with pytest.raises(DuplicateNameError) as err:
        plugins.registry("recommender").get("dup-knn")
    message = str(err.value)
    assert "'dup-knn'" in message and "'plugin_one'" in message and "'plugin_two'" in message


def _with_example(example):
    """The installed plugins plus the example plugin (once, whether installed or not)."""
    plugins = get_plugins(reload=True)
    if "userknn" in plugins.registry("recommender").entries:
        return plugins
    return get_plugins(extra=[example])


def test_unknown_name_lists_choices_and_suggests(example):
    plugins = _with_example(example)
    with pytest.raises(UnknownNameError) as err:
        plugins.registry("recommender").get("userknm")
    message = str(err.value)
    assert "did you mean userknn" in message
    assert "choose from:" in message and "userknn" in message.split("choose from:")[1]
    with pytest.raises(UnknownNameError, match="did you mean popular-mix"):
        plugins.create("defense", "popular-mixx", rate=0.1)


def test_colon_is_reserved_for_namespaces():
    def register_recommenders(register):
        register("my:knn", object)

    plugins = get_plugins(extra=[_plugin_module("colon_plugin", register_recommenders=register_recommenders)])
    assert "reserved for namespaces" in plugins.info["colon_plugin"].status
    assert plugins.info["colon_plugin"].status.startswith("failed:")
    assert "item" in plugins.registry("recommender").names()


# --------------------------------------------------------------------------- (f) end to end


def test_end_to_end_userknn_attack(example):
    """[depends on miars_core.engine.pipeline and the built-in plugins] userknn is attackable."""
    pipeline = pytest.importorskip("miars_core.engine.pipeline", reason="miars_core.engine.pipeline not written yet")
    plugins = _with_example(example)
    for kind, name in (("dataset", "ml-100k"), ("featurizer", "center-diff"), ("attack", "mlp")):
        if name not in plugins.registry(kind).entries:
            pytest.skip(f"built-in {kind} {name!r} not registered yet")
    knn = {"n_neighbors": 20}
    config = pipeline.AttackConfig(
        target="userknn", shadow="userknn", top_k=20, seed=0, target_params=dict(knn), shadow_params=dict(knn)
    )
    result = pipeline.run_attack(config, plugins=plugins)
    assert result.metrics["roc_auc"] > 0.7, result.metrics
