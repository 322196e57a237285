"""Training on real parts: shards on the rclone S3 server, 2 Ray Train workers, DeepSpeed (gloo, CPU),
MLflow on sqlite, checkpoints on S3. Tiny model and images."""

from __future__ import annotations

import io

import mlflow
import numpy as np
import pytest
import timm
import torch

from dfdc import storage
from dfdc.config import load_config
from data_pipeline import manifest as mf
from data_pipeline.ingest import ingest
from data_pipeline.synth import synth
from tests.conftest import TINY
from train import metrics
from train.engine import deepspeed_config, lr_lambda
from train.loop import plan_epochs
from train.run import run


@pytest.fixture(scope="module")
def shards(s3_server, ray_address):
    """A small ingested corpus: train shards of uneven sizes, few val shards (ranks get different shares)."""
    root = "s3://test/train-corpus"
    cfg = load_config(None, TINY + ["synth.videos=24", "synth.width=160", "synth.height=120", "synth.identities=4",
                                    "detector.min_face_size=20", "ingest.videos_per_task=4", "ingest.val_fraction=0.25", "ingest.shard_bytes=35000"])
    synth(f"{root}/raw", cfg.synth, log=lambda *_: None)
    ingest(f"{root}/raw", f"{root}/faces", cfg, progress=False, log=lambda *_: None)
    m = mf.load(f"{root}/faces")
    train = [s["samples"] for s in m["shards"] if s["split"] == "train"]
    assert len(train) >= 3 and len(set(train)) > 1, "uneven train shards"
    assert m["splits"]["val"]["shards"] >= 1
    return f"{root}/faces"


def train_cfg(shards, tmp_path, *extra):
    return load_config(None, [
        f"data.dataset={shards}", "model.name=test_efficientnet", "data.image_size=48", "data.batch_size=8",
        "data.num_workers=1", "optim.warmup_steps=2", "tracking.log_every=2", "tracking.system_metrics=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifacts={(tmp_path / 'artifacts').as_uri()}",
        "ray.storage_path=s3://test/runs", *extra,
    ])


def load_fp32(uri: str) -> dict:
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)


def test_zero2_trains_checkpoints_resumes_into_the_same_run(shards, tmp_path):
    cfg = train_cfg(shards, tmp_path, "deepspeed.zero_stage=2", "optim.epochs=1", "ray.run_name=zero2")
    first = run(cfg, tmp_path)
    batches, _ = plan_epochs(mf.load(shards), cfg, 2)
    assert first["metrics"]["step"] == batches and first["metrics"]["epoch"] == 1
    assert "video_auc" in first["metrics"] and "video_log_loss" in first["metrics"]

    client = mlflow.MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("dfdc").experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.data.params["deepspeed.zero_stage"] == "2" and r.data.params["model.name"] == "test_efficientnet"
    for key in ("train_loss", "lr", "samples_per_s", "data_wait_fraction", "val_video_log_loss", "val_video_auc", "consolidated_max_abs_diff"):
        assert key in r.data.metrics, key
    assert r.data.metrics["consolidated_max_abs_diff"] < 1e-4
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.json", "deepspeed_config.json", "model_fp32.pt"} <= artifacts

    # The consolidated fp32 weights load into the plain timm model.
    first_weights = load_fp32(first["model"])
    model = timm.create_model("test_efficientnet", num_classes=1)
    model.load_state_dict(first_weights, strict=True)

    # Same run name, more epochs: resumes from the checkpoint's step and loader position, same MLflow run.
    cfg.optim.epochs = 2
    second = run(cfg, tmp_path)
    assert second["metrics"]["step"] == 2 * batches and second["metrics"]["epoch"] == 2
    runs = client.search_runs([client.get_experiment_by_name("dfdc").experiment_id])
    assert [x.info.run_id for x in runs] == [r.info.run_id]
    history = client.get_metric_history(r.info.run_id, "resumed_at_step")
    assert [h.value for h in history] == [batches]
    # The reloaded engine gave the checkpoint's outputs exactly: identical weights.
    assert client.get_metric_history(r.info.run_id, "reload_max_abs_diff")[0].value == 0.0
    steps = [h.step for h in client.get_metric_history(r.info.run_id, "train_loss")]
    assert max(steps) > batches and len(steps) == len(set(steps))
    # The run's final model was replaced by the longer-trained one.
    assert not torch.equal(load_fp32(second["model"])["conv_stem.weight"], first_weights["conv_stem.weight"])


def test_zero3_trains_and_consolidates(shards, tmp_path):
    cfg = train_cfg(shards, tmp_path, "deepspeed.zero_stage=3", "optim.epochs=1", "ray.run_name=zero3")
    out = run(cfg, tmp_path)
    assert out["metrics"]["epoch"] == 1
    weights = load_fp32(out["model"])
    model = timm.create_model("test_efficientnet", num_classes=1)
    model.load_state_dict(weights, strict=True)
    client = mlflow.MlflowClient(cfg.tracking.uri)
    r = client.search_runs([client.get_experiment_by_name("dfdc").experiment_id])[0]
    assert r.data.params["deepspeed.zero_stage"] == "3"
    assert r.data.metrics["consolidated_max_abs_diff"] < 1e-4


# Pure logic, no cluster.

def test_deepspeed_config_is_derived():
    cfg = load_config(None, ["deepspeed.zero_stage=3", "deepspeed.offload=true", "deepspeed.precision=bf16",
                             "data.batch_size=16", "optim.grad_accum=4", "optim.grad_clip=0.5"])
    ds = deepspeed_config(cfg, world_size=8)
    assert ds["train_batch_size"] == 16 * 4 * 8 and ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["gradient_clipping"] == 0.5
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(load_config(None, ["deepspeed.zero_stage=4"]), 1)
    with pytest.raises(ValueError, match="precision"):
        deepspeed_config(load_config(None, ["deepspeed.precision=fp8"]), 1)


def test_lr_warms_up_then_decays_to_zero():
    f = lr_lambda(warmup=10, total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_metrics_equal_sklearn():
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.random(500) * 0.6 + y * 0.3, 0, 1)
    p[:50] = np.round(p[:50], 1)  # ties
    assert metrics.log_loss(y, p) == pytest.approx(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)), abs=1e-6)
    assert metrics.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    labels, scores = metrics.video_scores(["a", "a", "b"], [1, 1, 0], [0.2, 0.4, 0.9])
    assert labels.tolist() == [1, 0] and scores == pytest.approx([0.3, 0.9])
