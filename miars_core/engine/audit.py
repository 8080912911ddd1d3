"""Audit a training defense's differential-privacy claim with canaries in one training run.

A defense that acts on training reports ``privacy_`` (epsilon, delta, level). This module
measures an empirical **lower bound** on its epsilon, at the defense's own level, with the
one-run audit of T. Steinke, M. Nasr and M. Jagielski, "Privacy Auditing with One (1)
Training Run" (NeurIPS 2023, arXiv:2305.08846):

1. ``m`` canaries are built on top of the data set; each is put into the training data
   independently with probability 1/2 (``S_i`` = +1 in, -1 out); the defense fits once;
2. each canary gets a membership score read from the fitted model; the auditor guesses "in"
   for the ``k+`` highest scores and "out" for the ``k-`` lowest and abstains on the rest;
3. their Theorem 3 bounds how many of those ``r = k+ + k-`` guesses an (epsilon, delta)-DP
   mechanism lets the auditor get right: with ``W ~ Binomial(r, e^eps / (1 + e^eps))``,
   ``P[correct >= v] <= P[W >= v] + 2 m delta max_{i=1..v} P[v - i <= W < v] / i``.
   The right side is the p-value of "the defense is (eps, delta)-DP" after ``v`` correct
   guesses; the lower bound is the smallest epsilon whose p-value reaches 0.05 (95%
   confidence), and the claim is **violated** when that bound exceeds the claimed epsilon.

**Canaries** (crafted, as audits do, to be as visible as one unit can be): ``2 m`` items of
the catalogue, the least popular, are emptied of their interactions (the audit's copy of the
data only), so that nothing but the canaries ties them to anything. Canary ``i`` has a
trigger item ``a_i`` and a secret item ``b_i``, and a *probe* member whose only item is
``a_i`` is always in the data. At the ``user`` level the canary is a user with items
``{a_i, b_i}``, in or out as a whole; at the ``record`` level a *carrier* member with item
``a_i`` is always in the data and the canary is the one record ``(carrier, b_i)``. Either
way the canary is the only thing that links ``a_i`` to ``b_i``.

**What the auditor observes**: only the fitted defense's public output, ``recommend(k)``
(``k`` = :data:`READ_K`, or less when some member knows too many items: ``k = n_items -`` the
longest history, 945 on ml-100k), and from it the
probe members' lists: the score of canary ``i`` is minus the rank of ``b_i`` in probe ``i``'s
list (absent: ``-k``). The probes' data are the same in both worlds, so their lists are
post-processing of what the defense released, which any DP guarantee of the defense covers.
An audit may see more (white-box scores, gradients: auditing is allowed to), and would then
find tighter bounds; lists are enough to catch a claim that does not hold and work with any
training defense, a third-party one included.

**Limits**: the result is a lower bound, never a proof of privacy: a mechanism can pass the
audit and still violate its claim for other data or other canaries. With ``r`` guesses, all
correct, the bound cannot exceed :func:`max_detectable` (about 3.5 for 100 guesses): a claim
above it cannot be shown violated (the audit says "inconclusive").
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp

from ..contracts.errors import MiarsError
from ..contracts.types import Interactions

#: Confidence of the lower bound.
CONFIDENCE = 0.95
#: Longest list read from the fitted defense (fewer when members know too many items): long lists rank
#: more of the catalogue, so a canary's secret item is seldom absent from its probe's list.
READ_K = 1000
#: Fewest guesses that can show anything: 0.5 ** 5 < 0.05 (with 4, even all correct give p >= 0.0625).
MIN_GUESSES = 5
#: At most this share of the catalogue becomes canary items (2 per canary).
MAX_CANARY_ITEM_SHARE = 0.5
#: Largest epsilon the bound search considers.
EPSILON_CAP = 100.0
#: Canaries by default.
DEFAULT_CANARIES = 200

CITATION = ('T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023 '
            "(arXiv:2305.08846), Theorem 3")
LEVELS = ("record", "user")

__all__ = ["AuditData", "CITATION", "audit_defense", "build_canaries", "epsilon_lower_bound", "guess", "max_detectable",
           "min_guesses", "p_value", "read_scores", "summarize"]


# -- the bound ----------------------------------------------------------------------------------
def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """p-value of "(epsilon, delta)-DP" after ``v`` correct of ``r`` guesses on ``m`` canaries (Steinke et al., Thm 3).

    ``P[W >= v] + 2 m delta max_{i=1..v} P[v - i <= W < v] / i`` with
    ``W ~ Binomial(r, e^eps / (1 + e^eps))``, capped at 1.
    """
    from scipy.special import expit
    from scipy.stats import binom

    m, r, v = int(m), int(r), int(v)
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if not (epsilon >= 0 and 0 <= delta <= 1):
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    q = float(expit(epsilon))
    beta = float(binom.sf(v - 1, r, q))
    alpha = 0.0
    if delta > 0:
        below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v - i <= W <= v - 1], i = 1..v
        alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, beta + 2.0 * m * float(delta) * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """The largest epsilon the audit rejects: the first epsilon whose :func:`p_value` reaches ``1 - confidence``.

    0 when even epsilon = 0 cannot be rejected. Searched on a grid, then refined by bisection
    inside the first grid step that reaches the level (so a non-monotone p-value never moves
    the bound past a value that was not rejected).
    """
    level = 1.0 - float(confidence)
    if not 0 < level < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    grid = np.linspace(0.0, EPSILON_CAP, 2001)
    previous = 0.0
    for eps in grid[1:]:
        if p_value(m, r, v, float(eps), delta) >= level:
            lo, hi = previous, float(eps)
            for _ in range(60):
                mid = (lo + hi) / 2
                if p_value(m, r, v, mid, delta) >= level:
                    hi = mid
                else:
                    lo = mid
            return lo
        previous = float(eps)
    return EPSILON_CAP


def max_detectable(m: int, r: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """The largest lower bound ``r`` guesses can give (every guess correct)."""
    return epsilon_lower_bound(m, r, r, delta, confidence)


def min_guesses(epsilon: float, confidence: float = CONFIDENCE) -> int:
    """Fewest guesses that, all correct, show a lower bound above ``epsilon`` (delta = 0)."""
    from scipy.special import expit

    q = float(expit(float(epsilon)))
    return max(MIN_GUESSES, int(math.floor(math.log(1.0 - confidence) / math.log(q))) + 1)


def guess(scores: np.ndarray, positive: int, negative: int, seed: int) -> np.ndarray:
    """Guesses in {-1, 0, +1}: +1 for the ``positive`` highest scores, -1 for the ``negative`` lowest.

    Ties are broken by a seeded random key drawn independently of the canaries, as the theorem
    allows (the guesses may use randomness of their own).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if positive < 0 or negative < 0 or positive + negative > len(scores):
        raise ValueError(f"cannot make {positive} + {negative} guesses on {len(scores)} canaries")
    keys = np.random.default_rng(seed).random(len(scores))
    order = np.lexsort((keys, -scores))  # highest score first, random among ties
    out = np.zeros(len(scores), dtype=np.int64)
    out[order[:positive]] = 1
    if negative:
        out[order[len(scores) - negative:]] = -1
    return out


