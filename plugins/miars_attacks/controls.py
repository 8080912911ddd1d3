"""Control attacks: label-free rules that check a protocol, not a model.

A control reads what a protocol gives away *outside* the model. On a sound protocol it reads
chance (ROC-AUC 0.5); anything above chance is a leak of the protocol, and every attack
number measured under that protocol is suspect.
"""

from __future__ import annotations

import numpy as np

from miars_core.contracts.components import Component
from miars_core.science.threat import AdversaryView


def overlap_share(lists: np.ndarray, histories) -> np.ndarray:
    """Share of each row's list that lies inside the same row of ``histories`` (users x items, 0/1)."""
    lists = np.asarray(lists, dtype=np.int64)
    n, k = lists.shape
    if n == 0 or k == 0:
        return np.zeros(n, dtype=np.float64)
    inside = np.asarray(histories[np.repeat(np.arange(n), k), lists.ravel()]).reshape(n, k) > 0
    return inside.mean(axis=1, dtype=np.float64)


class OverlapControl(Component):
    """Control, not an attack: served items already in the user's history (trains nothing, no labels).

    Score of a user = the share of her served list that lies inside her own visible history
    (what the adversary sees of her); more overlap reads as member. A service never lists an
    item it knows the user has, so the score is 0 for everyone and ROC-AUC exactly 0.5 unless
    the protocol treats members and non-members differently: e.g. members' lists may contain
    items the service never saw (a hold-out) while the adversary does see them. Before the
    utility hold-out became the users' future (docs/defenses.md) this rule read ROC-AUC 0.94
    on ml-100k ``item`` with ``--utility-holdout 0.2``. Prediction: any overlap.
    """

    threat = "lists"
    #: A control reads chance on a sound protocol: the conformance check does not ask it to separate members.
    control = True

    def __init__(self):
        pass

    def fit(self, view: AdversaryView, seed: int = 0) -> "OverlapControl":
        return self

    def decision_function(self, view: AdversaryView) -> np.ndarray:
        return overlap_share(view.lists, view.histories)

    def predict(self, view: AdversaryView) -> np.ndarray:
        return self.decision_function(view) > 0
