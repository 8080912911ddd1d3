"""Membership-inference metrics, each named for what it is."""

from __future__ import annotations

import numpy as np

#: What each metric means; the metrics table prints these beside the values.
DESCRIPTIONS = {
    "roc_auc": "area under the ROC curve of the attack scores (threshold-free)",
    "balanced_accuracy": "(TPR + TNR) / 2 at the model's own threshold: what the CCS'21 paper calls 'AUC'",
    "accuracy": "share of target users classified correctly at the model's threshold",
    "precision": "members among the users predicted member",
    "recall": "members predicted member (TPR at the model's threshold)",
    "tpr_at_fpr_0.01": "highest TPR with FPR <= 1% (ROC curve of the scores)",
    "tpr_at_fpr_0.001": "highest TPR with FPR <= 0.1%; with under 1,000 non-members this is TPR at zero false positives",
    "advantage": "max over thresholds of TPR - FPR (membership advantage)",
}


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Highest TPR on the ROC curve at a false-positive rate no larger than ``max_fpr``."""
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def membership_metrics(is_member: np.ndarray, scores: np.ndarray, predicted: np.ndarray | None = None) -> dict:
    """All metrics for scores where higher means 'member'; ``predicted`` defaults to ``scores > 0``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(is_member).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        from ..contracts.errors import MiarsError

        bad = int((~np.isfinite(s)).sum())
        raise MiarsError(
            f"the attack produced {bad} non-finite scores (NaN or infinity) of {s.size}: the run is broken, so no "
            "metric is reported; check the featurizer's output and the components' parameters"
        )
    if y.all() or not y.any():
        raise ValueError("metrics need both members and non-members")
    pred = s > 0 if predicted is None else np.asarray(predicted).astype(bool)
    fpr, tpr, _ = roc_curve(y, s)
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    fp = int((pred & ~y).sum())
    recall = tp / y.sum()
    tnr = tn / (~y).sum()
    return {
        "roc_auc": float(roc_auc_score(y, s)),
        "balanced_accuracy": float((recall + tnr) / 2),
        "accuracy": float((pred == y).mean()),
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "recall": float(recall),
        "tpr_at_fpr_0.01": tpr_at_fpr(fpr, tpr, 0.01),
        "tpr_at_fpr_0.001": tpr_at_fpr(fpr, tpr, 0.001),
        "advantage": float(np.max(tpr - fpr)),
        "members": int(y.sum()),
        "non_members": int((~y).sum()),
    }
