"""The spot interruption watcher: one per worker node (`dfdc spot watch`, started by the cluster
config right after `ray start`). It polls the instance metadata service every 5 s. On an
interruption notice it drains this node in Ray with reason PREEMPTION and the notice's deadline
(`ray drain-node`). From there Ray does the rest: no new tasks or actors go to the node, Ray Train's
own preemption watcher sees the drain and answers `ray.train.get_preemption_info()`, which the
training loop asks every few steps and answers with a checkpoint at once (train/loop.py); when the
node goes, Ray Train counts a preemption (FailureConfig.max_preemption_failures), not a failure,
and restarts from that checkpoint. Ray retries the ingest tasks that were running there
(dfdc/ray_tasks.py: `retries`); a rerun of the ingest finishes what is left after that.

A rebalance recommendation (an early, softer warning) is logged, not acted on: the node may run
for hours after one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dfdc import imds

INTERVAL_S = 5.0  # what AWS recommends for polling the notice
# The drain's deadline is this much before the notice's time. Ray counts a node that dies after its
# drain deadline as preempted, one that dies before it as lost (a failure, not a preemption), and
# Ray Train restarts the run once the deadline passes: both must come before AWS takes the machine.
LEAD_S = 10


@dataclass
class Notice:
    action: str  # terminate, stop or hibernate
    at: float  # when AWS acts (UNIX seconds)


def parse_notice(text: str) -> Notice:
    """spot/instance-action's body: {"action": "terminate", "time": "2017-09-18T08:22:00Z"}."""
    try:
        data = json.loads(text)
        when = datetime.strptime(data["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        return Notice(str(data["action"]), when.timestamp())
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"spot/instance-action answered {text[:200]!r}, not a notice "
                         f"({{\"action\": ..., \"time\": \"YYYY-MM-DDTHH:MM:SSZ\"}}): {e}") from e


def this_node(address: str, attempts: int = 30, wait_s: float = 10.0, log=print) -> str:
    """The id of the alive Ray node with this machine's IP address: on a cluster, one per machine.
    Asked again, `wait_s` apart, up to `attempts` times: at boot the head may not answer yet, or
    this node may not have registered; then a RuntimeError names what was last seen."""
    import ray  # noqa: PLC0415

    from dfdc import reach  # noqa: PLC0415

    reach.gcs(address)  # nothing answers there at all: say so now, not after 30 of Ray's minute-long waits
    why = ""
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            try:
                ip = ray.util.get_node_ip_address()
                ids = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == ip]
            finally:
                ray.shutdown()
            if len(ids) == 1:
                return ids[0]
            why = f"{len(ids)} alive Ray nodes have this machine's address {ip}"
        except (ConnectionError, RuntimeError, OSError) as e:  # ray.init's ways of saying the cluster is not there
            why = f"the Ray cluster at {address} did not answer: {type(e).__name__}: {e}"
        if attempt < attempts:
            log(f"finding this machine's Ray node, attempt {attempt} of {attempts}: {why}; again in {wait_s:g} s")
            time.sleep(wait_s)
    raise RuntimeError(f"{why} (after {attempts} attempts): pass --node-id")


def drain(address: str, node_id: str, notice: Notice, log) -> None:
    """`ray drain-node` with reason PREEMPTION and the seconds left until AWS acts; tried until the
    deadline, since a drain that does not reach the GCS leaves Ray Train blind to the notice."""
    ray = str(Path(sys.executable).parent / "ray")
    while True:
        left = max(0, int(notice.at - LEAD_S - time.time()))
        argv = [ray, "drain-node", f"--address={address}", f"--node-id={node_id}",
                "--reason=DRAIN_NODE_REASON_PREEMPTION", f"--deadline-remaining-seconds={left}",
                f"--reason-message=EC2 spot interruption notice: {notice.action} at "
                f"{datetime.fromtimestamp(notice.at, timezone.utc):%Y-%m-%dT%H:%M:%SZ}"]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode == 0:
            log(f"drained Ray node {node_id} (reason PREEMPTION, deadline in {left} s, {LEAD_S} s before AWS acts)")
            return
        if left <= 0:
            raise RuntimeError(f"could not drain Ray node {node_id} before the notice's deadline: {done.stderr.strip()[-500:]}")
        log(f"drain of Ray node {node_id} failed (retrying in 2 s): {done.stderr.strip()[-300:]}")
        time.sleep(2)


def watch(address: str, node_id: str | None = None, interval_s: float = INTERVAL_S, max_errors: int = 60,
          metadata: imds.Metadata | None = None, log=print) -> Notice:
    """Poll until a notice comes, drain the node and return the notice. Stops with an error after
    `max_errors` failed polls in a row (at least 5 minutes at 5 s): a node whose metadata service does not
    answer is not watched, and that must be seen, not retried forever."""
    node_id = node_id or this_node(address, log=log)
    md = metadata or imds.Metadata()
    log(f"watching {md.base} for spot interruption notices every {interval_s:g} s (Ray node {node_id})")
    errors, rebalance_seen = 0, False
    while True:
        try:
            text = md.get(imds.SPOT_ACTION)
            rebalance = None if rebalance_seen else md.get(imds.REBALANCE)
            errors = 0
        except imds.MetadataUnavailable as e:
            errors += 1
            log(f"poll {errors} of at most {max_errors} in a row failed: {e}")
            if errors >= max_errors:
                raise
            time.sleep(interval_s)
            continue
        if rebalance is not None:
            rebalance_seen = True
            log(f"rebalance recommendation (no action; the notice, if any, comes later): {rebalance}")
        if text is not None:
            try:
                notice = parse_notice(text)
            except ValueError as e:  # a notice all the same: act on AWS's documented two minutes
                log(f"{e}; draining with a deadline 120 s from now")
                notice = Notice("unknown", time.time() + 120)
            log(f"spot interruption notice: {notice.action} in {notice.at - time.time():.0f} s")
            drain(address, node_id, notice, log)
            return notice
        time.sleep(interval_s)
