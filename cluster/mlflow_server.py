"""An MLflow tracking server without authentication (`dfdc mlflow serve`), for a machine of your
own and the tests: runs in a database, artifacts proxied to S3 (`--artifacts-destination`), so
training workers upload through the server and need no S3 rights for artifacts. Bound to 127.0.0.1
or a private address, never to every interface. The AWS clusters use the infra stack's server,
which has basic auth (infra/README.md).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
import urllib.request



# Where a VPC's instances have addresses (RFC 1918; IPv6 unique local). Python's is_private also
# counts the documentation ranges and others no VPC uses.
PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


class ServerError(RuntimeError):
    pass


def check_host(host: str) -> None:
    """This server has no login: it may listen on a loopback or private address only, never on
    every interface nor on a public address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ServerError(f"--host {host!r}: give an IP address (127.0.0.1, or the head's private address), "
                              "so that it is certain the server listens on no public one") from None
        return
    if address.is_unspecified:
        raise ServerError(f"--host {host!r} would open MLflow on every interface: give 127.0.0.1 or the head's "
                          "private address (the cluster's security group lets its nodes in)")
    if not (address.is_loopback or any(address in n for n in PRIVATE if n.version == address.version)):
        raise ServerError(f"--host {host!r} is a public address, and this server has no login: give 127.0.0.1 or "
                          "the head's private address")


def command(host: str, port: int, backend_store_uri: str, artifacts_destination: str, workers: int = 4,
            allowed_hosts: str | None = None) -> list[str]:
    """`mlflow server` as this project runs it (the venv's MLflow). `workers`: its request-handling
    processes (MLflow's default 4; each imports MLflow, ~4 s of CPU at start here). `allowed_hosts`:
    MLflow's check of the Host header (its default takes localhost and private IPs, not names
    such as ip-10-0-1-5.ec2.internal), comma-separated."""
    check_host(host)
    if not artifacts_destination.startswith("s3://"):
        raise ServerError(f"--artifacts-destination {artifacts_destination!r}: give an s3:// prefix, so that artifacts "
                          "outlive the head")
    if workers < 1:
        raise ServerError(f"--workers {workers}: give 1 or more")
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers),
            "--backend-store-uri", backend_store_uri, "--artifacts-destination", artifacts_destination,
            *(["--allowed-hosts", allowed_hosts] if allowed_hosts else [])]


def environment() -> dict[str, str]:
    """MLflow's S3 client reads its endpoint from MLFLOW_S3_ENDPOINT_URL (set from AWS_ENDPOINT_URL)."""
    env = dict(os.environ)
    if env.get("AWS_ENDPOINT_URL") and not env.get("MLFLOW_S3_ENDPOINT_URL"):
        env["MLFLOW_S3_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL"]
    return env


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120.0) -> None:
    """Until `url`/health answers OK; ServerError if the process ends or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"mlflow server exited with {proc.returncode} before it answered at {url}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServerError(f"mlflow server did not answer at {url}/health within {timeout_s:.0f} s")
        time.sleep(1)
