"""Attacks that score each user by a metric of their history and served list (no attack model to train).

They see what :class:`miars_core.science.threat.AdversaryView` grants (``threat = "lists"``, or
``"queries"`` for reference-rec) and score users vectorised over the whole part: sparse
products of the histories and lists with the item vectors, one k-means, no per-user loop.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.components import Component
from miars_core.contracts.params import Interval, Options
from miars_core.science.threat import AdversaryView

#: Added to distances before dividing, so a zero distance gives a large, finite ratio.
EPS = 1e-6


def list_matrix(lists: np.ndarray, n_items: int, weights: np.ndarray | None = None) -> sp.csr_matrix:
    """(users x items) sparse matrix of the served lists, each row summing to 1 (``weights`` by rank, or uniform)."""
    n, k = lists.shape
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    return sp.csr_matrix((np.tile(w, n), lists.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n_items))


def mean_vectors(rows: sp.csr_matrix, vectors: np.ndarray) -> np.ndarray:
    """Mean item vector of each row of a 0/1 (or weighted) matrix; an empty row gives zeros."""
    m = sp.csr_matrix(rows, dtype=np.float64)
    sums = np.asarray(m.sum(axis=1)).ravel()
    out = np.asarray(m @ vectors, dtype=np.float64)
    return out / np.where(sums > 0, sums, 1.0)[:, None]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (0 where a row is zero)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na * nb, EPS)


def distance(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """Row-wise ``euclidean`` or ``cosine`` (1 - cosine similarity) distance."""
    if kind == "cosine":
        return 1.0 - cosine(a, b)
    return np.linalg.norm(a - b, axis=1)


def orient_and_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(sign, threshold) chosen on shadow data: the sign that makes ROC-AUC >= 0.5 and the cut of best balanced accuracy."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(labels).astype(bool)
    sign = 1.0 if roc_auc_score(y, scores) >= 0.5 else -1.0
    fpr, tpr, thresholds = roc_curve(y, sign * scores)
    best = int(np.argmax(tpr - fpr))
    cut = float(thresholds[best]) if np.isfinite(thresholds[best]) else float(np.max(sign * scores)) + 1.0
    # Score > 0 means member: put the cut halfway to the next lower score so ties fall on the right side.
    below = (sign * scores)[(sign * scores) < cut]
    return sign, (cut + float(below.max())) / 2 if len(below) else cut - 1.0


class _ShadowCalibrated(Component):
    """A metric whose orientation and threshold are chosen on the shadow part (never on target labels).

    ``labels``: the view field holding the shadow's truth (``labels`` for users,
    ``pair_labels`` for interaction-level attacks).
    """

    labels = "labels"

    def _score(self, view: AdversaryView, seed: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, view: AdversaryView, seed: int = 0):
        view.require(type(self).__name__, self.labels)
        self.seed_ = int(seed)
        self.sign_, self.threshold_ = orient_and_threshold(self._score(view, seed), getattr(view, self.labels))
        return self

    def decision_function(self, view: AdversaryView) -> np.ndarray:
        return self.sign_ * self._score(view, self.seed_) - self.threshold_

    def predict(self, view: AdversaryView) -> np.ndarray:
        return self.decision_function(view) > 0


class KMeansAttack(Component):
    """Unsupervised attack: 2-means clustering of the target users' features, no shadow labels (Zhang et al., CCS 2021).

    The authors' unsupervised variant of the CCS'21 attack: each user's feature is the mean
    vector of their history minus the uniform mean vector of their list (their k-means
    script weighs every position 0.01 for k = 100); the target users are split into two
    clusters by k-means (``n_init`` restarts, seeded). With no labels to say which cluster is
    which, the cluster whose centre lies nearer the origin (lists closest to their users'
    histories) is called the members. Score: distance to the other centre minus distance to
    the member centre. The shadow part is not used.
    """

    threat = "lists"
    param_constraints = {"n_init": Interval(int, 1), "weights": Options(("uniform", "rank"))}

    def __init__(self, n_init: int = 10, weights: str = "uniform"):
        self.n_init = n_init
        self.weights = weights

    def fit(self, view: AdversaryView, seed: int = 0) -> "KMeansAttack":
        self.seed_ = int(seed)
        return self

    def _features(self, view: AdversaryView) -> np.ndarray:
        view.require("kmeans", "item_vectors")
        v = view.item_vectors
        w = np.arange(view.k, 0, -1, dtype=np.float64) if self.weights == "rank" else None
        return mean_vectors(view.histories, v) - mean_vectors(list_matrix(view.lists, v.shape[0], w), v)

    def decision_function(self, view: AdversaryView) -> np.ndarray:
        return self._cluster(view)

    def _cluster(self, view: AdversaryView) -> np.ndarray:
        from sklearn.cluster import KMeans

        x = self._features(view)
        km = KMeans(n_clusters=2, n_init=int(self.n_init), random_state=self.seed_).fit(x)
        centres = km.cluster_centers_
        member = int(np.argmin(np.linalg.norm(centres, axis=1)))
        d = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=2)
        self.centres_ = centres
        return d[:, 1 - member] - d[:, member]

    def predict(self, view: AdversaryView) -> np.ndarray:
        return self.decision_function(view) > 0


class ShadowFree(Component):
    """Shadow-free attack: is the served list nearer the user's history than the popular list? (after Salem et al., NDSS 2019)

    A metric attack in the spirit of the shadow-free membership inference of Salem et al.
    (NDSS 2019, "ML-Leaks", adversary 3) applied to recommendations: score = cosine(list,
    history) - cosine(list, popular list), each a mean item vector (item vectors and item
    popularity from the adversary's own data, the vectorization part). A member's list is
    made from their history; a non-member's, under the paper's service, is the popular list.
    Threshold 0, orientation fixed: no labels of any kind are used.
    """

    threat = "lists"

    def __init__(self):
        pass

    def fit(self, view: AdversaryView, seed: int = 0) -> "ShadowFree":
        return self

    def decision_function(self, view: AdversaryView) -> np.ndarray:
        view.require("shadow-free", "item_vectors", "popular")
        v = view.item_vectors
        listed = mean_vectors(list_matrix(view.lists, v.shape[0]), v)
        history = mean_vectors(view.histories, v)
        popular = v[view.popular[: view.k]].mean(axis=0, keepdims=True)
        return cosine(listed, history) - cosine(listed, np.broadcast_to(popular, listed.shape))

    def predict(self, view: AdversaryView) -> np.ndarray:
        return self.decision_function(view) > 0


class ReferenceRec(_ShadowCalibrated):
    """Reference-recommendation attack: relative membership metric d(list, history) / d(list, reference list) (Chi et al., AAAI 2026).

    X. Chi, X. Zhang, Y. Wang, H. Hu, W. Dou, "Reference Recommendation based Membership
    Inference Attack against Hybrid-based Recommender Systems" (AAAI 2026). The adversary
    gets, for each user, a reference list made without the user's history: what an account
    with only the user's attributes is recommended. With user attributes (``--user-attributes``,
    ``view.attributes``), as in the paper: one fresh account per distinct attribute profile,
    asked of the service itself when it serves cold start by attributes (``--service-param
    cold_start=attributes``, a hybrid service), else the adversary's own cold start by
    attributes over its own data (``view.reference.cold_start``: the most popular items among
    its users with those attributes); without attributes, the list an empty account gets (one
    query for all users: the cold-start list, the same for everyone). With v_t, v_h, v_r the
    mean item vectors of the served list, the history and the reference list, the metric is
    rho = d(v_t, v_h) / d(v_t, v_r); a member's list lies nearer their history than to the
    reference. Score: -log(rho); orientation and threshold are chosen on the shadow part (the
    adversary's own service). ``query_record_`` (result.json's ``queries``) says where the
    target's reference lists came from: ``reference_list`` (``attributes`` or ``cold-start``),
    ``reference_source`` (``service`` or ``adversary``) and ``reference_profiles`` (lists asked).
    """

    threat = "queries"
    #: Reads ``view.attributes`` when the cell has user attributes (the engine keys its output by the file).
    uses_attributes = True
    param_constraints = {"distance": Options(("euclidean", "cosine"))}

    def __init__(self, distance: str = "euclidean"):
        self.distance = distance

    def _reference_lists(self, view: AdversaryView) -> tuple[np.ndarray, np.ndarray]:
        """(reference lists, row of each user's list): by attribute profile, or one cold-start list for all."""
        n_items = view.item_vectors.shape[0]
        if view.attributes is None:
            lists = view.query.recommend(sp.csr_matrix((1, n_items), dtype=np.float32))  # an empty account
            self.query_record_ = {"reference_list": "cold-start", "reference_source": "service",
                                  "reference_profiles": 1}
            return lists, np.zeros(view.n_users, dtype=np.int64)
        profiles, inverse = np.unique(np.asarray(view.attributes), axis=0, return_inverse=True)
        if view.query.cold_start == "attributes":  # the paper's hybrid service: ask it, one account per profile
            lists = view.query.recommend(sp.csr_matrix((len(profiles), n_items), dtype=np.float32), attributes=profiles)
            source = "service"
        else:  # the service ignores attributes: the adversary's own cold start by attributes
            view.require("reference-rec", "reference")
            lists = view.reference.cold_start(profiles)
            source = "adversary"
        self.query_record_ = {"reference_list": "attributes", "reference_source": source,
                              "reference_profiles": int(len(profiles))}
        return lists, np.asarray(inverse).ravel()

    def _score(self, view: AdversaryView, seed: int) -> np.ndarray:
        view.require("reference-rec", "item_vectors", "query")
        v = view.item_vectors
        lists, row = self._reference_lists(view)
        v_r = v[lists].mean(axis=1)[row]
        v_t = mean_vectors(list_matrix(view.lists, v.shape[0]), v)
        v_h = mean_vectors(view.histories, v)
        rho = (distance(v_t, v_h, self.distance) + EPS) / (distance(v_t, v_r, self.distance) + EPS)
        return -np.log(rho)
