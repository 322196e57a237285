"""Metrics against scikit-learn, aggregation rules on hand-made frame scores, temperature scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from train.evaluation import aggregate, metrics
from train.evaluation.calibrate import fit_temperature
from train.evaluation.evaluate import summarize


def cases():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.random(500) * 0.6 + y * 0.3, 0, 1)
    p[:80] = np.round(p[:80], 1)  # ties, also across classes
    yield y, p
    yield np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    yield np.array([1, 0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5, 0.5])  # all tied
    yield np.array([0, 1, 1]), np.array([0.0, 1.0, 1.0])  # perfect, with 0 and 1 (clipping)


@pytest.mark.parametrize("y,p", list(cases()))
def test_metrics_equal_sklearn(y, p):
    assert metrics.log_loss(y, p) == pytest.approx(sk.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), abs=1e-6)
    assert metrics.log_loss(y, p, clip=0.01) == pytest.approx(sk.log_loss(y, np.clip(p, 0.01, 0.99)), abs=1e-6)
    assert metrics.roc_auc(y, p) == pytest.approx(sk.roc_auc_score(y, p), abs=1e-6)
    assert metrics.average_precision(y, p) == pytest.approx(sk.average_precision_score(y, p), abs=1e-6)
    assert metrics.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p >= 0.5), abs=1e-9)
    fpr, tpr, _ = sk.roc_curve(y, p, drop_intermediate=False)
    ours = metrics.roc_curve(y, p)
    assert np.allclose(ours[0], fpr) and np.allclose(ours[1], tpr)


def test_eer_is_where_miss_rate_meets_false_alarm_rate():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert metrics.eer(y, np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])) == 0.0
    assert metrics.eer(y, np.array([0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4])) == 1.0
    # One real above one fake: at threshold 0.55, FPR = FNR = 0.25.
    assert metrics.eer(y, np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9])) == pytest.approx(0.25)
    # Against the crossing on scikit-learn's ROC curve.
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    p = rng.random(2000) * 0.7 + y * 0.3
    fpr, tpr, _ = sk.roc_curve(y, p)
    i = np.argmin(np.abs((1 - tpr) - fpr))
    assert metrics.eer(y, p) == pytest.approx(fpr[i], abs=2e-3)
    assert math.isnan(metrics.eer([1, 1], [0.2, 0.3]))


def test_ece_and_reliability():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 0.55])
    # bins (15): 0.05 -> bin 0 (labels 0,0: gap .05), 0.95 -> bin 14 (1,1: gap .05), 0.55 -> bin 8 (1,0: gap .05)
    assert metrics.ece(y, p) == pytest.approx(0.05)
    assert metrics.ece([1, 0], [1.0, 0.0]) == 0.0
    mean_p, frac, count = metrics.reliability(y, p)
    assert mean_p.tolist() == pytest.approx([0.05, 0.55, 0.95]) and frac.tolist() == [0, 0.5, 1] and count.tolist() == [2, 2, 2]


def test_aggregation_rules():
    frames = [0.1, 0.9, 0.95, 0.2, 0.3]
    assert aggregate.video_score(frames, "mean") == pytest.approx(0.49)
    assert aggregate.video_score(frames, "median") == pytest.approx(0.3)
    # confident_few_frames: 2 of 5 above 0.8 is not more than 5 // 2.5 = 2 -> not fake by confidence; 0.1
    # alone is below 0.2 (1 of 5, not over 90%) -> plain mean.
    assert aggregate.video_score(frames, "confident_few_frames") == pytest.approx(0.49)
    # 3 of 5 above 0.8: the mean of those.
    assert aggregate.video_score([0.1, 0.9, 0.95, 0.85, 0.3], "confident_few_frames") == pytest.approx(0.9)
    # 10 of 11 below 0.2 (over 90%): the mean of those; the one outlier is ignored.
    real = [0.1] * 10 + [0.7]
    assert aggregate.video_score(real, "confident_few_frames") == pytest.approx(0.1)
    # 9 of 10 below 0.2 is exactly 90%, not over: plain mean.
    assert aggregate.video_score([0.1] * 9 + [0.6], "confident_few_frames") == pytest.approx(0.15)
    # A video whose faces all failed: 0.5, whatever the rule.
    assert all(aggregate.video_score([], r) == 0.5 for r in aggregate.RULES)
    with pytest.raises(ValueError, match="eval.aggregate"):
        aggregate.video_score(frames, "max")
    assert aggregate.by_video(["b", "a", "b"], [0.2, 0.4, 0.6], "mean") == {"a": 0.4, "b": pytest.approx(0.4)}


def rows_for(videos: dict[str, tuple[int, list[float], str | None]]) -> dict[str, list]:
    rows = {k: [] for k in ("video", "label", "logit", "dataset", "method", "t", "face")}
    for v, (label, logits, method) in videos.items():
        for i, z in enumerate(logits):
            rows["video"].append(v), rows["label"].append(label), rows["logit"].append(z)
            rows["dataset"].append("synth"), rows["method"].append(method), rows["t"].append(i / 10), rows["face"].append(0)
    return rows


def test_summary_counts_faceless_videos_and_breaks_down_by_method():
    rows = rows_for({"r1": (0, [-3, -2], None), "r2": (0, [-1, 0.5], None), "f1": (1, [2, 3], "swap"), "f2": (1, [1, -0.5], "reenact")})
    missing = [{"video": "f3", "reason": "no_face", "label": 1, "split": "val", "dataset": "synth", "method": "swap"}]
    s = summarize(rows, missing, "mean", 1.0, 1e-15)
    assert s["video"]["count"] == 5 and s["videos_set_aside"] == 1 and s["set_aside_reasons"] == {"no_face": 1}
    assert s["frame"]["count"] == 8
    assert set(s["by_method"]) == {"swap", "reenact"}
    assert s["by_method"]["swap"]["count"] == 4  # two reals, f1 and f3
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    scores = [np.mean([sig(-3), sig(-2)]), np.mean([sig(-1), sig(0.5)]), np.mean([sig(2), sig(3)]), np.mean([sig(1), sig(-0.5)]), 0.5]
    assert s["video"]["log_loss"] == pytest.approx(sk.log_loss([0, 0, 1, 1, 1], scores), abs=1e-9)


def test_confident_is_the_winners_rule_to_the_number():
    """Expected values computed by running confident_strategy from selimsef/dfdc_deepfake_challenge
    (kernel_utils.py) on each input, outside this repository."""
    cases = [
        ([0.1, 0.9, 0.95, 0.85, 0.3], 0.62),  # 3 confident fakes: not more than 11 -> plain mean
        ([0.9] * 12 + [0.5] * 20, 0.65),  # 12 of 32: not more than 32 // 2.5 = 12
        ([0.9] * 13 + [0.5] * 19, 0.9),  # 13 of 32: the mean of the confident fakes
        ([0.95] * 12 + [0.1] * 8, 0.95),  # 12 of 20: more than 8 and more than 11
        ([0.95] * 11 + [0.3] * 9, 0.6575),  # 11 of 20: more than 8 but not more than 11
        ([0.05] * 28 + [0.5, 0.9], 0.05),  # 28 of 30 below 0.2: over 90%
        ([0.1] * 9 + [0.6], 0.15),  # exactly 90%: plain mean
    ]
    for frames, expected in cases:
        assert aggregate.video_score(frames, "confident") == pytest.approx(expected), frames


def test_temperature_softens_an_overconfident_model():
    rng = np.random.default_rng(0)
    videos = {}
    for i in range(200):
        label = int(rng.integers(0, 2))
        # Right 80% of the time but always with logits of size ~8: over-confident.
        sign = (1 if label else -1) * (1 if rng.random() < 0.8 else -1)
        videos[f"v{i}"] = (label, list(sign * 8 + rng.normal(0, 0.5, 3)), None)
    rows = rows_for(videos)
    t = fit_temperature(rows, "mean", 1e-15)
    assert t > 2
    before = summarize(rows, [], "mean", 1.0, 1e-15)["video"]["log_loss"]
    after = summarize(rows, [], "mean", t, 1e-15)["video"]["log_loss"]
    assert after < before * 0.5


def test_temperature_stays_in_its_range_on_a_separable_split():
    rows = rows_for({f"v{i}": (i % 2, [4.0 if i % 2 else -4.0] * 3, None) for i in range(20)})
    # Log loss keeps falling as T -> 0 here: the fit stops at the lower bound.
    assert fit_temperature(rows, "mean", 1e-15) == pytest.approx(0.5, rel=1e-3)
    assert fit_temperature(rows, "mean", 1e-15, low=0.25) == pytest.approx(0.25, rel=1e-3)
    with pytest.raises(ValueError, match="temperature_range"):
        fit_temperature(rows, "mean", 1e-15, low=2.0, high=3.0)
