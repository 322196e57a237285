"""The `dfdc` command: a thin layer on top that parses arguments and calls into the stages (no stage
imports it). Storage failures end any command in one line that names the URI, the cause and the fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from dfdc.config import Config, ConfigError, load_config
from dfdc.storage import StorageError

app = typer.Typer(help="Train deepfake-video detectors at scale: ingest corpora into face-crop shards, train, evaluate, "
                       "score and sweep on Ray, submit jobs to a cluster, plan their cost, run the local stack.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
local_app = typer.Typer(help="The local stack: an S3 server on 127.0.0.1 with its data in ./.dfdc (or $DFDC_HOME).",
                        no_args_is_help=True)
app.add_typer(local_app, name="local")
ledger_app = typer.Typer(help="The ledger of a run trained with data.ledger=true: which samples every rank trained on.",
                         no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")
mlflow_app = typer.Typer(help="The MLflow tracking server a cluster shares.", no_args_is_help=True)
app.add_typer(mlflow_app, name="mlflow")
spot_app = typer.Typer(help="EC2 spot instances: the interruption notice.", no_args_is_help=True)
app.add_typer(spot_app, name="spot")
console = Console()
errors = Console(stderr=True, soft_wrap=True)  # one error, one line: easy to grep


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


# Two kinds of Ray address, named apart as Ray's own CLI has them: the GCS (HEAD_IP:6379: `ray start
# --address`, ray.init; RAY_ADDRESS) that stages and the spot watcher join, and the dashboard URL
# (http://HEAD_IP:8265: `ray job submit --address`; RAY_API_SERVER_ADDRESS, else RAY_ADDRESS) that
# jobs go through.
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="The Ray cluster's GCS address, HEAD_IP:6379 (default: RAY_ADDRESS, else a Ray of this process's own).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (see configs/); embedded defaults otherwise.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override one key, e.g. --set ingest.frames_per_video=16. Repeatable.")]


def _config(path: Path | None, sets: list[str] | None) -> Config:
    try:
        return load_config(path, sets or [])
    except ConfigError as e:
        raise fail(str(e), 2) from e


def main() -> None:
    """The `dfdc` script."""
    from dfdc.reach import Unreachable  # noqa: PLC0415

    try:
        app()
    except (StorageError, Unreachable) as e:  # storage or a Ray cluster that does not answer: one line, not a traceback
        fail(str(e))
        sys.exit(1)


@app.command()
def synth(
    out: Annotated[str, typer.Option(help="Folder or s3:// prefix to write the corpus to.")],
    videos: Annotated[Optional[int], typer.Option(help="Number of videos (default: synth.videos).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default: synth.seed).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Make a synthetic corpus in the DFDC layout (parts, metadata.json, mp4s with real and face-swapped faces).

    Example: dfdc synth --out s3://dfdc/raw/synth --videos 200 --seed 0
    """
    from data_pipeline.synth import synth as run  # noqa: PLC0415

    cfg = _config(config, set_)
    if videos is not None:
        cfg.synth.videos = videos
    if seed is not None:
        cfg.synth.seed = seed
    run(out, cfg.synth, log=console.print)


