"""Detection metrics at frame and video level. Pure numpy, so they are unit-tested against
scikit-learn; no scikit-learn at run time."""

from __future__ import annotations

import numpy as np


def _arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)


def log_loss(y, p, clip: float = 1e-15) -> float:
    """Binary log loss, the DFDC metric; probabilities clipped to [clip, 1 - clip]."""
    y, p = _arrays(y, p)
    p = np.clip(p, clip, 1 - clip)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def roc_curve(y, p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) at every distinct score, from the
    highest threshold down; starts at (0, 0)."""
    y, p = _arrays(y, p)
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # last index of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / max(tp[-1], 1)]
    fpr = np.r_[0.0, fp / max(fp[-1], 1)]
    return fpr, tpr, np.r_[np.inf, p[last]]


def both_classes(y) -> bool:
    y = np.asarray(y)
    return bool(y.size) and 0 < y.sum() < y.size


def roc_auc(y, p) -> float:
    """Area under the ROC curve (trapezoids over distinct thresholds, so ties count half); NaN with one class."""
    if not both_classes(y):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, p)
    return float(np.trapezoid(tpr, fpr))


def average_precision(y, p) -> float:
    """Sum over distinct thresholds of precision x recall gained (scikit-learn's definition, no interpolation)."""
    if not both_classes(y):
        return float("nan")
    y, p = _arrays(y, p)
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def eer(y, p) -> float:
    """Equal error rate: where the false positive rate equals the false negative rate on the ROC
    curve, interpolated linearly between the two points around the crossing."""
    if not both_classes(y):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, p)
    fnr = 1 - tpr
    diff = fnr - fpr  # falls from 1 to -1 along the curve
    i = int(np.flatnonzero(diff <= 0)[0])
    if i == 0 or diff[i] == 0:
        return float(fpr[i])
    a, b = diff[i - 1], diff[i]
    w = a / (a - b)
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def accuracy(y, p, threshold: float = 0.5) -> float:
    y, p = _arrays(y, p)
    return float(np.mean((p >= threshold) == (y == 1))) if y.size else float("nan")


def ece(y, p, bins: int = 15) -> float:
    """Expected calibration error: |mean label - mean score| in equal-width score bins, weighted by
    the share of predictions in each bin."""
    y, p = _arrays(y, p)
    if not y.size:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def reliability(y, p, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty bin: mean score, fraction fake, count (the reliability diagram's points)."""
    y, p = _arrays(y, p)
    which = np.minimum((p * bins).astype(int), bins - 1)
    rows = [(p[which == b].mean(), y[which == b].mean(), int((which == b).sum())) for b in range(bins) if (which == b).any()]
    return tuple(np.array(c) for c in zip(*rows)) if rows else (np.array([]),) * 3


def all_metrics(y, p, clip: float = 1e-15) -> dict[str, float]:
    y, p = _arrays(y, p)
    return {
        "log_loss": log_loss(y, p, clip) if y.size else float("nan"),
        "auc": roc_auc(y, p),
        "ap": average_precision(y, p),
        "eer": eer(y, p),
        "accuracy": accuracy(y, p),
        "ece": ece(y, p),
        "count": float(y.size),
        "fake": float(y.sum()),
    }
