"""Query attacks: the adversary opens fresh accounts and reads what the service recommends to them."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from miars_core.contracts.params import Interval, Options
from miars_core.contracts.types import random_row_ranks
from miars_core.science.threat import AdversaryView

from .metric import _ShadowCalibrated, orient_and_threshold


def _stacked_splits(histories: sp.csr_matrix, queries: int,
                    choose) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``queries`` (query, held-out) splits of every history, stacked (query s of user u is row s * n + u).

    ``choose(s, values, counts, row_of)`` returns, per stored entry, whether query s holds it. Q
    keeps the values of ``histories`` (positions, when they are the view's ``sequences``: a
    sequential service then reads each query in the user's order); T is 0/1.
    """
    values = sp.csr_matrix(histories, dtype=np.float32)
    values.sum_duplicates()
    values.eliminate_zeros()
    counts = np.diff(values.indptr)
    row_of = np.repeat(np.arange(values.shape[0]), counts)
    qs, ts = [], []
    for s in range(queries):  # a handful of vectorised passes, one per query
        in_query = choose(s, values, counts, row_of)
        q = values.copy()
        q.data = values.data * in_query
        q.eliminate_zeros()
        t = values.copy()
        t.data = (~in_query).astype(np.float32)
        t.eliminate_zeros()
        qs.append(q)
        ts.append(t)
    return sp.vstack(qs, format="csr"), sp.vstack(ts, format="csr")


