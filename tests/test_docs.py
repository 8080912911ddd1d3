"""The plugin guide's examples run, and every hook in hookspecs.py is documented there."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

import miars_core.contracts.hookspecs as hookspecs
from miars_core.kit import checks

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S) if "@hookimpl" in b and "from ." not in b]


def test_every_hook_is_documented_with_an_example():
    text = DOC.read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert hooks
    for hook in hooks:
        assert f"#### `{hook}`" in text, f"docs/plugins.md has no section for {hook}"
        assert any(f"def {hook}(" in b for b in BLOCKS), f"docs/plugins.md has no runnable example of {hook}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_documented_example_plugins_keep_the_contract(index):
    module = types.ModuleType(f"doc_example_{index}")
    exec(compile(BLOCKS[index], f"docs/plugins.md block {index}", "exec"), module.__dict__)
    checks.check_plugin(module)
