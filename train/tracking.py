"""MLflow: every run is opened here (training on rank 0, the final model, calibration, evaluation),
in the configured store and experiment, optionally under a parent run (a sweep's trial)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from dfdc.config import Config

log = logging.getLogger(__name__)


def resolve(cfg: Config, home: Path) -> None:
    """Fill in where runs go, as absolute paths: Ray workers run in other working directories. A
    tracking server that does not answer is named here, in seconds, before any work starts."""
    from dfdc import reach  # noqa: PLC0415

    if not cfg.tracking.uri:
        cfg.tracking.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(home / 'mlflow.db').resolve()}"
    if not cfg.tracking.artifacts and cfg.tracking.uri.startswith("sqlite:"):
        cfg.tracking.artifacts = (home / "mlartifacts").resolve().as_uri()
    reach.mlflow(cfg.tracking.uri)
    login(cfg)


def login(cfg: Config) -> None:
    """This process's MLflow login, from the Secrets Manager secret `tracking.auth_secret`, read
    with the process's own AWS credentials (a node's instance role). It goes into this process's
    environment, where MLflow's client looks for it, and nowhere else: not the config, params, logs
    or a job's runtime env. A login already in the environment is kept."""
    secret_id = cfg.tracking.auth_secret
    if not secret_id or os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    from dfdc import aws  # noqa: PLC0415
    from dfdc.storage import StorageError  # noqa: PLC0415

    where = f"secretsmanager:{secret_id}"
    try:
        value = aws.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
    except (BotoCoreError, ClientError, aws.NoRegion) as e:
        raise StorageError(where, "cannot read the MLflow login", str(e),
                           "grant secretsmanager:GetSecretValue on it (the infra stack's node roles have it) "
                           "or set tracking.auth_secret to the stack's MlflowLoginSecret output") from e
    try:
        entry = json.loads(value)
        username, password = entry["username"], entry["password"]
    except (ValueError, KeyError, TypeError):
        # `from None`: a parse error's message may quote the secret.
        raise StorageError(where, "not an MLflow login", 'expected JSON with "username" and "password"',
                           "store it as the infra stack does") from None
    os.environ["MLFLOW_TRACKING_USERNAME"] = username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password


def flat(d: dict, prefix: str = "", depth: int = 2) -> dict[str, str]:
    """The config as MLflow params, `section.key` -> value. A mapping below that (model.timm_args,
    eval.splits) is one param holding its JSON: its keys, s3:// URIs say, are no valid param names."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and depth > 1:
            out.update(flat(v, f"{prefix}{k}.", depth - 1))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)
    return out


def experiment_id(cfg: Config) -> str:
    """The configured experiment's id; created, with its artifact location, if it is new."""
    import mlflow  # noqa: PLC0415

    login(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    return exp.experiment_id if exp else mlflow.create_experiment(cfg.tracking.experiment, artifact_location=cfg.tracking.artifacts)


@contextlib.contextmanager
def open_run(cfg: Config, *, run_id: str | None = None, name: str | None = None, kind: str = "training",
             tags: dict[str, str] | None = None, system_metrics: bool = False):
    """The run `run_id` again, or a new run named `name` of this `kind` (a tag), under
    `tracking.parent_run_id` when that is set. Yields MLflow's active run; ends it on exit."""
    import mlflow  # noqa: PLC0415

    login(cfg)
    mlflow.set_tracking_uri(cfg.tracking.uri)
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
    else:
        run = mlflow.start_run(experiment_id=experiment_id(cfg), run_name=name, parent_run_id=cfg.tracking.parent_run_id,
                               tags={"dfdc.kind": kind} | (tags or {}), log_system_metrics=system_metrics)
    try:
        yield run
    finally:
        mlflow.end_run()


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Into the open run; non-finite values (a metric undefined on one class) are left out. When the
    tracking server does not take them (after MLflow's own retries), training goes on: the failure
    is logged with what was lost."""
    import math  # noqa: PLC0415

    import mlflow  # noqa: PLC0415

    values = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    try:
        mlflow.log_metrics(values, step=step)
    except Exception as e:  # noqa: BLE001
        log.warning("MLflow did not take metrics %s at step %s: %s: %s", sorted(values), step, type(e).__name__, e)


def set_tags(tags: dict[str, str]) -> None:
    """Tags on the open run; like `log_metrics`, a tracking server that does not take them does not
    stop the training (a preemption's checkpoint must not fail for a tag)."""
    import mlflow  # noqa: PLC0415

    try:
        mlflow.set_tags(tags)
    except Exception as e:  # noqa: BLE001
        log.warning("MLflow did not take tags %s: %s: %s", sorted(tags), type(e).__name__, e)


def loggable(cfg: Config) -> dict:
    """The config as params, artifacts and checkpoints may hold it: the tracking URI without a password."""
    out = cfg.to_dict()
    out["tracking"]["uri"] = redact(out["tracking"]["uri"])
    return out


def redact(uri: str | None) -> str | None:
    """`uri` without a password (http://user:secret@host -> http://user:***@host): what params,
    result files and logs may show."""
    from urllib.parse import urlsplit, urlunsplit  # noqa: PLC0415

    if not uri or "@" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
