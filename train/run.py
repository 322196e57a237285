"""The driver (`python -m train`, what `ray job submit` runs): names the run, refuses a resume whose
config would not fit its checkpoint, runs the Ray Train TorchTrainer, writes the final model as one
consolidated and checked fp32 state dict with its card, fits temperature scaling, and writes
`result.json` beside the run's checkpoints."""

from __future__ import annotations

import dataclasses
import io
import json
import secrets
import tempfile
import time
from pathlib import Path

from dfdc import ray_orphans, storage
from dfdc.config import Config
from train.checkpoint import run_uri

MODEL_FILE = "model_fp32.pt"
RESULT_FILE = "result.json"
PROBE_TOLERANCE = 1e-4  # relative to the logits' size; strict fp32 on any two machines agrees far closer


def new_run_name(cfg: Config) -> str:
    """A name no other run has: a new run never resumes somebody else's checkpoints by accident."""
    return f"{cfg.tracking.experiment}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def storage_for_ray(uri: str):
    """(storage_path, storage_filesystem) for RunConfig. s3:// goes through s3fs: pyarrow's own S3
    filesystem writes directory markers that S3-compatible servers such as rclone's turn into files."""
    if not storage.is_remote(uri):
        return str(Path(uri).resolve()), None
    import pyarrow.fs  # noqa: PLC0415

    fs, path = storage.filesystem(uri)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def check_model_input(cfg: Config) -> None:
    """Pretrained weights get the input normalisation they were trained with (train/model/weights.py),
    checked on the driver before any worker starts."""
    from dfdc.config import ConfigError  # noqa: PLC0415
    from train.model.weights import check_normalisation  # noqa: PLC0415

    try:
        check_normalisation(cfg.model.name, cfg.model.pretrained, cfg.data.mean, cfg.data.std)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run(cfg: Config, home: Path, log=print, callbacks: list | None = None, reclaim: bool = True, lock_wait_s: float = 0.0) -> dict:
    """Train (or resume) the run `ray.run_name`, a new one when it is None. The result, also written
    to `<storage_path>/<run_name>/result.json`. `callbacks`: Ray Train callbacks (a sweep's trial
    passes Tune's, which hands every report to Tune). `reclaim`: first remove placement groups killed
    drivers left on the cluster (a sweep's trials leave that to the sweep). `lock_wait_s`: how long
    to wait for another driver's run lock to free itself (a retried trial's own dead attempt)."""
    from train import checkpoint, tracking  # noqa: PLC0415

    tracking.resolve(cfg, home)
    try:  # a price table that does not load fails here, not in a worker after start-up
        from train.cost import load_prices  # noqa: PLC0415

        load_prices(cfg.cost.prices)
    except (ValueError, FileNotFoundError) as e:
        from dfdc.config import ConfigError  # noqa: PLC0415

        raise ConfigError(f"cost.prices: {e}") from e
    check_model_input(cfg)
    if cfg.ray.run_name is None:
        cfg.ray.run_name = new_run_name(cfg)
        log(f"run {cfg.ray.run_name} (new; to resume it: --set ray.run_name={cfg.ray.run_name})")
    else:
        found = checkpoint.latest_state(run_uri(cfg))
        if found:  # fail here, in one line, before any worker starts
            low, high = cfg.ray.workers()
            from data_pipeline import manifest as mf  # noqa: PLC0415

            checkpoint.check_resume(found[0], cfg, low if low == high else None, found[1], mf.digest(mf.load(cfg.data.dataset)))
            spent = found[0].cost.get("dollars", 0.0)
            if cfg.budget.dollars is not None and spent > cfg.budget.dollars:
                raise checkpoint.ResumeError(f"run {cfg.ray.run_name} has spent ${spent:.4f} by its estimate, more than "
                                             f"budget.dollars={cfg.budget.dollars:g}: raise the budget to go on")
        log(f"run {cfg.ray.run_name} ({'resuming from ' + found[1] if found else 'new'})")
    from train.run_lock import RunLock  # noqa: PLC0415

    lock = RunLock(run_uri(cfg), cfg.ray.lock_lease_s).acquire(wait_s=lock_wait_s)  # RunLocked names the other driver
    try:
        return _train(cfg, log, callbacks, reclaim)
    finally:
        lock.release()


