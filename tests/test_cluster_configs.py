"""The AWS cluster configs (cluster/aws/): valid for Ray's own launcher schema, and holding what
their headers promise. Pure file checks: nothing is launched."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

CONFIGS = sorted(p for p in (Path(__file__).parent.parent / "cluster" / "aws").glob("*.yaml") if p.name != "prices.yaml")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def workers(config: dict) -> dict:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def commands(config: dict, key: str) -> str:
    return "\n".join(config.get(key) or [])


def test_both_configs_are_there():
    assert {p.name for p in CONFIGS} == {"train-gpu-spot.yaml", "ingest-cpu-spot.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_validates_the_config(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(path)))  # what `ray up` runs first


def test_ray_validation_can_fail():
    """The schema check above is not vacuous: a misspelt top-level key is refused."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = load(CONFIGS[0])
    broken["max_worker"] = broken.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_spot_workers_over_several_types_and_zones_on_demand_head(path):
    config = load(path)
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    assert "InstanceMarketOptions" not in head, "the head must be on-demand: losing it loses the cluster"
    types = workers(config)
    assert len(types) >= 3
    for name, t in types.items():
        market = t["node_config"].get("InstanceMarketOptions", {})
        assert market.get("MarketType") == "spot", name
        assert t["min_workers"] == 0 and t["max_workers"] >= 1, name
    families = {t["node_config"]["InstanceType"].split(".")[0] for t in types.values()}
    assert len(families) >= 3, families
    subnets = {s for t in types.values() for s in t["node_config"]["SubnetIds"]}
    assert len(subnets) >= 3, "workers span several subnets (one per availability zone)"
    assert config["provider"]["cache_stopped_nodes"] is False  # spot instances cannot be stopped


def test_the_training_cluster_offers_the_gpu_families():
    types = {t["node_config"]["InstanceType"] for t in workers(load(CONFIGS[-1])).values()}
    assert {"g5", "g6", "p4d", "p5"} <= {t.split(".")[0] for t in types}, types


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_node_names_its_security_group_profile_and_imdsv2(path):
    """Without SecurityGroupIds Ray creates its own group with SSH open to 0.0.0.0/0; without an
    instance profile Ray attaches one with full EC2 and S3 access."""
    config = load(path)
    for name, t in config["available_node_types"].items():
        node = t["node_config"]
        assert node["SecurityGroupIds"], name
        role = "dfdc-ray-head" if name == config["head_node_type"] else "dfdc-ray-worker"
        assert node["IamInstanceProfile"]["Arn"].endswith(f":instance-profile/{role}"), name
        assert node["MetadataOptions"]["HttpTokens"] == "required", name
        assert all(d["Ebs"]["Encrypted"] for d in node["BlockDeviceMappings"]), name


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_worker_node_runs_the_spot_watcher_after_ray_start(path):
    config = load(path)
    worker = commands(config, "worker_start_ray_commands")
    assert worker.index("ray start") < worker.index("dfdc spot watch --ray-address=$RAY_HEAD_IP:6379")
    assert "spot watch" not in commands(config, "head_start_ray_commands")  # the head is on-demand
    # Supervised: a watcher that fails (the head not up at boot) is started again; no `nohup ... &`.
    [line] = [x for x in config["worker_start_ray_commands"] if "dfdc spot watch" in x]
    assert line.startswith("sudo systemd-run --unit=dfdc-spot-watch") and "--property=Restart=on-failure" in line
    assert "--node-id" not in line and "nohup" not in worker  # the node is looked up: tests/test_spot_cost.py


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_token_auth_dashboard_on_loopback_and_the_locked_environment(path):
    config = load(path)
    head, worker = commands(config, "head_start_ray_commands"), commands(config, "worker_start_ray_commands")
    for start in (head, worker):
        starts = [line for line in start.splitlines() if "ray start" in line]
        assert starts and all("RAY_AUTH_MODE=token" in line for line in starts), start
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in yaml.safe_dump(config)  # in any value (the comments may name it)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # every node gets the launcher's token
    assert "uv sync --frozen" in commands(config, "setup_commands")
    every = "\n".join(commands(config, key) for key in config if key.endswith("_commands"))
    assert not re.search(r"(curl|wget)[^\n|]*\|\s*(sudo\s+)?(ba|z)?sh\b", every), "a download piped into a shell"
    assert {".venv", ".dfdc"} <= set(config["rsync_exclude"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_what_the_user_fills_in_is_marked_and_documented(path):
    """Every account-specific value is a REPLACE-... placeholder (no made-up IDs that would look
    real), and docs/cluster.md names each one."""
    text = path.read_text()
    placeholders = set(re.findall(r"REPLACE-[a-z0-9.-]*[a-z0-9]", text))
    assert placeholders
    assert not re.search(r"\b(subnet|sg|ami)-[0-9a-f]{8,17}\b", text), "a real-looking resource ID"
    doc = (Path(__file__).parent.parent / "docs" / "cluster.md").read_text()
    assert not [p for p in placeholders if p not in doc]


def test_a_spot_head_or_an_open_dashboard_is_caught(tmp_path):
    """The property checks above fail on configs that break them."""
    config = copy.deepcopy(load(CONFIGS[0]))
    config["available_node_types"][config["head_node_type"]]["node_config"]["InstanceMarketOptions"] = {"MarketType": "spot"}
    (tmp_path / "spot_head.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(AssertionError, match="on-demand"):
        test_spot_workers_over_several_types_and_zones_on_demand_head(tmp_path / "spot_head.yaml")

    config = copy.deepcopy(load(CONFIGS[0]))
    config["head_start_ray_commands"] = [c.replace("127.0.0.1", "0.0.0.0") for c in config["head_start_ray_commands"]]
    (tmp_path / "open.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(AssertionError):
        test_token_auth_dashboard_on_loopback_and_the_locked_environment(tmp_path / "open.yaml")