@app.command()
def ingest(
    source: Annotated[str, typer.Option(help="Corpus root: a folder or s3:// prefix (DFDC parts or zips, FaceForensics++, Celeb-DF).")],
    dest: Annotated[str, typer.Option(help="Where shards and manifest.json go: a folder or s3:// prefix.")],
    dataset: Annotated[Optional[str], typer.Option(help="dfdc | faceforensics | celebdf; detected from the layout if left out.")] = None,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
):
    """Sample frames, find faces, crop, and write WebDataset shards plus manifest.json under DEST.

    Run it again after a crash and it finishes the rest; run it on finished work and it does nothing.

    Example: dfdc ingest --source s3://my-bucket/dfdc/raw --dest s3://my-bucket/dfdc/faces-v1
    """
    from data_pipeline.ingest import IngestError, ingest as run  # noqa: PLC0415
    from data_pipeline.manifest import print_summary  # noqa: PLC0415
    from data_pipeline.sources import SourceError  # noqa: PLC0415

    cfg = _config(config, set_)
    if ray_address:
        cfg.ray.address = ray_address
    try:
        summary = run(source, dest, cfg, dataset=dataset, progress=progress, log=console.print)
    except (SourceError, IngestError, ConfigError) as e:
        raise fail(str(e)) from e
    print_summary(summary.manifest, console)


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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    address: Annotated[Optional[str], typer.Option(
        "--dashboard", "--address", envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"],
        help="The cluster's dashboard URL, what `ray job submit --address` takes; through `ray dashboard CLUSTER.yaml`: "
             "http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, as Ray's job client reads them).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job's log until it ends (default), or return once it is submitted.")] = True,
    stop: Annotated[Optional[str], typer.Option(help="Stop the job with this id instead of submitting one.")] = None,
    working_dir: Annotated[str, typer.Option(help="The project folder the job runs in (uploaded without .venv, .dfdc, .git, caches).")] = ".",
    mlflow: Annotated[Optional[str], typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI for the job.")] = None,
    python: Annotated[str, typer.Option(help="The interpreter on the cluster (its PATH's `python` by default).")] = "python",
    print_only: Annotated[bool, typer.Option("--print", help="Print the equivalent `ray job submit` command and submit nothing.")] = False,
):
    """Run a dfdc command (train, ingest, evaluate, score, ...) as a Ray job on a cluster.

    Example: dfdc submit --dashboard http://127.0.0.1:8265 -- train --config configs/dfdc_b7.yaml --set data.dataset=s3://b/faces
    """
    from cluster import jobs, submit as sub  # noqa: PLC0415

    if not address:
        raise fail("no cluster: give --dashboard (the dashboard URL, http://127.0.0.1:8265 through `ray dashboard`) or set "
                   "RAY_API_SERVER_ADDRESS or RAY_ADDRESS", 2)
    from dfdc import reach  # noqa: PLC0415

    if stop:
        reach.dashboard(address)
        client = jobs.client(address)
        client.stop_job(stop)
        status = jobs.follow(client, stop, poll_s=1.0, timeout_s=60)
        console.print(f"job {stop}: {status}")
        raise typer.Exit(0 if status in jobs.ENDED else 1)
    try:
        spec = sub.build(list(ctx.args), working_dir=working_dir, mlflow_uri=mlflow, python=python)
    except (sub.SubmitError, ConfigError) as e:  # ConfigError: the training config that names the run
        raise fail(str(e), 2) from e
    if print_only:
        typer.echo(spec.ray_command(address))
        return
    reach.dashboard(address)
    client = jobs.client(address)
    jobs.submit_job(client, entrypoint=spec.entrypoint, runtime_env=spec.runtime_env, submission_id=spec.submission_id)
    console.print(f"submitted job {spec.submission_id}: {escape(spec.entrypoint)}", highlight=False)
    if not wait:
        console.print(f"follow it: ray job logs --follow {spec.submission_id} --address {address}; "
                      f"stop it: dfdc submit --dashboard {address} --stop {spec.submission_id}", highlight=False)
        return
    status = jobs.follow(client, spec.submission_id, lambda line: console.print(escape(line), highlight=False))
    console.print(f"job {spec.submission_id}: {status}")
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


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
        summary = run(config, sets, _home(), log=console.print)
    except ConfigError as e:
        raise fail(str(e), 2) from e
    console.print(table(summary, cfg.sweep.metric))
    best = summary["best"]
    if not best:
        raise fail(f"sweep {summary['sweep']}: no trial finished")
    console.print(f"best trial {best['trial']}: {cfg.sweep.metric} {best['metric']:.4f}, run {best['run_name']}", highlight=False)
    console.print(summary["registered"] or best["model"], highlight=False, soft_wrap=True)


