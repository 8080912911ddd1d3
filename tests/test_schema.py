"""result.json and error.json follow their versioned JSON Schemas (miars_core/schema/), for every kind of run.

Besides these tests, tests/conftest.py validates every result.json and error.json that any test
writes under its tmp_path (and, at the session's end, under every temporary folder).
"""

from __future__ import annotations

import copy
import json

import pytest

from miars_core.contracts.errors import MiarsError
from miars_core.engine.pipeline import AttackConfig, run_attack
from miars_core.engine.schema import SCHEMA_VERSION, load_schema, schema_path, validate
from miars_core.engine.store import DiskStore

FAST = {"top_k": 10, "attack_params": {"epochs": 20}}


def test_the_schemas_are_valid_draft_2020_12_and_shipped_with_the_package():
    import jsonschema

    for kind in ("result", "error"):
        schema = load_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema_path(kind).name == f"{kind}-{SCHEMA_VERSION}.json"
        assert schema["properties"]["schema_version"] == {"const": SCHEMA_VERSION} or \
            schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    pyproject = tomllib.loads((schema_path().parents[1].parent / "pyproject.toml").read_text())
    assert "schema/*.json" in pyproject["tool"]["setuptools"]["package-data"]["miars_core"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return DiskStore(tmp_path_factory.mktemp("schema-cache"))


KINDS = {
    "single": dict(target="item", shadow="pop"),
    "defended lists, utility": dict(target="item", defense="popularity-randomization", defense_params={"ratio": 0.2},
                                    utility_holdout=0.2),
    "training defense, DP claim": dict(target="item", defense="dp-itemknn", defense_params={"epsilon": 1.0}),
    "query attack": dict(target="item", service="foldin", attack="query-recall", attack_params={"queries": 2}),
    "query attack, defended": dict(target="item", service="foldin", attack="query-recall", attack_params={"queries": 2},
                                   defense="rank-shuffle", defense_params={"window": 10}),
    "interaction level": dict(target="item", service="foldin", attack="interaction", attack_params={"pairs": 2}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_run_writes_a_result_that_follows_the_schema(kind, small_dataset, store):
    options = {**FAST, **KINDS[kind]}
    result = run_attack(AttackConfig(dataset=str(small_dataset), **options), store=store).to_json()
    document = json.loads(json.dumps(result))
    assert document["schema_version"] == SCHEMA_VERSION
    validate(document)
    if "queries" in kind:  # one layout with and without a defense
        queries = document["queries"]
        assert set(queries) == {"per_target_user", "budget", "used", "calls", "target_users", "refit_seconds", "attackers"}
        names = {"defense_aware", "defense_unaware"} if "defended" in kind else {"attack"}
        assert set(queries["attackers"]) == names and queries["used"] > 0
    if kind == "training defense, DP claim":
        assert document["recommenders"]["target"]["privacy"]["level"] in ("record", "user")


def test_grid_cells_and_failed_cells_follow_the_schema(small_dataset, tmp_path):
    from miars_core.engine.grid import GridSpec
    from miars_core.engine.run import run_grid

    # top-k 140 is impossible for users who know up to 60 of the 150 items: that cell fails
    spec = GridSpec(dataset=[str(small_dataset)], target=["pop"], top_k=[10, 140], attack_params={"*": {"epochs": 20}})
    summary = run_grid(spec, tmp_path / "run", cache=None)
    assert len(summary.failed) == 1
    for cid in summary.cells:
        folder = tmp_path / "run" / "cells" / cid
        if cid in summary.failed:
            error = json.loads((folder / "error.json").read_text())
            validate(error, "error")
            assert error["schema_version"] == SCHEMA_VERSION and "Traceback" in error["traceback"]
        else:
            result = json.loads((folder / "result.json").read_text())
            validate(result)
            assert result["cell"]["id"] == cid


def test_a_result_that_breaks_the_schema_is_named_where_it_breaks(small_dataset, store, tmp_path):
    from conftest import schema_problems

    good = json.loads(json.dumps(run_attack(AttackConfig(dataset=str(small_dataset), target="pop", shadow="pop", top_k=5,
                                                         attack_params={"epochs": 5}, seed=3), store=store).to_json()))
    validate(good)
    cases = {
        "metrics.roc_auc": lambda d: d["metrics"].update(roc_auc=1.5),
        "(top level)": lambda d: d.pop("split"),
        "config.top_k": lambda d: d["config"].update(top_k="10"),
        "queries": lambda d: d.update(queries={"attack": {"used": 3}}),  # the layout before schema version 1
    }
    for where, spoil in cases.items():
        bad = copy.deepcopy(good)
        spoil(bad)
        with pytest.raises(MiarsError, match=rf"does not follow schema version 1: {__import__('re').escape(where)}"):
            validate(bad)
    bad = copy.deepcopy(good)
    bad["config"]["defense"] = "list-noise"  # a defended run must say what each attacker got
    with pytest.raises(MiarsError, match="attackers"):
        validate(bad)
    with pytest.raises(MiarsError, match="no schema_version"):
        validate({k: v for k, v in good.items() if k != "schema_version"})
    # the suite's own check finds a broken file (and leaves hand-made files without schema_version alone)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text(json.dumps({**good, "metrics": {}}))
    (tmp_path / "result.json").write_text(json.dumps({"metrics": {}}))
    problems = schema_problems(tmp_path)
    assert len(problems) == 1 and problems[0].startswith(str(tmp_path / "a" / "result.json"))
    (tmp_path / "a" / "result.json").write_text(json.dumps(good))  # so this test's own folder passes the check
