"""Built-in recommenders: RecBole models (ItemKNN, BPR, NeuMF, any general model) and popularity.

Registers ``item``, ``lfm``, ``ncf``, ``pop`` and the namespace ``recbole:<Name>``. Importing this
module is cheap: RecBole and torch load only when a model is fitted.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from miars_core.errors import MiarsError
from miars_core.hookspecs import hookimpl

from .models import ItemKNN, LatentFactorModel, NeuralCF, Popularity, RecBoleModel, TUNED

__version__ = "0.1.0"
__all__ = ["ItemKNN", "LatentFactorModel", "NeuralCF", "Popularity", "RecBoleModel", "UNSUPPORTED", "general_model_names",
           "supported_model_names"]


@functools.lru_cache(maxsize=1)
def general_model_names() -> list[str]:
    """Names of RecBole's general recommenders, read from its package without importing it."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return []
    init = Path(spec.submodule_search_locations[0]) / "model" / "general_recommender" / "__init__.py"
    return sorted(re.findall(r"^from \S+ import (\w+)\s*$", init.read_text(), flags=re.M))


#: RecBole general models that do not run inside miars, with the reason (docs/recbole.md has
#: the measurements of every model on ml-100k with epochs=1). ``recbole:<Name>`` for these is
#: refused before any data is read; ``miars list recommender`` does not offer them.
UNSUPPORTED: dict[str, str] = {
    "ConvNCF": (
        "it scores every (user, item) pair through a 64 x 64 outer-product map and a CNN: one scoring batch "
        "of 256 users x 1,682 items needs 7.1 GB for the first map alone and the whole run grew past 23 GB "
        "on ml-100k (memory grows with users x items x embedding_size^2)"
    ),
    "DiffRec": (
        "it trains on whole user rows (RecBole's LISTWISE input), which RecBole 1.2.1's negative-sampling "
        "train loader that miars uses cannot build"
    ),
    "LDiffRec": (
        "it trains on whole user rows (RecBole's LISTWISE input), which RecBole 1.2.1's negative-sampling "
        "train loader that miars uses cannot build"
    ),
}


def supported_model_names() -> list[str]:
    """RecBole general models that ``recbole:<Name>`` accepts."""
    return [n for n in general_model_names() if n not in UNSUPPORTED]


def _resolve(name: str):
    """``recbole:<Name>``: our tuned class for ItemKNN/BPR/NeuMF, else RecBole's own defaults."""
    if name in UNSUPPORTED:
        raise MiarsError(f"recommender 'recbole:{name}' is not supported: {UNSUPPORTED[name]}; "
                         "see docs/recbole.md for the models that run")
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
    register("recommender", "recbole", _resolve, supported_model_names)