@spot_app.command("watch")
def spot_watch(
    address: Annotated[str, typer.Option("--ray-address", "--address", envvar="RAY_ADDRESS",
                                         help="The Ray cluster's GCS address, HEAD_IP:6379 (default: RAY_ADDRESS).")],
    node_id: Annotated[Optional[str], typer.Option(help="The Ray node to drain (default: the one with this machine's address).")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls of the instance metadata service.")] = 5.0,
    max_errors: Annotated[int, typer.Option(help="Give up after this many failed polls in a row.")] = 60,
):
    """Watch this node's EC2 instance metadata for a spot interruption notice; on one, drain the Ray
    node (reason PREEMPTION, the notice's deadline) so that training checkpoints and Ray Train counts a
    preemption. Runs until a notice comes. The metadata endpoint is AWS_EC2_METADATA_SERVICE_ENDPOINT
    (default http://169.254.169.254).

    Example (on each worker node, after ray start): dfdc spot watch --ray-address $RAY_HEAD_IP:6379
    """
    from cluster import spot  # noqa: PLC0415
    from dfdc.imds import MetadataUnavailable  # noqa: PLC0415

    def log(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    try:
        spot.watch(address, node_id, interval, max_errors, log=log)
    except (MetadataUnavailable, RuntimeError, OSError) as e:
        raise fail(str(e)) from e


@mlflow_app.command("serve")
def mlflow_serve(
    artifacts_destination: Annotated[str, typer.Option(help="s3:// prefix the server stores artifacts under (clients upload through it).")],
    host: Annotated[str, typer.Option(help="127.0.0.1, or the head's private address for the cluster's nodes; never 0.0.0.0 nor a public address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port the server listens on.")] = 5000,
    backend_store_uri: Annotated[Optional[str], typer.Option(help="Where runs are kept (default: sqlite in $DFDC_HOME).")] = None,
    workers: Annotated[int, typer.Option(help="The server's request-handling processes (MLflow's default).")] = 4,
    allowed_hosts: Annotated[Optional[str], typer.Option(help="Host headers MLflow accepts, comma-separated (MLflow's default: localhost and private IPs), e.g. ip-10-0-1-5.ec2.internal:5000.")] = None,
):
    """Run the MLflow tracking server for a cluster, in the foreground: runs in a database, artifacts
    proxied to S3. Point jobs at it with MLFLOW_TRACKING_URI=http://HOST:PORT (dfdc submit --mlflow).

    Example: dfdc mlflow serve --host 10.0.1.5 --artifacts-destination s3://my-bucket/mlflow-artifacts
    """
    import subprocess  # noqa: PLC0415

    from cluster import mlflow_server  # noqa: PLC0415

    backend = backend_store_uri or f"sqlite:///{(_home() / 'mlflow-server.db').resolve()}"
    try:
        argv = mlflow_server.command(host, port, backend, artifacts_destination, workers, allowed_hosts)
    except mlflow_server.ServerError as e:
        raise fail(str(e), 2) from e
    console.print(f"MLflow on http://{host}:{port}: runs in {backend}, artifacts in {artifacts_destination}", highlight=False)
    raise typer.Exit(subprocess.run(argv, env=mlflow_server.environment()).returncode)


TorchScriptOpt = Annotated[bool, typer.Option("--torchscript", help="Load a TorchScript model file (what `dfdc export` writes). Loading one runs the code inside it: only for files you trust.")]
CheckpointOpt = Annotated[str, typer.Option("--checkpoint", help="The trained model: model_fp32.pt a training run wrote (local or s3://), its TorchScript export (with --torchscript), or models:/NAME/VERSION or models:/NAME@ALIAS from MLflow's registry.")]


def _existing(checkpoint: str) -> str:
    """The --checkpoint as given, once it exists (models:/ names are resolved later): checked before
    the commands import torch, so a wrong path is named at once, as the user wrote it."""
    if not checkpoint.startswith("models:/"):
        from dfdc import storage  # noqa: PLC0415

        if not storage.exists(checkpoint):
            raise fail(f"--checkpoint {checkpoint} does not exist (give a model_fp32.pt a training run wrote, its TorchScript "
                       f"export, or models:/NAME/VERSION)")
    return checkpoint


def _model(checkpoint: str, cfg: Config) -> str:
    """A registered model (models:/...) as the model file it stands for; other URIs as they are."""
    from train import tracking  # noqa: PLC0415
    from train.model.file import ModelFileError, resolve  # noqa: PLC0415

    if not checkpoint.startswith("models:/"):
        return checkpoint
    tracking.resolve(cfg, _home())
    try:
        found = resolve(checkpoint, cfg.tracking.uri)
    except ModelFileError as e:
        raise fail(str(e)) from e
    errors.print(f"{checkpoint}: {found}", highlight=False)
    return found


def _home() -> Path:
    from cluster.local.stack import home  # noqa: PLC0415

    return home()


@app.command()
def evaluate(
    checkpoint: CheckpointOpt,
    data: Annotated[Optional[list[str]], typer.Option("--data", help="Dataset root with manifest.json; repeat for several (cross-dataset). Default: the one trained on, plus eval.datasets.")] = None,
    split: Annotated[Optional[str], typer.Option(help="val | train | test | all (default: eval.split).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for metrics.json, cross_dataset.csv and the plots (default: $DFDC_HOME/eval).")] = None,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    torchscript: TorchScriptOpt = False,
):
    """Score every face crop of a split with Ray tasks; video-level log loss (the DFDC metric), AUC, AP, EER,
    accuracy, ECE, by method and dataset; metrics.json and ROC / reliability / histogram PNGs, also in MLflow.
    Prints the cross-dataset table (a row per dataset and their mean), also written as cross_dataset.csv.

    Example: dfdc evaluate --checkpoint s3://dfdc/runs/demo/model_fp32.pt --data s3://dfdc/faces/celebdf --split all
    """
    _existing(checkpoint)
    from data_pipeline.manifest import ManifestError  # noqa: PLC0415
    from train import tracking  # noqa: PLC0415
    from train.evaluation.evaluate import evaluate as run  # noqa: PLC0415
    from train.model.file import ModelFileError, read_card  # noqa: PLC0415

    cfg = _config(config, set_)
    cfg.eval.torchscript |= torchscript
    if split:
        cfg.eval.split = split
    if ray_address:
        cfg.ray.address = ray_address
    tracking.resolve(cfg, _home())
    checkpoint = _model(checkpoint, cfg)
    try:
        card = read_card(checkpoint)
        datasets = list(dict.fromkeys(data or [card["trained_on"], *cfg.eval.datasets]))
        report = run(checkpoint, datasets, cfg, out or _home() / cfg.eval.out, progress=progress, log=console.print)
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
    videos: Annotated[list[str], typer.Argument(help="Videos: local paths, s3:// URIs, or folders / prefixes of many.")],
    checkpoint: CheckpointOpt,
    out: Annotated[Optional[Path], typer.Option(help="Also write the JSON lines to this file.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write an HTML page per video: per-frame scores, top face crops.")] = None,
    use_ray: Annotated[Optional[bool], typer.Option("--ray/--no-ray", help="Score in Ray tasks (default: when there are more videos than one task takes).")] = None,
    videos_per_task: Annotated[int, typer.Option(help="Videos per Ray task.")] = 4,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar (on stderr).")] = True,
    torchscript: TorchScriptOpt = False,
):
    """Score videos: sample frames, find and crop faces as ingest does, run the model, aggregate.
    Prints one JSON line per video, {video, p_fake, faces_found, frames: [{t, face, p}]}; a video that
    cannot be read gets {video, p_fake: null, error} and the rest go on (exit code 1 if any failed).

    Example: dfdc score s3://my-bucket/raw/incoming/ clip.mp4 --checkpoint s3://dfdc/runs/demo/model_fp32.pt --report scores.html
    """
    _existing(checkpoint)
    from train.model.file import ModelFileError  # noqa: PLC0415
    from train.scoring import report as html_report  # noqa: PLC0415
    from train.scoring.score import expand, is_scored, score as run  # noqa: PLC0415

    cfg = _config(config, set_)
    cfg.eval.torchscript |= torchscript
    if ray_address:
        cfg.ray.address = ray_address
    checkpoint = _model(checkpoint, cfg)
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
    out: Annotated[str, typer.Option(help="Where the TorchScript file goes (local or s3://); its card is written beside it.")],
):
    """Export the model to TorchScript for serving, and check that the export gives the same scores.

    Example: dfdc export --checkpoint s3://dfdc/runs/demo/model_fp32.pt --out model_ts.pt
    """
    _existing(checkpoint)
    from train.model.file import ModelFileError, export_torchscript  # noqa: PLC0415

    checkpoint = _model(checkpoint, load_config())
    try:
        diff = export_torchscript(checkpoint, out)
    except (ModelFileError, RuntimeError) as e:
        raise fail(str(e)) from e
    console.print(f"wrote {out} (TorchScript); largest logit difference from the model: {diff:.2e}", highlight=False)