# -- the canaries -------------------------------------------------------------------------------
@dataclass
class AuditData:
    """The data one audit fits the defense on, and where its canaries are."""

    members: Interactions
    level: str
    included: np.ndarray  # (m,) bool: canary i is in the training data
    probe_rows: np.ndarray  # (m,) row of canary i's probe member
    trigger: np.ndarray  # (m,) item column a_i
    secret: np.ndarray  # (m,) item column b_i
    summary: dict


def max_canaries(n_items: int) -> int:
    return int(n_items * MAX_CANARY_ITEM_SHARE) // 2


def build_canaries(data: Interactions, m: int, level: str, seed: int) -> AuditData:
    """The audit's training data: the data set without the ``2 m`` canary items' interactions,
    plus ``m`` probe members, plus the canaries (each in with probability 1/2, seeded).

    See the module docstring for the layout at each level.
    """
    from ..contracts.seeds import stage_seed
    from ..contracts.types import binary_csr

    if level not in LEVELS:
        raise MiarsError(f"privacy level {level!r} cannot be audited; a defense's privacy_['level'] must be "
                         f"one of {', '.join(LEVELS)}")
    n_users, n_items = data.matrix.shape
    most = max_canaries(n_items)
    if m > most:
        raise MiarsError(f"--canaries {m} needs {2 * m} canary items but the data set has {n_items} items, and at most "
                         f"half of them may be used; pass --canaries {most} or fewer, or a larger data set")
    rng = np.random.default_rng(stage_seed(seed, "audit-canaries"))
    pop = data.item_popularity()
    chosen = np.lexsort((rng.random(n_items), pop))[: 2 * m]  # least popular first, random among ties
    chosen = rng.permutation(chosen)
    trigger, secret = chosen[:m], chosen[m:]
    included = rng.random(m) < 0.5
    keep = np.ones(n_items, dtype=bool)
    keep[chosen] = False
    base = sp.csr_matrix(data.matrix)
    base = sp.csr_matrix(base @ sp.diags(keep.astype(np.float32)))
    base.eliminate_zeros()
    rows = np.flatnonzero(np.diff(base.indptr) > 0)
    if len(rows) == 0:
        raise MiarsError(f"after removing the {2 * m} canary items' interactions no user has any left; "
                         "lower --canaries or use a larger data set")
    base = base[rows]
    n_base = len(rows)
    probe_rows = n_base + np.arange(m)
    if level == "user":
        canary_idx = np.flatnonzero(included)
        extra_rows = n_base + m + np.arange(len(canary_idx))
        r = np.concatenate([probe_rows, extra_rows, extra_rows])
        c = np.concatenate([trigger, trigger[canary_idx], secret[canary_idx]])
        names = [f"miars-audit-canary-user-{i}" for i in canary_idx]
    else:
        carriers = n_base + m + np.arange(m)
        canary_idx = np.flatnonzero(included)
        r = np.concatenate([probe_rows, carriers, carriers[canary_idx]])
        c = np.concatenate([trigger, trigger, secret[canary_idx]])
        names = [f"miars-audit-carrier-{i}" for i in range(m)]
    n_rows = n_base + m + len(names)
    added = binary_csr(r, c, (n_rows, n_items))
    coo = base.tocoo()
    matrix = sp.csr_matrix(added + sp.csr_matrix((np.ones(coo.nnz, dtype=np.float32), (coo.row, coo.col)),
                                                 shape=(n_rows, n_items)), dtype=np.float32)
    matrix.data[:] = 1.0
    user_ids = np.array([str(u) for u in np.asarray(data.user_ids)[rows]]
                        + [f"miars-audit-probe-{i}" for i in range(m)] + names, dtype=object)
    members = Interactions(matrix, user_ids, data.item_ids)
    summary = {"users": int(n_base), "items": int(n_items), "interactions": int(base.nnz),
               "canary_items": int(2 * m), "removed_interactions": int(data.matrix.nnz - base.nnz),
               "probe_members": int(m), "training_rows": int(n_rows), "training_interactions": int(matrix.nnz)}
    return AuditData(members, level, included, probe_rows, trigger, secret, summary)


