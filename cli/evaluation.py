"""`dfdc evaluate`, `dfdc score`, `dfdc export`: a trained model on test sets, on new videos, and as TorchScript."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from cli.common import (CheckpointOpt, ConfigOpt, RayAddressOpt, SetOpt, TorchScriptOpt, app, config_of, console, errors,
                        existing_checkpoint, fail, home, model_file)
from dfdc.config import EvalConfig, load_config


@app.command()
def evaluate(
    checkpoint: CheckpointOpt,
    data: Annotated[Optional[list[str]], typer.Option("--data", metavar="URI", help="Dataset root with manifest.json; repeat for several (cross-dataset). Default: the one trained on, plus eval.datasets.")] = None,
    split: Annotated[Optional[str], typer.Option(metavar="SPLIT", help=f"val | train | test | all (default: the config's eval.split, embedded {EvalConfig().split}).")] = None,
    out: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Folder for metrics.json, cross_dataset.csv and the plots (default: $DFDC_HOME/eval).")] = None,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(metavar="", help="Show the progress bar.")] = True,
    torchscript: TorchScriptOpt = False,
):
    """Score every face crop of a split with Ray tasks; video-level log loss (the DFDC metric), AUC, AP, EER,
    accuracy, ECE, by method and dataset; metrics.json and ROC / reliability / histogram PNGs, also in MLflow.
    Prints the cross-dataset table (a row per dataset and their mean), also written as cross_dataset.csv.

    Example: dfdc evaluate --checkpoint s3://dfdc/runs/demo/model_fp32.pt --data s3://dfdc/faces/celebdf --split all
    """
    existing_checkpoint(checkpoint)
    from data_pipeline.manifest import ManifestError  # noqa: PLC0415
    from train import tracking  # noqa: PLC0415
    from train.evaluation.evaluate import evaluate as run  # noqa: PLC0415
    from train.model.file import ModelFileError, read_card  # noqa: PLC0415

    cfg = config_of(config, set_)
    cfg.eval.torchscript |= torchscript
    if split:
        cfg.eval.split = split
    if ray_address:
        cfg.ray.address = ray_address
    tracking.resolve(cfg, home())
    checkpoint = model_file(checkpoint, cfg)
    try:
        card = read_card(checkpoint)
        datasets = list(dict.fromkeys(data or [card["trained_on"], *cfg.eval.datasets]))
        report = run(checkpoint, datasets, cfg, out or home() / cfg.eval.out, progress=progress, log=console.print)
    except (ModelFileError, ManifestError, ValueError) as e:
        raise fail(str(e)) from e
    console.print(_cross_dataset_table(report["table"]))
    for f in report["files"]:
        console.print(f"wrote {f}", highlight=False)


def _cross_dataset_table(rows: list[dict]):
    """The report's cross-dataset rows as a rich table; the mean row below a line."""
    import math  # noqa: PLC0415

    from rich import box  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from train.evaluation.table import COUNTS, LABELS, METRICS  # noqa: PLC0415

    # Ten columns in 80 characters (what a pipe or CI log gets): horizontal rules only, one space
    # between columns, "video" / "frame" on a header line of its own, numbers never cut, and dataset
    # names folded rather than cut.
    table = Table(title="cross-dataset", box=box.HORIZONTALS, show_edge=False, pad_edge=False, collapse_padding=True)
    table.add_column(LABELS["dataset"], overflow="fold")
    table.add_column(LABELS["split"])
    for col in (*METRICS, *COUNTS):
        table.add_column(LABELS[col].replace(" ", "\n", 1), justify="right", no_wrap=True)
    for i, row in enumerate(rows):
        # NaN is a metric undefined on that dataset (AUC on a one-class split), not a number to read.
        cells = ["n/a" if math.isnan(row[c]) else f"{row[c]:.4f}" for c in METRICS] + [str(row[c]) for c in COUNTS]
        table.add_row(escape(str(row["dataset"])), escape(str(row["split"])), *cells, end_section=i == len(rows) - 2)
    return table


@app.command()
def score(
    videos: Annotated[list[str], typer.Argument(metavar="VIDEO", help="Videos: local paths, s3:// URIs, or folders / prefixes of many.")],
    checkpoint: CheckpointOpt,
    out: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Also write the JSON lines to this file.")] = None,
    report: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Write an HTML page per video: per-frame scores, top face crops.")] = None,
    use_ray: Annotated[Optional[bool], typer.Option("--ray/--no-ray", metavar="", help="Score in Ray tasks (default: when there are more videos than one task takes).")] = None,
    videos_per_task: Annotated[int, typer.Option(metavar="N", help="Videos per Ray task.")] = 4,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(metavar="", help="Show the progress bar (on stderr).")] = True,
    torchscript: TorchScriptOpt = False,
):
    """Score videos: sample frames, find and crop faces as ingest does, run the model, aggregate.
    Prints one JSON line per video, {video, p_fake, faces_found, frames: [{t, face, p}]}; a video that
    cannot be read gets {video, p_fake: null, error} and the rest go on (exit code 1 if any failed).

    Example: dfdc score s3://my-bucket/raw/incoming/ clip.mp4 --checkpoint s3://dfdc/runs/demo/model_fp32.pt --report scores.html
    """
    existing_checkpoint(checkpoint)
    from train.model.file import ModelFileError  # noqa: PLC0415
    from train.scoring import report as html_report  # noqa: PLC0415
    from train.scoring.score import expand, is_scored, score as run  # noqa: PLC0415

    cfg = config_of(config, set_)
    cfg.eval.torchscript |= torchscript
    if ray_address:
        cfg.ray.address = ray_address
    checkpoint = model_file(checkpoint, cfg)
    todo = expand(videos)
    ray = use_ray if use_ray is not None else len(todo) > videos_per_task
    results, failed = [], 0
    sink = out.open("w") if out else None
    try:
        for line, crops in run(todo, checkpoint, cfg, ray, progress, top_crops=6 if report else 0, videos_per_task=videos_per_task):
            text = json.dumps(line)
            typer.echo(text)
            if sink:
                sink.write(text + "\n")
            failed += not is_scored(line)
            if report:
                results.append((line, crops))
    except ModelFileError as e:
        raise fail(str(e)) from e
    finally:
        if sink:
            sink.close()
    if report:
        order = {v: i for i, v in enumerate(todo)}
        html_report.write(report, sorted(results, key=lambda r: order.get(r[0]["video"], 0)), checkpoint)
        errors.print(f"report: {report}", highlight=False)
    errors.print(f"scored {len(todo) - failed} of {len(todo)} videos" + (f", {failed} failed" if failed else ""), highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def export(
    checkpoint: CheckpointOpt,
    out: Annotated[str, typer.Option(metavar="URI", help="Where the TorchScript file goes (local or s3://); its card is written beside it.")],
):
    """Export the model to TorchScript for serving, and check that the export gives the same scores.

    Example: dfdc export --checkpoint s3://dfdc/runs/demo/model_fp32.pt --out model_ts.pt
    """
    existing_checkpoint(checkpoint)
    from train.model.file import ModelFileError, export_torchscript  # noqa: PLC0415

    checkpoint = model_file(checkpoint, load_config())
    try:
        diff = export_torchscript(checkpoint, out)
    except (ModelFileError, RuntimeError) as e:
        raise fail(str(e)) from e
    console.print(f"wrote {out} (TorchScript); largest logit difference from the model: {diff:.2e}", highlight=False)