@app.command()
def plan(
    config: Annotated[Path, typer.Option("--config", "-c", help="The recipe: frames per video and epochs.")] = Path("configs/dfdc_b7.yaml"),
    nodes: Annotated[str, typer.Option(help="Cluster sizes to plan for, comma-separated.")] = "1,4,16,64",
    cpu_node: Annotated[str, typer.Option(help="Spot CPU node type for the ingest (the price table names it).")] = "c7i.8xlarge",
    gpu_node: Annotated[str, typer.Option(help="Spot GPU node type for training.")] = "p5.48xlarge",
    ingest_rate: Annotated[Optional[float], typer.Option(help="Sampled frames/s per vCPU of the ingest (default: measured, see the output).")] = None,
    gpu_rate: Annotated[Optional[float], typer.Option(help="Training images/s per GPU (default: measured, see the output).")] = None,
    prices: Annotated[Optional[str], typer.Option(help="Price table (default: cluster/aws/prices.yaml).")] = None,
    set_: SetOpt = None,
):
    """A capacity plan for the full DFDC training set: ingest time and cost on N spot CPU nodes, one
    epoch and the whole recipe on N spot GPU nodes, and the S3 GETs/s and prefixes that implies.
    Arithmetic on measured rates (their source is printed), assuming linear scaling over nodes.

    Example: dfdc plan --nodes 8,32 --gpu-node p4d.24xlarge --gpu-rate 120
    """
    import dataclasses  # noqa: PLC0415

    from rich.table import Table  # noqa: PLC0415

    from cluster import capacity as cap  # noqa: PLC0415
    from train.cost import load_prices  # noqa: PLC0415

    cfg = _config(config, set_)
    try:
        sizes = [int(n) for n in nodes.split(",")]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise fail(f"--nodes {nodes!r}: give node counts of 1 or more, comma-separated (e.g. 1,4,16,64)", 2) from None
    table_prices = load_prices(prices)
    corpus = dataclasses.replace(cap.DFDC, frames_per_video=cfg.ingest.frames_per_video)
    ingest = cap.Rate(ingest_rate, "given") if ingest_rate else cap.INGEST_PER_VCPU
    train = cap.Rate(gpu_rate, "given") if gpu_rate else cap.IMAGES_PER_GPU
    gets = cap.gets_per_sample(cfg.data.order, cfg.data.block_samples)
    spread, per_epoch = cfg.ingest.key_prefixes, cfg.data.samples_per_epoch
    try:
        plans = [(f"ingest on {cpu_node} spot nodes", cap.ingest_plan(corpus, ingest, table_prices, cpu_node, sizes)),
                 (f"one epoch on {gpu_node} spot nodes", cap.epoch_plan(corpus, train, table_prices, gpu_node, sizes, 1, gets, spread,
                                                                        per_epoch)),
                 (f"the recipe ({cfg.optim.epochs} epochs) on {gpu_node} spot nodes",
                  cap.epoch_plan(corpus, train, table_prices, gpu_node, sizes, cfg.optim.epochs, gets, spread, per_epoch))]
    except ValueError as e:
        raise fail(str(e), 2) from e
    console.print(f"{corpus.name}: {corpus.videos:,} videos x {corpus.frames_per_video} frames, "
                  f"{corpus.crops_per_frame:g} face crop a frame (assumed), {corpus.raw_bytes / 1e9:,.0f} GB raw", highlight=False)
    crops, in_epoch = corpus.videos * corpus.frames_per_video * corpus.crops_per_frame, cap.epoch_samples(corpus, per_epoch)
    console.print(f"an epoch: {in_epoch:,.0f} crops" + (f", a pass cut in {crops / in_epoch:.0f} (data.samples_per_epoch={per_epoch:,})"
                                                        if in_epoch < crops else " (a pass)"), highlight=False)
    console.print(f"ingest rate: {ingest.value:g} sampled frames/s per vCPU ({ingest.measured})", highlight=False)
    console.print(f"training rate: {train.value:g} images/s per GPU ({train.measured})", highlight=False)
    console.print(f"spot prices of {table_prices.date} ({table_prices.source}); throughput assumed linear in nodes, "
                  f"S3 at {cap.S3_GETS_PER_PREFIX:,} GET/s per prefix, ${cap.GET_DOLLARS_PER_1000} per 1,000 GETs", highlight=False)
    console.print(f"training reads: {gets.value:.4g} GETs per sample ({gets.measured}); shards over {spread} key "
                  f"prefix(es) (ingest.key_prefixes)", highlight=False)
    for i, (title, rows) in enumerate(plans):
        table = Table(title=title)
        columns = ("nodes", "hours", "spot $", "S3 GET/s", "prefixes needed") + (("GET/s per prefix", "GET $") if i else ())
        for col in columns:
            table.add_column(col, justify="right")
        for r in rows:
            extra = (f"{r.gets_per_prefix:,.0f}" + (" (over S3's)" if r.gets_per_prefix > cap.S3_GETS_PER_PREFIX else ""),
                     f"{r.get_dollars:,.2f}") if i else ()
            table.add_row(str(r.nodes), f"{r.hours:,.2f}", f"{r.dollars:,.2f}", f"{r.gets_per_s:,.0f}", str(r.prefixes), *extra)
        console.print(table)


