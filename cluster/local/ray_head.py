"""A Ray head on this machine, for the demo and the tests.

`ray start --head --block` runs in its own process group: stopping that group stops this head's
GCS, raylet, dashboard and workers, and never another Ray on the machine (`ray stop` would).

Token authentication is on: Ray's GCS and raylet listen on every interface of the machine, and its
Jobs API runs any command it is sent. Each head gets a fresh random token in a 0600 file; every
process that talks to the cluster (its nodes, drivers, CLI) finds it through `RAY_AUTH_MODE=token`
and `RAY_AUTH_TOKEN_PATH` (`RayHead.auth_env`: a path, never the token itself, so it may travel in
environments).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.local.s3_server import free_port, free_ports
from dfdc.config import SweepConfig

# A local head is the cluster's on-demand node: it hosts up to 16 sweep trials' own processes at
# once (each a Python process that only waits on its training's workers; cluster/sweep.py).
TRIAL_HOSTS = {SweepConfig.trial_host: 16}


@dataclass
class RayHead:
    pid: int
    port: int
    dashboard_port: int | None
    token_path: Path

    @property
    def auth_env(self) -> dict[str, str]:
        """What a process needs in its environment to talk to this head."""
        return auth_env(self.token_path)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str | None:
        return f"http://127.0.0.1:{self.dashboard_port}" if self.dashboard_port else None

    def stop(self, timeout: float = 10.0) -> None:
        _stop_group(self.pid, timeout)


def _stop_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group of `ray start --block`, then SIGKILL what is left after `timeout`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _agent_ports(http: int, grpc: int) -> list[str]:
    """The node's dashboard agent on free ports. Its HTTP port is 52365 by default, so a second Ray
    on this machine (the demo beside the tests' head) had its agent fail to bind, the raylet went
    down with it, and the Jobs API answered "No available agent"."""
    return [f"--dashboard-agent-listen-port={http}", f"--dashboard-agent-grpc-port={grpc}"]


def auth_env(token_path: Path) -> dict[str, str]:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def new_token(path: Path) -> Path:
    """A fresh random token at `path`, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that was already there
    return path


def start_head(num_cpus: int, dashboard: bool, log_path: Path, env: dict[str, str] | None = None, timeout: float = 120.0,
               token_path: Path | None = None) -> RayHead:
    """A head whose token is in `token_path` (by default a fresh one in `ray-auth-token` beside
    `log_path`). A process that imported ray before it set `auth_env` keeps Ray's earlier settings:
    set it first."""
    token = token_path or new_token(log_path.parent / "ray-auth-token")
    port, dash, *agent = free_ports(4)  # picked together: one at a time, two once came out the same
    dash = dash if dashboard else None
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}",
           f"--resources={json.dumps(TRIAL_HOSTS)}", "--disable-usage-stats", *_agent_ports(*agent)]
    cmd += [f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--include-dashboard=true"] if dashboard else ["--include-dashboard=false"]
    full_env = dict(os.environ, **(env or {}), **auth_env(token))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    head = RayHead(proc.pid, port, dash, token)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}; see {log_path}")
        if _ready(head):
            return head
        time.sleep(1)
    head.stop()
    raise RuntimeError(f"the Ray head did not come up within {timeout:.0f}s; see {log_path}")


def _ready(head: RayHead) -> bool:
    import urllib.request  # noqa: PLC0415

    if head.dashboard_url:
        request = urllib.request.Request(f"{head.dashboard_url}/api/version",
                                         headers={"Authorization": f"Bearer {head.token_path.read_text().strip()}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    import socket  # noqa: PLC0415

    try:
        with socket.create_connection(("127.0.0.1", head.port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class RayNode:
    """A worker node joined to a head on this machine (`ray start --address --block`, own process group)."""

    pid: int
    name: str
    node_id: str = ""

    def kill_raylet(self, missing_ok: bool = False) -> None:
        """What losing the machine looks like to Ray: its raylet dies without a word (SIGKILL).
        `missing_ok`: a raylet that has already exited is fine (a drained node's exits once idle)."""
        import psutil  # noqa: PLC0415

        try:
            raylets = [p for p in psutil.Process(self.pid).children(recursive=True) if p.name() == "raylet"]
        except psutil.NoSuchProcess:  # `ray start --block` ends when its raylet does
            raylets = []
        if not raylets and missing_ok:
            return
        if not raylets:
            raise RuntimeError(f"node {self.name} has no raylet to kill")
        for p in raylets:
            p.kill()

    def stop(self, timeout: float = 10.0) -> None:
        _stop_group(self.pid, timeout)


def start_worker_node(head_address: str, num_cpus: int, resources: dict[str, float], log_path: Path,
                      timeout: float = 120.0, env: dict[str, str] | None = None) -> RayNode:
    """Another Ray node on this machine, joined to the head: tests that lose nodes kill these. Returns
    once the head lists it as alive. `env` goes to the node's processes (its workers inherit it); the
    head's token comes from this process's `RAY_AUTH_TOKEN_PATH`. The node's id is `node_id`."""
    import ray  # noqa: PLC0415

    name = f"node-{free_port()}"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", f"--address={head_address}", f"--num-cpus={num_cpus}",
           f"--resources={json.dumps(resources)}", f"--node-name={name}", "--disable-usage-stats", *_agent_ports(*free_ports(2))]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=dict(os.environ, **(env or {})), stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    node = RayNode(proc.pid, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start (worker node) exited with {proc.returncode}; see {log_path}")
        alive = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n.get("NodeName") == name]
        if alive:
            node.node_id = alive[0]
            return node
        time.sleep(1)
    node.stop()
    raise RuntimeError(f"the Ray node {name} did not join within {timeout:.0f}s; see {log_path}")
