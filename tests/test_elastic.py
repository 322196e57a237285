"""Losing a node mid-epoch: two more Ray nodes join the test cluster, each with room for one
training worker; one of them dies (its raylet SIGKILLed), Ray Train restarts the elastic run on the
worker that is left, and the ledger shows every train sample of the epoch once."""

from __future__ import annotations

import json
import threading
import time

import mlflow

from cluster.local.ray_head import start_worker_node
from dfdc import storage
from dfdc.config import load_config
from tests.test_train import train_sets
from train.data import ledger
from train.run import run


def wait_until_the_coordinator_reserves(bundle: dict, count: int, timeout: float = 240.0) -> None:
    """Ray Train sizes an elastic run by what Ray's autoscaling coordinator (a detached actor) reserves
    for it, not by Ray's available resources. The coordinator refreshes its view of the nodes every 20 s,
    and the request of a run that ended without cancelling it lives 180 s: a run started right after
    nodes join can start on fewer workers than the nodes hold (a CI run started on 1 of 2). So ask the
    coordinator, as Ray Train does (same priority), until it reserves `count` bundles; a tick is forced
    on each ask. Its API is Ray's internal one: this is a test's readiness probe, not product code."""
    import ray
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        ResourceRequestPriority, get_or_create_autoscaling_coordinator)

    coordinator, probe = get_or_create_autoscaling_coordinator(), "dfdc-test-readiness-probe"
    deadline = time.monotonic() + timeout
    try:
        while True:
            ray.get(coordinator.request_resources.remote(requester_id=probe, resources=[bundle] * count, expire_after_s=60,
                                                         priority=ResourceRequestPriority.HIGH))
            reserved = ray.get(coordinator.get_reserved_resources.remote(probe, recompute=True))
            fits = sum(int(min(r.get(k, 0) // v for k, v in bundle.items())) for r in reserved.values())
            if fits >= count:
                return
            assert time.monotonic() < deadline, f"the coordinator reserves {reserved} of {count} x {bundle}"
            time.sleep(2)
    finally:
        ray.get(coordinator.cancel_request.remote(probe))


def test_a_node_lost_mid_epoch_restarts_on_fewer_workers_and_the_epoch_sees_every_sample_once(shards, tmp_path, ray_address,
                                                                                                monkeypatch):
    # Ray Train gives a worker group 60 s to start, then (elastic) tries again with what is ready.
    # After the kill its first retry still counts the dead node (the worker's failure is seen at once;
    # the node is declared dead ~15 s later, and the coordinator's view is refreshed every 20 s) and
    # waits out this timeout before it starts on one worker: 30 s, where starting two workers on fresh
    # nodes took 20-23 s here. A first start that does time out is retried on the same two nodes, not
    # counted as a failure: a slower machine pays time, not the test. The driver's value reaches the
    # controller.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
    nodes = [start_worker_node(ray_address, 1, {"elastic_slot": 1}, tmp_path / f"node{i}.log") for i in range(2)]
    try:
        # An elastic run starts with the workers whose resources are ready then: a node listed as
        # alive may not have reported its resources yet (a fresh-clone run started on 1 worker).
        import ray

        deadline = time.monotonic() + 60
        while ray.available_resources().get("elastic_slot", 0) < 2:
            assert time.monotonic() < deadline, ray.available_resources()
            time.sleep(0.5)
        wait_until_the_coordinator_reserves({"CPU": 1, "elastic_slot": 1}, 2)
        cfg = load_config(None, train_sets(
            # Batches of 2: ~30 steps an epoch, so the kill after the first checkpoint (step 2) lands mid-epoch. With
            # batches of 4 (~15 steps of a fraction of a second) a fresh clone's run once finished the epoch on both
            # workers before the killed node's loss was seen: one attempt, at world size 2.
            shards, tmp_path, "deepspeed.zero_stage=2", "data.batch_size=2", "optim.epochs=1", "data.ledger=true",
            "ray.checkpoint_every_steps=2", "ray.run_name=elastic", "ray.num_workers=1..2", "ray.max_failures=2",
            "ray.elastic_resize_interval_s=3600",  # no growing back within the test: it checks the restart on 1
            'ray.worker_resources={"elastic_slot": 1}', "eval.fit_temperature=false"))
        result: dict = {}
        trainer = threading.Thread(target=lambda: result.update(out=run(cfg, tmp_path)), daemon=True)
        trainer.start()
        snapshot = "s3://test/runs/elastic/checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 400
        while not storage.exists(snapshot):
            assert trainer.is_alive() and time.monotonic() < deadline, "no checkpoint from the 2-worker run"
            time.sleep(0.3)
        at = json.loads(storage.read_bytes(snapshot))["latest_checkpoint_result"]["metrics"]
        nodes[0].kill_raylet()
        trainer.join(600)
        assert "out" in result, "the run did not finish after losing a node"
    finally:
        for node in nodes:
            node.stop()

    out = result["out"]
    assert out["metrics"]["epoch"] == 1 and out["consolidated_max_abs_diff"] < 1e-4
    attempts = ledger.read_attempts("s3://test/runs/elastic")
    assert attempts[0]["world_size"] == 2 and attempts[max(attempts)]["world_size"] == 1, attempts
    [epoch] = ledger.check("s3://test/runs/elastic", ledger.train_keys(shards))
    assert epoch.ok and epoch.more_than_once == 0 and epoch.never < 4, epoch
    client = mlflow.MlflowClient(cfg.tracking.uri)
    [r] = [r for r in client.search_runs([client.get_experiment_by_name("dfdc").experiment_id]) if r.info.run_name == "elastic"]
    resumed = client.get_metric_history(r.info.run_id, "resumed_at_position")
    assert resumed and resumed[-1].value >= at["position"]
    assert [h.value for h in client.get_metric_history(r.info.run_id, "resumed_on_world_size")][-1] == 1
    assert client.get_metric_history(r.info.run_id, "reload_max_abs_diff")[-1].value < 1e-5
