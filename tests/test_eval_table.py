"""The cross-dataset table on hand-made summaries: rows in the order given, NaN kept, the mean row, CSV."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from train.evaluation import metrics, table

NAN = float("nan")


def summary(auc, ap, eer, log_loss, frame_auc, frame_ap, videos, faces) -> dict:
    """What `evaluate.summarize` gives, cut to the keys the table reads (plus one it must ignore)."""
    return {"video": {"auc": auc, "ap": ap, "eer": eer, "log_loss": log_loss, "accuracy": 0.5, "count": float(videos)},
            "frame": {"auc": frame_auc, "ap": frame_ap, "log_loss": 0.7, "count": float(faces)},
            "by_method": {}}


# Given in an order that is not alphabetical; the last is a one-class split (all fake): AUC, AP and
# EER are undefined there, log loss is not.
SUMMARIES = {
    "s3://b/faces/ffpp": summary(0.9, 0.8, 0.1, 0.3, 0.85, 0.75, 100, 800),
    "s3://b/faces/celebdf": summary(0.7, 0.6, 0.3, 0.6, 0.65, 0.55, 50, 400),
    "s3://b/faces/fakes-only": summary(NAN, NAN, NAN, 0.9, NAN, NAN, 10, 70),
}


def test_every_dataset_is_a_row_in_the_order_given_then_the_unweighted_mean():
    rows = table.rows(SUMMARIES, name=lambda uri: uri.rsplit("/", 1)[-1])
    assert [r["dataset"] for r in rows] == ["ffpp", "celebdf", "fakes-only", "mean"]
    assert [r["uri"] for r in rows[:-1]] == list(SUMMARIES)
    assert set(rows[0]) == set(table.COLUMNS)
    assert rows[0]["video_auc"] == 0.9 and rows[1]["frame_ap"] == 0.55 and (rows[0]["videos"], rows[0]["faces"]) == (100, 800)
    assert all(math.isnan(rows[2][c]) for c in ("video_auc", "video_ap", "video_eer", "frame_auc", "frame_ap"))
    assert rows[2]["video_log_loss"] == 0.9

    mean = rows[-1]
    # Unweighted: ffpp's 100 videos count no more than celebdf's 50; the one-class split is left out
    # of the metrics it lacks and counted in log loss.
    assert mean["video_auc"] == pytest.approx(0.8) and mean["video_ap"] == pytest.approx(0.7)
    assert mean["video_eer"] == pytest.approx(0.2) and mean["frame_auc"] == pytest.approx(0.75)
    assert mean["frame_ap"] == pytest.approx(0.65) and mean["video_log_loss"] == pytest.approx(0.6)
    assert (mean["videos"], mean["faces"]) == (160, 1270)  # totals


def test_the_mean_leaves_out_the_dataset_trained_on_when_others_are_listed():
    rows = table.rows(SUMMARIES, trained_on="s3://b/faces/ffpp")
    assert [r["dataset"] for r in rows][-1] == table.MEAN_CROSS
    assert rows[-1]["video_auc"] == pytest.approx(0.7) and rows[-1]["video_log_loss"] == pytest.approx(0.75)
    # the training dataset's URI as another spelling of the same root: still the dataset trained on
    # (before, a trailing slash put it into the "not trained on" mean)
    for spelling in ("s3://b/faces/ffpp/", "S3://b//faces/ffpp"):
        assert [r["dataset"] for r in table.rows(SUMMARIES, trained_on=spelling)] == [r["dataset"] for r in rows]
    assert table.dataset_identity("data/faces/") == table.dataset_identity(str(Path("data/faces").resolve()))
    alone = table.rows({"s3://b/faces/ffpp": SUMMARIES["s3://b/faces/ffpp"]}, trained_on="s3://b/faces/ffpp")
    assert alone[-1]["dataset"] == table.MEAN and alone[-1]["video_auc"] == pytest.approx(0.9)  # nothing else to average


def test_dataset_names_tell_apart_roots_with_the_same_last_part():
    from train.evaluation.evaluate import dataset_names

    assert dataset_names(["s3://a/faces/celebdf", "s3://b/faces/celebdf", "s3://a/ffpp/"]) == {
        "s3://a/faces/celebdf": "a-faces-celebdf", "s3://b/faces/celebdf": "b-faces-celebdf", "s3://a/ffpp/": "ffpp"}
    assert dataset_names(["s3://a/celebdf", "s3://a/ffpp"]) == {"s3://a/celebdf": "celebdf", "s3://a/ffpp": "ffpp"}


def test_a_metric_no_dataset_has_is_nan_in_the_mean():
    one_class = {"s3://b/reals": {"video": metrics.all_metrics([0, 0, 0], [0.1, 0.2, 0.3]),
                                  "frame": metrics.all_metrics([0] * 6, [0.1] * 6)}}
    rows = table.rows(one_class)
    assert [r["dataset"] for r in rows] == ["s3://b/reals", "mean"]
    assert math.isnan(rows[-1]["video_auc"]) and rows[-1]["video_log_loss"] == pytest.approx(rows[0]["video_log_loss"])
    assert (rows[-1]["videos"], rows[-1]["faces"]) == (3, 6)


def test_the_csv_reads_back_to_the_same_numbers():
    rows = table.rows(SUMMARIES)
    back = list(csv.DictReader(io.StringIO(table.to_csv(rows))))
    assert [r["dataset"] for r in back] == [r["dataset"] for r in rows]
    assert tuple(back[0]) == table.COLUMNS
    for want, got in zip(rows, back):
        for col in table.METRICS:
            assert float(got[col]) == want[col] or (math.isnan(want[col]) and math.isnan(float(got[col])))
        assert [int(got[c]) for c in table.COUNTS] == [want[c] for c in table.COUNTS]
        assert got["uri"] == want["uri"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no datasets"):
        table.rows({})
    with pytest.raises(ValueError, match="s3://b/x has no frame metrics"):
        table.rows({"s3://b/x": {"video": {"auc": 0.5}}})
