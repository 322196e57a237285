"""Training on real parts: shards on the rclone S3 server, 2 Ray Train workers, DeepSpeed (gloo, CPU),
MLflow on sqlite, checkpoints on S3. Tiny model and images."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import timm
import torch

from dfdc import storage
from dfdc.config import load_config
from data_pipeline import manifest as mf
from train.engine import deepspeed_config, lr_lambda
from train.loop import plan_epochs
from train.run import run


def train_sets(shards, tmp_path, *extra) -> list[str]:
    return [
        f"data.dataset={shards}", "model.name=test_efficientnet", "data.image_size=48", "data.batch_size=8",
        "data.num_workers=1", "optim.warmup_steps=2", "tracking.log_every=2", "tracking.system_metrics=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifacts={(tmp_path / 'artifacts').as_uri()}",
        "ray.storage_path=s3://test/runs", *extra,
    ]


def train_cfg(shards, tmp_path, *extra):
    return load_config(None, train_sets(shards, tmp_path, *extra))


def load_fp32(uri: str) -> dict:
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)


def test_zero2_killed_mid_epoch_resumes_then_consolidates_and_calibrates(shards, tmp_path, ray_address):
    """A real ZeRO-2 training job, its driver SIGKILLed once a mid-epoch checkpoint is registered (what
    losing the node that runs it does), started again with the same run name: it resumes at that step
    and loader position into the same MLflow run, finishes, and leaves a checked fp32 model with its card."""
    sets = train_sets(shards, tmp_path, "deepspeed.zero_stage=2", "data.batch_size=4", "optim.epochs=1",
                      "ray.checkpoint_every_steps=3", "ray.run_name=killed")
    cfg = load_config(None, sets)
    batches, _ = plan_epochs(mf.load(shards), cfg, 2)
    assert batches > 6, "the test needs two mid-epoch checkpoints before the epoch ends"
    snapshot = "s3://test/runs/killed/checkpoint_manager_snapshot.json"  # Ray Train's list of registered checkpoints
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "train", *[a for s in sets for a in ("--set", s)]],
                            env=os.environ | {"RAY_ADDRESS": ray_address}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not storage.exists(snapshot):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    latest = json.loads(storage.read_bytes(snapshot))["latest_checkpoint_result"]["metrics"]
    assert 0 < latest["step"] < batches, latest

    out = run(cfg, tmp_path)
    # Every batch of the epoch ran once in all: the resumed job took the rest from the checkpoint's position.
    assert out["metrics"]["step"] == batches and out["metrics"]["epoch"] == 1
    assert "video_auc" in out["metrics"] and "video_log_loss" in out["metrics"]
    client = mlflow.MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("dfdc").experiment_id])
    assert len(runs) == 1, "the resumed job continued the killed job's MLflow run"
    r = runs[0]
    assert [h.value for h in client.get_metric_history(r.info.run_id, "resumed_at_step")] == [latest["step"]]
    assert [h.value for h in client.get_metric_history(r.info.run_id, "resumed_at_batch_in_epoch")] == [latest["step"]]
    # The reloaded engine gave the checkpoint's outputs exactly: identical weights.
    assert client.get_metric_history(r.info.run_id, "reload_max_abs_diff")[0].value == 0.0

    assert r.data.params["deepspeed.zero_stage"] == "2" and r.data.params["model.name"] == "test_efficientnet"
    for key in ("train_loss", "lr", "samples_per_s", "data_wait_fraction", "val_video_log_loss", "val_video_auc",
                "consolidated_max_abs_diff", "temperature"):
        assert key in r.data.metrics, key
    assert r.data.metrics["consolidated_max_abs_diff"] < 1e-4
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"config.json", "deepspeed_config.json", "model_fp32.pt", "model_fp32.json"} <= artifacts

    # The consolidated fp32 weights load into the plain timm model.
    model = timm.create_model("test_efficientnet", num_classes=1)
    model.load_state_dict(load_fp32(out["model"]), strict=True)
    # Training wrote the model's card and fit temperature scaling on the val split.
    card = json.loads(storage.read_bytes(out["model"].replace(".pt", ".json")))
    assert card["model"]["name"] == "test_efficientnet" and card["image_size"] == 48 and card["mlflow_run_id"] == r.info.run_id
    assert card["temperature"] == pytest.approx(out["calibration"]["temperature"]) and card["temperature"] > 0
    assert out["calibration"]["val_video_log_loss_calibrated"] <= out["calibration"]["val_video_log_loss"] + 1e-9
    # The engine's last validation (in the workers) and the consolidated model's (Ray tasks) agree.
    assert out["calibration"]["val_video_log_loss"] == pytest.approx(out["metrics"]["video_log_loss"], abs=1e-4)


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

def test_resume_skips_a_checkpoint_without_its_state(tmp_path):
    """A registered checkpoint that lacks dfdc_state.json is passed over for the newest complete one."""
    import pyarrow.fs
    import ray.train

    from train.checkpoint import STATE, latest_complete

    run_dir = tmp_path / "run"
    for name, complete in [("checkpoint_2026-01-01_00-00-01.000000", True), ("checkpoint_2026-01-01_00-00-02.000000", True),
                           ("checkpoint_2026-01-01_00-00-03.000000", False)]:
        (run_dir / name / "ds").mkdir(parents=True)
        if complete:
            (run_dir / name / STATE).write_text("{}")
    fs = pyarrow.fs.LocalFileSystem()
    newest = ray.train.Checkpoint(str(run_dir / "checkpoint_2026-01-01_00-00-03.000000"), filesystem=fs)
    assert latest_complete(newest).path.endswith("00-00-02.000000")
    second = ray.train.Checkpoint(str(run_dir / "checkpoint_2026-01-01_00-00-02.000000"), filesystem=fs)
    assert latest_complete(second).path == second.path
    (run_dir / "checkpoint_2026-01-01_00-00-01.000000" / STATE).unlink()
    (run_dir / "checkpoint_2026-01-01_00-00-02.000000" / STATE).unlink()
    assert latest_complete(newest) is None


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
