"""`dfdc submit`: a dfdc command as a Ray job, what `ray job submit` would send, built in one place.

The job carries the project's code (`working_dir`, without the venv and local state), where the
data is (endpoint, region: storage.worker_env) and where MLflow is, never credentials: the cluster's
nodes resolve their own (instance profile). The job id names the command and, for training, the
run, so `ray job list` and MLflow tell the same story.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dfdc import storage

# Never uploaded: built or local state (the venv alone is gigabytes; Ray refuses packages over 500 MiB).
EXCLUDES = [".venv/", ".dfdc/", ".git/", "**/__pycache__/", ".pytest_cache/", "mlruns/", "*.egg-info/"]


class SubmitError(ValueError):
    """The job cannot be built as asked (the message says what to change)."""


@dataclass
class JobSpec:
    submission_id: str
    entrypoint: str
    runtime_env: dict

    def ray_command(self, address: str) -> str:
        """The same job as a `ray job submit` command line."""
        return shlex.join(["ray", "job", "submit", "--address", address, "--submission-id", self.submission_id,
                           "--runtime-env-json", json.dumps(self.runtime_env, separators=(",", ":")),
                           "--", *shlex.split(self.entrypoint)])


def _checked(command: list[str], working_dir: str = "."):
    """`dfdc COMMAND ARGS` parsed here by that command's own parser, as the job will parse it, and
    its config loaded when it takes one (`-c X`, `--config=X`, `--set k=v`, `--set=k=v` alike): a
    command that does not exist, an option it does not take or a bad config fails before anything
    is uploaded. Returns the config (None for a command without one)."""
    import typer  # noqa: PLC0415

    from cli.app import app  # noqa: PLC0415
    from dfdc.config import load_config  # noqa: PLC0415

    group, path, args = typer.main.get_command(app), [], list(command)
    while hasattr(group, "commands"):  # a group (`ledger check`, `spot watch`): down to the command itself
        if not args or args[0] not in group.commands:
            known = ", ".join(sorted(group.commands))
            raise SubmitError(f"dfdc {' '.join(path + args[:1])}: no such command (dfdc {' '.join(path)}{' ' if path else ''}"
                              f"takes {known})")
        path.append(args[0])
        group = group.commands[args.pop(0)]
    try:
        params = group.make_context(" ".join(path), list(args), resilient_parsing=False).params
    except Exception as e:  # click's (typer's own copy of it) usage errors: an option the command lacks, a missing value
        if type(e).__name__ == "Exit":  # --help: fine, the job prints it
            return None
        raise SubmitError(f"dfdc {shlex.join(command)}: {e}") from e
    if "set_" not in params:
        return None
    config = params.get("config")
    if config is not None and not config.is_absolute():  # the job runs in the uploaded working_dir
        config = Path(working_dir) / config
    return load_config(config, list(params["set_"] or []))


def build(command: list[str], working_dir: str = ".", mlflow_uri: str | None = None, python: str = "python",
          env: dict[str, str] | None = None) -> JobSpec:
    """The job for `dfdc <command...>`. A training run without `ray.run_name` gets a new name here,
    so that the job id and the run share it."""
    if not command:
        raise SubmitError("say which dfdc command to run after --, e.g. dfdc submit -- train --config configs/dfdc_b7.yaml")
    if command[0] in ("submit", "local"):
        raise SubmitError(f"dfdc {command[0]} runs on your machine, not as a job")
    args = list(command)
    name = command[0]
    cfg = _checked(args, working_dir)
    if name == "train":
        run = cfg.ray.run_name
        if not run:
            from train.run import new_run_name  # noqa: PLC0415

            run = new_run_name(cfg)
            args += ["--set", f"ray.run_name={run}"]
        submission_id = f"dfdc-train-{run}"
    else:
        submission_id = f"dfdc-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    env_vars = storage.worker_env() | {"PYTHONUNBUFFERED": "1"} | (env or {})
    if mlflow_uri:
        if urlsplit(mlflow_uri).password or urlsplit(mlflow_uri).username:
            raise SubmitError("the MLflow URI holds a user name or password, which the job spec would show to anyone "
                              "who can list jobs: give the URI without them, and MLFLOW_TRACKING_USERNAME and "
                              "MLFLOW_TRACKING_PASSWORD to the cluster's nodes")
        env_vars["MLFLOW_TRACKING_URI"] = mlflow_uri
    leaked = sorted(k for k in env_vars if k in storage.SECRET_SETTINGS)
    if leaked:
        raise SubmitError(f"{', '.join(leaked)} would travel in the job spec: the cluster's nodes resolve their own "
                          "credentials (instance profile)")
    return JobSpec(submission_id, shlex.join([python, "-m", "cli", *args]),
                   {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env_vars})
