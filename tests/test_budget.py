"""A run with a tiny budget on the local stack stops itself after a checkpoint, says why in MLflow and
its result, and leaves a model; resuming it without a bigger budget is refused before any worker starts."""

from __future__ import annotations

import json

import mlflow
import pytest

from dfdc import storage
from tests.test_train import train_cfg
from train.checkpoint import ResumeError
from train.run import run


def test_a_tiny_budget_stops_the_run_after_a_checkpoint(shards, tmp_path, ray_address):
    prices = tmp_path / "prices.yaml"  # one dollar a second: the budget is passed within the first epochs
    prices.write_text("date: '2026-11-29'\nsource: the test\ninstances:\n  local.test: {gpus: 0, spot: 3600, on_demand: 7200}\n")
    sets = ["ray.num_workers=1", "optim.epochs=200", "ray.run_name=budget", "ray.interrupt_check_steps=2",
            f"cost.prices={prices}", "cost.instance_type=local.test", "cost.market=spot", "budget.dollars=15",
            "eval.fit_temperature=false"]
    cfg = train_cfg(shards, tmp_path, *sets)
    out = run(cfg, tmp_path)

    assert out["stopped"] == "budget" and out["model"], out
    assert out["metrics"]["epoch"] < 200 and out["metrics"]["budget_stopped"] == 1.0
    assert out["cost"]["cost_dollars"] > 15 and out["cost"]["cost_node_hours"] > 0  # one node: workers and driver share it
    assert json.loads(storage.read_bytes("s3://test/runs/budget/result.json"))["stopped"] == "budget"
    client = mlflow.MlflowClient(cfg.tracking.uri)
    [r] = [r for r in client.search_runs([client.get_experiment_by_name("dfdc").experiment_id]) if r.info.run_name == "budget"]
    assert r.data.tags["dfdc.stopped"] == "budget"
    assert r.data.tags["dfdc.cost"].startswith("$") and "local.test spot" in r.data.tags["dfdc.cost"]
    assert client.get_metric_history(r.info.run_id, "cost_dollars")

    with pytest.raises(ResumeError, match=r"run budget has spent \$\d+\.\d+ by its estimate, more than budget.dollars=15"):
        run(train_cfg(shards, tmp_path, *sets), tmp_path)
