"""Frame scores to one video score, by a rule named in config (`eval.aggregate`)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

NO_FACE_SCORE = 0.5  # a video whose faces all failed: no evidence either way


def mean(p: np.ndarray) -> float:
    return float(np.mean(p))


def median(p: np.ndarray) -> float:
    return float(np.median(p))


def confident(p: np.ndarray, high: float = 0.8, low: float = 0.2, min_fakes: int = 11) -> float:
    """The DFDC winner's rule (Seferbekov, kernel_utils.confident_strategy): when more than n // 2.5
    crops score above `high` and more than `min_fakes` do, the video is fake on their evidence (their
    mean); else when over 90% score below `low`, it is real (their mean); else the plain mean. A few
    confidently fake frames then are not averaged away. The winner sampled 32 frames a video."""
    n = len(p)
    fake = p[p > high]
    if len(fake) > n // 2.5 and len(fake) > min_fakes:
        return float(fake.mean())
    real = p[p < low]
    if len(real) > 0.9 * n:
        return float(real.mean())
    return float(p.mean())


def confident_few_frames(p: np.ndarray) -> float:
    """The winner's rule without its floor of more than 11 confident fakes: with fewer than 12 crops a
    video (the demo samples 8 frames) that floor can never be met, and the rule's fake side would never
    act. Not the winner's rule: its scores differ from it for any video with 12 or fewer such crops."""
    return confident(p, min_fakes=0)


RULES = {"mean": mean, "median": median, "confident": confident, "confident_few_frames": confident_few_frames}


def rule(name: str):
    if name not in RULES:
        raise ValueError(f"eval.aggregate must be one of {', '.join(RULES)}, got {name!r}")
    return RULES[name]


def video_score(frame_probs, name: str = "mean") -> float:
    p = np.asarray(frame_probs, dtype=np.float64)
    return NO_FACE_SCORE if p.size == 0 else rule(name)(p)


def by_video(videos: list[str], probs, name: str = "mean") -> dict[str, float]:
    """One score per video from its frames' (or faces') probabilities."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for v, p in zip(videos, probs):
        grouped[v].append(float(p))
    return {v: video_score(ps, name) for v, ps in sorted(grouped.items())}
