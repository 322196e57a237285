"""`dfdc sweep`: a hyperparameter search with Ray Tune in which every trial is a whole distributed
training (`train.run.run`, its own TorchTrainer: the pattern Ray recommends since `Tuner(trainer)`
went away). Each epoch's validation reaches Tune (`TuneReportCallback`), so ASHA can stop a bad
trial early. MLflow: one parent run per sweep, and each trial's training run is its child.
Tune keeps the sweep's state under `ray.storage_path/sweeps/<name>`: running it again with the same
`sweep.name` continues it (finished trials are not run again; running ones resume from their
checkpoints, since a trial's run name is fixed by its trial id)."""

from __future__ import annotations

import copy
import json
import math
import os
import secrets
import time
from pathlib import Path

from dfdc import ray_orphans, storage
from dfdc.config import Config, ConfigError, load_config, with_overrides
from train import tracking

SWEPT_BY_THE_SWEEP = ("ray.run_name", "tracking.parent_run_id", "ray.address", "ray.storage_path", "tracking.uri")


def new_name(cfg: Config) -> str:
    return f"{cfg.tracking.experiment}-sweep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def trial_overrides(params: dict) -> list[str]:
    """A trial's sampled values as `--set` items: JSON is YAML, so they parse as a user's would."""
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


def check_space(base: dict, space: dict) -> None:
    """Every key of the search space, with the values it can take (each choice; the bounds),
    through the same strict validation as `--set`: a key that does not exist or a value of the
    wrong type is refused before any trial starts."""
    for key, spec in space.items():
        if key.startswith("sweep.") or key in SWEPT_BY_THE_SWEEP:
            raise ConfigError(f"sweep.space.{key}: the sweep sets {key} itself; it cannot be searched")
        kind, args = next(iter(spec.items()))
        for value in args:
            try:
                with_overrides(copy.deepcopy(base), trial_overrides({key: value}))
            except ConfigError as e:
                raise ConfigError(f"sweep.space.{key} ({kind} {args}): {e}") from None


def domains(space: dict) -> dict:
    from ray import tune  # noqa: PLC0415

    make = {"choice": tune.choice, "uniform": lambda lo, hi: tune.uniform(lo, hi),
            "loguniform": lambda lo, hi: tune.loguniform(lo, hi), "randint": lambda lo, hi: tune.randint(lo, hi)}
    return {key: (make[kind](args) if kind == "choice" else make[kind](*args))
            for key, spec in space.items() for kind, args in spec.items()}


def trial_resources(cfg: Config) -> dict[str, float]:
    """What a trial's own process asks of Ray: no CPU (its training's workers hold the real
    resources, and on a 2-core machine a sliver of a CPU left the worker group unplaceable), one
    unit of the trial-host resource, which only on-demand nodes advertise."""
    return {"CPU": 0, cfg.sweep.trial_host: 1}


def check_placement(base: dict, space: dict) -> None:
    """Refuse, before any trial starts, a sweep whose trials can never be placed on the connected
    cluster: the trial's process with its worker group, at every value the space gives a key."""
    from cluster import placement  # noqa: PLC0415

    variants = [with_overrides(copy.deepcopy(base), [])]
    for key, spec in space.items():
        kind, values = next(iter(spec.items()))
        if key.startswith("ray."):
            values = [values[0], values[1] - 1] if kind == "randint" else values  # randint's high is never drawn
            variants += [with_overrides(copy.deepcopy(base), trial_overrides({key: v})) for v in values]
    for cfg in variants:
        trial = {k: v for k, v in trial_resources(cfg).items() if v}
        placement.check("a trial", [("the trial's process", trial, 1), placement.worker_group(cfg)])


def _trial(params: dict, base: dict, sweep_name: str, parent_run_id: str, home: str) -> None:
    """One trial: the base recipe with this trial's values, trained as a run of its own (named by
    the trial's id, so a restored trial resumes it) under the sweep's parent MLflow run."""
    import ray.tune  # noqa: PLC0415
    from ray.tune.integration.ray_train import TuneReportCallback  # noqa: PLC0415

    from train.run import run  # noqa: PLC0415

    cfg = with_overrides(copy.deepcopy(base), trial_overrides(params))
    cfg.ray.run_name = f"{sweep_name}-{ray.tune.get_context().get_trial_id()}"
    cfg.tracking.parent_run_id = parent_run_id
    if cfg.budget.dollars is not None:
        left, per_trial = budget_left(cfg, parent_run_id, cfg.ray.run_name)
        if left <= 0 or (per_trial is not None and per_trial > left):
            _skip_for_budget(cfg, left, per_trial)
            return
        # the trial's run stops itself where the sweep's total would pass the budget (its meter goes on
        # from its own saved spending when a restored trial resumes: left excludes it)
        cfg.budget.dollars = left
    # The worker group of a trial that ASHA stopped, or whose process died, is idle but kept by Ray
    # while the sweep's job lives; Ray Train's own cleaner removes it only where it reaches Ray's
    # state API (on a private local Ray it does not, and the next trial waited forever).
    ray_orphans.reclaim(print, live_jobs=True)
    # A retried trial may find the run lock of its own earlier attempt, whose node went with it: it
    # waits for that lock's lease to run out rather than fail again at once.
    run(cfg, Path(home), callbacks=[TuneReportCallback()], reclaim=False, lock_wait_s=cfg.ray.lock_lease_s)


