"""The evaluation's pictures as PNG files: ROC curve, reliability diagram, score histograms by label."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from train.evaluation import metrics  # noqa: E402


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def roc(path: str, y, p, title: str) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if metrics.both_classes(y):
        fpr, tpr, _ = metrics.roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"AUC {metrics.roc_auc(y, p):.3f}, EER {metrics.eer(y, p):.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate (fake caught)", title=title)
    ax.legend(loc="lower right")
    return _save(fig, path)


def reliability(path: str, y, p_raw, p_calibrated, temperature: float, bins: int) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for p, name in ((p_raw, "raw"), (p_calibrated, f"temperature {temperature:.2f}")):
        if name != "raw" and temperature == 1.0:
            continue
        mean_p, frac, count = metrics.reliability(y, p, bins)
        ax.plot(mean_p, frac, "o-", label=f"{name} (ECE {metrics.ece(y, p, bins):.3f})")
    ax.set(xlabel="mean predicted P(fake)", ylabel="fraction fake", xlim=(0, 1), ylim=(0, 1), title="reliability (videos)")
    ax.legend(loc="upper left")
    return _save(fig, path)


def histograms(path: str, y, p) -> str:
    y, p = np.asarray(y), np.asarray(p)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    edges = np.linspace(0, 1, 26)
    ax.hist(p[y == 0], bins=edges, alpha=0.6, label=f"real ({int((y == 0).sum())})")
    ax.hist(p[y == 1], bins=edges, alpha=0.6, label=f"fake ({int((y == 1).sum())})")
    ax.set(xlabel="video P(fake)", ylabel="videos", title="scores by label")
    ax.legend()
    return _save(fig, path)


def frame_scores(path: str, frames: list[dict], title: str) -> str:
    """A scored video's per-frame P(fake), one line per face track."""
    fig, ax = plt.subplots(figsize=(6, 2.6))
    for face in sorted({f["face"] for f in frames}):
        pts = sorted((f["t"], f["p"]) for f in frames if f["face"] == face)
        ax.plot([t for t, _ in pts], [q for _, q in pts], "o-", label=f"face {face}")
    ax.axhline(0.5, ls=":", color="grey")
    ax.set(xlabel="time (s)", ylabel="P(fake)", ylim=(0, 1), title=title)
    if frames:
        ax.legend(loc="upper right", fontsize=7)
    return _save(fig, path)
