"""miars_core.api: the commands as functions, same options and checks as the command line, long tables back."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from miars_core import api, cli
from miars_core.contracts.errors import MiarsError

RUNNER = CliRunner()
FAST = {"top_k": 10, "attack_param": {"epochs": 20}}


def _cli_error(args: list[str]) -> str:
    result = RUNNER.invoke(cli.app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("miars: error: "), result.stderr
    return lines[0][len("miars: error: "):]


def _api_error(fn, **options) -> str:
    with pytest.raises(MiarsError) as info:
        fn(**options)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("fn, option, hint", [(api.attack, "tpo_k", "top_k"), (api.grid, "targets", "target"),
                                              (api.bench_defenses, "defence", "defense"),
                                              (api.audit_dp, "canary", "canaries"), (api.attack, "target_params", "target_param")])
def test_an_unknown_option_is_a_one_line_error_with_a_did_you_mean(fn, option, hint):
    message = _api_error(fn, **{option: 1})
    assert message.startswith(f"No such option: {option} (did you mean {hint}?)"), message


def test_wrong_calls_are_miars_errors_never_type_errors(tmp_path):
    assert "takes its options by name" in _api_error(lambda: api.attack("ml-100k"))
    assert _api_error(api.grid, target="item").startswith("Missing option out")
    assert "is not a flag" in _api_error(api.attack, no_cache="yes")
    assert "is not a list" in _api_error(api.grid, target={"item"}, out=str(tmp_path / "g"))
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("args, options", [
    (["--top-k", "0"], {"top_k": 0}),
    (["--target", "itme"], {"target": "itme"}),
    (["--target-param", "epochs"], {"target_param": ["epochs"]}),
    (["--defense-param", "ratio=0.1"], {"defense_param": {"ratio": 0.1}}),
    (["--split", "rows"], {"split": "rows"}),
    (["--attack", "query-recall", "--query-budget", "0"], {"attack": "query-recall", "query_budget": 0}),
])
def test_attack_refuses_what_the_command_refuses_with_the_same_message(args, options, tmp_path):
    out = tmp_path / "out"
    assert _api_error(api.attack, out=str(out), **options) == _cli_error(["attack", *args, "--out", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("args, options", [
    (["--seed", "0,x"], {"seed": [0, "x"]}),
    (["--target", "item,nope"], {"target": ["item", "nope"]}),
    (["--defense-param", "ratio=0.1"], {"defense_param": {"ratio": [0.1]}}),
    (["--target-param", "lfm.epochs=5"], {"target_param": {"lfm": {"epochs": 5}}}),
    (["--max-cells", "0"], {"max_cells": 0}),
])
def test_grid_refuses_what_the_command_refuses_with_the_same_message(args, options, tmp_path):
    out = tmp_path / "out"
    assert _api_error(api.grid, out=str(out), **options) == _cli_error(["grid", *args, "--out", str(out)])
    assert not out.exists()


def test_attack_returns_the_result_its_files_and_a_long_table(small_dataset, tmp_path):
    with pytest.warns(UserWarning) as caught:  # the warnings the command prints, pointing at this call
        run = api.attack(dataset=small_dataset, target="item", shadow="pop", out=tmp_path / "one", quiet=True,
                         no_cache=True, **FAST)
    assert all(w.filename == __file__ for w in caught) and [str(w.message) for w in caught] == run.warnings
    assert run.paths["result.json"] == tmp_path / "one" / "result.json" and run.paths["scores.tsv"].is_file()
    assert json.loads(run.paths["result.json"].read_text())["metrics"] == run.metrics
    frame = run.to_pandas()
    assert list(frame.columns) == list(api.COLUMNS)
    assert set(frame["attacker"]) == {"attack", ""} and set(frame["shadow"]) == {"pop"} and set(frame["defense"]) == {"none"}
    assert set(frame.loc[frame["attacker"] == "", "metric"]) == {"cost:seconds"}  # no utility hold-out, no DP claim
    auc = frame.loc[frame["metric"] == "roc_auc", "value"]
    assert len(auc) == 1 and auc.iloc[0] == run.metrics["roc_auc"]
    # the same options through the command line give the same metrics
    res = RUNNER.invoke(cli.app, ["attack", "--dataset", str(small_dataset), "--target", "item", "--shadow", "pop",
                                  "--top-k", "10", "--attack-param", "epochs=20", "--no-cache", "-q", "--out",
                                  str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli" / "result.json").read_text())["metrics"] == run.metrics


def test_grid_and_bench_defenses_give_one_row_per_cell_attacker_and_metric(small_dataset, tmp_path):
    run = api.grid(dataset=str(small_dataset), target=["item", "pop"], shadow="item,pop", seed=0, out=tmp_path / "g",
                   cache=tmp_path / "cache", no_report=True, quiet=True, workers=1, **FAST)
    assert not run.failed and len(run.cells) == 4 and run.report is None
    frame = run.to_pandas()
    auc = frame[frame["metric"] == "roc_auc"].pivot_table(index="target", columns="shadow", values="value")
    assert auc.shape == (2, 2) and auc.notna().all().all()
    assert set(frame["cell"]) == set(run.cells)
    again = api.report(run.run_dir)  # the report of an existing run folder
    assert again.report == tmp_path / "g" / "report" / "report.html" and again.report.is_file()
    assert api.load(tmp_path / "g").to_pandas().equals(frame)

    bench = api.bench_defenses(dataset=small_dataset, target="item", defense="popularity-randomization",
                               defense_param={"ratio": 0.2}, seed=[0], out=tmp_path / "b", cache=tmp_path / "cache",
                               no_report=True, quiet=True, workers=1, **FAST)
    frame = bench.to_pandas()
    defended = frame[frame["defense"] == "popularity-randomization"]
    assert set(defended["attacker"]) == {"defense_aware", "defense_unaware", ""}
    assert set(defended["defense_params"]) == {"ratio=0.2"}
    assert {"utility:recall@10", "utility:ndcg@10", "cost:seconds"} <= set(defended["metric"])
    assert {"new_accounts:recall@10", "new_accounts:ndcg@10", "new_accounts:hr@10"} <= set(defended["metric"])


def test_load_refuses_a_folder_that_is_not_a_run(tmp_path):
    assert "has no cells/ folder" in _api_error(api.load, run_dir=tmp_path)