def budget_left(cfg: Config, parent_run_id: str, own_run: str) -> tuple[float, float | None]:
    """(dollars left of budget.dollars after every other trial so far, running ones included, as
    their MLflow runs last logged it; the mean cost of the trials that finished, or None before one has)."""
    import mlflow  # noqa: PLC0415

    client = mlflow.MlflowClient(cfg.tracking.uri)
    children = [r for r in client.search_runs([tracking.experiment_id(cfg)], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
                if r.info.run_name != own_run]
    spent = sum(r.data.metrics.get("cost_dollars", 0.0) for r in children)
    done = [r.data.metrics["cost_dollars"] for r in children if r.info.status == "FINISHED" and "cost_dollars" in r.data.metrics]
    return cfg.budget.dollars - spent, (sum(done) / len(done) if done else None)


def _skip_for_budget(cfg: Config, left: float, per_trial: float | None) -> None:
    """A trial that would pass the sweep's budget: a child run that says so, and one result for Tune."""
    import mlflow  # noqa: PLC0415
    import ray.tune  # noqa: PLC0415

    why = (f"not started: ${max(left, 0):.4f} of budget.dollars left"
           + (f", a finished trial cost ${per_trial:.4f} on average" if per_trial is not None else ""))
    with tracking.open_run(cfg, name=cfg.ray.run_name, tags={"dfdc.stopped": "budget", "dfdc.trial_status": why}) as child:
        run_id = child.info.run_id
    mlflow.MlflowClient(cfg.tracking.uri).set_terminated(run_id, "KILLED")
    print(f"trial {cfg.ray.run_name}: {why}", flush=True)
    ray.tune.report({"budget_skipped": 1.0})


def _parent_run(cfg: Config, name: str) -> str:
    """The sweep's parent MLflow run: found by its tag when the sweep goes on, else started."""
    import mlflow  # noqa: PLC0415

    client = mlflow.MlflowClient(cfg.tracking.uri)
    found = client.search_runs([tracking.experiment_id(cfg)], filter_string=f"tags.`dfdc.sweep` = '{name}' and tags.`dfdc.kind` = 'sweep'")
    if found:
        return found[0].info.run_id
    with tracking.open_run(cfg, name=name, kind="sweep", tags={"dfdc.sweep": name}) as run:
        s = cfg.sweep
        mlflow.log_params({"sweep.trials": s.trials, "sweep.max_concurrent_trials": s.max_concurrent_trials,
                           "sweep.metric": s.metric, "sweep.mode": s.mode, "sweep.scheduler": s.scheduler,
                           "sweep.grace_period": s.grace_period, "sweep.reduction_factor": s.reduction_factor,
                           "sweep.seed": s.seed})
        mlflow.log_dict(s.space, "search_space.json")
        mlflow.log_dict(tracking.loggable(cfg), "base_config.json")
        return run.info.run_id


def sweep(path: str | Path | None, sets: list[str], home: Path, log=print) -> dict:
    """Run (or continue) the sweep the config describes; its summary (also the parent run's tags)."""
    from ray import tune  # noqa: PLC0415
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: PLC0415
    from ray.tune.search import BasicVariantGenerator  # noqa: PLC0415

    from dfdc.ray_tasks import connect  # noqa: PLC0415
    from train.run import check_model_input, storage_for_ray  # noqa: PLC0415

    cfg = load_config(path, sets)
    s = cfg.sweep
    if not s.space:
        raise ConfigError("sweep.space is empty: name at least one config key to search (docs/sweeps.md)")
    tracking.resolve(cfg, home)
    name = s.name or new_name(cfg)
    base = cfg.to_dict()
    base["sweep"]["name"] = name
    check_space(base, s.space)
    check_model_input(cfg)
    connect(cfg.ray.address, log_to_driver=True)
    check_placement(base, s.space)
    parent = _parent_run(cfg, name)
    ray_orphans.reclaim(log)  # what a killed sweep's trials held, before its trials start again
    root, fs = storage_for_ray(storage.join(cfg.ray.storage_path, "sweeps"))
    where = f"{root.rstrip('/')}/{name}"
    trainable = tune.with_resources(tune.with_parameters(_trial, base=base, sweep_name=name, parent_run_id=parent,
                                                         home=str(home.resolve())), trial_resources(cfg))
    if tune.Tuner.can_restore(where, storage_filesystem=fs):
        log(f"sweep {name}: continuing from {storage.join(cfg.ray.storage_path, 'sweeps', name)}")
        tuner = tune.Tuner.restore(where, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
    else:
        log(f"sweep {name} (new; to continue it after a stop: --set sweep.name={name})")
        # stop_last_trials=False: ASHA would otherwise stop a trial at its last epoch's report, before
        # the trial writes its model
        epochs = s.space.get("optim.epochs", {})
        max_t = max([cfg.optim.epochs, *[int(v) for v in next(iter(epochs.values()), [])]])  # the longest a trial can run
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=s.grace_period,
                                   reduction_factor=s.reduction_factor, stop_last_trials=False)
                     if s.scheduler == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            trainable, param_space=domains(s.space),
            tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, scheduler=scheduler, num_samples=s.trials,
                                        search_alg=BasicVariantGenerator(random_state=s.seed,
                                                                         max_concurrent=s.max_concurrent_trials)),
            # a trial whose process failed (its node went, an error) starts again; its run resumes
            # from its last checkpoint, since the run's name is the trial's id
            run_config=tune.RunConfig(name=name, storage_path=root, storage_filesystem=fs, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=s.trial_retries)),
        )
    # Tune copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the session tokens from the driver's
    # environment into every trial actor's runtime env (ray/tune/execution/class_cache.py), where
    # the job's metadata shows them: while the trials start, the driver holds none. Its own S3
    # client resolved its credentials above (can_restore); trials resolve theirs like any worker.
    hidden = {k: os.environ.pop(k) for k in storage.SECRET_SETTINGS if k in os.environ}
    # A training reports without validation metrics too (a checkpoint inside an epoch: the schedule,
    # a spot notice, the budget), and a trial skipped for the budget reports once with none: Tune
    # would stop the sweep at such a report; ASHA just passes over it.
    before = os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING")
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    try:
        results = tuner.fit()
    finally:
        os.environ.update(hidden)
        if before is None:
            os.environ.pop("TUNE_DISABLE_STRICT_METRIC_CHECKING")
        else:
            os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = before
    return finish(cfg, name, parent, results, log)