def read_k(members: Interactions) -> int:
    """The list length the audit asks for: :data:`READ_K`, or what every member can be served."""
    return int(min(READ_K, members.n_items - int(members.user_counts().max())))


def read_scores(lists: np.ndarray, audit: AuditData) -> np.ndarray:
    """Each canary's score: minus the rank (0 = first) of its secret item in its probe's list (absent: ``-k``)."""
    probe = np.asarray(lists)[audit.probe_rows]
    k = probe.shape[1]
    hit = probe == audit.secret[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), k)
    return -rank.astype(np.float64)


def summarize(scores: np.ndarray, included: np.ndarray, guesses: int, delta: float, epsilon_claimed: float,
              seed: int, confidence: float = CONFIDENCE) -> dict:
    """Guesses, correct guesses, the lower bound and the verdict from the canaries' scores."""
    m = len(scores)
    positive = (guesses + 1) // 2
    negative = guesses - positive
    t = guess(scores, positive, negative, seed)
    s = np.where(np.asarray(included, dtype=bool), 1, -1)
    r = int(np.abs(t).sum())
    v = int((t * s > 0).sum())
    lower = epsilon_lower_bound(m, r, v, delta, confidence)
    most = max_detectable(m, r, delta, confidence)
    violated = bool(lower > epsilon_claimed)
    verdict = ("violated" if violated else
               "inconclusive" if most <= epsilon_claimed else "no violation found")
    return {"epsilon_lower": lower, "violated": violated, "verdict": verdict, "guesses": r,
            "guesses_in": positive, "guesses_out": negative, "correct": v,
            "p_value_at_claimed": p_value(m, r, v, epsilon_claimed, delta), "epsilon_max_detectable": most,
            "confidence": confidence}


