"""A spot interruption notice during training, end to end on this machine: two more Ray nodes join
the test cluster, each with its own stand-in instance metadata service (as each EC2 instance has);
`dfdc spot watch` watches the first. The test gives that node a notice: the watcher drains the node,
training checkpoints at once, the test then takes the node away (AWS reclaiming it) and starts a
replacement (the autoscaler's part), and Ray Train restarts on two workers from that checkpoint,
counting a preemption: with `ray.max_failures=0` a restart counted as a failure would end the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow

from cluster.local.ray_head import start_worker_node
from dfdc import storage
from dfdc.config import load_config
from tests.imds_standin import StandIn
from tests.test_train import train_sets
from train.data import ledger
from train.run import run

RUN = "s3://test/runs/spot"
EPOCHS = 24  # tiny epochs of ~2 s: the run must outlast the drain's deadline (~15 epochs here)


def _tag(client, cfg, prefix: str):
    exp = client.get_experiment_by_name("dfdc")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "spot"] if exp else []
    return next(((k, v) for r in runs for k, v in r.data.tags.items() if k.startswith(prefix)), None), runs


def test_a_spot_notice_checkpoints_at_once_drains_the_node_and_the_run_resumes_as_a_preemption(shards, tmp_path, ray_address,
                                                                                                monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "100")  # see test_elastic.py
    standins = [StandIn("g5.xlarge", "spot"), StandIn("g6.xlarge", "spot"), StandIn("g6.xlarge", "on-demand")]
    nodes, watcher = [], None
    try:
        nodes = [start_worker_node(ray_address, 1, {"spot_slot": 1}, tmp_path / f"node{i}.log",
                                   env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": s.endpoint}) for i, s in enumerate(standins[:2])]
        watch_log = tmp_path / "watch.log"
        with open(watch_log, "wb") as out:
            watcher = subprocess.Popen(
                [str(Path(sys.executable).parent / "dfdc"), "spot", "watch", "--ray-address", ray_address, "--node-id", nodes[0].node_id],
                env={**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": standins[0].endpoint},
                stdout=out, stderr=out)
        cfg = load_config(None, train_sets(
            shards, tmp_path, "deepspeed.zero_stage=2", "data.batch_size=2", f"optim.epochs={EPOCHS}", "data.ledger=true",
            "ray.run_name=spot", "ray.num_workers=2", "ray.max_failures=0", "ray.interrupt_check_steps=1",
            'ray.worker_resources={"spot_slot": 1}', "eval.fit_temperature=false"))
        result: dict = {}
        trainer = threading.Thread(target=lambda: result.update(out=run(cfg, tmp_path)), daemon=True)
        trainer.start()
        client = mlflow.MlflowClient(cfg.tracking.uri)
        deadline = time.monotonic() + 400
        while not _training(client, cfg):  # two workers are stepping
            assert trainer.is_alive() and time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        # AWS says two minutes; the stand-in says 30 s to keep the test short (the drain's deadline is
        # 10 s earlier: the watcher polls every 5 s and its `ray drain-node` takes a few seconds)
        standins[0].give_notice(seconds=30)
        while (found := _tag(client, cfg, "dfdc.preemption.")[0]) is None:
            assert trainer.is_alive() and time.monotonic() < deadline, "no checkpoint after the notice"
            time.sleep(0.5)
        step = int(found[0].rsplit("_", 1)[1])
        while _registered_step() < step:  # Ray Train has every rank's part of it: a restart can load it
            assert trainer.is_alive() and time.monotonic() < deadline, "the notice's checkpoint was not registered"
            time.sleep(0.3)
        seconds = time.time() - standins[0].notice_at
        print(f"notice to registered checkpoint: {seconds:.1f} s ({found[1]})")
        assert seconds < 20, f"the checkpoint took {seconds:.0f} s after the notice, past the drain's deadline"
        assert watcher.wait(30) == 0, watch_log.read_text()
        time.sleep(max(0.0, standins[0].notice_at + 31 - time.time()))
        # AWS takes the instance back at the notice's time. Its raylet may be gone already: once Ray
        # Train stopped the workers there at the drain's deadline, the drained node was idle and exited.
        nodes[0].kill_raylet(missing_ok=True)
        nodes.append(start_worker_node(ray_address, 1, {"spot_slot": 1}, tmp_path / "node2.log",
                                       env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": standins[2].endpoint}))
        trainer.join(600)
        assert "out" in result, "the run did not finish after the preemption"
    finally:
        if watcher and watcher.poll() is None:
            watcher.kill()
        for node in nodes:
            node.stop()
        for s in standins:
            s.stop()

    assert "drained Ray node" in watch_log.read_text()
    # Every 5 s, as AWS recommends. A poll the stand-in answered after the client's 1 s timeout (a
    # loaded machine) is asked again at once (dfdc/imds.py: one retry): the same poll, not a new one.
    polls = [t for i, t in enumerate(standins[0].polls) if i == 0 or t - standins[0].polls[i - 1] > 1.5]
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    assert gaps and all(4.5 < g < 7 for g in gaps), (gaps, standins[0].polls)
    out = result["out"]
    assert out["metrics"]["epoch"] == EPOCHS and out["consolidated_max_abs_diff"] < 1e-4
    attempts = ledger.read_attempts(RUN)
    assert len(attempts) == 2 and all(a["world_size"] == 2 for a in attempts.values()), attempts
    epochs = ledger.check(RUN, ledger.train_keys(shards))
    assert len(epochs) == EPOCHS and all(e.ok and e.more_than_once == 0 for e in epochs), epochs
    (_, text), [r] = _tag(client, cfg, "dfdc.preemption.")
    assert nodes[0].node_id in text and "before the deadline" in text
    assert client.get_metric_history(r.info.run_id, "preemption_checkpoint_s")
    # from the notice's checkpoint, or an epoch's end that landed before the node went
    assert client.get_metric_history(r.info.run_id, "resumed_at_step")[-1].value >= step
    # the cost, from each node's metadata, over both attempts; the driver's node has none here
    assert "g5.xlarge spot, g6.xlarge on_demand, g6.xlarge spot, unknown spot" in r.data.tags["dfdc.cost"]
    assert out["cost"]["cost_dollars"] > 0 and out["cost"]["cost_node_hours"] > 0


def _registered_step() -> int:
    snapshot = f"{RUN}/checkpoint_manager_snapshot.json"
    if not storage.exists(snapshot):
        return -1
    return json.loads(storage.read_bytes(snapshot))["latest_checkpoint_result"]["metrics"]["step"]


def _training(client, cfg) -> bool:
    _, runs = _tag(client, cfg, "-")
    return bool(runs) and bool(client.get_metric_history(runs[0].info.run_id, "train_loss"))