def _train(cfg: Config, log, callbacks: list | None, reclaim: bool) -> dict:
    from ray.train import FailureConfig, RunConfig, ScalingConfig  # noqa: PLC0415
    from ray.train.torch import TorchTrainer  # noqa: PLC0415

    from dfdc.ray_tasks import connect, runtime_env  # noqa: PLC0415
    from train import tracking  # noqa: PLC0415
    from train.loop import train_func  # noqa: PLC0415

    from data_pipeline import manifest as mf  # noqa: PLC0415

    manifest = mf.load(cfg.data.dataset)
    for widest, what in ((cfg.data.face_margin and cfg.data.face_margin[1], "data.face_margin"),
                         (cfg.data.eval_face_margin, "data.eval_face_margin")):
        if widest is not None:
            mf.check_face_margin(widest, manifest, cfg.data.dataset, what)
    if cfg.data.diff_cutout:
        mf.check_difference_masks(manifest, cfg.data.dataset)
    if cfg.data.hull_cutout:
        mf.check_face_outlines(manifest, cfg.data.dataset)
    if cfg.data.face_margin and (cut := mf.face_cut_pixels(manifest, cfg.data.face_margin[0])) < cfg.data.image_size:
        # seen on the demo: enlarged cuts smooth the blend's seams, and SBI did not learn (docs/recipes.md)
        log(f"warning: data.face_margin cuts as small as {cut:.0f} px from {cfg.data.dataset}'s crops, enlarged to "
            f"data.image_size={cfg.data.image_size}: enlarging smooths blending seams; ingest larger crops (ingest.crop_size)")
    if cfg.data.order != "resampled":  # the loader reads samples by their byte ranges
        from data_pipeline import shard_index  # noqa: PLC0415

        shard_index.ensure(mf.shard_urls(cfg.data.dataset, manifest, "train"), log=log)
    connect(cfg.ray.address, log_to_driver=True)
    from cluster import placement  # noqa: PLC0415

    placement.check(f"the worker group of run {cfg.ray.run_name}", [placement.worker_group(cfg)])
    if reclaim:
        ray_orphans.reclaim(log)  # a killed run's resources, which it may be about to resume on
    import ray  # noqa: PLC0415

    from train.cost import identify  # noqa: PLC0415

    driver = identify(ray.get_runtime_context().get_node_id(), cfg.cost.instance_type, cfg.cost.market)
    path, fs = storage_for_ray(cfg.ray.storage_path)
    use_gpu = cfg.ray.gpus_per_worker > 0
    resources = placement.worker_group(cfg)[1]
    low, high = cfg.ray.workers()
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": cfg.to_dict(), "driver_node": dataclasses.asdict(driver)},
        scaling_config=ScalingConfig(num_workers=low if low == high else (low, high), use_gpu=use_gpu,
                                     resources_per_worker=resources,
                                     elastic_resize_monitor_interval_s=cfg.ray.elastic_resize_interval_s),
        run_config=RunConfig(
            name=cfg.ray.run_name, storage_path=path, storage_filesystem=fs,
            checkpoint_config=checkpoint_config(cfg),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures,
                                         max_preemption_failures=cfg.ray.max_preemption_failures),
            worker_runtime_env=runtime_env(),  # the tracking URI travels in the config
            callbacks=callbacks or None,
        ),
    )
    result = trainer.fit()
    final = write_final_model(selected_checkpoint(result, cfg), cfg)
    calibration = {}
    if final and cfg.eval.fit_temperature:
        from train.evaluation.calibrate import calibrate  # noqa: PLC0415

        calibration = calibrate(final["model"], cfg, log=log)
    out = {
        "run_name": cfg.ray.run_name, "metrics": result.metrics,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "model": final["model"] if final else None,
        "consolidated_max_abs_diff": final["probe_diff"] if final else None,
        "mlflow_run_id": final["mlflow_run_id"] if final else None,
        "tracking_uri": tracking.redact(cfg.tracking.uri), "calibration": calibration,
        "stopped": "budget" if result.metrics.get("budget_stopped") else None,
        "cost": {k: result.metrics[k] for k in ("cost_dollars", "cost_gpu_hours", "cost_node_hours") if k in result.metrics},
    }
    storage.write_bytes(storage.join(run_uri(cfg), RESULT_FILE), json.dumps(out, indent=1, default=float).encode())
    return out


