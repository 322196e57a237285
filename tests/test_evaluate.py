"""Evaluation, scoring and export on real parts: shards and models on the rclone S3 server, Ray
tasks on the test cluster, MLflow on sqlite. The model is a random-init tiny network written as a
training run writes it (weights + card): these tests are about the plumbing, not accuracy."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import mlflow
import pytest
import torch

from dfdc import storage
from dfdc.config import load_config
from data_pipeline import manifest as mf
from data_pipeline.synth import synth
from train.model import file as model_file
from train.model import build_model
from train.scoring.score import score
from tests.conftest import copy_with_a_broken_shard


@pytest.fixture(scope="module")
def model_uri(shards, s3_server):
    """A detector file for the `shards` corpus: crops made with its ingest settings."""
    manifest = mf.load(shards)
    cfg = load_config(None, ["model.name=test_efficientnet", "data.image_size=48", f"data.dataset={shards}"])
    cfg.ingest = type(cfg.ingest)(**manifest["config"]["ingest"])
    cfg.detector = type(cfg.detector)(**manifest["config"]["detector"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    uri = "s3://test/models/random/model_fp32.pt"
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    storage.write_bytes(uri, buf.getvalue())
    model_file.write_card(uri, model_file.make_card(cfg, temperature=1.5))
    return uri


@pytest.fixture(scope="module")
def unseen_video(tmp_path_factory) -> str:
    """An mp4 from a corpus no training saw (another seed)."""
    out = tmp_path_factory.mktemp("unseen")
    cfg = load_config(None, ["synth.videos=1", "synth.seed=77", "synth.width=160", "synth.height=120", "synth.seconds=1.0", "synth.fps=12"])
    synth(str(out), cfg.synth, log=lambda *_: None)
    return str(next(out.rglob("*.mp4")))


def test_evaluate_writes_metrics_plots_and_mlflow_and_survives_a_bad_shard(shards, model_uri, tmp_path, ray_address,
                                                                            mlflow_server):
    bad = "s3://test/eval-corpus-bad"
    broken = copy_with_a_broken_shard(shards, bad, "train")
    manifest = mf.load(bad)

    # Through the CLI, cross-dataset from config: the dataset the model was trained on, plus eval.datasets.
    # and a split of its own for the second (eval.splits). Tracked as on a cluster: the MLflow server,
    # artifacts on S3 (test_no_secret_written.py then searches what this evaluation wrote there).
    sets = [f"tracking.uri={mlflow_server}", "tracking.artifacts=null", f"tracking.experiment=eval-{tmp_path.name}",
            "eval.split=all", "eval.aggregate=confident", f"eval.datasets=[{bad}]", f"eval.splits={{'{bad}': train}}"]
    proc = subprocess.run([sys.executable, "-m", "cli", "evaluate", "--checkpoint", model_uri, "--out", str(tmp_path / "out"),
                           "--no-progress", *[a for s in sets for a in ("--set", s)]],
                          env=os.environ | {"RAY_ADDRESS": ray_address}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "video log loss" in proc.stdout and "unreadable" in proc.stderr
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    cfg = load_config(None, sets)

    good, worse = report["datasets"][shards], report["datasets"][bad]
    assert good["unreadable_shards"] == [] and [f["shard"] for f in worse["unreadable_shards"]] == [storage.join(bad, broken["url"])]
    assert good["frame"]["count"] == sum(s["samples"] for s in manifest["shards"])
    assert (good["split"], worse["split"]) == ("all", "train")
    assert worse["frame"]["count"] == sum(s["samples"] for s in manifest["shards"] if s["split"] == "train") - broken["samples"]
    assert good["video"]["count"] == manifest["videos"]["ingested"] + good["videos_set_aside"]
    assert report["temperature"] == 1.5 and good["aggregate"] == "confident"
    for level in ("frame", "video"):
        assert set(good[level]) >= {"log_loss", "auc", "ap", "eer", "accuracy", "ece"}
        assert 0 <= good[level]["auc"] <= 1 and good[level]["log_loss"] > 0
    assert set(good["by_dataset"]) == {"dfdc"} and good["by_method"] == {}  # DFDC's metadata names no method
    assert "ReadError" in worse["unreadable_shards"][0]["error"]

    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 6 and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in pngs)
    assert all(f"wrote {f}" in proc.stdout.replace("\n", "") for f in pngs)

    # The cross-dataset table: every dataset evaluated, in the order given, then the mean of those the
    # model was not trained on (here only the second); printed, in the report, and in cross_dataset.csv.
    table = report["table"]
    assert [(r["dataset"], r["uri"]) for r in table] == [("faces", shards), ("eval-corpus-bad", bad), ("mean (not trained on)", "")]
    assert table[0]["video_auc"] == pytest.approx(good["video"]["auc"]) and table[1]["faces"] == worse["frame"]["count"]
    assert [r["split"] for r in table] == ["all", "train", ""]
    mean_log_loss = worse["video"]["log_loss"]
    assert table[-1]["video_log_loss"] == pytest.approx(mean_log_loss)
    csv_rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "cross_dataset.csv").read_text())))
    assert [r["uri"] for r in csv_rows] == [shards, bad, ""] and float(csv_rows[-1]["video_log_loss"]) == pytest.approx(mean_log_loss)
    assert "cross-dataset" in proc.stdout
    assert f"wrote {tmp_path / 'out' / 'cross_dataset.csv'}" in proc.stdout.replace("\n", "")

    client = mlflow.MlflowClient(cfg.tracking.uri)
    [run] = client.search_runs([client.get_experiment_by_name(f"eval-{tmp_path.name}").experiment_id])
    assert run.data.tags["model_uri"] == model_uri
    assert run.data.metrics["faces/video_log_loss"] == pytest.approx(good["video"]["log_loss"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "faces-roc.png", "faces-reliability.png",
                                                                        "cross_dataset.csv", "cross_dataset.json"}
    assert run.data.metrics["mean/video_log_loss"] == pytest.approx(mean_log_loss)


def test_score_cli_scores_an_unseen_video_and_reports_a_broken_one(model_uri, unseen_video, tmp_path, ray_address):
    broken = tmp_path / "broken.mp4"
    broken.write_text("this is not a video")
    missing = "s3://test/nowhere/missing.mp4"
    out, html = tmp_path / "scores.jsonl", tmp_path / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "score", unseen_video, str(broken), missing, "--checkpoint", model_uri,
         "--ray", "--videos-per-task", "2", "--out", str(out), "--report", str(html), "--no-progress"],
        env=os.environ | {"RAY_ADDRESS": ray_address}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]  # some videos failed; the others were scored
    lines = {d["video"]: d for d in map(json.loads, proc.stdout.splitlines())}
    assert lines == {d["video"]: d for d in map(json.loads, out.read_text().splitlines())}
    good = lines[unseen_video]
    assert 0 < good["p_fake"] < 1 and good["faces_found"] == len(good["frames"]) > 0
    assert all(set(f) == {"t", "face", "p"} and 0 <= f["p"] <= 1 for f in good["frames"])
    assert lines[str(broken)]["p_fake"] is None and "unreadable_video" in lines[str(broken)]["error"]
    assert lines[missing]["p_fake"] is None and "missing_file" in lines[missing]["error"]
    assert "scored 1 of 3 videos, 2 failed" in proc.stderr
    page = html.read_text()
    assert page.count("<section") == 3 and "data:image/png;base64" in page and "data:image/jpeg;base64" in page

    # The same video scored in this process (no Ray) gets the same probability.
    (line, _), = score([unseen_video], model_uri, load_config(None), use_ray=False, progress=False)
    assert line["p_fake"] == pytest.approx(good["p_fake"], abs=1e-6)


def test_torchscript_export_gives_the_same_scores_and_loads_only_when_asked(model_uri, unseen_video, tmp_path):
    ts = str(tmp_path / "model_ts.pt")
    assert model_file.export_torchscript(model_uri, ts) <= 1e-5
    # Loading TorchScript runs its code: not unless asked, and only what `dfdc export` wrote.
    with pytest.raises(model_file.ModelFileError, match="is a TorchScript file, and loading one runs the code"):
        model_file.load(ts)
    cfg = load_config(None)
    with pytest.raises(model_file.ModelFileError, match="--torchscript"):
        next(score([unseen_video], ts, cfg, use_ray=False, progress=False))
    exported, card = model_file.load(ts, torchscript=True)
    assert isinstance(exported, torch.jit.ScriptModule) and card["export"] == "torchscript"
    planted = str(tmp_path / "planted" / "model_fp32.pt")  # a TorchScript file put where a run's model goes
    storage.write_bytes(planted, storage.read_bytes(ts))
    model_file.write_card(planted, {k: v for k, v in card.items() if k not in ("export", "exported_from")})
    with pytest.raises(model_file.ModelFileError, match="that `dfdc export` did not write"):
        model_file.load(planted, torchscript=True)
    cfg.eval.torchscript = True
    (a, _), = score([unseen_video], model_uri, cfg, use_ray=False, progress=False)
    (b, _), = score([unseen_video], ts, cfg, use_ray=False, progress=False)
    assert b["p_fake"] == pytest.approx(a["p_fake"], abs=1e-5)
    assert [f["p"] for f in b["frames"]] == pytest.approx([f["p"] for f in a["frames"]], abs=1e-5)


def test_a_wrong_checkpoint_is_named(tmp_path, s3_server):
    with pytest.raises(model_file.ModelFileError, match="model_fp32.json does not exist"):
        model_file.load("s3://test/none/model_fp32.pt")
    storage.write_bytes("s3://test/junk/model_fp32.pt", b"junk")
    model_file.write_card("s3://test/junk/model_fp32.pt", {"format": model_file.CARD_FORMAT, "model": {"name": "test_efficientnet"}})
    with pytest.raises(model_file.ModelFileError, match="neither a state dict nor a TorchScript"):
        model_file.load("s3://test/junk/model_fp32.pt")
