"""`dfdc local up|status|env|down`, through the real command."""

import os
import subprocess
import sys

from cluster.local.s3_server import free_port


def dfdc(home, *args, check=True):
    env = dict(os.environ, DFDC_HOME=str(home))
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, check=check)


def client(home):
    import s3fs

    lines = dfdc(home, "local", "env").stdout.split()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"], endpoint_url=env["AWS_ENDPOINT_URL"],
                             skip_instance_cache=True, use_listings_cache=False)


def test_up_keeps_data_across_restarts_and_down_stops_only_its_own(tmp_path):
    port = free_port()
    out = dfdc(tmp_path, "local", "up", "--port", str(port)).stdout
    assert f"http://127.0.0.1:{port}" in out and "AWS_ACCESS_KEY_ID" in out
    try:
        assert "running" in dfdc(tmp_path, "local", "status").stdout
        fs = client(tmp_path)
        assert fs.exists("dfdc")  # the default bucket
        fs.pipe("dfdc/kept.txt", b"still here")
        assert "already running" in dfdc(tmp_path, "local", "up").stdout

        assert "stopped" in dfdc(tmp_path, "local", "down").stdout
        status = dfdc(tmp_path, "local", "status", check=False)
        assert status.returncode == 3 and "not running" in status.stdout
        assert "nothing to stop" in dfdc(tmp_path, "local", "down").stdout

        dfdc(tmp_path, "local", "up")
        assert client(tmp_path).cat("dfdc/kept.txt") == b"still here"
    finally:
        dfdc(tmp_path, "local", "down")


def test_wrong_keys_are_refused(tmp_path):
    import pytest
    import s3fs

    dfdc(tmp_path, "local", "up", "--port", str(free_port()))
    try:
        good = client(tmp_path)
        bad = s3fs.S3FileSystem(key="wrong-key-123", secret="wrong-secret-123", endpoint_url=good.client_kwargs.get("endpoint_url") or good.endpoint_url,
                                skip_instance_cache=True)
        with pytest.raises(PermissionError):
            bad.ls("dfdc")
    finally:
        dfdc(tmp_path, "local", "down")


def test_port_taken_by_another_program_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = dfdc(tmp_path, "local", "up", "--port", str(port), check=False)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
