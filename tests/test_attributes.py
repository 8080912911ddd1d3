"""User attributes (issue 18): reading the files, aligning them, the cold start by attributes of the built-in
services, reference-rec's reference lists by attributes, the stage keys, and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from miars_core.contracts.errors import MiarsError
from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.types import Interactions
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.science.attributes import AttributeColdStart, read_attributes
from miars_core.science.threat import QueryAccess
from miars_services import FoldInService, PopularService

from test_cli import FAST as CLI_FAST
from test_cli import assert_cli_error, invoke_attack

#: The small_dataset's users are 0..299, user u in taste cluster u % 5.
SMALL = dict(top_k=10, min_interactions=5, featurizer_params={"dim": 16})


def ml100k_user_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k" / "ml-100k.user"


@pytest.fixture(scope="module")
def cluster_attributes(tmp_path_factory) -> Path:
    """Attributes of small_dataset's users: their taste cluster (c0..c4) and their id's parity, with a header."""
    path = tmp_path_factory.mktemp("attrs") / "users.tsv"
    path.write_text("user_id\tcluster\tparity\n" + "".join(f"{u}\tc{u % 5}\t{u % 2}\n" for u in range(300)))
    return path


# -- reading ----------------------------------------------------------------------------------------
def test_movielens_users_dat_plain_and_gzipped(tmp_path):
    text = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"
    plain = tmp_path / "users.dat"
    plain.write_text(text)
    packed = tmp_path / "users.dat.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    for path in (plain, packed):
        a = read_attributes(path)
        assert a.format == "movielens" and a.columns == ("gender", "age", "occupation")  # the zip code dropped
        assert a.user_ids.tolist() == ["1", "2", "3"]
        assert [a.categories[0][c] for c in a.codes[:, 0]] == ["F", "M", "M"]
        assert [a.categories[1][c] for c in a.codes[:, 1]] == ["1", "56", "25"]


def test_recbole_user_file_of_the_embedded_ml100k_aligns_with_its_users():
    from miars_core.engine.datasets import load_named

    a = read_attributes(ml100k_user_file())
    assert a.format == "recbole" and a.columns == ("gender", "age", "occupation")
    assert len(a.user_ids) == 943 and (a.codes > 0).all()
    data = load_named("ml-100k", None, False, get_plugins())
    summary = a.summary(data.user_ids)
    assert summary["matched"] == data.n_users == 943 and summary["unknown"] == 0
    assert set(a.categories[0]) == {"unknown", "F", "M"} and len(a.categories[2]) == 22  # 21 occupations


def test_delimited_files_with_and_without_header(tmp_path):
    with_header = tmp_path / "a.csv"
    with_header.write_text("user,country,plan\nu2,fr,free\nu1,de,\n")
    a = read_attributes(with_header)
    assert a.columns == ("country", "plan") and a.user_ids.tolist() == ["u1", "u2"]
    assert a.codes[0, 1] == 0  # an empty value is unknown
    bare = tmp_path / "b.tsv"
    bare.write_text("7\tx\n8\ty\n")
    b = read_attributes(bare)
    assert b.columns == ("attr1",) and b.user_ids.tolist() == ["7", "8"]


def test_alignment_counts_users_the_file_does_not_list(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("1\tF\n3\tM\n")
    a = read_attributes(path)
    codes = a.for_users(np.array([3, 2, 1]))
    assert [a.categories[0][c] for c in codes[:, 0]] == ["M", "unknown", "F"]
    assert a.summary(np.array([1, 2, 3, 4]))["unknown"] == 2


# -- the cold start by attributes -------------------------------------------------------------------
def two_groups(n_per_group: int = 6):
    """Members of two groups with disjoint favourite items: group 1 likes items 0-4, group 2 items 5-9; item 10
    is liked by everyone of group 2 and a few of group 1, so it tops the global list."""
    rows, cols = [], []
    for u in range(2 * n_per_group):
        liked = list(range(5)) if u < n_per_group else list(range(5, 11))
        if u < 2:
            liked.append(10)
        rows += [u] * len(liked)
        cols += liked
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(2 * n_per_group, 14))
    codes = np.array([[1, 1]] * n_per_group + [[2, 1]] * n_per_group, dtype=np.int32)
    return Interactions(matrix, np.arange(2 * n_per_group), np.arange(14)), codes


def test_groups_with_disjoint_popular_items_get_different_lists():
    train, codes = two_groups()
    server = PopularService(cold_start="attributes", min_group=3).new_accounts(None, train, 5, attributes=codes)
    empty = sp.csr_matrix((4, 14), dtype=np.float32)
    lists = server(empty, np.array([[1, 1], [2, 1], [0, 0], [1, 2]]))
    assert set(lists[0]) == {0, 1, 2, 3, 4}
    assert set(lists[1]) == {5, 6, 7, 8, 9, 10} - {9}  # the group's six items, ties by global popularity
    # unknown attributes, and a profile no member has at the finest level, fall back to the global list / group 1
    assert lists[2][0] == 10 and set(lists[3]) == {0, 1, 2, 3, 4}
    # the default cold start ignores attributes: everyone gets the global list
    plain = PopularService().new_accounts(None, train, 5)
    assert (plain(empty) == plain(empty)[0]).all() and plain(empty)[0][0] == 10


def test_small_groups_fall_back_to_coarser_groups_then_to_everyone():
    train, codes = two_groups(n_per_group=6)
    codes = codes.copy()
    codes[:6, 1] = [1, 1, 1, 2, 2, 2]  # group 1 splits into two groups of 3 on the second column
    cold = AttributeColdStart(min_group=4).fit(train.matrix, codes)
    width, _ = cold.groups(np.array([[1, 1], [2, 1], [0, 1]]))
    assert width.tolist() == [1, 2, 0]  # (1, 1) has 3 members < 4: served by (1,); (2, 1) has 6; unknown: everyone
    fine = AttributeColdStart(min_group=3).fit(train.matrix, codes)
    assert fine.groups(np.array([[1, 1]]))[0].tolist() == [2]
    # same data, same lists; known items are never served
    known = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, 14))
    assert 0 not in cold.recommend(known, np.array([[1, 1]]), 5)[0]
    assert np.array_equal(cold.recommend(known, np.array([[1, 1]]), 5),
                          AttributeColdStart(4).fit(train.matrix, codes).recommend(known, np.array([[1, 1]]), 5))


def test_foldin_serves_accounts_without_history_by_group_and_folds_in_the_others():
    class Side:  # a stand-in fold-in: always items 11, 12, 13
        def recommend_for(self, histories, k, seed=0):
            return np.tile(np.array([11, 12, 13]), (histories.shape[0], 1))[:, :k]

    class Model:
        def new_accounts(self):
            return Side()

    train, codes = two_groups()
    server = FoldInService(cold_start="attributes", min_group=3).new_accounts(Model(), train, 3, attributes=codes)
    access = QueryAccess(server, train.item_popularity(), 3)
    assert access.cold_start == "attributes"
    h = sp.csr_matrix(([1.0], ([1], [0])), shape=(3, 14))  # row 1 has a history
    lists = access.recommend(h, attributes=np.array([[1, 1], [1, 1], [2, 1]]))
    assert set(lists[0]) <= {0, 1, 2, 3, 4} and lists[1].tolist() == [11, 12, 13] and set(lists[2]) <= set(range(5, 11))


# -- the engine: keys, reference-rec, result.json ---------------------------------------------------
def test_keys_change_with_the_file_only_where_it_is_read(small_dataset, cluster_attributes, tmp_path):
    from miars_core.engine.stages import Cell

    other = tmp_path / "other.tsv"
    other.write_text("user_id\tcluster\tparity\n" + "".join(f"{u}\tc{u % 3}\t{u % 2}\n" for u in range(300)))
    plugins = get_plugins()

    def cell(path, **kw):
        return Cell(AttackConfig(dataset=str(small_dataset), user_attributes=str(path) if path else None, **SMALL,
                                 **kw), plugins)

    cold = {"service_params": {"cold_start": "attributes"}}
    a, b = cell(cluster_attributes, **cold), cell(other, **cold)
    assert a.key("split", "target") == b.key("split", "target") and a.key("model", "target") == b.key("model", "target")
    assert a.key("serve", "target") != b.key("serve", "target") and a.key("attack") != b.key("attack")
    # a cell that reads no attribute (popular cold start, mlp) has the keys of a cell without the file
    plain, with_file = cell(None), cell(cluster_attributes)
    assert plain.key("serve", "target") == with_file.key("serve", "target") and plain.key("attack") == with_file.key("attack")
    # the key is the file's content, not its path
    copy = tmp_path / "copy.tsv"
    copy.write_bytes(Path(cluster_attributes).read_bytes())
    assert cell(copy, **cold).key("serve", "target") == a.key("serve", "target")
    # reference-rec reads them: its attack key changes with the file, the lists' keys do not
    r1, r2 = cell(cluster_attributes, attack="reference-rec"), cell(other, attack="reference-rec")
    assert r1.key("serve", "target") == r2.key("serve", "target") and r1.key("attack") != r2.key("attack")


def test_reference_rec_records_where_its_reference_lists_came_from(small_dataset, cluster_attributes):
    base = dict(dataset=str(small_dataset), attack="reference-rec", **SMALL)
    by_service = run_attack(AttackConfig(**base, user_attributes=str(cluster_attributes),
                                         service_params={"cold_start": "attributes", "min_group": 5}))
    assert by_service.queries["reference_list"] == "attributes" and by_service.queries["reference_source"] == "service"
    assert by_service.queries["used"] == by_service.queries["reference_profiles"] == 10  # 5 clusters x 2 parities
    assert by_service.attributes["matched"] == 300 and by_service.attributes["used_by"] == ["service", "attack"]
    adversary = run_attack(AttackConfig(**base, user_attributes=str(cluster_attributes)))
    assert adversary.queries["reference_source"] == "adversary" and adversary.queries["used"] == 0
    assert adversary.attributes["used_by"] == ["attack"]
    none = run_attack(AttackConfig(**base))
    assert none.queries["reference_list"] == "cold-start" and none.queries["used"] == 1 and none.attributes is None
    # the reference lists differ by cluster, so the scores differ from the cold-start ones
    assert not np.allclose(by_service.artifacts["scores"], none.artifacts["scores"])
    again = run_attack(AttackConfig(**base, user_attributes=str(cluster_attributes),
                                    service_params={"cold_start": "attributes", "min_group": 5}))
    assert np.array_equal(again.artifacts["scores"], by_service.artifacts["scores"])  # same seed, same scores


def test_the_popular_service_serves_non_members_by_their_group(small_dataset, cluster_attributes):
    result = run_attack(AttackConfig(dataset=str(small_dataset), user_attributes=str(cluster_attributes),
                                     service_params={"cold_start": "attributes", "min_group": 5},
                                     attack_params={"epochs": 5}, **SMALL))
    target = result.artifacts["target_part"]
    lists = result.artifacts["target_lists"][~target.is_member]
    clusters = target.interactions.user_ids[~target.is_member] % 5
    # non-members of different clusters get lists from their cluster's block of items (20 + 26 c ... 20 + 26 (c+1))
    block = (lists[:, :5] - 20) // 26
    for c in range(5):
        assert (np.bincount(block[clusters == c].ravel().clip(0), minlength=5).argmax()) == c


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, needles", [
    ("", ("is empty",)),
    ("1\tF\t20\n2\tM\n", ("line 2 has 2 columns, line 1 has 3",)),
    ("9001\tF\n9002\tM\n", ("matches no user of dataset",)),
])
def test_bad_attribute_files_are_one_line_errors_before_any_work(small_dataset, tmp_path, content, needles):
    path = tmp_path / "attrs.tsv"
    path.write_text(content)
    out = tmp_path / "out"
    res = invoke_attack(["--dataset", small_dataset, "--attack", "reference-rec", "--user-attributes", path,
                         "--out", out, "--no-cache", *CLI_FAST])
    assert_cli_error(res, "--user-attributes", *needles)
    assert not out.exists()


def test_bad_cold_start_settings_are_one_line_errors(small_dataset, cluster_attributes, tmp_path):
    out = tmp_path / "out"
    res = invoke_attack(["--dataset", small_dataset, "--service-param", "cold_start=attributes", "--out", out,
                         "--no-cache", *CLI_FAST])
    assert_cli_error(res, "cold_start=attributes", "--user-attributes", "allowed: popular, attributes")
    res = invoke_attack(["--dataset", small_dataset, "--service", "foldin", "--service-param", "cold_start=groups",
                         "--user-attributes", cluster_attributes, "--out", out, "--no-cache", *CLI_FAST])
    assert_cli_error(res, "cold_start", "groups", "attributes")
    res = invoke_attack(["--dataset", small_dataset, "--user-attributes", tmp_path / "nosuch.tsv", "--out", out,
                         "--no-cache", *CLI_FAST])
    assert_cli_error(res, "--user-attributes", "no such file")
    assert not out.exists()
    with pytest.raises(MiarsError, match="needs user attributes"):
        train, _ = two_groups()
        PopularService(cold_start="attributes").new_accounts(None, train, 5)


def test_grids_and_toml_take_the_file(small_dataset, cluster_attributes, tmp_path):
    from miars_core import api

    spec, _ = api.grid_spec(dataset=[str(small_dataset)], user_attributes=str(cluster_attributes))
    assert {c.user_attributes for c in spec.configs()} == {str(cluster_attributes)}
    toml = tmp_path / "grid.toml"
    toml.write_text(f'dataset = ["{small_dataset}"]\nuser_attributes = "{cluster_attributes}"\n')
    spec, _ = api.grid_spec(config=str(toml))
    assert spec.user_attributes == str(cluster_attributes)
    toml.write_text(f'dataset = ["{small_dataset}"]\nuser_attributes = 3\n')
    with pytest.raises(MiarsError, match="user_attributes"):
        api.grid_spec(config=str(toml))[0].configs()
    spec, _, _ = api.bench_spec(dataset=[str(small_dataset)], user_attributes=str(cluster_attributes), defense=["none"])
    assert spec.user_attributes == str(cluster_attributes)
    assert json.dumps(spec.to_json())


@pytest.mark.parametrize("service", ["popular", "foldin"])
def test_nothing_reachable_from_a_view_with_attributes_holds_labels_or_training_data(small_dataset, cluster_attributes,
                                                                                      service):
    from miars_core.contracts.types import Part, Split
    from miars_core.engine.graph import Walker
    from miars_core.engine.stages import Cell
    from miars_core.kit import checks
    from miars_core.science.service import Fitted, Served

    cell = Cell(AttackConfig(dataset=str(small_dataset), attack="reference-rec", service=service, top_k=10,
                             user_attributes=str(cluster_attributes),
                             service_params={"cold_start": "attributes", "min_group": 2}), get_plugins())
    view = cell.view("target", False, cell.features("target", False), "queries")
    assert view.attributes.shape == (view.n_users, 2) and view.attribute_columns == ("cluster", "parity")
    empty = sp.csr_matrix((3, view.histories.shape[1]), dtype=np.float32)
    view.query.recommend(empty, attributes=view.attributes[:3])
    view.reference.cold_start(view.attributes[:3])
    served = cell.fitted("target")
    checks.check_isolation(view, is_member=cell.part("target").is_member, train=served.train.matrix,
                           forbidden=[cell, served, served.model, cell.split("target"), cell.part("target")],
                           forbidden_types=(Cell, Walker, Part, Split, Served, Fitted))
