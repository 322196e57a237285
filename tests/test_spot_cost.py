"""The instance metadata client, the spot notice and the cost meter, without Ray: against the
stand-in metadata service on 127.0.0.1 and with a clock the test moves."""

from __future__ import annotations

import time

import pytest
import yaml

from cluster import spot
from cluster.local.s3_server import free_port
from dfdc import imds
from dfdc.config import ConfigError, load_config
from tests.imds_standin import StandIn
from train import cost


@pytest.fixture
def standin():
    s = StandIn(instance_type="g5.12xlarge", life_cycle="spot")
    yield s
    s.stop()


def test_imdsv2_token_then_gets_404_means_no_notice_and_a_refused_token_is_renewed(standin, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", standin.endpoint)
    md = imds.Metadata()  # the endpoint from botocore's setting
    assert md.get(imds.INSTANCE_TYPE) == "g5.12xlarge"
    assert md.get(imds.SPOT_ACTION) is None
    standin.forget_tokens()  # the service restarted: the cached token is refused (401), a new one is asked for
    assert md.get(imds.LIFE_CYCLE) == "spot"
    standin.give_notice(seconds=120, action="stop")
    notice = spot.parse_notice(md.get(imds.SPOT_ACTION))
    assert notice.action == "stop" and abs(notice.at - (time.time() + 120)) < 2


def test_no_metadata_service_is_told_quickly():
    md = imds.Metadata(f"http://127.0.0.1:{free_port()}")  # nobody listens
    start = time.monotonic()
    with pytest.raises(imds.MetadataUnavailable, match="no instance metadata service at http://127.0.0.1"):
        md.get(imds.SPOT_ACTION)
    assert time.monotonic() - start < 5


def test_a_notice_that_is_not_json_is_named():
    with pytest.raises(ValueError, match="spot/instance-action answered 'soon'"):
        spot.parse_notice("soon")
    with pytest.raises(ValueError, match="not a notice"):
        spot.parse_notice('{"action": "terminate", "time": "in two minutes"}')


def test_the_watcher_gives_up_after_failed_polls_in_a_row_instead_of_looping():
    lines = []
    md = imds.Metadata(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(imds.MetadataUnavailable):
        spot.watch("127.0.0.1:1", node_id="ab" * 28, interval_s=0.01, max_errors=3, metadata=md, log=lines.append)
    assert sum("in a row failed" in line for line in lines) == 3, lines


def test_the_shipped_price_table_prices_every_instance_type_the_cluster_configs_launch():
    from tests.test_cluster_configs import CONFIGS

    prices = cost.load_prices(None)
    assert prices.date and prices.source
    for config in CONFIGS:
        types = {t["node_config"]["InstanceType"] for t in yaml.safe_load(config.read_text())["available_node_types"].values()}
        assert types <= set(prices.per_hour), f"{config}: no price for {types - set(prices.per_hour)}"


def test_a_bad_price_table_is_refused_naming_the_file_and_entry(tmp_path):
    bad = tmp_path / "prices.yaml"
    bad.write_text("date: '2026-11-29'\ninstances:\n  g5.xlarge: {spot: 0.4}\n")
    with pytest.raises(ValueError, match=rf"price table {bad}: g5.xlarge needs numbers for spot and on_demand"):
        cost.load_prices(str(bad))
    bad.write_text("instances: {}\n")
    with pytest.raises(ValueError, match="needs a date"):
        cost.load_prices(str(bad))


def test_the_meter_charges_whole_nodes_once_and_goes_on_from_a_checkpoint():
    prices = cost.Prices("2026-11-29", "test", {"g5.12xlarge": {"spot": 2.0, "on_demand": 5.0},
                                                "m6i.2xlarge": {"spot": 0.2, "on_demand": 0.4}})
    now = [1000.0]
    # 8 ranks on two 4-GPU spot nodes (each listed once per rank) and the driver on an on-demand head
    nodes = [cost.Node(f"n{r // 4}", "g5.12xlarge", "spot", "instance metadata") for r in range(8)]
    nodes.append(cost.Node("head", "m6i.2xlarge", "on_demand", "instance metadata"))
    saved = {"seconds": 60.0, "dollars": 1.0, "gpu_hours": 2.0, "node_hours": 3.0, "node_types": ["p5.48xlarge spot"]}
    meter = cost.Meter(nodes, gpus=8, prices=prices, saved=saved, clock=lambda: now[0])
    now[0] += 1800  # half an hour
    t = meter.totals()
    assert t["dollars"] == pytest.approx(1.0 + 0.5 * (2 * 2.0 + 0.4))
    assert t["gpu_hours"] == pytest.approx(2.0 + 0.5 * 8)
    assert t["node_hours"] == pytest.approx(3.0 + 0.5 * 3)
    assert meter.over(3.1) and not meter.over(3.3) and not meter.over(None)
    assert meter.summary().startswith(f"${t['dollars']:.4f} estimated")
    assert "g5.12xlarge spot, m6i.2xlarge on_demand, p5.48xlarge spot (prices of 2026-11-29" in meter.summary()  # with the earlier attempt's


def test_a_node_without_a_price_is_counted_but_charged_nothing_and_said(caplog):
    prices = cost.Prices("2026-11-29", "test", {})
    meter = cost.Meter([cost.Node("n0", "x9.huge", "spot", "config")], gpus=1, prices=prices, clock=lambda: 0.0)
    assert meter.dollars_per_hour == 0 and "no price for x9.huge (spot)" in meter.summary()
    assert "no price for x9.huge (spot)" in caplog.text


def test_with_a_budget_a_node_without_a_price_is_charged_the_dearest_rate_not_nothing(caplog):
    """A budget must not fail open: a node whose type is unknown or not in the table costs the
    table's dearest on-demand rate while the run has a budget (and $0, said, when it has none)."""
    prices = cost.Prices("2026-11-29", "test", {"g5.xlarge": {"spot": 0.4, "on_demand": 1.0},
                                                "p5.48xlarge": {"spot": 30.0, "on_demand": 55.04}}, region="us-east-1")
    now = [0.0]
    nodes = [cost.Node("n0", "unknown", "spot", "unknown"), cost.Node("n1", "g5.xlarge", "spot", "instance metadata", "us-east-1")]
    meter = cost.Meter(nodes, gpus=2, prices=prices, clock=lambda: now[0], budget=10.0)
    assert meter.dollars_per_hour == pytest.approx(55.04 + 0.4)
    now[0] = 0.2 * 3600
    assert meter.over(10.0)  # $11.09 after 12 minutes
    assert "no price for unknown (spot), charged $55.04/h each, the table's dearest on-demand rate" in meter.summary()
    assert "the table's dearest" in caplog.text
    assert cost.Meter(nodes, gpus=2, prices=prices, clock=lambda: 0.0).dollars_per_hour == pytest.approx(0.4)  # no budget
    with pytest.raises(ValueError, match="cannot hold"):
        cost.Meter(nodes, gpus=2, prices=cost.Prices("2026-11-29", "test", {}), budget=10.0)


def test_a_node_in_another_region_is_not_priced_at_the_tables_rates(monkeypatch):
    """The shipped table is us-east-1's; a node whose identity document says eu-west-1 has no price
    in it, rather than us-east-1's silently."""
    from tests.imds_standin import StandIn

    standin = StandIn("g5.xlarge", "spot", region="eu-west-1")
    try:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", standin.endpoint)
        node = cost.identify("n0", None, "spot")
    finally:
        standin.stop()
    prices = cost.load_prices(None)
    assert node.region == "eu-west-1" and prices.region == "us-east-1" and prices.per_hour["g5.xlarge"]["spot"] > 0
    assert prices.of(node) is None and prices.of(cost.Node("n1", "g5.xlarge", "spot", "instance metadata", "us-east-1")) > 0
    assert "no price for g5.xlarge (spot, eu-west-1)" in cost.Meter([node], gpus=1, prices=prices).summary()


def test_a_node_names_its_type_from_metadata_or_config(standin, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", standin.endpoint)
    assert cost.identify("n0", None, "spot") == cost.Node("n0", "g5.12xlarge", "spot", "instance metadata", "us-east-1")
    assert cost.identify("n0", "p5.48xlarge", "on_demand") == cost.Node("n0", "p5.48xlarge", "on_demand", "config")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert cost.identify("n0", None, "spot").instance_type == "unknown"


def test_budget_and_market_are_checked_at_load():
    assert load_config(None, ["budget.dollars=12.5"]).budget.dollars == 12.5
    with pytest.raises(ConfigError, match="budget.dollars must be > 0, got 0.0"):
        load_config(None, ["budget.dollars=0"])
    with pytest.raises(ConfigError, match="cost.market must be spot or on_demand"):
        load_config(None, ["cost.market=reserved"])
    with pytest.raises(ConfigError, match="budget.dollars needs ray.interrupt_check_steps above 0"):
        load_config(None, ["budget.dollars=5", "ray.interrupt_check_steps=0"])
    with pytest.raises(ConfigError, match="ray.interrupt_check_steps must be >= 0, got -1"):
        load_config(None, ["ray.interrupt_check_steps=-1"])


def test_the_watcher_finds_its_node_without_node_id_and_only_logs_a_rebalance_recommendation(ray_address, ray_dashboard,
                                                                                             tmp_path):
    """What the cluster configs run on each worker: `dfdc spot watch --ray-address` without --node-id.
    On the local cluster (one machine, so one alive node when only the head runs) it finds the head
    by this machine's address; a rebalance recommendation is logged, nothing is drained, and it goes
    on polling."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ray.util.state import list_nodes

    deadline = time.monotonic() + 60  # nodes another test stopped are declared dead within seconds
    while len(alive := [n.node_id for n in list_nodes(address=ray_dashboard) if n.state == "ALIVE"]) != 1:
        assert time.monotonic() < deadline, f"{len(alive)} alive Ray nodes on this machine: the lookup by address needs one"
        time.sleep(1)
    standin = StandIn("g5.xlarge", "spot")
    standin.values[imds.REBALANCE] = '{"noticeTime": "2026-12-03T12:00:00Z"}'
    log = tmp_path / "watch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dfdc"), "spot", "watch", "--address", ray_address,
                                 "--interval", "0.5"], env={**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": standin.endpoint},
                                stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while "rebalance recommendation" not in log.read_text() or len(standin.polls) < 4:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert proc.poll() is None  # still watching
    finally:
        proc.kill()
        proc.wait()
        standin.stop()
    text = log.read_text()
    assert f"(Ray node {alive[0]})" in text and text.count("rebalance recommendation") == 1, text
    assert "drain" not in text


def test_the_node_lookup_asks_again_and_ends_with_what_it_saw(monkeypatch):
    """At boot the head may not answer yet: the lookup tries again; when it never does, it ends with
    an error naming the cluster and the attempts, not a loop."""
    import ray

    calls, lines = [], []

    def init(**_):
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("could not connect to the GCS")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.1.5")
    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": "ab" * 28, "Alive": True, "NodeManagerAddress": "10.0.1.5"},
                                               {"NodeID": "cd" * 28, "Alive": True, "NodeManagerAddress": "10.0.1.6"}])
    assert spot.this_node("10.0.0.2:6379", attempts=5, wait_s=0, log=lines.append) == "ab" * 28
    assert len(calls) == 3 and len(lines) == 2 and "attempt 1 of 5" in lines[0]

    monkeypatch.setattr(ray, "init", lambda **_: (_ for _ in ()).throw(ConnectionError("could not connect to the GCS")))
    with pytest.raises(RuntimeError, match=r"10.0.0.2:6379 did not answer: ConnectionError.*after 3 attempts.*--node-id"):
        spot.this_node("10.0.0.2:6379", attempts=3, wait_s=0, log=lines.append)