def finish(cfg: Config, name: str, parent: str, results, log) -> dict:
    """Tag each trial's MLflow run (finished, or stopped early by the scheduler), pick the best
    finished trial, register its model, and record the outcome on the parent run."""
    import mlflow  # noqa: PLC0415

    client = mlflow.MlflowClient(cfg.tracking.uri)
    s = cfg.sweep
    children = {r.info.run_name: r for r in client.search_runs(
        [tracking.experiment_id(cfg)], filter_string=f"tags.mlflow.parentRunId = '{parent}'")}
    trials = []
    for result in results:
        m = result.metrics or {}
        # Tune adds the id to every result; a trial that never reported has it only in its folder's
        # name, _trial_<id>_<index>_<values>_<time>
        trial_id = m.get("trial_id") or "_".join(Path(result.path or "").name.split("_")[2:4]) or "?"
        run_name = f"{name}-{trial_id}"
        epochs = int(m.get("epoch", 0))
        planned = int((result.config or {}).get("optim.epochs", cfg.optim.epochs))
        finished = result.error is None and epochs >= planned and not m.get("budget_stopped")
        if finished:
            status = "finished"
        elif result.error:
            status = "error"
        elif m.get("budget_skipped"):
            status = "not started: budget"
        elif m.get("budget_stopped"):
            status = f"stopped by budget in epoch {epochs + 1}"
        else:
            status = f"stopped by {s.scheduler} after epoch {epochs}"
        child = children.get(run_name)
        if child is not None:
            client.set_tag(child.info.run_id, "dfdc.trial_status", status)
            if not finished:
                client.set_tag(child.info.run_id, "dfdc.stopped", "error" if result.error else
                               "budget" if m.get("budget_skipped") or m.get("budget_stopped") else s.scheduler)
                if child.info.status == "RUNNING":  # its rank 0 was stopped with the trial, before it could end the run
                    client.set_terminated(child.info.run_id, "KILLED")
        trials.append({"trial": trial_id, "run_name": run_name, "params": result.config, "status": status, "epochs": epochs,
                       "metric": m.get(s.metric), "best_metric": _best_reported(result, s.metric, s.mode),
                       "val_video_auc": m.get("val_video_auc"),
                       "mlflow_run_id": child.info.run_id if child else None})
    done = [t for t in trials if t["status"] == "finished" and t["metric"] is not None and math.isfinite(t["metric"])]
    best = (min if s.mode == "min" else max)(done, key=lambda t: t["metric"]) if done else None
    summary = {"sweep": name, "parent_run_id": parent, "trials": trials, "best": best, "registered": None}
    if best:
        result = json.loads(storage.read_bytes(storage.join(cfg.ray.storage_path, best["run_name"], "result.json")))
        best["model"] = result["model"]
        if s.register_as:
            summary["registered"] = register(cfg, s.register_as, result["model"], best["mlflow_run_id"], name)
    with tracking.open_run(cfg, run_id=parent):
        mlflow.log_dict({"trials": trials}, "trials.json")
        if best:
            mlflow.log_dict(best["params"], "best_params.json")
            tracking.log_metrics({f"best_{s.metric}": best["metric"]})
            mlflow.set_tags({"dfdc.best_trial": best["trial"], "dfdc.best_run_name": best["run_name"],
                             "dfdc.best_model": best["model"]}
                            | ({"dfdc.registered_model": summary["registered"]} if summary["registered"] else {}))
    return summary