# -- the audit ---------------------------------------------------------------------------------
def check_privacy(privacy: Any, who: str) -> dict:
    """``privacy_`` as a dict with a finite epsilon > 0, delta in [0, 1) and a level, or a one-line MiarsError."""
    if not isinstance(privacy, dict) or not privacy:
        raise MiarsError(f"{who} sets no privacy_ after fit, so it claims no guarantee to audit; audit-dp audits training "
                         "defenses that report privacy_ = {'epsilon', 'delta', 'level', ...} (e.g. dp-itemknn, dp-sgd)")
    eps, delta, level = privacy.get("epsilon"), privacy.get("delta"), privacy.get("level")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise MiarsError(f"{who} reports privacy_['epsilon'] = {eps!r}; it must be a finite number > 0 to be audited")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
        raise MiarsError(f"{who} reports privacy_['delta'] = {delta!r}; it must be a number in [0, 1) to be audited")
    if level not in LEVELS:
        raise MiarsError(f"{who} reports privacy_['level'] = {level!r}; it must be one of {', '.join(LEVELS)}")
    return dict(privacy)


def probe_level(defense_factory: Callable[[], Any], recommender_factory: Callable[[], Any], who: str) -> dict:
    """Fit the defense once on a small synthetic data set to read its ``privacy_`` (level, claimed epsilon).

    A few seconds at most; it also fails early, in one line, for a recommender the defense cannot
    train or a parameter it rejects.
    """
    from ..kit.checks import make_interactions
    from ..science.service import _call, stage_threads

    defense = defense_factory()
    with stage_threads():
        _call(defense.fit, who, "fit", recommender_factory(), make_interactions(n_users=40, n_items=60, seed=11), seed=0)
    return check_privacy(getattr(defense, "privacy_", None), who)


