"""The notebook under docs/notebooks/ runs (on a small synthetic file: MIARS_NOTEBOOK_DATASET) and shows what it says.

It runs without a Jupyter kernel, its code cells in order in one namespace
(:func:`miars_core.docgen.run_notebook`); the docs site renders it as a page (tests/test_site.py
builds the site), with the outputs stored in the file when there are any.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from miars_core.docgen import notebook_markdown, read_notebook, run_notebook, store_outputs

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "reproduce.ipynb"


def _html(outputs: list[dict]) -> str:
    return "".join(o["data"].get("text/html", "") for o in outputs if o.get("output_type") == "execute_result")


def test_the_notebook_is_a_valid_nbformat_4_5_file():
    """What Jupyter needs to open it without repairing it (the required keys of nbformat 4.5)."""
    nb = read_notebook(NOTEBOOK)
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5 and nb["metadata"]["kernelspec"]["language"] == "python"
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids)
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["metadata"], dict)
        assert isinstance(cell["source"], (str, list))
        if cell["cell_type"] == "code":
            assert isinstance(cell["outputs"], list) and "execution_count" in cell


def test_the_notebook_runs_through_the_python_api_and_renders_with_its_outputs(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("MIARS_NOTEBOOK_DATASET", str(small_dataset))
    monkeypatch.setenv("MIARS_NOTEBOOK_OUT", str(tmp_path / "runs"))
    outputs = run_notebook(NOTEBOOK, cwd=tmp_path)
    code = [c for c in read_notebook(NOTEBOOK)["cells"] if c["cell_type"] == "code"]
    assert len(outputs) == len(code)
    table = _html(outputs[2])  # the ROC-AUC pivot: target in rows, shadow in columns
    for name in ("item", "lfm", "ncf"):
        assert f"<th>{name}</th>" in table
    assert len(re.findall(r"<td>[01]\.\d+</td>", table)) == 9
    frontier = _html(outputs[4])
    assert "popularity-randomization" in frontier and "dp-itemknn" in frontier and "adaptive" in frontier
    assert "image/png" in outputs[5][0]["data"]  # the frontier plot
    assert len(list((tmp_path / "runs" / "3x3" / "cells").iterdir())) == 9

    # stored into a copy, the outputs make the page (what `python -m miars_core.docgen notebook` does to the file)
    copy = tmp_path / "reproduce.ipynb"
    shutil.copy(NOTEBOOK, copy)
    store_outputs(copy, outputs)
    stored = read_notebook(copy)
    assert [c["id"] for c in stored["cells"]] == [c["id"] for c in read_notebook(NOTEBOOK)["cells"]]
    assert [c["execution_count"] for c in stored["cells"] if c["cell_type"] == "code"] == list(range(1, len(code) + 1))
    json.dumps(stored, allow_nan=False)  # plain JSON, as Jupyter writes it
    page = notebook_markdown(stored, download="reproduce.ipynb")
    assert page.startswith("[Download this notebook](reproduce.ipynb) (run it with Jupyter, or read it here")
    assert "api.grid(" in page and page.count("<table") >= 3 and "data:image/png;base64," in page


def test_the_page_of_a_notebook_without_outputs_says_so():
    nb = read_notebook(NOTEBOOK)
    bare = {**nb, "cells": [{**c, "outputs": []} if c["cell_type"] == "code" else c for c in nb["cells"]]}
    page = notebook_markdown(bare, download="reproduce.ipynb")
    assert "its outputs are not stored yet" in page and "docs/notebooks/reproduce.ipynb" in page
    assert "```python\nimport os" in page and "# The paper's 3x3 table" in page and "<table" not in page
