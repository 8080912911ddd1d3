"""Order in the data model (issue 17): readers keep each interaction's time, splits and stored outputs keep
each user's order, and sequential recommenders are refused in one line on data without order."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from miars_core.contracts.errors import MiarsError
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.types import Interactions, sequences
from miars_core.engine.codecs import (interactions_from_arrays, interactions_problem, interactions_to_arrays,
                                      split_from_arrays, split_problem, split_to_arrays)
from miars_core.engine.config import AttackConfig
from miars_core.science.protocol import split_dataset
from miars_core.science.utility import holdout
from miars_datasets import InteractionFile, MovieLens100K, MovieLens1M

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_sequences(path: Path, *, n_users: int = 240, n_items: int = 120, length: tuple[int, int] = (25, 45),
                    header: str | None = "user\titem\ttimestamp", seed: int = 0, shuffle_lines: bool = True) -> Path:
    """Users walk through the catalogue in steps of 1 from a random start (a next-item pattern a sequential model
    learns), one line per interaction with a unix-like time; lines shuffled so file order is not the order."""
    rng = np.random.default_rng(seed)
    lines = []
    for user in range(n_users):
        n = int(rng.integers(length[0], length[1] + 1))
        start = int(rng.integers(n_items))
        t0 = 1_000_000 + int(rng.integers(10_000))
        for step in range(n):
            lines.append(f"{user}\t{(start + step) % n_items}\t{t0 + 60 * step}\n")
    if shuffle_lines:
        rng.shuffle(lines)
    path = Path(path)
    path.write_text((header + "\n" if header else "") + "".join(lines))
    return path


def user_sequence(data: Interactions, user) -> list:
    """A user's original item ids in order (by time, ties by item column)."""
    row = int(np.flatnonzero(data.user_ids == user)[0])
    return data.item_ids[sequences(data.ordered_matrix()[[row]])[0]].tolist()


# -- Interactions -----------------------------------------------------------------------------------
def test_from_pairs_keeps_the_order_and_a_repeated_pair_its_earliest_time():
    data = Interactions.from_pairs([1, 1, 1, 2, 1], ["c", "a", "b", "a", "c"], order=[5.0, 9.0, 7.0, 1.0, 3.0])
    assert data.has_order
    assert user_sequence(data, 1) == ["c", "b", "a"]  # c at 3 (earliest of 5 and 3), b at 7, a at 9
    assert data.n_interactions == 4
    assert not Interactions.from_pairs([1], ["a"]).has_order


def test_ties_are_broken_by_item_column_and_rows_keep_the_order():
    data = Interactions.from_pairs([0, 0, 0, 1, 1], [3, 1, 2, 1, 0], order=[2.0, 2.0, 1.0, 8.0, 9.0])
    assert user_sequence(data, 0) == [2, 1, 3]
    sub = data.rows(np.array([1, 0]))
    assert sub.user_ids.tolist() == [1, 0] and sub.has_order
    assert user_sequence(sub, 1) == [1, 0] and user_sequence(sub, 0) == [2, 1, 3]
    positions = data.ordered_matrix()
    assert positions.min() == 0 and positions.data.min() == 1.0  # values are 1-based positions: > 0 means "known"


