"""Built-in recommenders: RecBole models (ItemKNN, BPR, NeuMF, any general model) and popularity.

Registers ``item``, ``lfm``, ``ncf``, ``pop`` and the namespace ``recbole:<Name>``. Importing this
module is cheap: RecBole and torch load only when a model is fitted.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from miars_core.hookspecs import hookimpl

from .models import ItemKNN, LatentFactorModel, NeuralCF, Popularity, RecBoleModel, TUNED

__version__ = "0.1.0"
__all__ = ["ItemKNN", "LatentFactorModel", "NeuralCF", "Popularity", "RecBoleModel", "general_model_names"]


@functools.lru_cache(maxsize=1)
def general_model_names() -> list[str]:
    """Names of RecBole's general recommenders, read from its package without importing it."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return []
    init = Path(spec.submodule_search_locations[0]) / "model" / "general_recommender" / "__init__.py"
    return sorted(re.findall(r"^from \S+ import (\w+)\s*$", init.read_text(), flags=re.M))


def _resolve(name: str):
    """``recbole:<Name>``: our tuned class for ItemKNN/BPR/NeuMF, else RecBole's own defaults."""
    if name in TUNED:
        return TUNED[name]
    return functools.partial(RecBoleModel, model=name)


@hookimpl
def register_recommenders(register):
    register("item", ItemKNN)
    register("lfm", LatentFactorModel)
    register("ncf", NeuralCF)
    register("pop", Popularity)


@hookimpl
def register_namespaces(register):
    register("recommender", "recbole", _resolve, general_model_names)
