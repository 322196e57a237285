"""Whether a request can ever be placed (cluster/placement.py): pure logic on capacities, the AWS
training cluster's node types as `ray up` fills them in, and the demo sweep on this 2-core machine."""

from __future__ import annotations

from pathlib import Path

import yaml

from cluster import placement
from cluster.sweep import trial_resources
from dfdc.config import load_config

ROOT = Path(__file__).resolve().parent.parent
TRAIN_CLUSTER = ROOT / "cluster/aws/train-gpu-spot.yaml"
# What `ray up` writes into ~/ray_bootstrap_config.yaml for types whose `resources` are {}: the
# instance type's CPUs and GPUs (ray/autoscaler/_private/aws/node_provider.py, fillout_available_node_types_resources).
FILLED = {"g5.12xlarge": {"CPU": 48, "GPU": 4}, "g6.12xlarge": {"CPU": 48, "GPU": 4},
          "p4d.24xlarge": {"CPU": 96, "GPU": 8}, "p5.48xlarge": {"CPU": 192, "GPU": 8}}


def _laptop(cpus: float, trial_host: float | None = 16) -> placement.Capacity:
    return placement.from_node_types([({"CPU": cpus} | ({"dfdc_trial_host": trial_host} if trial_host else {}), 1)],
                                     "one node")


def _trial(cfg) -> list:
    return [("the trial's process", {k: v for k, v in trial_resources(cfg).items() if v}, 1), placement.worker_group(cfg)]


def test_the_demo_sweep_fits_this_2_core_machine_and_the_old_trial_cpu_did_not():
    cfg = load_config(ROOT / "configs/sweep_demo.yaml", [])
    assert placement.problem(_trial(cfg), _laptop(2)) is None
    # what a trial asked before: 0.01 CPU for its process beside 2 workers of 1 CPU
    old = [("the trial's process", {"CPU": 0.01}, 1), placement.worker_group(cfg)]
    why = placement.problem(old, _laptop(2))
    assert why and "together they need {CPU: 2.01}" in why and "at most {CPU: 2}" in why, why


def test_a_refusal_names_what_was_asked_and_what_the_cluster_has():
    cfg = load_config(None, ["ray.num_workers=4", "ray.cpus_per_worker=1"])
    why = placement.problem(_trial(cfg), _laptop(2))
    assert why == ("the trial's process: {dfdc_trial_host: 1}; workers: 4 x {CPU: 1}; together they need {CPU: 4}, "
                   "and the cluster has at most {CPU: 2} (one node)"), why
    # a cluster where no node hosts trials
    why = placement.problem(_trial(load_config(None, [])), _laptop(8, trial_host=None))
    assert "no node can hold one the trial's process {dfdc_trial_host: 1}: the cluster's nodes are {dfdc_trial_host: 0}" in why, why
    # a bundle no node is big enough for, though the total would be
    two = placement.from_node_types([({"CPU": 2}, 2)], "two nodes")
    assert "no node can hold one workers {CPU: 3}" in placement.problem([("workers", {"CPU": 3}, 1)], two)
    assert placement.problem([("workers", {"CPU": 2}, 2)], two) is None


def test_the_aws_training_cluster_as_ray_up_fills_it_in():
    config = yaml.safe_load(TRAIN_CLUSTER.read_text())
    for spec in config["available_node_types"].values():
        spec["resources"] = FILLED.get(spec["node_config"]["InstanceType"], {}) | spec["resources"]
    cap = placement.from_launcher_config(config, "bootstrap")
    # trials go on the head (its dfdc_trial_host), never on a GPU node, and the head hosts 16
    [host] = [s for s in cap.shapes if s.get("dfdc_trial_host")]
    assert "GPU" not in host and "CPU" not in host and cap.total[load_config(None, []).sweep.trial_host] == 16
    gpu = load_config(ROOT / "configs/dfdc_b7.yaml", [])
    assert placement.problem(_trial(gpu), cap) is None
    too_big = load_config(ROOT / "configs/dfdc_b7.yaml", ["ray.num_workers=256", "data.streams=256"])
    why = placement.problem(_trial(too_big), cap)
    assert why and "together they need {CPU:" in why and "GPU: 256" in why, why
