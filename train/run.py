"""The driver: builds the Ray Train TorchTrainer from our config, runs it, then writes the final
model as one consolidated fp32 state dict beside the run's checkpoints."""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from pathlib import Path

from dfdc import storage
from dfdc.config import Config

MODEL_FILE = "model_fp32.pt"


def storage_for_ray(uri: str):
    """(storage_path, storage_filesystem) for RunConfig. s3:// goes through s3fs: pyarrow's own S3
    filesystem writes directory markers that S3-compatible servers such as rclone's turn into files."""
    if not storage.is_remote(uri):
        return str(Path(uri).resolve()), None
    import pyarrow.fs  # noqa: PLC0415

    fs, path = storage.filesystem(uri)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def run(cfg: Config, home: Path) -> dict:
    import ray  # noqa: PLC0415
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # noqa: PLC0415
    from ray.train.torch import TorchTrainer  # noqa: PLC0415

    from train import tracking  # noqa: PLC0415
    from train.loop import train_func  # noqa: PLC0415

    tracking.resolve(cfg, home)
    if not ray.is_initialized():
        # Inside `ray job submit` RAY_ADDRESS names the cluster; with nothing set, a private local Ray.
        ray.init(address=cfg.ray.address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True)
    path, fs = storage_for_ray(cfg.ray.storage_path)
    use_gpu = cfg.ray.gpus_per_worker > 0
    resources = {"CPU": cfg.ray.cpus_per_worker} | ({"GPU": cfg.ray.gpus_per_worker} if use_gpu else {})
    env = storage.worker_env() | {"MLFLOW_TRACKING_URI": cfg.tracking.uri}
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": cfg.to_dict()},
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.ray.run_name, storage_path=path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.num_to_keep),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            worker_runtime_env={"env_vars": env},
        ),
    )
    result = trainer.fit()
    model_uri = write_final_model(result.checkpoint, cfg)
    calibration = calibrate(model_uri, cfg) if model_uri and cfg.eval.fit_temperature else {}
    return {"metrics": result.metrics, "checkpoint": result.checkpoint.path if result.checkpoint else None, "model": model_uri,
            "calibration": calibration}


def calibrate(model_uri: str, cfg: Config) -> dict:
    """Temperature scaling fit on the val split with the final weights, saved in the model's card
    (log loss punishes over-confidence; a temperature > 1 softens it) and logged to MLflow."""
    import mlflow  # noqa: PLC0415

    from train import detector, evaluate  # noqa: PLC0415

    urls, missing, _ = evaluate.split_of(cfg.data.dataset, "val")
    rows, failed = evaluate.predict(model_uri, urls, cfg, progress=False, label="calibrate")
    if not rows["video"]:
        print(f"no val predictions ({len(failed)} unreadable shards): temperature left at 1", flush=True)
        return {}
    t = evaluate.fit_temperature(rows, cfg.eval.aggregate, cfg.eval.clip, *cfg.eval.temperature_range)
    before = evaluate.summarize(rows, missing, cfg.eval.aggregate, 1.0, cfg.eval.clip)["video"]["log_loss"]
    after = evaluate.summarize(rows, missing, cfg.eval.aggregate, t, cfg.eval.clip)["video"]["log_loss"]
    card = detector.read_card(model_uri)
    detector.write_card(model_uri, card | {"temperature": t, "temperature_fit_on": f"{cfg.data.dataset} val"})
    mlflow.set_tracking_uri(cfg.tracking.uri)
    with mlflow.start_run(run_id=card["mlflow_run_id"]):
        mlflow.log_metrics({"temperature": t, "val_video_log_loss_calibrated": after})
        mlflow.log_dict(card | {"temperature": t}, "model_fp32.json")
    print(f"temperature {t:.3f} fit on val: video log loss {before:.4f} -> {after:.4f}", flush=True)
    return {"temperature": t, "val_video_log_loss": before, "val_video_log_loss_calibrated": after}


def write_final_model(ckpt, cfg: Config) -> str | None:
    """The consolidated fp32 weights of the last checkpoint, saved beside the run and logged to MLflow."""
    if ckpt is None:
        return None
    import json  # noqa: PLC0415

    import mlflow  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from train.checkpoint import PROBE, STATE, consolidate  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    with ckpt.as_directory() as d:
        weights = consolidate(d)
        state = json.loads(Path(d, STATE).read_text())
        probe = torch.load(Path(d, PROBE), map_location="cpu", weights_only=True)
    # The consolidated weights in the plain timm model must give the engine's outputs.
    model = build_model(dataclasses.replace(cfg.model, pretrained=None))
    model.load_state_dict(weights, strict=True)
    model.eval()
    with torch.no_grad():
        diff = float((model(probe["input"]) - probe["logits"]).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"consolidated weights give outputs {diff:.2e} away from the engine's: not writing {MODEL_FILE}")
    uri = storage.join(cfg.ray.storage_path, cfg.ray.run_name, MODEL_FILE)
    buf = io.BytesIO()
    torch.save({k: v.float() for k, v in weights.items()}, buf)
    storage.write_bytes(uri, buf.getvalue())
    from train import detector  # noqa: PLC0415

    detector.write_card(uri, detector.make_card(cfg, run_name=cfg.ray.run_name, mlflow_run_id=state["mlflow_run_id"],
                                                step=state["step"], epoch=state["epoch"]))
    mlflow.set_tracking_uri(cfg.tracking.uri)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=state["mlflow_run_id"]):
        local = Path(tmp, MODEL_FILE)
        local.write_bytes(buf.getvalue())
        mlflow.log_artifact(str(local))
        mlflow.set_tag("model_uri", uri)
        mlflow.log_metric("consolidated_max_abs_diff", diff)
    return uri
