"""No secret is written anywhere. The session's AWS secret key and session token (canaries: fresh
random values, conftest.py) and the Ray cluster's token are in the environment of this process, the
Ray head and the MLflow server, as a node's credentials would be. A short training job (through the
Jobs API), an evaluation and a scoring run here on the shared stack, after every other test of the
session (ingest, training, sweeps, spot, scoring ...); then every byte the session wrote is searched
for the canaries: S3 objects, MLflow stores and artifacts, the tests' folders, Ray's session folders,
and the jobs, tasks and actors Ray's state API knows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import CANARY_SESSION_TOKEN, RAY_TOKEN, TINY

pytestmark = pytest.mark.last
ROOT = Path(__file__).resolve().parent.parent


def found_in_files(roots: list[Path], canaries: dict[str, str]) -> list[str]:
    needles = {name: value.encode() for name, value in canaries.items()}
    hits = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:  # a socket, a file gone since the listing
                continue
            hits += [f"{name} in {path}" for name, needle in needles.items() if needle in data]
    return hits


def _evaluated_and_scored(mlflow_server: str, ray_dashboard: str) -> bool:
    """Whether the session has an evaluation tracked by the MLflow server (its run carries the model's
    URI) and scoring tasks on the cluster."""
    import mlflow
    from ray.util.state import list_tasks

    client = mlflow.MlflowClient(mlflow_server)
    evaluated = any(client.search_runs([e.experiment_id], filter_string="tags.model_uri LIKE 's3://%'", max_results=1)
                    for e in client.search_experiments())
    scored = list_tasks(address=ray_dashboard, filters=[("name", "=", "score_chunk")], limit=1, raise_on_missing_output=False)
    return evaluated and bool(scored)


def test_no_secret_reaches_anything_written(shards, ray_address, ray_dashboard, mlflow_server, s3_server, tmp_path,
                                            tmp_path_factory):
    from ray.util.state import list_actors, list_jobs, list_tasks

    from cluster import jobs
    from cluster.submit import build
    from data_pipeline.synth import synth
    from dfdc import storage
    from dfdc.config import load_config

    canaries = {"the AWS secret key": s3_server.secret, "the AWS session token": CANARY_SESSION_TOKEN,
                "the Ray token": RAY_TOKEN.read_text().strip()}
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == s3_server.secret and os.environ["AWS_SESSION_TOKEN"] == CANARY_SESSION_TOKEN
    assert all(len(v) >= 24 for v in canaries.values())

    # Training as users submit it: a job through the Jobs API, tracked by the MLflow server (artifacts on S3).
    run_name = f"canary-{uuid.uuid4().hex[:8]}"
    sets = [f"data.dataset={shards}", "model.name=test_efficientnet", "data.image_size=48", "data.batch_size=8",
            "data.num_workers=0", "optim.epochs=1", "ray.num_workers=1", "tracking.system_metrics=false",
            f"tracking.uri={mlflow_server}", "tracking.experiment=canary", "ray.storage_path=s3://test/canary-runs",
            f"ray.run_name={run_name}"]
    # As `dfdc submit` sends it: the project folder uploaded as the job's working_dir (Ray keeps the
    # package in its object store and unpacks it in the session folder, which is searched below).
    spec = build(["train", *[a for s in sets for a in ("--set", s)]], working_dir=str(ROOT), python=sys.executable)
    client = jobs.client(ray_dashboard)
    job = jobs.submit_job(client, entrypoint=spec.entrypoint, runtime_env=spec.runtime_env, submission_id=spec.submission_id)
    assert jobs.follow(client, job, poll_s=1, timeout_s=600) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    model = json.loads(storage.read_bytes(f"s3://test/canary-runs/{run_name}/result.json"))["model"]

    # Evaluation (tracked by the MLflow server) and scoring, as commands on the cluster: test_evaluate.py
    # ran both in a full session; run alone, this test runs them itself.
    if not _evaluated_and_scored(mlflow_server, ray_dashboard):
        videos = tmp_path / "videos"
        synth(str(videos), load_config(None, TINY + ["synth.videos=2", "synth.width=160", "synth.height=120"]).synth,
              log=lambda *_: None)
        common = ["--set", f"tracking.uri={mlflow_server}", "--set", "tracking.experiment=canary", "--ray-address", ray_address,
                  "--no-progress"]
        env = os.environ | {"DFDC_HOME": str(tmp_path / "home")}
        for args in (["evaluate", "--checkpoint", model, "--out", str(tmp_path / "eval")],
                     ["score", str(videos), "--checkpoint", model, "--out", str(tmp_path / "scores.jsonl"),
                      "--report", str(tmp_path / "report"), "--ray"]):
            proc = subprocess.run([sys.executable, "-m", "cli", *args, *common], env=env, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert not [name for name, value in canaries.items() if value in proc.stdout + proc.stderr], args
        assert _evaluated_and_scored(mlflow_server, ray_dashboard)

    # Everything written: S3 objects, the tests' folders (MLflow stores and artifacts, logs, reports),
    # $DFDC_HOME, Ray's session folders, and what Ray's state API holds about jobs, tasks and actors.
    sessions = [p for p in Path("/tmp/ray").glob("session_*") if not p.is_symlink()]  # Ray's default temp folder
    assert any((p / "logs" / f"job-driver-{job}.log").exists() for p in sessions), "not the cluster's session folder"
    roots = [s3_server.root, tmp_path_factory.getbasetemp(), *sessions]
    if (ROOT / ".dfdc").exists():  # the project's local state: the local stack's S3 data, its logs, tokens
        roots.append(ROOT / ".dfdc")
    if os.environ.get("DFDC_HOME"):
        roots.append(Path(os.environ["DFDC_HOME"]))
    hits = found_in_files(roots, canaries)
    jobs_ = list_jobs(address=ray_dashboard, detail=True)
    tasks = list_tasks(address=ray_dashboard, detail=True, limit=10_000, raise_on_missing_output=False)
    actors = list_actors(address=ray_dashboard, detail=True, limit=10_000, raise_on_missing_output=False)
    state = json.dumps([x.__dict__ for x in [*jobs_, *tasks, *actors]], default=str)
    hits += [f"{name} in Ray's job/task/actor state" for name, value in canaries.items() if value in state]
    assert "RayTrainWorker" in state and "run_unit" in state  # the state held the session's training and ingest
    assert any((p / "runtime_resources" / "working_dir_files").is_dir() for p in sessions)  # the upload was searched
    assert not hits, hits
    # Not even the names of AWS credentials travel in a runtime env: workers resolve their own.
    envs = [json.dumps(j.runtime_env or {}) for j in jobs_] + [json.dumps(t.runtime_env_info or {}) for t in tasks]
    assert not [e for e in envs if any(n in e for n in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"))]
    assert any("AWS_ENDPOINT_URL" in e for e in envs)  # where the data is does travel


def test_the_search_finds_a_planted_canary(tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "blob.bin").write_bytes(b"\x00\x01prefix-canary-value-123456789012-suffix\xff")
    assert found_in_files([tmp_path], {"x": "canary-value-123456789012"}) == [f"x in {tmp_path / 'deep' / 'er' / 'blob.bin'}"]
    assert found_in_files([tmp_path], {"x": "canary-value-999999999999"}) == []
