"""Real parts for the tests: an rclone S3 server and a Ray cluster on this machine, once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from cluster.local.ray_head import auth_env, new_token
from cluster.local.s3_server import free_port, temporary_server

# Ray's token authentication is on in the tests, as on a cluster. Ray reads these settings when it is
# first imported, and test modules import it while they are collected: so they are set here, first.
RAY_TOKEN = new_token(Path(tempfile.mkdtemp(prefix="dfdc-test-ray-")) / "ray-auth-token")
os.environ.update(auth_env(RAY_TOKEN))
atexit.register(shutil.rmtree, RAY_TOKEN.parent, True)
# The tests' runs are seconds long: Ray Train's controller polls its workers every 0.5 s, not 2 s, so
# that a run's end (or a dead worker) is seen sooner. Ray Train passes it from the driver (or, for
# jobs, the Ray head started below) to the controller; a poll that outlasts it is waited on, not failed.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

# Small, fast settings shared by the tests that run the real pipeline.
TINY = ["ingest.frames_per_video=4", "ingest.crop_size=64", "ingest.videos_per_task=3", "ingest.val_fraction=0.3",
        "synth.seconds=1.0", "synth.fps=12"]


# A session token, as instance roles and SSO give: nothing may write it anywhere (the server ignores it).
CANARY_SESSION_TOKEN = f"canary-session-token-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def s3_server():
    """rclone's S3 server on a free port with a bucket "test"; the standard AWS variables point at it
    for the session, with a fresh secret key and a session token: canaries that
    tests/test_no_secret_written.py looks for in everything the session wrote."""
    saved = os.environ.get("AWS_SESSION_TOKEN")
    os.environ["AWS_SESSION_TOKEN"] = CANARY_SESSION_TOKEN
    try:
        with temporary_server("test") as server:
            yield server
    finally:
        if saved is None:
            os.environ.pop("AWS_SESSION_TOKEN", None)
        else:
            os.environ["AWS_SESSION_TOKEN"] = saved


def pytest_collection_modifyitems(items):
    """Tests marked `last` run after every other: they search what the whole session wrote."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


def pytest_configure(config):
    config.addinivalue_line("markers", "last: run after every other test (it inspects what the session wrote)")


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store whose schema is migrated: MLflow takes ~3 s to create one."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(autouse=True)
def _migrated_mlflow_store(request, mlflow_store_template):
    """Each test's `tmp_path/mlflow.db` (the store the tests and `$DFDC_HOME` point MLflow at) starts
    as a copy of the migrated empty store, not migrated again in every test."""
    if "tmp_path" in request.fixturenames:
        shutil.copyfile(mlflow_store_template, request.getfixturevalue("tmp_path") / "mlflow.db")


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh prefix in the test bucket."""
    return f"s3://test/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def ray_head(s3_server, tmp_path_factory):
    """A Ray head on this machine (2 CPUs), shared by the session; teardown stops this head only. Its
    processes hold the S3 server's keys in their environment, as a node's instance role would; jobs
    and tasks get only the endpoint. The dashboard serves the Jobs and state APIs."""
    import ray

    from cluster.local.ray_head import start_head

    head = start_head(num_cpus=2, dashboard=True, log_path=tmp_path_factory.mktemp("ray") / "head.log", token_path=RAY_TOKEN)
    deadline = time.monotonic() + 120
    while True:
        try:
            ray.init(address=head.address, log_to_driver=False)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    yield head
    ray.shutdown()
    head.stop()


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """`dfdc mlflow serve` on 127.0.0.1: runs in sqlite, artifacts proxied to s3://test/mlflow-artifacts.
    Its URL; stopped at the end of the session."""
    from cluster.mlflow_server import wait_healthy

    port, folder = free_port(), tmp_path_factory.mktemp("mlflow-server")
    log = open(folder / "server.log", "w")  # noqa: SIM115  (open for the server's lifetime)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "mlflow", "serve", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
                             "--artifacts-destination", "s3://test/mlflow-artifacts", "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def ray_address(ray_head) -> str:
    return ray_head.address


@pytest.fixture(scope="session")
def ray_dashboard(ray_head) -> str:
    """The test cluster's dashboard URL: the Jobs API and Ray's state API."""
    return ray_head.dashboard_url


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto server (everything in memory) on a free port: its process and URL, once it listens."""
    import socket

    port = free_port()
    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def moto_server():
    """moto's in-memory S3 server: the pipeline must work against it as well."""
    proc, url = start_moto()
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def shards(s3_server, ray_address):
    """A small ingested corpus: train shards of uneven sizes, few val shards (ranks get different shares)."""
    from data_pipeline import manifest as mf
    from data_pipeline.ingest import ingest
    from data_pipeline.synth import synth
    from dfdc.config import load_config

    root = "s3://test/train-corpus"
    cfg = load_config(None, TINY + ["synth.videos=24", "synth.width=160", "synth.height=120", "synth.identities=4",
                                    "detector.min_face_size=20", "ingest.videos_per_task=4", "ingest.val_fraction=0.25", "ingest.shard_bytes=35000",
                                    "ingest.difference_masks=true"])
    synth(f"{root}/raw", cfg.synth, log=lambda *_: None)
    ingest(f"{root}/raw", f"{root}/faces", cfg, progress=False, log=lambda *_: None)
    m = mf.load(f"{root}/faces")
    train = [s["samples"] for s in m["shards"] if s["split"] == "train"]
    assert len(train) >= 3 and len(set(train)) > 1, "uneven train shards"
    assert m["splits"]["val"]["shards"] >= 1
    return f"{root}/faces"


def copy_with_a_broken_shard(src: str, dst: str, split: str) -> dict:
    """A copy of the dataset at `src` in `dst` whose first `split` shard is garbage; that shard's
    manifest entry."""
    from data_pipeline import manifest as mf
    from dfdc import storage

    fs, _ = storage.filesystem(src)
    for rel in storage.list_files(src):
        fs.copy(storage.filesystem(storage.join(src, rel))[1], storage.filesystem(storage.join(dst, rel))[1])
    broken = next(s for s in mf.load(dst)["shards"] if s["split"] == split)
    storage.write_bytes(storage.join(dst, broken["url"]), b"not a tar file" * 100)
    return broken
