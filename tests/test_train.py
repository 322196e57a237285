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
from typer.testing import CliRunner

from cli.app import app
from dfdc import storage
from dfdc.config import ConfigError, load_config
from data_pipeline import manifest as mf
from train.checkpoint import ResumeError, TrainState, check_resume
from train.engine import deepspeed_config, lr_lambda
from train.loop import plan_epochs
from train.run import new_run_name, run


def train_sets(shards, tmp_path, *extra) -> list[str]:
    return [
        f"data.dataset={shards}", "model.name=test_efficientnet", "data.image_size=48", "data.batch_size=8",
        "data.num_workers=0", "optim.warmup_steps=2", "tracking.log_every=2", "tracking.system_metrics=false",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifacts={(tmp_path / 'artifacts').as_uri()}",
        "ray.storage_path=s3://test/runs", *extra,
    ]


def train_cfg(shards, tmp_path, *extra):
    return load_config(None, train_sets(shards, tmp_path, *extra))


def load_fp32(uri: str) -> dict:
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)


def workers_gone(dashboard: str, timeout: float = 120) -> None:
    """Wait until no Ray Train worker is alive on the test cluster. Killing a driver does not stop its
    workers at once: Ray ends the job's actors when it sees the driver gone, and until then they go on
    training and may upload another checkpoint (CI met one at step 6 after the test had read step 3)."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + timeout
    while list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                      raise_on_missing_output=False):
        assert time.monotonic() < deadline, f"the killed driver's workers still run after {timeout} s"
        time.sleep(0.5)


def test_zero3_killed_mid_epoch_on_one_worker_resumes_on_two_then_consolidates_and_calibrates(shards, tmp_path, ray_address,
                                                                                                ray_dashboard):
    """A real ZeRO-3 training job on one worker, its driver SIGKILLed once a mid-epoch checkpoint is
    registered (what losing the node that runs it does), started again with the same run name on two
    workers: the checkpoint is converted to DeepSpeed's universal format and resharded, the run goes
    on from the global position into the same MLflow run, the ledger shows every train sample of the
    epoch once, each batch where the block order (4 streams: both world sizes read whole blocks)
    puts it, and it leaves a checked fp32 model with its card. A resume whose config changes what
    the checkpoint means is refused, naming the key, before any worker starts."""
    from train.data import ledger

    sets = train_sets(shards, tmp_path, "deepspeed.zero_stage=3", "data.batch_size=4", "optim.epochs=1", "data.ledger=true",
                      "ray.checkpoint_every_steps=3", "ray.run_name=killed", "data.block_samples=4", "data.window_blocks=2",
                      "data.streams=4")
    cfg = load_config(None, sets)
    from train.data.loader import epoch_order_of
    from train.data.index import train_set_of

    order = epoch_order_of(train_set_of(shards), cfg.data, cfg.optim.seed, 0)
    assert order.streams == 4 and order.reads_in_blocks(1) and order.reads_in_blocks(2)
    batches, _ = plan_epochs(mf.load(shards), cfg, 1)
    assert batches > 6, "the test needs two mid-epoch checkpoints before the epoch ends"
    snapshot = "s3://test/runs/killed/checkpoint_manager_snapshot.json"  # Ray Train's list of registered checkpoints
    log = open(tmp_path / "first.log", "wb")
    first = [a for s in sets + ["ray.num_workers=1"] for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "train", *first], env=os.environ | {"RAY_ADDRESS": ray_address},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not storage.exists(snapshot):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    from train.checkpoint import latest_state

    workers_gone(ray_dashboard)
    recorded = json.loads(storage.read_bytes(snapshot))["latest_checkpoint_result"]["metrics"]
    # The run goes on from the newest whole checkpoint in its folder, which the driver names when
    # it starts, not from Ray Train's record of its checkpoints: a driver lost between its workers'
    # upload and the record (the node-lost sweep test met it) leaves a checkpoint the record lacks.
    # Without the record at all, the workers used to start from scratch in a second MLflow run while
    # the driver said it resumed (this test failed so: 2 MLflow runs); now they resume as the driver says.
    stored, _ = latest_state("s3://test/runs/killed")
    latest = {"step": stored.step, "position": stored.position}
    assert recorded["step"] <= latest["step"] < batches and latest["position"] == latest["step"] * 4, (recorded, latest)
    storage.remove(snapshot)

    out = run(cfg, tmp_path)  # ray.num_workers=2, the default
    assert out["metrics"]["epoch"] == 1
    assert "val_video_auc" in out["metrics"] and "val_video_log_loss" in out["metrics"]
    # Every train sample once: 1 rank up to the checkpoint's position, then 2 ranks from there.
    attempts = ledger.read_attempts("s3://test/runs/killed")
    assert sorted(attempts) == [0, 1] and attempts[1]["order"] == "blocks" and attempts[1]["streams"] == 4
    [epoch] = ledger.check("s3://test/runs/killed", ledger.train_keys(shards), ledger.order_keys(attempts[1]),
                           through=(1, 0))
    assert epoch.ok and epoch.never < 8 and epoch.more_than_once == 0 and epoch.attempts == [0, 1], epoch
    assert epoch.misplaced == 0 and not epoch.skipped
    checked = CliRunner().invoke(app, ["ledger", "check", "s3://test/runs/killed"])
    assert checked.exit_code == 0 and "FAILED" not in checked.output, checked.output  # exit 1 when an epoch fails
    client = mlflow.MlflowClient(cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("dfdc").experiment_id])
    assert len(runs) == 1, "the resumed job continued the killed job's MLflow run"
    r = runs[0]
    assert [h.value for h in client.get_metric_history(r.info.run_id, "resumed_at_step")] == [latest["step"]]
    assert [h.value for h in client.get_metric_history(r.info.run_id, "resumed_at_position")] == [latest["position"]]
    assert [h.value for h in client.get_metric_history(r.info.run_id, "resumed_from_world_size")] == [1]
    assert [h.value for h in client.get_metric_history(r.info.run_id, "resumed_on_world_size")] == [2]
    assert any("universal" in v and "converted it once" in v for k, v in r.data.tags.items() if k.startswith("resumed_at_step_"))
    # The conversion is stored once beside the checkpoints, for every rank and later restarts.
    stored = storage.list_files("s3://test/runs/killed/universal")
    assert sum(p.endswith("/COMPLETE") for p in stored) == 1 and sum(p.endswith("/ds.tar") for p in stored) == 1, stored
    # The resharded engine gave the checkpoint's outputs: the same weights and BatchNorm statistics.
    assert client.get_metric_history(r.info.run_id, "reload_max_abs_diff")[0].value < 1e-5

    assert r.data.params["deepspeed.zero_stage"] == "3" and r.data.params["model.name"] == "test_efficientnet"
    assert out["metrics"]["val_unreadable_shards"] == 0 and out["metrics"]["val_missing_samples"] == 0
    for key in ("train_loss", "lr", "samples_per_s", "data_wait_fraction", "val_video_log_loss", "val_video_auc",
                "val_unreadable_shards", "train_unreadable_reads", "consolidated_max_abs_diff", "temperature"):
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
    assert out["calibration"]["val_video_log_loss"] == pytest.approx(out["metrics"]["val_video_log_loss"], abs=1e-4)

    with pytest.raises(ResumeError, match=r"data\.batch_size was 4 and is now 8"):
        run(load_config(None, sets + ["data.batch_size=8"]), tmp_path)

    # A finished run whose last checkpoint reached its folder but not Ray Train's record (what the
    # elastic test met once: the node died between the upload and the record): the resume has
    # nothing to train and reports that checkpoint again, so the result is the finished run's. Before,
    # the result was the record's older checkpoint (here: none; there: epoch 0's mid-epoch one).
    storage.remove("s3://test/runs/killed/checkpoint_manager_snapshot.json")
    again = run(load_config(None, sets + ["eval.fit_temperature=false"]), tmp_path)
    assert again["metrics"]["epoch"] == 1 and again["metrics"]["step"] == out["metrics"]["step"], again["metrics"]
    assert again["metrics"]["val_video_auc"] == out["metrics"]["val_video_auc"]
    assert torch.equal(next(iter(load_fp32(again["model"]).values())), next(iter(load_fp32(out["model"]).values())))
    assert len(client.search_runs([client.get_experiment_by_name("dfdc").experiment_id])) == 1


def test_default_named_runs_bf16_zero0_and_zero1_offload_each_get_their_own_run(shards, tmp_path, mlflow_server):
    """Two runs with the default config (no ray.run_name) never share checkpoints: each gets a new
    name. bf16 at ZeRO-0, on a copy of the data whose first val shard is garbage (validation counts
    it), and ZeRO-1 with the optimizer offloaded to DeepSpeed's CPU Adam: each ends in a consolidated
    model whose probe check passed. The bf16 run tracks to an MLflow server (`dfdc mlflow serve`)
    whose artifacts land in S3 through the server. The offload run is also test_recipes.py's SVD
    tuning of a frozen encoder with SBI on real-only epochs (one Ray Train run fewer), checked there."""
    from tests.conftest import copy_with_a_broken_shard
    from tests.test_recipes import FROZEN_SVD, check_frozen_run

    bad_val = "s3://test/train-corpus-bad-val"
    broken = copy_with_a_broken_shard(shards, bad_val, "val")
    bf16 = run(train_cfg(bad_val, tmp_path, "deepspeed.precision=bf16", "deepspeed.zero_stage=0", "optim.epochs=1",
                         "eval.fit_temperature=false", f"tracking.uri={mlflow_server}", "tracking.artifacts=null"), tmp_path)
    offload_cfg = train_cfg(shards, tmp_path, "deepspeed.zero_stage=1", "deepspeed.offload=true", "optim.epochs=1",
                            "eval.fit_temperature=false", *FROZEN_SVD)
    offload = run(offload_cfg, tmp_path)
    assert bf16["run_name"] != offload["run_name"]
    for out in (bf16, offload):
        assert out["metrics"]["epoch"] == 1 and out["checkpoint"].startswith(f"test/runs/{out['run_name']}/checkpoint_")
        assert out["consolidated_max_abs_diff"] < 1e-4
        assert json.loads(storage.read_bytes(f"s3://test/runs/{out['run_name']}/result.json"))["model"] == out["model"]
    model = timm.create_model("test_efficientnet", num_classes=1)
    model.load_state_dict(load_fp32(bf16["model"]), strict=True)
    check_frozen_run(offload_cfg, offload)  # its weights are exactly the SVD-decomposed ViT's keys
    assert bf16["metrics"]["val_unreadable_shards"] == 1 and bf16["metrics"]["val_missing_samples"] == broken["samples"]
    assert offload["metrics"]["val_unreadable_shards"] == 0
    card = json.loads(storage.read_bytes(bf16["model"].replace(".pt", ".json")))
    assert card["trained_precision"] == "bf16" and card["run_name"] == bf16["run_name"]
    assert bf16["tracking_uri"] == mlflow_server
    client = mlflow.MlflowClient(mlflow_server)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("dfdc").experiment_id])}
    r = runs[bf16["run_name"]]
    assert r.data.params["deepspeed.precision"] == "bf16" and r.data.metrics["val_unreadable_shards"] == 1
    # Artifacts went through the server (mlflow-artifacts:/) into its S3 prefix.
    assert r.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "config.json" in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert any(p.endswith(f"{r.info.run_id}/artifacts/config.json") for p in storage.list_files("s3://test/mlflow-artifacts"))
    local = mlflow.MlflowClient(offload["tracking_uri"])
    runs = {r.info.run_name: r for r in local.search_runs([local.get_experiment_by_name("dfdc").experiment_id])}
    assert runs[offload["run_name"]].data.params["deepspeed.offload"] == "True"


# Pure logic, no cluster.

def test_resume_skips_a_checkpoint_without_its_state(tmp_path):
    """A registered checkpoint that lacks dfdc_state.json is passed over for the newest complete one.
    (A checkpoint lacking any other file a load reads: tests/test_engine.py, with DeepSpeed's files.)"""
    import pyarrow.fs
    import ray.train

    from train.checkpoint import PROBE, STATE, TAG, latest_complete

    run_dir = tmp_path / "run"
    for name, complete in [("checkpoint_2026-01-01_00-00-01.000000", True), ("checkpoint_2026-01-01_00-00-02.000000", True),
                           ("checkpoint_2026-01-01_00-00-03.000000", False)]:
        (run_dir / name / TAG).mkdir(parents=True)
        for f in [PROBE, f"{TAG}/mp_rank_00_model_states.pt"]:  # a ZeRO-0 checkpoint's other files
            (run_dir / name / f).write_bytes(b"")
        if complete:
            (run_dir / name / STATE).write_text('{"world_size": 1, "config": {"deepspeed": {"zero_stage": 0}}}')
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
    # bf16 through autocast: fp32 weights and BatchNorm statistics (DeepSpeed's bf16 mode casts the
    # weights but not BatchNorm's buffers, and the first forward pass fails)
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert "bf16" not in ds and ds["gradient_clipping"] == 0.5
    assert "torch_autocast" not in deepspeed_config(load_config(None), 1)
    # ZeRO's gradient bucket: no larger than the trainable parameters, DeepSpeed's 5e8 at most
    assert "reduce_bucket_size" not in ds["zero_optimization"]  # not told the model's size: DeepSpeed's default
    assert deepspeed_config(cfg, 8, trainable_params=66_000_000)["zero_optimization"]["reduce_bucket_size"] == 66_000_000
    assert deepspeed_config(cfg, 8, trainable_params=10**9)["zero_optimization"]["reduce_bucket_size"] == 500_000_000
    stage0 = load_config(None, ["deepspeed.zero_stage=0"])
    assert "reduce_bucket_size" not in deepspeed_config(stage0, 8, trainable_params=66_000_000)["zero_optimization"]


@pytest.mark.parametrize("sets, message", [
    (["deepspeed.zero_stage=4"], r"deepspeed.zero_stage must be in \[0, 3\], got 4"),
    (["deepspeed.precision=fp8"], "deepspeed.precision must be fp32, bf16 or fp16"),
    (["deepspeed.zero_stage=0", "deepspeed.offload=true"], "deepspeed.offload needs deepspeed.zero_stage 1, 2 or 3"),
])
def test_deepspeed_settings_that_cannot_work_are_refused_at_load(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_resume_allows_some_changes_and_refuses_others_naming_the_key():
    saved_cfg = load_config(None, ["data.batch_size=8", "optim.epochs=2"])
    saved = TrainState(epoch=1, step=40, world_size=2, config=saved_cfg.to_dict())
    assert TrainState.from_json(saved.to_json()) == saved
    check_resume(saved, load_config(None, ["data.batch_size=8", "optim.epochs=5", "tracking.log_every=1",
                                           "ray.checkpoint_every_steps=7", "data.num_workers=4"]), 2, "ckpt")
    for key, value in [("data.batch_size", "16"), ("data.dataset", "s3://other/faces"), ("optim.grad_accum", "2"),
                       ("optim.seed", "3"), ("model.name", "resnet18"), ("deepspeed.zero_stage", "3"), ("optim.lr", "0.1")]:
        with pytest.raises(ResumeError, match=rf"{key.replace('.', '[.]')} was .* and is now"):
            check_resume(saved, load_config(None, ["data.batch_size=8", f"{key}={value}"]), 2, "ckpt")
    # Another world size goes on from the global position; a resampled stream has none to go on from.
    check_resume(saved, load_config(None, ["data.batch_size=8"]), 4, "ckpt")
    resampled = TrainState(epoch=1, step=40, world_size=2, config=load_config(None, ["data.batch_size=8", "data.order=resampled"]).to_dict())
    with pytest.raises(ResumeError, match="ray.num_workers was 2 and is now 4, and data.order=resampled"):
        check_resume(resampled, load_config(None, ["data.batch_size=8", "data.order=resampled"]), 4, "ckpt")
    with pytest.raises(ResumeError, match=r"data[.]order was 'blocks' and is now 'resampled'"):
        check_resume(saved, load_config(None, ["data.batch_size=8", "data.order=resampled"]), 2, "ckpt")
    # A dataset whose manifest changed under the same URI is refused; a checkpoint from before
    # digests were saved is not checked.
    dated = TrainState(epoch=1, step=40, world_size=2, config=saved.config, dataset_digest="abc", dataset_samples=99)
    check_resume(dated, load_config(None, ["data.batch_size=8"]), 2, "ckpt", "abc")
    with pytest.raises(ResumeError, match=r"manifest of .* changed since the run began \(digest abc, now def; 99 train"):
        check_resume(dated, load_config(None, ["data.batch_size=8"]), 2, "ckpt", "def")
    check_resume(saved, load_config(None, ["data.batch_size=8"]), 2, "ckpt", "def")
    # A checkpoint written before a key existed had that key's default: resuming with it is fine
    old = saved.config | {"model": {k: v for k, v in saved.config["model"].items() if k != "trainable"}}
    check_resume(TrainState(epoch=1, step=40, world_size=2, config=old), load_config(None, ["data.batch_size=8"]), 2, "ckpt")
    with pytest.raises(ResumeError, match=r"model[.]trainable was 'all' and is now 'head'"):
        check_resume(TrainState(epoch=1, step=40, world_size=2, config=old),
                     load_config(None, ["data.batch_size=8", "model.trainable=head"]), 2, "ckpt")
    # ... except model.svd_parts, whose default came in with the split: before it, SVD layers were whole
    unsplit = saved.config | {"model": {k: v for k, v in saved.config["model"].items() if k != "svd_parts"}}
    with pytest.raises(ResumeError, match=r"model[.]svd_parts was \{\} and is now \{'attn.qkv': 3\}"):
        check_resume(TrainState(epoch=1, step=40, world_size=2, config=unsplit), load_config(None, ["data.batch_size=8"]), 2, "ckpt")
    check_resume(TrainState(epoch=1, step=40, world_size=2, config=unsplit),
                 load_config(None, ["data.batch_size=8", "model.svd_parts={}"]), 2, "ckpt")
    with pytest.raises(ResumeError, match=r"model[.]head was 'linear' and is now 'l2norm'"):
        check_resume(saved, load_config(None, ["data.batch_size=8", "model.head=l2norm"]), 2, "ckpt")


@pytest.mark.parametrize("value, expected", [(2, (2, 2)), ("1..3", (1, 3)), ("4", (4, 4))])
def test_num_workers_is_a_number_or_an_elastic_range(value, expected):
    assert load_config(None, [f"ray.num_workers={value}", "ray.checkpoint_every_steps=5"]).ray.workers() == expected


def test_elastic_runs_need_mid_epoch_checkpoints_and_fixed_worlds_must_divide_the_streams():
    """A resize restarts from the last checkpoint: without mid-epoch ones an elastic run would redo
    the epoch at every resize. A fixed world size that does not divide data.streams would read the
    block order one sample at a time: refused, naming the sizes that work."""
    with pytest.raises(ConfigError, match=r"elastic\) needs ray.checkpoint_every_steps above 0"):
        load_config(None, ["ray.num_workers=1..2"])
    with pytest.raises(ConfigError, match=r"ray.num_workers=3 does not divide data.streams=64.*1, 2, 4, 8, 16, 32, 64"):
        load_config(None, ["ray.num_workers=3"])
    assert load_config(None, ["ray.num_workers=3", "data.streams=48"]).data.streams == 48
    assert load_config(None, ["ray.num_workers=3", "data.order=permutation"]).ray.workers() == (3, 3)


@pytest.mark.parametrize("value", ["0", "3..1", "two", "1..x"])
def test_num_workers_that_cannot_work_are_refused_at_load(value):
    with pytest.raises(ConfigError, match="ray.num_workers must be"):
        load_config(None, [f"ray.num_workers={value}"])


def test_new_runs_get_names_of_their_own():
    cfg = load_config(None)
    names = {new_run_name(cfg) for _ in range(20)}
    assert len(names) == 20 and all(n.startswith("dfdc-") for n in names)


def test_lr_warms_up_then_decays_to_zero():
    f = lr_lambda(warmup=10, total=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_lr_schedule_ends_at_the_last_step_after_a_change_of_world_size():
    from train.loop import planned_steps

    cfg = load_config(None, ["data.batch_size=4", "optim.epochs=2"])
    assert planned_steps(100, cfg, 1, None) == 50 and planned_steps(100, cfg, 2, None) == 24
    # 30 steps on 1 rank (position 120 of epoch 0 would be past the end: use epoch 1, position 20).
    saved = TrainState(epoch=1, position=20, step=30, world_size=1)
    assert planned_steps(100, cfg, 2, saved) == 30 + (100 - 20) // 8
    # data.samples_per_epoch: epochs of their own sizes (a pass's parts)
    cfg = load_config(None, ["data.batch_size=4", "optim.epochs=3", "data.samples_per_epoch=33"])
    assert planned_steps([33, 31, 36], cfg, 2, None) == 4 + 3 + 4
    assert planned_steps([33, 31, 36], cfg, 1, TrainState(epoch=1, position=8, step=10, world_size=2)) == 10 + 23 // 4 + 9


def test_checkpoints_from_before_the_epoch_order_read_as_resampled():
    old = json.dumps({"epoch": 0, "batch_in_epoch": 3, "step": 3, "world_size": 2,
                      "config": {"data": {"batch_size": 4, "dataset": "s3://x"}}})
    state = TrainState.from_json(old)
    assert state.position == 24 and state.config["data"]["order"] == "resampled"
    with pytest.raises(ResumeError, match="data[.]order was 'resampled' and is now 'blocks'"):
        check_resume(state, load_config(None, ["data.batch_size=4", "data.dataset=s3://x"]), 2, "ckpt")


def test_elastic_workers_need_the_permutation_order():
    with pytest.raises(ConfigError, match="elastic.*needs data.order=blocks or permutation"):
        load_config(None, ["ray.num_workers=1..2", "data.order=resampled", "ray.checkpoint_every_steps=5"])
