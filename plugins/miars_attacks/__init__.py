"""Built-in featurizer and attack model of Zhang et al., CCS 2021: ``center-diff`` and ``mlp``."""

from __future__ import annotations

from miars_core.hookspecs import hookimpl

from .features import CenterDiff, item_vectors
from .mlp import MLPAttack

__version__ = "0.1.0"
__all__ = ["CenterDiff", "MLPAttack", "item_vectors"]


@hookimpl
def register_featurizers(register):
    register("center-diff", CenterDiff)


@hookimpl
def register_attacks(register):
    register("mlp", MLPAttack)
