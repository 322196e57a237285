"""The cross-dataset table that detection papers print: one row per evaluated dataset (video AUC, AP,
EER, log loss, frame AUC and AP, counts), then a mean row. Pure: built from `evaluate.summarize`'s
dicts, so it is unit-tested without Ray, S3 or a model."""

from __future__ import annotations

import csv
import io
import math
from typing import Callable

# column -> (level in a summary, key in that level's metrics)
METRICS = {
    "video_auc": ("video", "auc"),
    "video_ap": ("video", "ap"),
    "video_eer": ("video", "eer"),
    "video_log_loss": ("video", "log_loss"),
    "frame_auc": ("frame", "auc"),
    "frame_ap": ("frame", "ap"),
}
COUNTS = {"videos": ("video", "count"), "faces": ("frame", "count")}
COLUMNS = ("dataset", "split", *METRICS, *COUNTS, "uri")
LABELS = {"dataset": "dataset", "split": "split", "video_auc": "video AUC", "video_ap": "video AP", "video_eer": "video EER",
          "video_log_loss": "video log loss", "frame_auc": "frame AUC", "frame_ap": "frame AP",
          "videos": "videos", "faces": "faces", "uri": "URI"}
MEAN = "mean"
MEAN_CROSS = "mean (not trained on)"


def rows(summaries: dict[str, dict], name: Callable[[str], str] = lambda uri: uri, trained_on: str | None = None) -> list[dict]:
    """One row per dataset in `summaries` ({uri: summary}, in the order the datasets were given),
    named by `name(uri)`, then the mean row. A metric undefined on a dataset (AUC on a one-class
    split) stays NaN in its row: the dataset is listed all the same. The mean leaves out the dataset
    the model was trained on (`trained_on`) when others are listed, as cross-dataset papers average
    the datasets a detector never saw; its row is then named MEAN_CROSS."""
    if not summaries:
        raise ValueError("no datasets to tabulate: evaluate at least one")
    out = [_row(uri, s, name(uri)) for uri, s in summaries.items()]
    trained = dataset_identity(trained_on) if trained_on else None
    others = [r for r in out if dataset_identity(r["uri"]) != trained]
    if others and len(others) < len(out):
        return [*out, _mean(others) | {"dataset": MEAN_CROSS}]
    return [*out, _mean(out)]


def dataset_identity(uri: str) -> str:
    """One spelling per dataset root: `s3://b/faces/x/`, `s3://b//faces/x` and `s3://b/faces/x` are one
    dataset; a local path counts as its absolute form."""
    import os  # noqa: PLC0415
    import re  # noqa: PLC0415

    scheme, sep, rest = uri.partition("://")
    if not sep:
        return os.path.abspath(os.path.expanduser(uri)).rstrip("/") or "/"
    return f"{scheme.lower()}://{re.sub('/+', '/', rest).strip('/')}"


def _row(uri: str, summary: dict, dataset: str) -> dict:
    missing = sorted({level for level, _ in (*METRICS.values(), *COUNTS.values()) if level not in summary})
    if missing:
        raise ValueError(f"the summary of {uri} has no {' or '.join(missing)} metrics")
    row: dict = {"dataset": dataset, "split": summary.get("split", "")}
    row |= {col: float(summary[level].get(key, math.nan)) for col, (level, key) in METRICS.items()}
    row |= {col: int(summary[level].get(key, 0)) for col, (level, key) in COUNTS.items()}
    return row | {"uri": uri}


def _mean(table: list[dict]) -> dict:
    """An unweighted mean over datasets, as cross-dataset papers report it: a small dataset counts as
    much as a large one, since the question is how well the detector transfers to each. A dataset
    where a metric is undefined (NaN) is left out of that metric's mean, so one one-class split does
    not blank the column; NaN only when no dataset has it. Counts are totals."""
    mean: dict = {"dataset": MEAN, "split": ""}
    for col in METRICS:
        values = [r[col] for r in table if not math.isnan(r[col])]
        mean[col] = sum(values) / len(values) if values else math.nan
    mean |= {col: sum(r[col] for r in table) for col in COUNTS}
    return mean | {"uri": ""}


def to_csv(table: list[dict]) -> str:
    """CSV text with a header; floats at full precision (NaN as "nan", which float() reads back)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({col: r.get(col, "") for col in COLUMNS} for r in table)
    return buf.getvalue()


def columns(table: list[dict]) -> dict[str, list]:
    """The table by column, as `mlflow.log_table` takes a dict."""
    return {col: [r.get(col) for r in table] for col in COLUMNS}