def checkpoint_config(cfg: Config):
    """Ray keeps ray.num_to_keep checkpoints: the latest ones, or with eval.select the best by its
    val metric (and always the latest, which a resume starts from)."""
    from ray.train import CheckpointConfig  # noqa: PLC0415

    from dfdc.config import SELECT  # noqa: PLC0415

    if cfg.eval.select not in SELECT:
        return CheckpointConfig(num_to_keep=cfg.ray.num_to_keep)
    metric, mode = SELECT[cfg.eval.select]
    return CheckpointConfig(num_to_keep=cfg.ray.num_to_keep, checkpoint_score_attribute=metric, checkpoint_score_order=mode)


def selected_checkpoint(result, cfg: Config):
    """The checkpoint that becomes the model: the last, or the best epoch end by eval.select, the later
    one of a tie (a NaN metric, as a mid-epoch checkpoint or a one-class val split gives, never wins)."""
    import math  # noqa: PLC0415

    from dfdc.config import SELECT  # noqa: PLC0415

    if cfg.eval.select not in SELECT or not result.best_checkpoints:
        return result.checkpoint
    metric, mode = SELECT[cfg.eval.select]
    sign = 1.0 if mode == "max" else -1.0
    scored = [(sign * m[metric], m.get("step", 0), c) for c, m in result.best_checkpoints
              if isinstance(m.get(metric), (int, float)) and not math.isnan(m[metric])]
    return max(scored, key=lambda x: x[:2])[2] if scored else result.checkpoint  # a tie: the later one


def write_final_model(ckpt, cfg: Config) -> dict | None:
    """The consolidated fp32 weights of `ckpt` (selected_checkpoint's), checked against the engine's probe
    outputs, saved beside the run with their card and logged to MLflow."""
    if ckpt is None:
        return None
    import torch  # noqa: PLC0415

    from train import tracking  # noqa: PLC0415
    from train.model import file as model_file  # noqa: PLC0415
    from train.checkpoint import PROBE, STATE, TrainState, consolidate, probe_diff  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    with ckpt.as_directory() as d:
        weights = consolidate(d)
        state = TrainState.from_json(Path(d, STATE).read_text())
        probe = torch.load(Path(d, PROBE), map_location="cpu", weights_only=True)
    model = build_model(dataclasses.replace(cfg.model, pretrained=None), decompose=False)
    model.load_state_dict(weights, strict=True)
    diff = probe_diff(model, probe)
    if diff > PROBE_TOLERANCE:
        raise RuntimeError(f"consolidated weights give outputs {diff:.2e} (relative) away from the engine's: not writing {MODEL_FILE}")
    uri = storage.join(run_uri(cfg), MODEL_FILE)
    buf = io.BytesIO()
    torch.save({k: v.float() for k, v in weights.items()}, buf)
    storage.write_bytes(uri, buf.getvalue())
    model_file.write_card(uri, model_file.make_card(cfg, run_name=cfg.ray.run_name, mlflow_run_id=state.mlflow_run_id,
                                                    step=state.step, epoch=state.epoch))
    with tempfile.TemporaryDirectory() as tmp, tracking.open_run(cfg, run_id=state.mlflow_run_id):
        import mlflow  # noqa: PLC0415

        local = Path(tmp, MODEL_FILE)
        local.write_bytes(buf.getvalue())
        mlflow.log_artifact(str(local))
        mlflow.set_tag("model_uri", uri)
        tracking.log_metrics({"consolidated_max_abs_diff": diff})
    return {"model": uri, "probe_diff": diff, "mlflow_run_id": state.mlflow_run_id}
