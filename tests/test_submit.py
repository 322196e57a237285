"""`dfdc submit`: the job spec (the run's name as job id, the project as working_dir, no secret in
it), and jobs run through the test Ray head's Jobs API: the `ray job submit` line it prints works as
written, `dfdc submit` follows a job to its end, and `--stop` stops one. `dfdc mlflow serve`'s
refusals (a test in test_train.py trains against the server itself)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.submit import SubmitError, build
from dfdc import storage
from dfdc.config import ConfigError

ROOT = Path(__file__).parent.parent


def test_the_job_spec_names_the_run_ships_the_project_and_holds_no_secret(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    spec = build(["train", "-c", "configs/demo.yaml", "--set", "data.dataset=s3://b/faces"], mlflow_uri="http://10.0.0.5:5000")
    run = re.search(r"ray\.run_name=(\S+)", spec.entrypoint).group(1)
    assert run.startswith("dfdc-demo-") and spec.submission_id == f"dfdc-train-{run}"
    assert shlex.split(spec.entrypoint)[:4] == ["python", "-m", "cli", "train"]
    env = spec.runtime_env
    assert env["working_dir"] == "." and {".venv/", ".dfdc/", ".git/"} <= set(env["excludes"])
    assert env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://10.0.0.5:5000"
    text = json.dumps(env) + spec.ray_command("http://127.0.0.1:8265")
    assert "AKIAEXAMPLEKEYID" not in text and "example-secret" not in text

    assert build(["train", "--set", "ray.run_name=mine"]).submission_id == "dfdc-train-mine"
    assert build(["ingest", "--source", "s3://b/raw", "--dest", "s3://b/faces"]).submission_id.startswith("dfdc-ingest-")
    with pytest.raises(SubmitError, match="password"):
        build(["synth", "--out", "x"], mlflow_uri="http://user:pw@10.0.0.5:5000")
    with pytest.raises(SubmitError, match="AWS_SECRET_ACCESS_KEY"):
        build(["synth", "--out", "x"], env={"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(SubmitError, match="which dfdc command"):
        build([])


def test_the_run_name_is_the_one_dfdc_train_will_use_however_it_is_given(tmp_path):
    """Resubmitting a config resumes its run: the name comes from the config as `dfdc train` resolves
    it (YAML, `--set k=v`, `--set=k=v`), and a fresh name is added only when none is there."""
    config = tmp_path / "named.yaml"
    config.write_text("ray:\n  run_name: from-yaml\n")
    for command, name in [(["train", "-c", str(config)], "from-yaml"),
                          (["train", f"--config={config}"], "from-yaml"),
                          (["train", "--set=ray.run_name=from-set"], "from-set"),
                          (["train", "-c", str(config), "--set", "ray.run_name=over"], "over")]:
        spec = build(command)
        assert spec.submission_id == f"dfdc-train-{name}", (command, spec.submission_id)
        assert shlex.split(spec.entrypoint)[3:] == command, spec.entrypoint  # nothing added that would override it
    fresh = build(["train", "--set=data.batch_size=4"])
    assert re.fullmatch(r"dfdc-train-dfdc-\S+", fresh.submission_id) and f"ray.run_name={fresh.submission_id[11:]}" in fresh.entrypoint


def test_a_bad_training_config_is_refused_before_anything_is_submitted():
    bad = _dfdc("submit", "--address", "http://127.0.0.1:1", "--print", "--", "train", "--set", "optim.no_such_key=1")
    assert bad.returncode == 2 and "optim.no_such_key" in bad.stderr, bad.stderr


@pytest.mark.parametrize("command, message", [
    (["bogus"], "dfdc bogus: no such command (dfdc takes evaluate, export"),
    (["ledger", "nope"], "dfdc ledger nope: no such command (dfdc ledger takes check)"),
    (["train", "--bogus"], "No such option: --bogus"),
    (["ingest", "--source", "s3://b/raw"], "Missing parameter: dest"),
    (["ingest", "--source", "a", "--dest", "b", "--set", "ingest.crop_size=0"], "ingest.crop_size must be >= 1"),
    (["synth", "--out", "x", "-c", "configs/no-such.yaml"], "configs/no-such.yaml does not exist"),
])
def test_any_command_and_its_config_are_checked_here_before_upload(command, message):
    """Before, only `train`'s config was checked: `dfdc submit -- bogus` was uploaded and failed on
    the cluster. Now the command's own parser and config loading run here first."""
    with pytest.raises((SubmitError, ConfigError), match=re.escape(message)):
        build(command)
    assert build(["ledger", "check", "s3://b/runs/x"]).submission_id.startswith("dfdc-ledger-")
    # a relative config is the uploaded project's: looked up in --working-dir
    assert build(["synth", "--out", "x", "-c", "demo.yaml"], working_dir="configs").entrypoint.endswith("demo.yaml")


