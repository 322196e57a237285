"""Is the Ray cluster (or the MLflow server) there? One TCP connection, a few seconds at most, before a
command hands the address to Ray or MLflow: Ray itself waits a minute or more on an address that does
not answer, prints its own warnings (with the node's IP in place of 127.0.0.1), and ends in a
traceback; MLflow's client retries with backoff for minutes. Two kinds of Ray address, as Ray's own
CLI has them: the GCS (`HOST:6379`, what `ray start --address` and `ray.init` take) and the dashboard
(`http://HOST:8265`, what `ray job submit --address` takes)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


class Unreachable(RuntimeError):
    """A service the command needs does not accept connections: the message names the address and
    what to do."""


def _connect(host: str, port: int, timeout_s: float) -> str | None:
    """None when host:port accepts a TCP connection, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def gcs(address: str, timeout_s: float = 3.0) -> None:
    """Raise Unreachable unless the GCS at `address` (HOST:PORT or ray://HOST:PORT) accepts
    connections. `auto` and `local` (Ray finds or starts a cluster itself) are not checked."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise Unreachable(f"Ray address {address!r} is not HOST:PORT (the head's GCS, e.g. 10.0.0.5:6379)")
    why = _connect(host, int(port), timeout_s)
    if why:
        raise Unreachable(f"no Ray cluster answers at {address} ({why}): start it (`ray start --head` there, or `dfdc local "
                          f"up`) or give the head's GCS address (HEAD_IP:6379) in --ray-address or RAY_ADDRESS")


def _host_port(url: str) -> tuple[str | None, int | None]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None, None


def _url(url: str, what: str, example: str, service: str, fix: str, timeout_s: float) -> None:
    host, port = _host_port(url)
    if not host or not port:
        raise Unreachable(f"{what} {url!r} is not a URL like {example}")
    why = _connect(host, port, timeout_s)
    if why:
        raise Unreachable(f"no {service} answers at {url} ({why}): {fix}")


def dashboard(url: str, timeout_s: float = 3.0) -> None:
    """Raise Unreachable unless the Ray dashboard at `url` (http://HOST:PORT) accepts connections."""
    _url(url, "Ray dashboard address", "http://127.0.0.1:8265", "Ray dashboard",
         "start the cluster, or open its tunnel (`ray dashboard CLUSTER.yaml`), or give the dashboard's URL "
         "(http://HOST:8265) in --dashboard, RAY_API_SERVER_ADDRESS or RAY_ADDRESS", timeout_s)


def mlflow(uri: str, timeout_s: float = 3.0) -> None:
    """Raise Unreachable unless the MLflow tracking server at `uri` accepts connections. Only
    http(s):// URIs are servers; a sqlite: or file store, or databricks, is not checked here."""
    if uri.startswith(("http://", "https://")):
        _url(uri, "MLflow tracking URI", "http://127.0.0.1:5000", "MLflow server",
             "start it (`dfdc mlflow serve`, or the infra stack's server), open its tunnel, or give its URL in tracking.uri "
             "or MLFLOW_TRACKING_URI", timeout_s)
