"""A tracking server with basic auth (what the infra stack runs): the project logs in with the login
it reads from Secrets Manager itself (`tracking.auth_secret`), and the password goes nowhere else.
moto's server stands in for Secrets Manager; MLflow's own basic-auth app is the server."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, s3_server, moto_server):
    """(tracking URI, secret id, password): MLflow with basic auth whose admin login is the secret's. The
    session's AWS keys (the local S3 server's) are what moto's Secrets Manager is called with."""
    import boto3

    from cluster.local.s3_server import free_port
    from cluster.mlflow_server import wait_healthy

    tmp_path = tmp_path_factory.mktemp("mlflow-auth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        password = secrets.token_urlsafe(24)
        secret_id = f"dfdc/mlflow-login-{secrets.token_hex(4)}"
        boto3.client("secretsmanager").create_secret(Name=secret_id, SecretString=json.dumps({"username": "dfdc", "password": password}))
        ini = tmp_path / "auth.ini"
        ini.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{tmp_path}/auth.db\n"
                       f"admin_username = dfdc\nadmin_password = {password}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        port = free_port()
        log = open(tmp_path / "server.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
                                 "--artifacts-destination", str(tmp_path / "artifacts")],
                                env={**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield url, secret_id, password, tmp_path / "artifacts"
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()


@pytest.fixture
def logged_out(auth_server, monkeypatch):
    """Each test starts without a login in the environment and ends with the environment as it was."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return auth_server


def test_the_project_logs_in_with_the_secret_and_keeps_it_to_itself(logged_out):
    import mlflow
    from mlflow.exceptions import MlflowException

    from dfdc.config import load_config
    from train import tracking

    url, secret_id, password, artifacts = logged_out
    anonymous = load_config(None, [f"tracking.uri={url}", "tracking.experiment=auth-test"])
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        tracking.experiment_id(anonymous)

    cfg = load_config(None, [f"tracking.uri={url}", "tracking.experiment=auth-test", f"tracking.auth_secret={secret_id}"])
    with tracking.open_run(cfg, name="logged-in") as run:
        mlflow.log_params(tracking.flat(tracking.loggable(cfg)))
        mlflow.log_dict(tracking.loggable(cfg), "config.json")
    stored = mlflow.MlflowClient(url).get_run(run.info.run_id)
    assert stored.data.params["tracking.auth_secret"] == secret_id  # the secret's name is logged ...
    text = json.dumps({"params": stored.data.params, "tags": stored.data.tags})
    text += artifacts.joinpath(*_artifact_path(stored)).read_text()
    assert password not in text  # ... its value is not


def _artifact_path(run) -> list[str]:
    """Where the proxied config.json landed under --artifacts-destination."""
    return [run.info.experiment_id, run.info.run_id, "artifacts", "config.json"]


def test_a_missing_secret_is_a_clear_error(logged_out):
    from dfdc.config import load_config
    from dfdc.storage import StorageError
    from train import tracking

    url = logged_out[0]
    cfg = load_config(None, [f"tracking.uri={url}", "tracking.auth_secret=dfdc/no-such-login"])
    with pytest.raises(StorageError, match="secretsmanager:dfdc/no-such-login: cannot read the MLflow login"):
        tracking.login(cfg)


def test_a_node_with_no_region_in_its_settings_reads_the_login_in_its_instances_region(s3_server, moto_server, tmp_path,
                                                                                      monkeypatch):
    """A job on an EC2 node whose environment and ~/.aws/config name no region (the submitter kept
    it in a laptop's profile): the region comes from the instance identity document (a stand-in
    metadata service says eu-west-1, where the secret is: moto's Secrets Manager is regional, as
    AWS's is), not NoRegionError. Off EC2 with no region, the error says what to set. The session's
    AWS keys (the local S3 server's) are what moto is called with."""
    import boto3

    from dfdc.config import load_config
    from dfdc.storage import StorageError
    from tests.imds_standin import StandIn
    from train import tracking

    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server)
    secret_id = f"dfdc/mlflow-login-{secrets.token_hex(4)}"
    boto3.client("secretsmanager", region_name="eu-west-1").create_secret(
        Name=secret_id, SecretString=json.dumps({"username": "dfdc", "password": "pw-in-eu-west-1"}))
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    (tmp_path / "config").write_text("[default]\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    cfg = load_config(None, [f"tracking.auth_secret={secret_id}"])

    standin = StandIn("g5.xlarge", "spot", region="eu-west-1")
    try:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", standin.endpoint)
        tracking.login(cfg)
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "pw-in-eu-west-1"
    finally:
        standin.stop()
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")  # nothing answers: not on EC2
    with pytest.raises(StorageError, match="no AWS region: set AWS_REGION"):
        tracking.login(cfg)
