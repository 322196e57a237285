"""Detection metrics: frame and video level. Pure numpy, so they are unit-tested against sklearn."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def log_loss(y: np.ndarray, p: np.ndarray, clip: float = 1e-15) -> float:
    """Binary log loss, the DFDC metric; probabilities clipped to [clip, 1 - clip]."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), clip, 1 - clip)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum statistic (ties get average ranks); NaN with one class."""
    y = np.asarray(y).astype(bool)
    p = np.asarray(p, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    i = 0
    while i < len(p):
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def video_scores(videos: list[str], labels: list[int], probs: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Frame probabilities to one score per video (the mean); returns (labels, scores)."""
    by_video: dict[str, list[float]] = defaultdict(list)
    label_of = {}
    for v, y, p in zip(videos, labels, probs):
        by_video[v].append(p)
        label_of[v] = y
    names = sorted(by_video)
    return np.array([label_of[v] for v in names]), np.array([float(np.mean(by_video[v])) for v in names])


def summary(videos: list[str], labels: list[int], probs: list[float], clip: float) -> dict[str, float]:
    y_v, p_v = video_scores(videos, labels, probs)
    return {
        "frame_log_loss": log_loss(np.array(labels), np.array(probs), clip),
        "frame_auc": roc_auc(np.array(labels), np.array(probs)),
        "video_log_loss": log_loss(y_v, p_v, clip),
        "video_auc": roc_auc(y_v, p_v),
        "videos": float(len(y_v)),
    }