def half_splits(histories: sp.csr_matrix, queries: int, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``queries`` random halves of every history, stacked (query s of user u is row s * n + u).

    Returns (query halves Q, held-out halves T): Q holds ``|H| // 2`` of the user's items
    chosen at random, T the rest (other fractions measured worse: docs/notes.md). Q keeps the
    values of ``histories`` (positions, when they are the view's ``sequences``: a sequential
    service then reads each query half in the user's order); T is 0/1.
    """
    def choose(s, values, counts, row_of):
        _, ranks = random_row_ranks(values, seed + 7919 * s)
        return ranks < (counts // 2)[row_of]

    return _stacked_splits(histories, queries, choose)


def prefix_splits(sequences: sp.csr_matrix, queries: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``queries`` prefixes of every ordered history, stacked (query s of user u is row s * n + u).

    ``sequences`` holds each item's 1-based position in its user's sequence (the view's
    ``sequences``). Query s of a history of c items is its first ``floor(c (s + 1) / (queries + 1))``
    items (at least 1, at most c - 1: the continuation is never empty for c >= 2), with their
    positions as values, so a sequential service reads it in order; T is the continuation (0/1).
    No randomness: the same sequences give the same queries.
    """
    def choose(s, values, counts, row_of):
        length = np.clip((counts * (s + 1)) // (queries + 1), 1, np.maximum(counts - 1, 1))
        return values.data <= length[row_of]

    return _stacked_splits(sequences, queries, choose)


def recall_of_lists(lists: np.ndarray, held: sp.csr_matrix) -> np.ndarray:
    """Share of each row's held-out items found in its list (0 where nothing is held out)."""
    n, k = lists.shape
    hits = np.asarray(held[np.repeat(np.arange(n), k), lists.ravel()]).reshape(n, k).sum(axis=1)
    size = np.diff(held.indptr)
    return np.where(size > 0, hits / np.maximum(size, 1), 0.0)


class QueryRecall(_ShadowCalibrated):
    """Query attack: fresh accounts with half a user's history; how much of the other half does the service recommend? (LiRA-style calibration, Carlini et al., S&P 2022).

    For each user, ``queries`` times: split the history at random into a query half Q
    (``|H| // 2`` items) and a held-out half T, open a fresh account with history Q (one
    query) and score recall@k: the share of T in the account's top-k. The user's score is
    the mean over the queries. A model that memorised its members recommends their other
    items back. Calibration against a reference model the adversary trains offline on its
    own data (the vectorization part), served the same way and asked the same queries (what
    any model would recommend to this history; the per-example calibration of N. Carlini,
    S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramer, "Membership Inference Attacks From First
    Principles", S&P 2022):

    * ``none``: the raw recall;
    * ``reference``: recall minus the reference models' mean recall (``references`` models,
      each trained on its own sample of the adversary's data: more models, less noise);
    * ``zreg`` (default): the recall's standardized residual after a least-squares fit on the
      shadow part's non-members of recall ~ [1, mean reference recall, log |H|, mean log
      popularity of the user's items] (popularity in the adversary's own data).

    Orientation and threshold are chosen on the shadow part (the adversary's own service);
    the target is asked exactly ``queries`` queries per user.

    ``split="prefix"`` (for ordered data, e.g. against a sequential recommender): query s is
    the first (s + 1) / (queries + 1) of the user's sequence and T its continuation: how much of
    what she did next does the service predict from how she began (:func:`prefix_splits`).
    Refused before any work on a dataset without order.
    """

    threat = "queries"
    param_constraints = {"queries": Interval(int, 1), "calibration": Options(("none", "reference", "zreg")),
                         "references": Interval(int, 1), "split": Options(("random", "prefix"))}

    def __init__(self, queries: int = 5, calibration: str = "zreg", references: int = 3, split: str = "random"):
        self.queries = queries
        self.calibration = calibration
        self.references = references
        self.split = split

    @property
    def needs_order(self) -> bool:
        """Whether the attack reads each user's history in order (``split="prefix"``): checked before any work."""
        return self.split == "prefix"

    def _splits(self, view: AdversaryView, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        if self.split == "prefix":
            view.require("query-recall split=prefix", "sequences")
            return prefix_splits(view.sequences, int(self.queries))
        return half_splits(view.sequences if view.sequences is not None else view.histories, int(self.queries), seed)

    def _recalls(self, view: AdversaryView, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean recall over the queries on the service and, when calibrating, on the reference model."""
        view.require("query-recall", "query")
        n, s = view.n_users, int(self.queries)
        q, t = self._splits(view, seed)
        recall = recall_of_lists(view.query.recommend(q), t).reshape(s, n).mean(axis=0)
        if self.calibration == "none":
            return recall, None
        view.require("query-recall", "reference")
        reference = [recall_of_lists(view.reference(i).recommend(q), t).reshape(s, n).mean(axis=0)
                     for i in range(int(self.references))]
        return recall, np.mean(reference, axis=0)

    @staticmethod
    def _covariates(view: AdversaryView, reference: np.ndarray) -> np.ndarray:
        view.require("query-recall", "popularity")
        h = sp.csr_matrix(view.histories, dtype=np.float64)
        h.data[:] = 1.0
        size = np.maximum(np.diff(h.indptr), 1)
        log_pop = (h @ np.log1p(np.asarray(view.popularity, dtype=np.float64))) / size
        return np.column_stack([np.ones(view.n_users), reference, np.log(size), log_pop])

    def _raw(self, view: AdversaryView, seed: int) -> np.ndarray:
        recall, reference = self._recalls(view, seed)
        if self.calibration == "none":
            return recall
        if self.calibration == "reference":
            return recall - reference
        return (recall - self._covariates(view, reference) @ self.coef_) / self.scale_

    def fit(self, view: AdversaryView, seed: int = 0) -> "QueryRecall":
        view.require("query-recall", "labels")
        self.seed_ = int(seed)
        if self.calibration == "zreg":
            recall, reference = self._recalls(view, seed)
            x = self._covariates(view, reference)
            out = ~np.asarray(view.labels).astype(bool)
            self.coef_ = np.linalg.lstsq(x[out], recall[out], rcond=None)[0]
            self.scale_ = float(max(np.std(recall[out] - x[out] @ self.coef_), 1e-9))
            scores = (recall - x @ self.coef_) / self.scale_
        else:
            scores = self._raw(view, seed)
        self.sign_, self.threshold_ = orient_and_threshold(scores, view.labels)
        return self

    def _score(self, view: AdversaryView, seed: int) -> np.ndarray:
        return self._raw(view, seed)


def rank_hits(lists: np.ndarray, items: np.ndarray) -> np.ndarray:
    """For each row: (k - position) / k of ``items[row]`` in ``lists[row]`` (1 at the top), 0 when absent."""
    n, k = lists.shape
    found = lists == items[:, None]
    position = np.argmax(found, axis=1)
    return np.where(found.any(axis=1), (k - position) / k, 0.0)


def next_item_accounts(view: AdversaryView, rows: np.ndarray, items: np.ndarray, context: str) -> sp.csr_matrix:
    """The account asked about each pair (user row, item): her history without the item (``history``), or only
    what she did before it, in order (``prefix``: the next-item question; the first item of a sequence gets an
    empty account, which the service answers with its popular list)."""
    from miars_core.contracts.types import binary_csr

    if context == "prefix":
        view.require("interaction context=prefix", "sequences")
    source = view.sequences if view.sequences is not None else view.histories  # in order, when there is one
    h = sp.csr_matrix(source, dtype=np.float32)[rows]
    h.eliminate_zeros()
    if context == "prefix":
        position = np.asarray(h[np.arange(len(rows)), items]).ravel()  # the item's place in her sequence
        h.data = np.where(h.data < np.repeat(position, np.diff(h.indptr)), h.data, 0.0).astype(np.float32)
        h.eliminate_zeros()
        return h
    accounts = h - h.multiply(binary_csr(np.arange(len(rows)), items, h.shape))  # the history without the item
    accounts.eliminate_zeros()
    return accounts


class InteractionQuery(_ShadowCalibrated):
    """Interaction-level query attack: was this (user, item) pair in the training data? Leave it out of a fresh account and see if it comes back (after Carlini et al., S&P 2022).

    For each pair the engine draws from a user's history (``pairs`` per user), one fresh
    account gets the user's history without that item; the pair scores (k - rank) / k of the
    item in the account's top-k (0 when absent), minus the same on the reference model
    (``calibration="reference"``, the adversary's own model: how predictable the item is
    anyway). Orientation and threshold come from the shadow part's pairs. The target is asked
    one query per pair. Metrics are per pair (``interaction`` in result.json: all pairs, and
    members' trained against held-out pairs when the cell holds some out); the per-user
    score is the mean over the user's pairs.

    ``context="prefix"`` (for ordered data, e.g. against a sequential recommender) asks the
    next-item question instead: the account holds only what the user did *before* the item, in
    order (:func:`next_item_accounts`). Refused before any work on a dataset without order.
    """

    threat = "queries"
    level = "interaction"
    labels = "pair_labels"
    param_constraints = {"pairs": Interval(int, 1), "calibration": Options(("none", "reference")),
                         "context": Options(("history", "prefix"))}

    def __init__(self, pairs: int = 5, calibration: str = "reference", context: str = "history"):
        self.pairs = pairs
        self.calibration = calibration
        self.context = context

    @property
    def needs_order(self) -> bool:
        """Whether the attack reads each user's history in order (``context="prefix"``): checked before any work."""
        return self.context == "prefix"

    def _score(self, view: AdversaryView, seed: int) -> np.ndarray:
        view.require("interaction", "query", "pairs")
        rows, items = view.pairs[:, 0], view.pairs[:, 1]
        accounts = next_item_accounts(view, rows, items, self.context)
        score = rank_hits(view.query.recommend(accounts), items)
        if self.calibration == "reference":
            view.require("interaction", "reference")
            score = score - rank_hits(view.reference().recommend(accounts), items)
        return score