def _best_reported(result, metric: str, mode: str) -> float | None:
    """The best value of `metric` over all the trial's reports (its epochs). The best trial is
    chosen by the last value instead: the model that is registered is the last epoch's."""
    df = result.metrics_dataframe
    if df is None or metric not in df:
        return None
    values = df[metric].dropna()
    return None if values.empty else float(values.min() if mode == "min" else values.max())


def registered_copy(cfg: Config, model_name: str, run_id: str) -> str:
    """Where a registered model file is kept: `tracking.registered_models` (default: models/ beside
    `ray.storage_path`), then NAME/RUN_ID/model_fp32.pt."""
    root = cfg.tracking.registered_models or f"{cfg.ray.storage_path.rstrip('/').rsplit('/', 1)[0]}/models"
    return storage.join(root, model_name, run_id, "model_fp32.pt")


def register(cfg: Config, model_name: str, model_uri: str, run_id: str, sweep_name: str) -> str:
    """Register the model file (with its card, which holds the temperature) as a new version of
    `model_name`: its files are logged under the trial's run (`model/`), the version points there,
    and its tag `dfdc.model_uri` names the copy in storage that evaluation and scoring read. The copy
    (`registered_copy`) lies outside the runs' prefix, whose lifecycle rule expires a run's files
    (the trained model among them) after `CheckpointExpiryDays`. Returns `models:/NAME/VERSION`."""
    import tempfile  # noqa: PLC0415

    import mlflow  # noqa: PLC0415

    from train.model import file as model_file  # noqa: PLC0415

    client = mlflow.MlflowClient(cfg.tracking.uri)
    card = model_file.read_card(model_uri)
    kept = registered_copy(cfg, model_name, run_id)
    fs, path = storage.filesystem(kept)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # a local folder; nothing on S3
    for src, dst in ((model_uri, kept), (model_file.card_uri(model_uri), model_file.card_uri(kept))):
        fs.copy(storage.filesystem(src)[1], storage.filesystem(dst)[1])  # S3: a server-side copy
    with tempfile.TemporaryDirectory() as d:
        for uri in (model_uri, model_file.card_uri(model_uri)):
            Path(d, uri.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(uri))
        mlflow.set_tracking_uri(cfg.tracking.uri)
        client.log_artifacts(run_id, d, "model")
    try:
        client.create_registered_model(model_name, description="Deepfake detectors trained by dfdc-scale sweeps")
    except mlflow.exceptions.MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version(model_name, source=source, run_id=run_id, tags={
        "dfdc.model_uri": kept, "dfdc.trained_model_uri": model_uri, "dfdc.sweep": sweep_name, "temperature": str(card.get("temperature")),
        "model": card["model"]["name"], "image_size": str(card["image_size"])})
    return f"models:/{model_name}/{version.version}"


def table(summary: dict, metric: str):
    """The trials as a rich table: params, metric, AUC, epochs, status."""
    from rich.table import Table  # noqa: PLC0415

    keys = sorted({k for t in summary["trials"] for k in (t["params"] or {})})
    out = Table(title=f"sweep {summary['sweep']}")
    for col in ["trial", *keys, f"{metric} (last)", "(best)", "val_video_auc (last)", "epochs", "status"]:
        out.add_column(col)
    for t in sorted(summary["trials"], key=lambda t: t["trial"]):
        fmt = (lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        out.add_row(t["trial"], *[fmt((t["params"] or {}).get(k)) for k in keys], fmt(t["metric"]), fmt(t["best_metric"]),
                    fmt(t["val_video_auc"]), str(t["epochs"]), t["status"])
    return out