@local_app.command("up")
def local_up(port: Annotated[Optional[int], typer.Option(help="Port for the S3 server (kept for later runs).")] = None):
    """Start the local S3 server (data kept in .dfdc/s3) and create the bucket 'dfdc'.

    Example: dfdc local up && eval "$(dfdc local env)"
    """
    from cluster.local import stack as local  # noqa: PLC0415

    try:
        state, started = local.up(port)
    except RuntimeError as e:
        raise fail(str(e)) from e
    server = state.server()
    console.print(f"S3 server {'started' if started else 'already running'} at {server.endpoint} (pid {state.pid}), "
                  f"bucket s3://{local.DEFAULT_BUCKET}, data in {server.root}")
    console.print("Point S3 clients at it with:")
    for line in local.env_lines(state):
        console.print(f"  {line}", highlight=False)


@local_app.command("down")
def local_down():
    """Stop what `dfdc local up` started (by its pid); the data stays on disk.

    Example: dfdc local down
    """
    from cluster.local import stack as local  # noqa: PLC0415

    console.print("stopped the S3 server" if local.down() else "nothing to stop")


@local_app.command("status")
def local_status():
    """Say whether the local S3 server runs, and where.

    Example: dfdc local status
    """
    from cluster.local import stack as local  # noqa: PLC0415

    state = local.load_state()
    if local.is_running(state):
        console.print(f"S3 server running at {state.server().endpoint} (pid {state.pid}), data in {state.server().root}")
    else:
        console.print("S3 server not running" + ("" if state else " (never started here)"))
        raise typer.Exit(3)


