"""`dfdc train`, `dfdc sweep`, `dfdc ledger check`: training runs, sweeps of them, and the proof of their epochs."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import (ConfigOpt, RayAddressOpt, SetOpt, app, console, fail, home, ledger_app)
from dfdc.config import ConfigError, load_config


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    ray_address: RayAddressOpt = None,
):
    """Train a detector on an ingested dataset: Ray Train workers, DeepSpeed, MLflow, checkpoints on S3.

    The same as `python -m train`; `dfdc submit -- train ...` runs `python -m cli train ...` as a Ray job on a cluster.

    Example: dfdc train --config configs/demo.yaml --set data.dataset=s3://dfdc/faces/demo-synth
    """
    from train.__main__ import main as train_main  # noqa: PLC0415

    args = (["--config", str(config)] if config else []) + [a for s in (set_ or []) for a in ("--set", s)]
    if ray_address:
        args += ["--set", f"ray.address={ray_address}"]
    raise typer.Exit(train_main(args))


@app.command()
def sweep(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    ray_address: RayAddressOpt = None,
):
    """Search hyperparameters with Ray Tune: every trial a whole distributed training of the config's
    recipe with values drawn from sweep.space, ASHA stopping bad trials early, MLflow runs nested under
    one parent, the best model registered (sweep.register_as). Run it again with --set sweep.name=NAME
    to continue a stopped sweep.

    Example: dfdc sweep --config configs/sweep_demo.yaml
    """
    from cluster.sweep import sweep as run, table  # noqa: PLC0415

    sets = (set_ or []) + ([f"ray.address={ray_address}"] if ray_address else [])
    try:
        cfg = load_config(config, sets)
        summary = run(config, sets, home(), log=console.print)
    except ConfigError as e:
        raise fail(str(e), 2) from e
    console.print(table(summary, cfg.sweep.metric))
    best = summary["best"]
    if not best:
        raise fail(f"sweep {summary['sweep']}: no trial finished")
    console.print(f"best trial {best['trial']}: {cfg.sweep.metric} {best['metric']:.4f}, run {best['run_name']}", highlight=False)
    console.print(summary["registered"] or best["model"], highlight=False, soft_wrap=True)


@ledger_app.command("check")
def ledger_check(run_dir: Annotated[str, typer.Argument(metavar="RUN_DIR", help="The run's folder (local or s3://): <ray.storage_path>/<ray.run_name>.")],
                 allow_skipped: Annotated[bool, typer.Option("--allow-skipped", metavar="", help="Pass epochs whose unreadable samples were skipped (named in the ledger).")] = False):
    """Per epoch: train samples seen once, never, more than once, across every attempt of the run,
    each batch compared with the epoch's order recomputed from the run's seed and settings.

    Passes (exit 0) when every epoch up to the run's last checkpoint is in the ledger and saw each train sample exactly once, in its order, apart from the documented remainder of less than one optimizer step at its end; samples skipped as unreadable fail it unless --allow-skipped.

    Example: dfdc ledger check s3://dfdc/runs/demo-20261122-...
    """
    from dfdc import storage  # noqa: PLC0415

    if not storage.exists(run_dir):
        raise fail(f"{run_dir} does not exist: give the run's folder, <ray.storage_path>/<ray.run_name>", 2)
    from rich.table import Table  # noqa: PLC0415

    from train.checkpoint import latest_state  # noqa: PLC0415
    from train.data import ledger  # noqa: PLC0415

    attempts = ledger.read_attempts(run_dir)
    if not attempts:
        raise fail(f"{run_dir} has no ledger (ledger/attempt-*.json): was it trained with data.ledger=true?")
    info = attempts[max(attempts)]
    dataset, fakes = info["dataset"], info.get("fakes", True)
    sliced = info.get("samples_per_epoch") is not None  # an epoch is a slice of a pass: its samples are its order's
    try:
        keys = ledger.train_keys(dataset, fakes)
        order_of = ledger.order_keys(info) if "seed" in info else None
    except ValueError as e:
        raise fail(str(e)) from e
    state = latest_state(run_dir)
    through = (state[0].epoch, state[0].position) if state else None
    per_epoch = f", epochs of ~{info['samples_per_epoch']} (data.samples_per_epoch)" if sliced else ""
    table = Table(title=f"ledger of {run_dir} ({len(attempts)} attempt(s); {len(keys)} train samples in {dataset}{per_epoch})")
    for col in ("epoch", "attempts", "once", "never", "more than once", "unreadable", "out of order", "left at the end", "verdict"):
        table.add_column(col, justify="left" if col in ("attempts", "verdict") else "right")
    results = ledger.check(run_dir, None if sliced else keys, order_of, allow_skipped, through)
    for r in results:
        why = ([f"gaps {r.gaps[:3]}"] if r.gaps else []) + ([f"{r.unknown} keys not among the epoch's train samples"] if r.unknown else []) \
            + (["not in the ledger"] if r.missing else []) + ([f"{r.misplaced} batches not in the epoch's order"] if r.misplaced else []) \
            + ([f"{r.skipped} samples skipped (--allow-skipped)"] if r.skipped and not allow_skipped else [])
        verdict = "exactly once" if r.ok else "FAILED" + (": " + "; ".join(why) if why else "")
        table.add_row(str(r.epoch), ",".join(map(str, r.attempts)), str(r.once), str(r.never), str(r.more_than_once),
                      str(r.skipped), str(r.misplaced), f"{r.samples - r.end} (< {r.step})", verdict)
    console.print(table)
    if order_of is None:
        console.print("the ledger's attempts do not record the run's seed: batches not compared with the epoch's order")
    if not results or not all(r.ok for r in results):
        raise typer.Exit(1)