def test_order_must_match_the_matrix():
    data = Interactions.from_pairs([0, 1], [0, 1], order=[1.0, 2.0])
    with pytest.raises(ValueError, match="one value per interaction"):
        Interactions(data.matrix, data.user_ids, data.item_ids, np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        Interactions(data.matrix, data.user_ids, data.item_ids, np.array([1.0, np.nan]))


# -- readers --------------------------------------------------------------------------------------------
def test_u_data_and_ratings_dat_keep_their_timestamps(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t300\n1\t20\t3\t100\n2\t10\t4\t50\n")
    data = MovieLens100K().load(data_dir=tmp_path)
    assert user_sequence(data, 1) == [20, 10]
    with gzip.open(tmp_path / "ratings.dat.gz", "wt") as f:
        f.write("1::10::5::978300760\n1::20::3::978300700\n")
    data = MovieLens1M().load(data_dir=tmp_path)
    assert user_sequence(data, 1) == [20, 10]
    assert MovieLens1M().has_order(tmp_path) is True


def test_the_ml1m_pairs_file_has_no_order(tmp_path):
    (tmp_path / "ml-1m-pairs.tsv").write_text("1\t10\n1\t20\n")
    assert not MovieLens1M().load(data_dir=tmp_path).has_order
    assert MovieLens1M().has_order(tmp_path) is False


def test_the_embedded_ml100k_keeps_its_timestamps_as_the_official_file_does():
    embedded = MovieLens100K().load()
    assert embedded.has_order and MovieLens100K().has_order() is True
    official = SHARED / "movielens-100k"
    if (official / "u.data.gz").is_file():
        data = MovieLens100K().load(data_dir=official)
        assert np.array_equal(data.matrix.indices, embedded.matrix.indices)
        assert np.array_equal(data.order, embedded.order)


def test_a_recbole_inter_file_keeps_its_timestamp_field(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t1\t5\t30\n7\t2\t5\t10\n")
    data = InteractionFile(path).load()
    assert user_sequence(data, 7) == [2, 1]
    assert InteractionFile(path).has_order() is True
    bare = tmp_path / "bare.inter"
    bare.write_text("user_id:token\titem_id:token\n7\t1\n")
    assert not InteractionFile(bare).load().has_order and InteractionFile(bare).has_order() is False
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id:token\ttimestamp:token\n7\t1\t3\n")
    with pytest.raises(MiarsError, match="must be typed ':float'"):
        InteractionFile(bad).load()


def test_a_delimited_file_declares_its_time_column_by_header_or_by_number(tmp_path):
    named = tmp_path / "named.csv"
    named.write_text("user,item,timestamp\na,x,3\na,y,1\n")
    assert user_sequence(InteractionFile(named).load(), "a") == ["y", "x"]
    assert InteractionFile(named).has_order() is True
    plain = tmp_path / "plain.tsv"
    plain.write_text("a\tx\t5\t3\na\ty\t4\t1\n")  # headerless: the third column may be a rating
    assert not InteractionFile(plain).load().has_order and InteractionFile(plain).has_order() is False
    assert user_sequence(InteractionFile(plain, time=4).load(), "a") == ["y", "x"]
    dates = tmp_path / "dates.csv"
    dates.write_text("user,item,time\na,x,2024-01-02T10:00:00\na,y,2024-01-01\n")
    data = InteractionFile(dates).load()
    assert user_sequence(data, "a") == ["y", "x"] and data.order.max() == 1704189600.0


@pytest.mark.parametrize("text, time, message", [
    ("user,item,timestamp\na,x,3\na,y,soon\n", None, "data row 2 has time (column 3) 'soon', not a number or an ISO"),
    ("a\tx\t3\n", 2, "time column 2 is not one of columns 3..3"),
    ("user,item,rating\na,x,3\n", "when", "no time column named 'when'"),
])
def test_an_order_column_that_does_not_parse_fails_in_one_line(tmp_path, text, time, message):
    path = tmp_path / "f.csv"
    path.write_text(text)
    with pytest.raises(MiarsError, match=re.escape(message)) as info:
        InteractionFile(path, time=time).load()
    assert "\n" not in str(info.value)


def test_u_data_with_a_bad_timestamp_fails_in_one_line(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t300\n1\t20\t3\tnoon\n")
    with pytest.raises(MiarsError, match="data row 2 has timestamp 'noon', not a number"):
        MovieLens100K().load(data_dir=tmp_path)


# -- splits and stored outputs --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["interactions", "users"])
def test_splits_keep_each_users_order(tmp_path, mode):
    data = InteractionFile(write_sequences(tmp_path / "s.tsv")).load()
    split = split_dataset(data, mode=mode, min_interactions=5, seed=3)
    for inter in (split.shadow.interactions, split.target.interactions, split.vectorization, split.target.members):
        assert inter.has_order
        for row in range(0, inter.n_users, 17):
            user = inter.user_ids[row]
            full = user_sequence(data, user)
            part = user_sequence(inter, user)
            assert part == [item for item in full if item in set(part)]  # a subsequence, in the same order


def test_the_utility_holdout_keeps_the_visible_order(tmp_path):
    data = InteractionFile(write_sequences(tmp_path / "s.tsv")).load()
    kept, held = holdout(data, 0.2, seed=1)
    assert kept.has_order and kept.n_interactions + held.nnz == data.n_interactions
    full, part = user_sequence(data, 5), user_sequence(kept, 5)
    assert part == [item for item in full if item in set(part)]


def test_stored_load_and_split_outputs_keep_the_order(tmp_path):
    data = InteractionFile(write_sequences(tmp_path / "s.tsv")).load()
    arrays = interactions_to_arrays(data)
    assert interactions_problem(arrays) is None
    back = interactions_from_arrays(arrays)
    assert np.array_equal(back.order, data.order)
    split = split_dataset(data, min_interactions=5, seed=0)
    arrays = split_to_arrays(split)
    assert split_problem(arrays) is None
    again = split_from_arrays(arrays)
    for name in ("shadow", "target"):
        assert np.array_equal(getattr(again, name).interactions.order, getattr(split, name).interactions.order)
    assert np.array_equal(again.vectorization.order, split.vectorization.order)
    # a damaged order array is caught when read back, before anything indexes with it
    short = dict(arrays, target_order=arrays["target_order"][:-1])
    assert split_problem(short) == ("target_order", f"holds float64 [{len(short['target_order'])}], expected floats of "
                                    f"shape [{len(arrays['target_indices'])}]")
    bad = dict(arrays, target_order=np.where(np.arange(len(arrays["target_order"])) == 0, np.inf, arrays["target_order"]))
    assert split_problem(bad) == ("target_order", "holds non-finite values")
    # data without order round-trips without an order array
    plain = Interactions.from_pairs([0, 1], [1, 0])
    assert "m_order" not in interactions_to_arrays(plain) and not interactions_from_arrays(interactions_to_arrays(plain)).has_order


# -- refusal before any work -------------------------------------------------------------------------------
class TinySequential:
    """A sequential test recommender (never fitted here: the refusals come first)."""

    sequential = True

    def __init__(self):
        pass

    def get_params(self):
        return {}

    def fit(self, train, seed=0):  # pragma: no cover - refused before
        raise AssertionError("fitted despite the refusal")


def _plugins():
    module = types.ModuleType("test_sequences_plugin")

    @hookimpl
    def register_recommenders(register):
        register("tiny-seq", TinySequential)

    module.register_recommenders = register_recommenders
    return get_plugins(extra=[module])


def test_a_dataset_without_order_refuses_a_sequential_recommender_before_reading_it(tmp_path, monkeypatch, small_dataset):
    from miars_core.engine import stages
    from miars_core.engine.stages import Cell

    def no_load(*args, **kwargs):
        raise AssertionError("the data was read before the refusal")

    monkeypatch.setattr(stages, "load", no_load)
    with pytest.raises(MiarsError, match="dataset '.*clustered.tsv' has none") as info:
        Cell(AttackConfig(dataset=str(small_dataset), target="tiny-seq", shadow="tiny-seq"), _plugins())
    assert "\n" not in str(info.value)
    with pytest.raises(MiarsError, match="shadow 'item' is not: the shadow imitates the target's service"):
        Cell(AttackConfig(dataset="ml-100k", target="tiny-seq", shadow="item"), _plugins())
    Cell(AttackConfig(dataset="ml-100k", target="tiny-seq", shadow="tiny-seq"), _plugins())  # ordered: accepted
    Cell(AttackConfig(dataset=str(small_dataset), target="item", shadow="item"), _plugins())  # general: no question


def test_the_command_line_refuses_a_dataset_without_order_in_one_line(small_dataset):
    """The refusal as a user sees it, with a built-in sequential model (exit 2, one line, nothing trained)."""
    proc = subprocess.run([sys.executable, "-m", "miars_core", "attack", "--dataset", str(small_dataset),
                           "--target", "recbole:SASRec", "--shadow", "recbole:SASRec", "--no-cache"],
                          capture_output=True, text=True, timeout=300)
    if "unknown recommender" in proc.stderr or "not supported" in proc.stderr:
        pytest.skip("sequential models not offered yet")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("miars: error: ") and "has none" in lines[0], proc.stderr


# -- query access hands the order to sequential services only ------------------------------------------------
class _Recorder:
    """A new-account server that records what it was handed (``ordered``: it reads histories in order)."""

    def __init__(self, ordered: bool):
        self.ordered = ordered
        self.seen = []

    def __call__(self, histories):
        import scipy.sparse as sp

        from miars_core.science.ranking import top_k_popular

        self.seen.append(sp.csr_matrix(histories, copy=True))
        return top_k_popular(np.arange(histories.shape[1])[::-1], histories, 2)


@pytest.mark.parametrize("ordered", [True, False])
def test_query_access_passes_positions_to_a_sequential_server_and_0_1_to_others(ordered):
    import scipy.sparse as sp

    from miars_core.science.threat import QueryAccess

    server = _Recorder(ordered)
    access = QueryAccess(server, np.ones(6), 2)
    query = sp.csr_matrix(np.array([[0, 3, 0, 1, 2, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float32))
    lists = access.recommend(query)
    assert lists.shape == (2, 2) and access.used_ == 2
    (seen,) = server.seen
    assert seen.shape[0] == 1  # the empty account got the popular list without asking the server
    expected = [3.0, 1.0, 2.0] if ordered else [1.0, 1.0, 1.0]
    assert seen.toarray()[0, [1, 3, 4]].tolist() == expected
    if ordered:
        assert sequences(seen)[0].tolist() == [3, 4, 1]


def test_query_recall_keeps_each_query_half_in_the_users_order():
    import scipy.sparse as sp

    from miars_attacks.query import half_splits

    positions = sp.csr_matrix(np.array([[5, 1, 4, 2, 3, 6]], dtype=np.float32))
    q, t = half_splits(positions, 3, seed=0)
    for row in range(3):
        kept = q[row].toarray()[0]
        assert (kept > 0).sum() == 3 and set(kept[kept > 0]) <= {1, 2, 3, 4, 5, 6}
        assert np.array_equal(kept[kept > 0], positions.toarray()[0][kept > 0])  # the positions, unchanged
        assert set(t[row].data) == {1.0} and (t[row].toarray()[0] > 0).sum() == 3


def test_prefix_queries_are_each_sequences_beginning_and_the_rest_its_continuation():
    import scipy.sparse as sp

    from miars_attacks.query import prefix_splits

    # user 0: 6 items at positions 5 1 4 2 3 6; user 1: one item; user 2: two items
    positions = sp.csr_matrix(np.array([[5, 1, 4, 2, 3, 6], [0, 0, 1, 0, 0, 0], [2, 0, 0, 0, 0, 1]], dtype=np.float32))
    q, t = prefix_splits(positions, 2)
    assert q.shape == t.shape == (6, 6)
    # query 0 of user 0: her first floor(6 / 3) = 2 items, with their positions; the continuation the other 4
    assert q[0].toarray()[0].tolist() == [0, 1, 0, 2, 0, 0] and t[0].toarray()[0].tolist() == [1, 0, 1, 0, 1, 1]
    assert q[3].toarray()[0].tolist() == [0, 1, 4, 2, 3, 0] and t[3].toarray()[0].tolist() == [1, 0, 0, 0, 0, 1]
    assert q[1].toarray()[0].tolist() == [0, 0, 1, 0, 0, 0] and t[1].nnz == 0  # one item: no continuation
    assert q[2].toarray()[0].tolist() == [0, 0, 0, 0, 0, 1] and t[2].toarray()[0].tolist() == [1, 0, 0, 0, 0, 0]
    again = prefix_splits(positions, 2)
    assert (again[0] != q).nnz == 0 and (again[1] != t).nnz == 0  # no randomness


def test_prefix_query_recall_is_refused_before_any_work_on_data_without_order(small_dataset, tmp_path):
    from miars_core.engine.stages import Cell

    with pytest.raises(MiarsError, match="reads each user's history in order.*has none"):
        Cell(AttackConfig(dataset=str(small_dataset), target="item", service="foldin", attack="query-recall",
                          attack_params={"split": "prefix"}), get_plugins())
    with pytest.raises(MiarsError, match="reads each user's history in order.*has none"):
        Cell(AttackConfig(dataset=str(small_dataset), target="item", service="foldin", attack="interaction",
                          attack_params={"context": "prefix"}), get_plugins())
    with pytest.raises(MiarsError, match="split"):
        get_plugins().create("attack", "query-recall", split="suffix")


def test_prefix_query_recall_runs_on_ordered_data(tmp_path):
    from miars_core.engine.pipeline import run_attack

    path = write_sequences(tmp_path / "walks.tsv", n_users=160, n_items=80, length=(20, 30))
    base = dict(dataset=str(path), target="item", service="foldin", attack="query-recall", top_k=5,
                min_interactions=5, featurizer_params={"dim": 16})
    result = run_attack(AttackConfig(**base, attack_params={"split": "prefix", "queries": 2, "references": 1}))
    assert result.queries["used"] == 2 * result.queries["target_users"]
    assert 0.0 <= result.metrics["roc_auc"] <= 1.0
    other = run_attack(AttackConfig(**base, attack_params={"queries": 2, "references": 1}))
    assert result.metrics["roc_auc"] != other.metrics["roc_auc"]  # other queries, other scores


def test_the_next_item_question_asks_with_what_came_before_the_item():
    import scipy.sparse as sp

    from miars_attacks.query import next_item_accounts
    from miars_core.science.threat import AdversaryView

    positions = sp.csr_matrix(np.array([[5, 1, 4, 2, 3, 6], [0, 0, 1, 0, 0, 2]], dtype=np.float32))
    view = AdversaryView(histories=(positions > 0).astype(np.float32), lists=np.zeros((2, 1), dtype=np.int64), k=1,
                         sequences=positions)
    rows, items = np.array([0, 0, 1, 1]), np.array([2, 1, 5, 2])
    prefix = next_item_accounts(view, rows, items, "prefix").toarray()
    assert prefix[0].tolist() == [0, 1, 0, 2, 3, 0]  # item 2 is her 4th: her first three, in order
    assert prefix[1].tolist() == [0] * 6  # her first item: nothing came before it
    assert prefix[2].tolist() == [0, 0, 1, 0, 0, 0] and prefix[3].tolist() == [0] * 6
    history = next_item_accounts(view, rows, items, "history").toarray()
    assert history[0].tolist() == [5, 1, 0, 2, 3, 6]  # the whole history without the item
    with pytest.raises(MiarsError, match="needs sequences"):
        next_item_accounts(AdversaryView(histories=positions, lists=np.zeros((2, 1), dtype=np.int64), k=1), rows, items,
                           "prefix")