def _dfdc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _synth(out: str, videos: int) -> list[str]:
    # A relative config path: it exists only where the project was uploaded (the job's working_dir).
    return ["synth", "--out", out, "--videos", str(videos), "-c", "configs/demo.yaml"]


def test_jobs_run_from_the_uploaded_project_and_stop(ray_dashboard, bucket):
    common = ["--dashboard", ray_dashboard, "--python", sys.executable]

    # dfdc submit follows the job to its end (waiting out a head whose job agent is not up yet).
    done = _dfdc("submit", *common, "--", *_synth(f"{bucket}/raw-dfdc", 1))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "SUCCEEDED" in done.stdout
    assert any(p.endswith("metadata.json") for p in storage.list_files(f"{bucket}/raw-dfdc"))

    # The printed `ray job submit` line, run as it is (ray from this venv; the head is up by now).
    printed = _dfdc("submit", *common, "--print", "--", *_synth(f"{bucket}/raw-ray", 1))
    assert printed.returncode == 0, printed.stderr
    line = printed.stdout.strip()
    assert line.startswith("ray job submit ")
    ray_cli = str(Path(sys.executable).parent / "ray")
    raw = subprocess.run([ray_cli, *shlex.split(line)[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert raw.returncode == 0, raw.stdout[-2000:] + raw.stderr[-2000:]
    assert any(p.endswith("metadata.json") for p in storage.list_files(f"{bucket}/raw-ray")), raw.stdout[-2000:]

    # --no-wait returns at once; --stop stops the job.
    started = _dfdc("submit", *common, "--no-wait", "--", *_synth(f"{bucket}/raw-stopped", 500))
    assert started.returncode == 0, started.stderr
    job = re.search(r"submitted job (\S+):", started.stdout).group(1)
    stopped = _dfdc("submit", "--address", ray_dashboard, "--stop", job)
    assert stopped.returncode == 0 and "STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr

    failed = _dfdc("submit", *common, "--", "ingest", "--source", f"{bucket}/nothing-here", "--dest", f"{bucket}/x")
    assert failed.returncode == 1 and "FAILED" in failed.stdout, failed.stdout[-2000:]


def test_mlflow_serve_refuses_every_interface_and_artifacts_off_s3():
    from cluster.mlflow_server import ServerError, command, environment

    with pytest.raises(ServerError, match="every interface"):
        command("0.0.0.0", 5000, "sqlite:///x.db", "s3://b/mlflow")
    for public in ("203.0.113.7", "8.8.8.8", "2001:4860:4860::8888"):  # no login: never on a public address
        with pytest.raises(ServerError, match="is a public address"):
            command(public, 5000, "sqlite:///x.db", "s3://b/mlflow")
    with pytest.raises(ServerError, match="give an IP address"):
        command("mlflow.example.com", 5000, "sqlite:///x.db", "s3://b/mlflow")
    for private in ("127.0.0.1", "::1", "10.0.1.5", "172.16.3.4", "192.168.1.2", "localhost"):
        assert command(private, 5000, "sqlite:///x.db", "s3://b/mlflow")
    named = command("10.0.1.5", 5000, "sqlite:///x.db", "s3://b/mlflow", allowed_hosts="ip-10-0-1-5.ec2.internal:5000")
    assert named[named.index("--allowed-hosts") + 1] == "ip-10-0-1-5.ec2.internal:5000"
    with pytest.raises(ServerError, match="s3://"):
        command("127.0.0.1", 5000, "sqlite:///x.db", "/tmp/artifacts")
    argv = command("10.0.1.5", 5000, "sqlite:///x.db", "s3://b/mlflow")
    assert argv[argv.index("--host") + 1] == "10.0.1.5" and argv[argv.index("--artifacts-destination") + 1] == "s3://b/mlflow"
    assert argv[argv.index("--workers") + 1] == "4"
    with pytest.raises(ServerError, match="--workers 0"):
        command("127.0.0.1", 5000, "sqlite:///x.db", "s3://b/mlflow", workers=0)
    refused = _dfdc("mlflow", "serve", "--host", "0.0.0.0", "--artifacts-destination", "s3://b/mlflow")
    assert refused.returncode == 2 and "every interface" in refused.stderr
    assert environment().get("MLFLOW_S3_ENDPOINT_URL") == environment().get("AWS_ENDPOINT_URL")