def audit_defense(defense_factory: Callable[[], Any], recommender_factory: Callable[[], Any], data: Interactions, *,
                  canaries: int = DEFAULT_CANARIES, guesses: int | None = None, seed: int = 0, level: str | None = None,
                  who: str = "defense", store=None, key: dict | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Audit one training defense on ``data``: build the canaries, fit once, read the probes' lists, bound epsilon.

    ``level`` defaults to what a small probe fit reports (:func:`probe_level`). ``store`` and
    ``key`` (a JSON record of everything the fit depends on) keep the canaries' scores so a
    rerun, with other ``guesses`` too, does not refit. Returns the audit record (audit.json).
    """
    from ..contracts.seeds import stage_seed
    from ..science.service import _call, check_lists, stage_threads
    from .stages import core_version, digest

    say = progress or (lambda msg: None)
    timings: dict[str, float] = {}
    guesses = int(guesses) if guesses is not None else canaries // 2
    if not MIN_GUESSES <= guesses <= canaries:
        raise MiarsError(f"--guesses {guesses} must be from {MIN_GUESSES} to --canaries ({canaries})")
    if level is None:
        start = time.perf_counter()
        level = probe_level(defense_factory, recommender_factory, who)["level"]
        timings["probe_fit"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    audit = build_canaries(data, canaries, level, seed)
    timings["canaries"] = round(time.perf_counter() - start, 3)
    stage_key = digest({**(key or {}), "stage": "audit-dp", "level": level, "canaries": canaries, "seed": seed,
                        "audit": _source_digest(), "core": core_version()}) if store is not None else None
    cached = store.get("audit-dp", stage_key) if store is not None else None
    if cached is not None and not np.array_equal(np.asarray(cached.arrays["included"], dtype=bool), audit.included):
        cached = None  # not these canaries: fit again
    if cached is not None:
        scores = np.asarray(cached.arrays["scores"], dtype=np.float64)
        privacy, k, fit_seconds = dict(cached.meta["privacy"]), int(cached.meta["k"]), cached.meta["fit_seconds"]
        say("read the canaries' scores from the cache")
    else:
        say(f"fitting the defense once with {canaries} {level}-level canaries ({int(audit.included.sum())} in)")
        defense = defense_factory()
        start = time.perf_counter()
        with stage_threads():
            fitted = _call(defense.fit, who, "fit", recommender_factory(), audit.members,
                           seed=stage_seed(seed, "audit-fit"))
            privacy = check_privacy(getattr(defense, "privacy_", None), who)
            if privacy["level"] != level:
                raise MiarsError(f"{who} reported level {level!r} on the probe fit and {privacy['level']!r} on the audit's "
                                 "data; a defense's level must not depend on the data")
            k = read_k(audit.members)
            lists = check_lists(_call(fitted.recommend, who, "recommend", k), (audit.members.n_users, k),
                                audit.members.matrix, who)
        fit_seconds = round(time.perf_counter() - start, 3)
        scores = read_scores(lists, audit)
        if store is not None:
            store.put("audit-dp", stage_key, {"scores": scores, "included": audit.included},
                      {"privacy": _plain(privacy), "k": k, "fit_seconds": fit_seconds})
    timings["fit_and_read"] = fit_seconds
    eps, delta = float(privacy["epsilon"]), float(privacy["delta"])
    result = summarize(scores, audit.included, guesses, delta, eps, stage_seed(seed, "audit-guesses"))
    return {
        "epsilon_claimed": eps, "delta": delta, "level": level, **result,
        "canaries": int(canaries), "canaries_in": int(audit.included.sum()), "seed": int(seed),
        "method": {
            "name": "one-run audit (Steinke, Nasr & Jagielski, NeurIPS 2023)", "citation": CITATION,
            "observation": (f"black-box: the fitted defense's recommend({k}) lists of the probe members; a canary's "
                            f"score is minus the rank of its secret item in its probe's list (absent: -{k})"),
            "canary": ("a user with items {a_i, b_i}, in or out as a whole; a probe member with item a_i is always in"
                       if level == "user" else
                       "the record (carrier_i, b_i), in or out; the carrier (item a_i) and a probe member with item a_i "
                       "are always in"),
            "canary_items": "the 2m least popular items of the data set, emptied of their interactions",
            "guessing": "'in' for the highest scores, 'out' for the lowest, ties broken at random (seeded)",
            "limits": "a lower bound at 95% confidence, not a proof of privacy",
        },
        "privacy": _plain(privacy), "data": audit.summary, "timings": timings,
    }


def _plain(value):
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return str(value)


def _source_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


# -- the command ------------------------------------------------------------------------------
OUT_FILE = "audit.json"


def check_request(canaries: Any, guesses: Any, seed: Any, defense_obj: Any, who: str) -> int:
    """Plain checks before any work: numbers in range, a training defense, enough canaries. Returns the guesses."""
    from ..contracts.defenses import acts_on

    for flag, value in (("--canaries", canaries), ("--seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise MiarsError(f"{flag} must be an integer, got {value!r}")
    if not 0 <= seed <= 2**32 - 1:
        raise MiarsError(f"--seed must be an integer from 0 to {2**32 - 1}, got {seed}")
    where = acts_on(defense_obj)
    if where != "training":
        raise MiarsError(f"{who} acts on {where}, not on training: audit-dp audits training defenses that report a "
                         "privacy_ guarantee (e.g. dp-itemknn, dp-sgd); see `miars list defense`")
    g = canaries // 2 if guesses is None else guesses
    if isinstance(g, bool) or not isinstance(g, int):
        raise MiarsError(f"--guesses must be an integer, got {g!r}")
    eps = getattr(defense_obj, "epsilon", None)
    claimed = float(eps) if isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0 else None
    need = min_guesses(claimed) if claimed is not None else MIN_GUESSES
    what = (f"to show epsilon above the defense's {claimed:g} with every guess correct" if claimed is not None
            else "to show any epsilon above 0")
    if guesses is None and canaries < 2 * need:
        raise MiarsError(f"--canaries {canaries} is too few: the one-run audit needs {need} guesses ({2 * need} canaries, "
                         f"half of them guessed) {what}; pass --canaries {max(2 * need, 2 * MIN_GUESSES)} or more")
    if guesses is not None and not need <= g <= canaries:
        raise MiarsError(f"--guesses {g} must be from {need} ({what}) to --canaries ({canaries})")
    return g


def run(dataset: str, target: str, defense: str, *, target_params: dict | None = None,
        defense_params: dict | None = None, canaries: int = DEFAULT_CANARIES, guesses: int | None = None,
        seed: int = 0, out: str | Path, data_dir: str | None = None, download: bool = False, store=None,
        plugins=None, progress: Callable[[str], None] | None = None, device: str = "auto") -> dict:
    """``miars audit-dp``: validate everything, audit, write ``OUT/audit.json`` (atomically) and return the record.

    Bad input fails with a one-line MiarsError before any training on the data set and before
    anything is written: unknown names, bad parameters, a defense that does not act on training
    or sets no ``privacy_``, too few or too many canaries, a ``device`` that is not usable.
    The fits run on ``device`` (:func:`miars_core.kit.torch_utils.use_device`), recorded as ``device``.
    """
    from ..kit.torch_utils import check_device, use_device

    check_device(device)
    with use_device(device) as use:
        return _run(dataset, target, defense, target_params=target_params, defense_params=defense_params,
                    canaries=canaries, guesses=guesses, seed=seed, out=out, data_dir=data_dir, download=download,
                    store=store, plugins=plugins, progress=progress, device=use)


def _run(dataset, target, defense, *, target_params, defense_params, canaries, guesses, seed, out, data_dir, download,
         store, plugins, progress, device) -> dict:
    from ..contracts.components import get_params
    from ..contracts.files import _publish
    from ..contracts.plugins import get_plugins
    from ..science.service import _who
    from .datasets import load_named
    from .stages import _entry_version, dataset_identity

    plugins = plugins or get_plugins()
    target_params, defense_params = dict(target_params or {}), dict(defense_params or {})
    rec_entry = plugins.registry("recommender").get(target)
    def_entry = plugins.registry("defense").get(defense)
    recommender = plugins.create("recommender", target, **target_params)
    defense_obj = plugins.create("defense", defense, **defense_params)
    who = _who("defense", defense, defense_obj)
    guesses = check_request(canaries, guesses, seed, defense_obj, who)
    out = Path(out).expanduser()
    _check_out(out)
    start = time.perf_counter()
    say = progress or (lambda msg: None)
    say(f"probe fit of {defense} on a small synthetic data set (reads its privacy_)")
    privacy = probe_level(lambda: plugins.create("defense", defense, **defense_params),
                          lambda: plugins.create("recommender", target, **target_params), who)
    probe_seconds = round(time.perf_counter() - start, 3)
    say(f"loading {dataset}")
    data = load_named(dataset, data_dir, download, plugins)
    if canaries > max_canaries(data.n_items):
        build_canaries(data, canaries, privacy["level"], seed)  # raises the one-line error
    from ..contracts.files import prepare_dir

    prepare_dir(out, "--out")
    key = {"dataset": dataset_identity(dataset, data_dir, plugins),
           "target": {"name": target, "params": _plain(get_params(recommender)), "version": _entry_version(rec_entry, plugins)},
           "defense": {"name": defense, "params": _plain(get_params(defense_obj)),
                       "version": _entry_version(def_entry, plugins)}}
    record = audit_defense(lambda: plugins.create("defense", defense, **defense_params),
                           lambda: plugins.create("recommender", target, **target_params), data, canaries=canaries,
                           guesses=guesses, seed=seed, level=privacy["level"], who=who, store=store, key=key,
                           progress=progress)
    record["timings"] = {"probe_fit": probe_seconds, **record["timings"],
                         "total": round(time.perf_counter() - start, 3)}
    record = {"dataset": dataset, "target": target, "target_params": _plain(target_params), "defense": defense,
              "defense_params": _plain(defense_params), **record, "device": {"asked": device.asked, **device.record()}}
    _publish(out, {OUT_FILE: _render(record).encode("utf-8")}, "--out")
    return record


def _render(record: dict) -> str:
    """audit.json's text: strict JSON, or a MiarsError naming a non-finite number (never a number from a broken run)."""
    import json

    from ..contracts.files import _non_finite

    where = _non_finite(record)
    if where is not None:
        raise MiarsError(f"the audit produced a non-finite number at {where}; nothing was written")
    return json.dumps(record, indent=2, allow_nan=False) + "\n"


def _check_out(out: Path) -> None:
    """The output folder, without creating it: not a file, no folder where audit.json goes."""
    try:
        if out.exists() and not out.is_dir():
            raise MiarsError(f"--out {str(out)!r} is a file, not a folder; pass a folder path")
        if (out / OUT_FILE).is_dir():
            raise MiarsError(f"--out {str(out)!r} holds a folder named {OUT_FILE}, where the result file goes; "
                             "move it away or pass another --out folder")
    except OSError as exc:
        raise MiarsError(f"--out {str(out)!r} cannot be checked ({exc.strerror or exc}); pass another folder") from None


def verdict_line(record: dict) -> str:
    """One line: the claim, the audited lower bound, the guesses and the verdict."""
    tail = {"violated": "VIOLATED: the claim does not hold",
            "no violation found": "no violation found (a lower bound, not a proof)",
            "inconclusive": (f"inconclusive: {record['guesses']} guesses cannot show epsilon above "
                             f"{record['epsilon_max_detectable']:.2f}; raise --canaries")}[record["verdict"]]
    return (f"{record['defense']}: claimed epsilon {record['epsilon_claimed']:.3g} ({record['level']} level, delta "
            f"{record['delta']:.2g}); audited lower bound {record['epsilon_lower']:.2f} at 95% confidence "
            f"({record['correct']} of {record['guesses']} guesses correct, {record['canaries']} canaries): {tail}")
