"""Storage failures name the URI, the cause and the fix, against real endpoints: the rclone server
with no or wrong keys, a port where nothing listens, a host that does not resolve. And every `dfdc`
command ends on one of them in one line, not a traceback."""

import os
import re
import subprocess
import sys

import pytest
import s3fs

from cluster.local.s3_server import free_port
from dfdc import storage

NO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None, "AWS_PROFILE": None,
                  "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                  "AWS_EC2_METADATA_DISABLED": "true"}  # no instance metadata lookup on this machine


@pytest.fixture
def env(monkeypatch):
    """Set or drop AWS variables for one test; S3 clients made before keep their settings, so drop them."""

    def apply(changes: dict):
        for k, v in changes.items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()

    yield apply
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("case, changes, cause, fix", [
    ("no credentials", NO_CREDENTIALS, "no credentials", "AWS_PROFILE"),
    ("wrong keys", {"AWS_ACCESS_KEY_ID": "wrong-key-123", "AWS_SECRET_ACCESS_KEY": "wrong-secret-1"}, "credentials refused", "renew them"),
    ("nothing listens", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1"}, "connection refused", "nothing listens at http://127.0.0.1:"),
    ("no such host", {"AWS_ENDPOINT_URL": "http://no-such-host.invalid:9000", "AWS_MAX_ATTEMPTS": "1"}, "unreachable", "check the network"),
])
def test_storage_errors_name_the_uri_the_cause_and_the_fix(s3_server, bucket, env, case, changes, cause, fix):
    uri = f"{bucket}/object.bin"
    storage.write_bytes(uri, b"data")
    env({k: v.format(port=free_port()) if v else v for k, v in changes.items()})
    for op in (lambda: storage.read_bytes(uri), lambda: storage.write_bytes(uri, b"x"), lambda: storage.list_files(bucket)):
        with pytest.raises(storage.StorageError) as e:
            op()
        assert e.value.cause == cause and fix in e.value.fix and str(e.value).startswith(bucket), str(e.value)
        assert not isinstance(e.value, FileNotFoundError)  # no caller may take it for a missing object


def test_a_missing_object_is_not_found_and_still_a_file_not_found_error(s3_server, bucket):
    with pytest.raises(storage.NotFound) as e:
        storage.read_bytes(f"{bucket}/nothing-here")
    assert isinstance(e.value, FileNotFoundError) and e.value.cause == "not found"


def test_content_errors_are_not_storage_errors():
    assert storage.explain(ValueError("Seek before start of file"), "s3://b/x.zip") is None
    assert storage.explain(EOFError(), "s3://b/x.zip") is None


@pytest.mark.parametrize("argv, first", [
    (["score", "{clip}", "--checkpoint", "s3://dfdc/runs/demo/model_fp32.pt", "--no-progress"], r"s3://dfdc/runs/demo/model_fp32\.pt"),
    # Before: `dfdc train` of a new run ended in botocore's NoCredentialsError traceback from the run lock's first PUT
    (["train"], r"s3://dfdc/runs/dfdc-[0-9-]+-[0-9a-f]+/driver\.lock"),
])
def test_a_command_fails_on_storage_in_one_line(tmp_path, s3_server, argv, first):
    """What a user typed after the demo, in a shell without S3 settings: no traceback, the URI,
    the cause and the fix."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
        k: v for k, v in NO_CREDENTIALS.items() if v is not None}
    proc = subprocess.run([sys.executable, "-m", "cli", *(a.format(clip=clip) for a in argv)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode in (1, 2)
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert re.match(f"error: {first}: no credentials", proc.stderr) and "dfdc local up" in proc.stderr, proc.stderr
