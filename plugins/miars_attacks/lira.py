"""LiRA: a per-user likelihood-ratio test of a query statistic under many reference models."""

from __future__ import annotations

import numpy as np

from miars_core.contracts.components import Component
from miars_core.contracts.errors import MiarsError
from miars_core.contracts.params import Flag, Interval, Options
from miars_core.science.threat import AdversaryView

from .query import half_splits, recall_of_lists

#: ``variance="auto"`` fits a user's own variance when each of her Gaussians has at least this many reference
#: statistics, else the global one (Carlini et al. found the global variance better with few models).
PER_USER_MIN = 64
#: A fitted variance is at least this share of the global one (a user whose references all agree would
#: otherwise get a near-zero variance and an unbounded score), and at least ``VARIANCE_FLOOR``.
RELATIVE_FLOOR = 0.01
VARIANCE_FLOOR = 1e-6


def _variances(samples: np.ndarray, mask: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(per-user variance, per-user sample count, global variance) of ``samples`` (R x n) where ``mask``.

    Per user: the unbiased variance of her masked samples (NaN below 2). Global: the pooled
    within-user variance (sum of squared deviations from each user's mean over the pooled
    degrees of freedom); with no degree of freedom at all (one sample per user), the variance of
    all masked samples around their overall mean (the fixed variance of Carlini et al.'s code).
    """
    count = mask.sum(axis=0)
    squares = np.where(mask, (samples - mean) ** 2, 0.0).sum(axis=0)
    per_user = np.where(count >= 2, squares / np.maximum(count - 1, 1), np.nan)
    dof = np.maximum(count - 1, 0).sum()
    if dof > 0:
        pooled = float(squares.sum() / dof)
    else:
        values = samples[mask]
        pooled = float(values.var(ddof=1)) if values.size >= 2 else 1.0
    return per_user, count, pooled


def _fitted_variance(per_user: np.ndarray, count: np.ndarray, pooled: float, variance: str) -> np.ndarray:
    use_own = count >= (2 if variance == "per-user" else PER_USER_MIN) if variance != "global" else np.zeros_like(count, bool)
    floor = max(RELATIVE_FLOOR * pooled, VARIANCE_FLOOR)
    return np.maximum(np.where(use_own & np.isfinite(per_user), per_user, pooled), floor)


def lira_scores(x: np.ndarray, references: np.ndarray, inside: np.ndarray | None = None,
                variance: str = "auto") -> np.ndarray:
    """LiRA scores of users whose statistic is ``x`` (n,), given the same statistic on reference models (R x n).

    ``inside`` (R x n bool): whether each reference model was trained on the user (online);
    None: no reference model was (offline).

    * offline: the one-sided z-score (x - mu_out) / sigma_out of the user's statistic under the
      Gaussian fitted to her reference statistics (monotone in the paper's one-sided p-value);
    * online: log N(x; mu_in, sigma_in) - log N(x; mu_out, sigma_out), the log likelihood ratio of
      the Gaussians fitted to her in- and out-statistics. A user without any in- (out-) model gets
      mu_out + d (mu_in - d), d the mean gap of the users who have both.

    ``variance``: ``per-user`` (each user's own, wherever she has 2 samples), ``global`` (pooled
    over users, :func:`_variances`), ``auto`` (her own with >= :data:`PER_USER_MIN` samples, else
    global). Every variance is floored at :data:`RELATIVE_FLOOR` x the global one.
    """
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(references, dtype=np.float64).reshape(-1, len(x))
    if inside is None:
        every = np.ones(ref.shape, dtype=bool)
        mean = ref.mean(axis=0)
        var = _fitted_variance(*_variances(ref, every, mean), variance)
        return (x - mean) / np.sqrt(var)
    inside = np.asarray(inside, dtype=bool).reshape(ref.shape)
    groups = []
    for mask in (inside, ~inside):
        count = mask.sum(axis=0)
        mean = np.where(count > 0, np.where(mask, ref, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
        groups.append([mean, _fitted_variance(*_variances(ref, mask, np.nan_to_num(mean)), variance)])
    (mu_in, var_in), (mu_out, var_out) = groups
    both = np.isfinite(mu_in) & np.isfinite(mu_out)
    if not both.any():
        raise MiarsError("online LiRA needs, for some user, reference models both with and without her; "
                         "give references >= 2")
    gap = float(np.mean(mu_in[both] - mu_out[both]))
    mu_in = np.where(np.isfinite(mu_in), mu_in, mu_out + gap)
    mu_out = np.where(np.isfinite(mu_out), mu_out, mu_in - gap)

    def logpdf(mu: np.ndarray, var: np.ndarray) -> np.ndarray:
        return -0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var)

    return logpdf(mu_in, var_in) - logpdf(mu_out, var_out)


class LiRA(Component):
    """Likelihood-ratio membership test per user, over many reference models (Carlini et al., S&P 2022).

    N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramer, "Membership Inference Attacks
    From First Principles", IEEE S&P 2022, adapted to a recommendation service with black-box
    query access. The query statistic is ``query-recall``'s: ``queries`` times, a fresh account
    gets a random half Q of the user's history and the statistic is the mean recall@k of the
    other half T. The same queries (the same halves) go to ``references`` reference models
    of the shadow recommender, served the same way:

    * offline (``online=false``, the default): the models the adversary trains on its own data
      (``view.reference(i)``, the engine's ``reference`` stage, shared with ``query-recall``),
      none of which saw the user; the score is the user's z-score under the Gaussian fitted to
      her reference statistics. Threshold: the cut of best balanced accuracy on the shadow part
      (the same computation on the adversary's own service).
    * online (``online=true``): models trained on random halves of the part's users
      (``view.online_reference(i)``, complementary pairs: every user is in half of them); the
      score is the log likelihood ratio of the user's statistic under her in- and
      out-Gaussians. Threshold 0 (the likelihood-ratio test at equal priors); the shadow part
      is not used. Needs ``references`` >= 2.

    ``variance``: ``auto`` (a user's own variance where she has >= 64 statistics per Gaussian,
    else the global one), ``per-user``, ``global`` (:func:`lira_scores`). The target is asked
    exactly ``queries`` queries per user; a ``--query-budget`` below that is refused before any work.
    """

    threat = "queries"
    param_constraints = {"references": Interval(int, 1), "online": Flag(), "queries": Interval(int, 1),
                         "variance": Options(("auto", "per-user", "global"))}

    def __init__(self, references: int = 8, online: bool = False, queries: int = 5, variance: str = "auto"):
        self.references = references
        self.online = online
        self.queries = queries
        self.variance = variance
        if online is True and isinstance(references, int) and references < 2:
            raise MiarsError(f"attack 'lira' with online=true needs references >= 2 (each user must be in some "
                             f"reference models and out of others), got references={references}")

    @property
    def queries_per_user(self) -> int:
        """How many queries per target user the attack asks (checked against --query-budget before any work)."""
        return int(self.queries)

    def _statistics(self, view: AdversaryView, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The users' statistic on the service, on every reference model, and (online) who each model was trained on."""
        source = "online_reference" if self.online else "reference"
        view.require("lira", "query", source)
        n, s = view.n_users, int(self.queries)
        q, t = half_splits(view.histories, s, seed)

        def statistic(access) -> np.ndarray:
            return recall_of_lists(access.recommend(q), t).reshape(s, n).mean(axis=0)

        x = statistic(view.query)
        models = getattr(view, source)
        ref = np.array([statistic(models(i)) for i in range(int(self.references))])
        inside = np.array([models.trained(i) for i in range(int(self.references))]) if self.online else None
        return x, ref, inside

    def _scores(self, view: AdversaryView, seed: int) -> np.ndarray:
        return lira_scores(*self._statistics(view, seed), variance=self.variance)

    def fit(self, view: AdversaryView, seed: int = 0) -> "LiRA":
        self.seed_ = int(seed)
        self.threshold_ = 0.0
        if not self.online:
            from sklearn.metrics import roc_curve

            view.require("lira", "labels")
            scores = self._scores(view, seed)
            fpr, tpr, cuts = roc_curve(np.asarray(view.labels).astype(bool), scores)
            best = int(np.argmax(tpr - fpr))
            cut = float(cuts[best]) if np.isfinite(cuts[best]) else float(scores.max()) + 1.0
            below = scores[scores < cut]  # halfway to the next lower score: ties fall on the member side
            self.threshold_ = (cut + float(below.max())) / 2 if len(below) else cut - 1.0
        return self

    def decision_function(self, view: AdversaryView) -> np.ndarray:
        return self._scores(view, self.seed_) - self.threshold_

    def predict(self, view: AdversaryView) -> np.ndarray:
        return self.decision_function(view) > 0