@local_app.command("env")
def local_env():
    """Print `export` lines that point S3 clients at the local server.

    Example: eval "$(dfdc local env)"
    """
    from cluster.local import stack as local  # noqa: PLC0415

    state = local.load_state()
    if state is None:
        raise fail("the local stack was never started here: run dfdc local up")
    typer.echo("\n".join(local.env_lines(state)))


@app.command()
def manifest(dataset: Annotated[str, typer.Argument(help="Dataset root (folder or s3:// prefix) holding manifest.json.")],
             as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False):
    """Summarise an ingested dataset from its manifest.json.

    Example: dfdc manifest s3://dfdc/faces/demo
    """
    from data_pipeline.manifest import ManifestError, load, print_summary  # noqa: PLC0415

    try:
        data = load(dataset)
    except ManifestError as e:
        raise fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(data, indent=1))
    else:
        print_summary(data, console)


@ledger_app.command("check")
def ledger_check(run_dir: Annotated[str, typer.Argument(help="The run's folder (local or s3://): <ray.storage_path>/<ray.run_name>.")],
                 allow_skipped: Annotated[bool, typer.Option("--allow-skipped", help="Pass epochs whose unreadable samples were skipped (named in the ledger).")] = False):
    """Per epoch: train samples seen once, never, more than once, across every attempt of the run,
    each batch compared with the epoch's order recomputed from the run's seed and settings.

    Passes (exit 0) when every epoch up to the run's last checkpoint is in the ledger and saw each
    train sample exactly once, in its order, apart from the documented remainder of less than one
    optimizer step at its end; samples skipped as unreadable fail it unless --allow-skipped.
    Example: dfdc ledger check s3://dfdc/runs/demo-20261122-...
    """
    from dfdc import storage  # noqa: PLC0415

    if not storage.exists(run_dir):
        raise fail(f"{run_dir} does not exist: give the run's folder, <ray.storage_path>/<ray.run_name>")
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


if __name__ == "__main__":
    main()
