"""Built-in featurizer and attacks: the CCS'21 ``center-diff`` + ``mlp``, the attacks of other threat models, and controls."""

from __future__ import annotations

from miars_core.contracts.hookspecs import hookimpl

from .controls import OverlapControl
from .dlmia import DLMIA
from .features import CenterDiff, item_vectors
from .lira import LiRA
from .metric import KMeansAttack, ReferenceRec, ShadowFree
from .mlp import MLPAttack
from .query import InteractionQuery, QueryRecall

__version__ = "0.1.0"
__all__ = ["CenterDiff", "DLMIA", "InteractionQuery", "KMeansAttack", "LiRA", "MLPAttack", "OverlapControl", "QueryRecall", "ReferenceRec",
           "ShadowFree", "item_vectors"]


@hookimpl
def register_featurizers(register):
    register("center-diff", CenterDiff)


@hookimpl
def register_attacks(register):
    register("mlp", MLPAttack)
    register("kmeans", KMeansAttack)
    register("shadow-free", ShadowFree)
    register("reference-rec", ReferenceRec)
    register("query-recall", QueryRecall)
    register("interaction", InteractionQuery)
    register("lira", LiRA)
    register("dl-mia", DLMIA)
    register("overlap", OverlapControl)
