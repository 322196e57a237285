"""MLflow, from rank 0 only: params, step and epoch metrics, system metrics, artifacts."""

from __future__ import annotations

import os
from pathlib import Path

from dfdc.config import Config


def resolve(cfg: Config, home: Path) -> None:
    """Fill in where runs go, as absolute paths: Ray workers run in other working directories."""
    if not cfg.tracking.uri:
        cfg.tracking.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(home / 'mlflow.db').resolve()}"
    if not cfg.tracking.artifacts and cfg.tracking.uri.startswith("sqlite:"):
        cfg.tracking.artifacts = (home / "mlartifacts").resolve().as_uri()


def flat(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def experiment_id(cfg: Config) -> str:
    """The configured experiment's id; created, with its artifact location, if it is new."""
    import mlflow  # noqa: PLC0415

    mlflow.set_tracking_uri(cfg.tracking.uri)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    return exp.experiment_id if exp else mlflow.create_experiment(cfg.tracking.experiment, artifact_location=cfg.tracking.artifacts)


def start(cfg: Config, run_id: str | None) -> str:
    """Open the run (a new one, or the one a checkpoint names) and return its id."""
    import mlflow  # noqa: PLC0415

    mlflow.set_tracking_uri(cfg.tracking.uri)
    if run_id is None:
        run = mlflow.start_run(experiment_id=experiment_id(cfg), run_name=cfg.ray.run_name, log_system_metrics=cfg.tracking.system_metrics)
        mlflow.log_params(flat(cfg.to_dict()))
    else:
        run = mlflow.start_run(run_id=run_id, log_system_metrics=cfg.tracking.system_metrics)
    return run.info.run_id
