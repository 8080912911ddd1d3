"""Errors that help: a plugin's exception keeps its traceback (MIARS_DEBUG=1, error.json) and names its owner.

A recommender whose ``recommend_for`` (what the fold-in service calls) raises or serves lists
that break the contract is named, with its plugin, instead of the service that called it.
"""

from __future__ import annotations

import json
import pickle
import sys
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from miars_core import cli
from miars_core.contracts.errors import MiarsError, PluginError, plugin_traceback
from miars_core.contracts.hookspecs import hookimpl
from miars_core.contracts.plugins import get_plugins
from miars_core.contracts.types import Part
from miars_core.kit.checks import make_interactions
from miars_core.science.service import serve
from miars_core.science.ranking import top_k_popular

THIS_FILE = __file__


class Popular:
    """Most popular unknown items (a test recommender)."""

    def __init__(self):
        pass

    def get_params(self):
        return {}

    def fit(self, train, seed=0):
        self.pop_ = train.item_popularity()
        self.known_ = train.matrix
        return self

    def recommend(self, k):
        return top_k_popular(self.pop_, self.known_, k)

    def recommend_for(self, histories, k, seed=0):
        return top_k_popular(self.pop_, histories, k)


class BrokenFit(Popular):
    """Raises inside fit (a test recommender)."""

    def fit(self, train, seed=0):
        return {}["missing"]  # KeyError: 'missing', on this line


class RaisingFoldIn(Popular):
    """Raises inside recommend_for (a test recommender)."""

    def recommend_for(self, histories, k, seed=0):
        raise ValueError("no fold-in today")


class KnownFoldIn(Popular):
    """recommend_for serves items the account knows (a test recommender)."""

    def recommend_for(self, histories, k, seed=0):
        rows = np.repeat(np.arange(histories.shape[0])[:, None], k, axis=1)
        first = np.asarray(histories.indices[histories.indptr[:-1]], dtype=np.int64)
        out = top_k_popular(self.pop_, histories, k)
        out[:, 0] = first  # the first item each account knows
        return out + 0 * rows


def _part(n_users: int = 30) -> Part:
    data = make_interactions(n_users=n_users, n_items=60, seed=3)
    is_member = np.arange(n_users) % 2 == 0
    return Part("target", data, is_member)


def _foldin():
    return get_plugins().create("service", "foldin")


def test_a_plugin_exception_keeps_its_traceback():
    with pytest.raises(PluginError) as info:
        serve(_part(), BrokenFit(), "broken", 5, 0)
    err = info.value
    assert "failed in fit: KeyError: 'missing'" in str(err) and "\n" not in str(err)
    assert isinstance(err.__cause__, KeyError)
    assert THIS_FILE in err.traceback and "return {}[\"missing\"]" in err.traceback
    assert plugin_traceback(MiarsError("wrapped")) == ""
    assert plugin_traceback(err) == err.traceback
    copy = pickle.loads(pickle.dumps(err))  # a worker process's error reaches the grid whole
    assert type(copy) is PluginError and str(copy) == str(err) and copy.traceback == err.traceback


def test_an_exception_inside_recommend_for_names_the_recommender():
    with pytest.raises(PluginError) as info:
        serve(_part(), RaisingFoldIn(), "raising", 5, 0, service=_foldin())
    message = str(info.value)
    assert message.startswith("recommender 'raising' (plugin "), message
    assert "failed in recommend_for (called by service 'foldin' (plugin 'services')" in message
    assert "ValueError: no fold-in today" in message
    assert "raise ValueError(\"no fold-in today\")" in info.value.traceback


def test_known_items_from_recommend_for_name_the_recommender():
    with pytest.raises(MiarsError) as info:
        serve(_part(), KnownFoldIn(), "knowing", 5, 0, service=_foldin())
    message = str(info.value)
    assert message.startswith("recommender 'knowing' (plugin "), message
    assert "recommend_for returned an item the user already knows" in message
    assert "service 'foldin' (plugin 'services') serves new accounts with it" in message


def test_a_service_s_own_exception_still_names_the_service():
    class Failing:
        def new_accounts(self, fitted, train, k, seed=0):
            raise RuntimeError("service bug")

        def serve_others(self, fitted, train, histories, k, seed=0):
            raise RuntimeError("service bug")

    with pytest.raises(PluginError, match=r"^service 'Failing' .* failed in new_accounts: RuntimeError: service bug"):
        serve(_part(), Popular(), "popular-test", 5, 0, service=Failing())


# --------------------------------------------------------------------------- the command line and the grid

@hookimpl
def register_recommenders(register):
    register("broken-fit", BrokenFit)


@pytest.fixture
def broken_plugin(monkeypatch):
    """A plugin module with the broken recommender, loaded with the built-ins (the process-wide plugins)."""
    import miars_core.contracts.plugins as plugins_module

    module = types.ModuleType("broken_plugin")
    module.register_recommenders = register_recommenders
    monkeypatch.setattr(plugins_module, "_cached", get_plugins(extra=[module]))
    return module


def test_miars_debug_shows_the_plugin_s_file_and_line(broken_plugin, small_dataset):
    runner = CliRunner()
    args = ["attack", "--dataset", str(small_dataset), "--target", "broken-fit", "--top-k", "5", "--no-cache", "-q"]
    quiet = runner.invoke(cli.app, args, env={"MIARS_DEBUG": ""})
    assert quiet.exit_code == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().endswith("failed in fit: KeyError: 'missing'")
    loud = runner.invoke(cli.app, args, env={"MIARS_DEBUG": "1"})
    assert loud.exit_code == 2
    assert "Traceback (most recent call last)" in loud.stderr and THIS_FILE in loud.stderr
    assert 'return {}["missing"]' in loud.stderr
    assert loud.stderr.strip().splitlines()[-1].startswith("miars: error: recommender 'broken-fit'")


def test_a_failed_cell_s_error_json_holds_the_traceback(broken_plugin, small_dataset, tmp_path):
    from miars_core.engine.grid import GridSpec
    from miars_core.engine.run import run_grid

    spec = GridSpec(dataset=[str(small_dataset)], target=["broken-fit"], top_k=[5])
    summary = run_grid(spec, tmp_path / "run", cache=None)
    (cid,) = summary.failed
    error = json.loads((tmp_path / "run" / "cells" / cid / "error.json").read_text())
    assert "failed in fit: KeyError: 'missing'" in error["error"]
    assert THIS_FILE in error["traceback"] and 'return {}["missing"]' in error["traceback"]
