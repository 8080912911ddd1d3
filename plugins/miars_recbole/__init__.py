"""Built-in recommenders: RecBole models (ItemKNN, BPR, NeuMF, any general model) and popularity.

Registers ``item``, ``lfm``, ``ncf``, ``pop``, the control ``random`` and the namespace ``recbole:<Name>``. Importing this
module is cheap: RecBole and torch load only when a model is fitted.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from miars_core.contracts.errors import MiarsError
from miars_core.contracts.hookspecs import hookimpl

from .models import ItemKNN, LatentFactorModel, NeuralCF, Popularity, RandomItems, RecBoleModel, TUNED
from .sequential import SequentialModel

__version__ = "0.1.0"
__all__ = ["ItemKNN", "LatentFactorModel", "NeuralCF", "Popularity", "RandomItems", "RecBoleModel", "SequentialModel",
           "UNSUPPORTED", "UNSUPPORTED_SEQUENTIAL", "general_model_names", "sequential_model_names",
           "supported_model_names"]


@functools.lru_cache(maxsize=2)
def _model_names(kind: str) -> tuple[str, ...]:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return ()
    init = Path(spec.submodule_search_locations[0]) / "model" / kind / "__init__.py"
    return tuple(sorted(re.findall(r"^from \S+ import (\w+)\s*$", init.read_text(), flags=re.M)))


def general_model_names() -> list[str]:
    """Names of RecBole's general recommenders, read from its package without importing it."""
    return list(_model_names("general_recommender"))


def sequential_model_names() -> list[str]:
    """Names of RecBole's sequential recommenders, read from its package without importing it."""
    return list(_model_names("sequential_recommender"))


#: RecBole general models that do not run inside miars, with the reason (docs/recbole.md has
#: the measurements of every model on ml-100k with epochs=1). ``recbole:<Name>`` for these is
#: refused before any data is read; ``miars list recommender`` does not offer them.
UNSUPPORTED: dict[str, str] = {
    "ConvNCF": (
        "it scores every (user, item) pair through a 64 x 64 outer-product map and a CNN: one scoring batch "
        "of 256 users x 1,682 items needs 7.1 GB for the first map alone and the whole run grew past 23 GB "
        "on ml-100k (memory grows with users x items x embedding_size^2)"
    ),
    "Pop": (
        "RecBole 1.2.1's Pop counts an item at most once per training batch (an indexed assignment, not an "
        "add), so with batches of 4,096 interactions its counts are 0-4 and its lists are not the popular "
        "items (1.4% overlap with the popular top-100 on ml-100k); use the built-in recommender `pop`"
    ),
    "RaCT": (
        "it trains in three stages chained through saved checkpoints (actor pre-training, critic pre-training, "
        "fine-tuning); miars would run only the actor pre-training, for RecBole's 150 pretrain_epochs whatever "
        "epochs says (over 400 s on ml-100k with epochs=1), which is not RaCT; use recbole:MultiVAE for its actor"
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


#: RecBole sequential models that do not run inside miars, with the reason (docs/sequential.md has the
#: table of every sequential model). Refused before any data is read; not listed by ``miars list recommender``.
UNSUPPORTED_SEQUENTIAL: dict[str, str] = {
    "DIN": ("a click-through-rate model: it trains on labelled (user, item, label) rows with user and item feature "
            "tables and has no full ranking of the catalogue; miars data are implicit interactions without features"),
    "DIEN": ("a click-through-rate model: it trains on labelled (user, item, label) rows with user and item feature "
             "tables and has no full ranking of the catalogue; miars data are implicit interactions without features"),
    "FDSA": "it reads item features (selected_features from a .item file); miars data have items without features",
    "GRU4RecF": "it reads item features (selected_features from a .item file); miars data have items without features",
    "SASRecF": "it reads item features (selected_features from a .item file); miars data have items without features",
    "KSR": "it reads a knowledge graph (.kg and .link files with pretrained entity embeddings), which miars data lack",
    "GRU4RecKG": "it reads a knowledge graph (.kg and .link files with pretrained entity embeddings), which miars data lack",
    "S3Rec": ("it pre-trains on item attributes (a .item feature field) and fine-tunes from a saved checkpoint in a "
              "second run; miars data have no item attributes and miars runs one training"),
}


#: Smaller scoring batches (users at a time) for models without a full-ranking path whose
#: per-pair forward pass is large: NNCF at the default 256 users x 1,682 items allocated 2.8 GB
#: per intermediate tensor on ml-100k and failed at a 6 GB limit; 16 users need ~0.2 GB each.
SCORE_BATCH: dict[str, int] = {"NNCF": 16}

#: Models that run only when an optional package (not a dependency of RecBole) is installed.
REQUIRES: dict[str, tuple[str, str]] = {"NCL": ("faiss", "faiss-cpu")}


def missing_requirement(name: str) -> str | None:
    """Why ``name`` cannot run here for lack of an optional package, else None."""
    if name not in REQUIRES:
        return None
    module, dist = REQUIRES[name]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"it needs the {module} package, which is not installed (pip install {dist})"


def supported_model_names() -> list[str]:
    """RecBole general and sequential models that ``recbole:<Name>`` accepts here."""
    general = [n for n in general_model_names() if n not in UNSUPPORTED and missing_requirement(n) is None]
    return sorted(general + [n for n in sequential_model_names() if n not in UNSUPPORTED_SEQUENTIAL])


def _resolve(name: str):
    """``recbole:<Name>``: our tuned class for ItemKNN/BPR/NeuMF, a sequential model, else RecBole's own defaults."""
    if name in UNSUPPORTED_SEQUENTIAL:
        raise MiarsError(f"recommender 'recbole:{name}' is not supported: {UNSUPPORTED_SEQUENTIAL[name]}; "
                         "see docs/sequential.md for the sequential models that run")
    if name in sequential_model_names():
        return functools.partial(SequentialModel, model=name)
    if name in UNSUPPORTED:
        raise MiarsError(f"recommender 'recbole:{name}' is not supported: {UNSUPPORTED[name]}; "
                         "see docs/recbole.md for the models that run")
    missing = missing_requirement(name)
    if missing:
        raise MiarsError(f"recommender 'recbole:{name}' cannot run here: {missing}")
    if name in TUNED:
        return TUNED[name]
    if name in SCORE_BATCH:
        factory = functools.partial(RecBoleModel, model=name, score_batch_size=SCORE_BATCH[name])
        factory.overridable = ("score_batch_size",)  # a default, not part of the name
        return factory
    return functools.partial(RecBoleModel, model=name)


@hookimpl
def register_recommenders(register):
    register("item", ItemKNN)
    register("lfm", LatentFactorModel)
    register("ncf", NeuralCF)
    register("pop", Popularity)
    register("random", RandomItems)


@hookimpl
def register_namespaces(register):
    register("recommender", "recbole", _resolve, supported_model_names)
