"""`dfdc submit`, `dfdc spot watch`, `dfdc mlflow serve`, `dfdc plan`: jobs on a Ray cluster, its spot nodes, its MLflow server and what it costs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from cli.common import (SetOpt, app, config_of, console, fail, home, mlflow_app, spot_app)
from dfdc.config import ConfigError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             options_metavar="[OPTIONS] -- COMMAND [ARGS]...")
def submit(
    ctx: typer.Context,
    address: Annotated[Optional[str], typer.Option(
        "--dashboard", "--address", envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"],
        metavar="URL", help="The cluster's dashboard URL, what `ray job submit --address` takes; through `ray dashboard CLUSTER.yaml`: "
             "http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, as Ray's job client reads them).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", metavar="", help="Follow the job's log until it ends (default), or return once it is submitted.")] = True,
    stop: Annotated[Optional[str], typer.Option(metavar="JOB_ID", help="Stop the job with this id instead of submitting one.")] = None,
    working_dir: Annotated[str, typer.Option(metavar="DIR", help="The project folder the job runs in (uploaded without .venv, .dfdc, .git, caches).")] = ".",
    mlflow: Annotated[Optional[str], typer.Option(envvar="MLFLOW_TRACKING_URI", metavar="URI", help="MLflow tracking URI for the job.")] = None,
    python: Annotated[str, typer.Option(metavar="PYTHON", help="The interpreter on the cluster (its PATH's `python` by default).")] = "python",
    print_only: Annotated[bool, typer.Option("--print", metavar="", help="Print the equivalent `ray job submit` command and submit nothing.")] = False,
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


@spot_app.command("watch")
def spot_watch(
    address: Annotated[str, typer.Option("--ray-address", "--address", envvar="RAY_ADDRESS",
                                         metavar="HOST:PORT", help="The Ray cluster's GCS address, HEAD_IP:6379 (default: RAY_ADDRESS).")],
    node_id: Annotated[Optional[str], typer.Option(metavar="NODE_ID", help="The Ray node to drain (default: the one with this machine's address).")] = None,
    interval: Annotated[float, typer.Option(metavar="SECONDS", help="Seconds between polls of the instance metadata service.")] = 5.0,
    max_errors: Annotated[int, typer.Option(metavar="N", help="Give up after this many failed polls in a row.")] = 60,
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
    artifacts_destination: Annotated[str, typer.Option(metavar="URI", help="s3:// prefix the server stores artifacts under (clients upload through it).")],
    host: Annotated[str, typer.Option(metavar="HOST", help="127.0.0.1, or the head's private address for the cluster's nodes; never 0.0.0.0 nor a public address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="The port the server listens on.")] = 5000,
    backend_store_uri: Annotated[Optional[str], typer.Option(metavar="URI", help="Where runs are kept (default: sqlite in $DFDC_HOME).")] = None,
    workers: Annotated[int, typer.Option(metavar="N", help="The server's request-handling processes (MLflow's default).")] = 4,
    allowed_hosts: Annotated[Optional[str], typer.Option(metavar="HOSTS", help="Host headers MLflow accepts, comma-separated (MLflow's default: localhost and private IPs), e.g. ip-10-0-1-5.ec2.internal:5000.")] = None,
):
    """Run the MLflow tracking server for a cluster, in the foreground: runs in a database, artifacts
    proxied to S3. Point jobs at it with MLFLOW_TRACKING_URI=http://HOST:PORT (dfdc submit --mlflow).

    Example: dfdc mlflow serve --host 10.0.1.5 --artifacts-destination s3://my-bucket/mlflow-artifacts
    """
    import subprocess  # noqa: PLC0415

    from cluster import mlflow_server  # noqa: PLC0415

    backend = backend_store_uri or f"sqlite:///{(home() / 'mlflow-server.db').resolve()}"
    try:
        argv = mlflow_server.command(host, port, backend, artifacts_destination, workers, allowed_hosts)
    except mlflow_server.ServerError as e:
        raise fail(str(e), 2) from e
    console.print(f"MLflow on http://{host}:{port}: runs in {backend}, artifacts in {artifacts_destination}", highlight=False)
    raise typer.Exit(subprocess.run(argv, env=mlflow_server.environment()).returncode)


@app.command()
def plan(
    config: Annotated[Path, typer.Option("--config", "-c", metavar="FILE", help="The recipe: frames per video and epochs.")] = Path("configs/dfdc_b7.yaml"),
    nodes: Annotated[str, typer.Option(metavar="N,N,...", help="Cluster sizes to plan for, comma-separated.")] = "1,4,16,64",
    cpu_node: Annotated[str, typer.Option(metavar="TYPE", help="Spot CPU node type for the ingest (the price table names it).")] = "c7i.8xlarge",
    gpu_node: Annotated[str, typer.Option(metavar="TYPE", help="Spot GPU node type for training.")] = "p5.48xlarge",
    ingest_rate: Annotated[Optional[float], typer.Option(metavar="RATE", help="Sampled frames/s per vCPU of the ingest (default: measured, see the output).")] = None,
    gpu_rate: Annotated[Optional[float], typer.Option(metavar="RATE", help="Training images/s per GPU (default: measured, see the output).")] = None,
    prices: Annotated[Optional[str], typer.Option(metavar="FILE", help="Price table (default: cluster/aws/prices.yaml).")] = None,
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

    cfg = config_of(config, set_)
    try:
        sizes = [int(n) for n in nodes.split(",")]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise fail(f"--nodes {nodes!r}: give node counts of 1 or more, comma-separated (e.g. 1,4,16,64)", 2) from None
    table_prices = load_prices(prices)
    corpus = dataclasses.replace(cap.DFDC, frames_per_video=cfg.ingest.frames_per_video)
    ingest = (cap.Rate(ingest_rate, "given") if ingest_rate else
              cap.ingest_rate(cfg.detector.name, cfg.detector.thresholds, cfg.detector.min_face_size, cfg.detector.max_side))
    train = cap.Rate(gpu_rate, "given") if gpu_rate else cap.training_rate(cfg.model.name, cfg.data.image_size, cfg.model.trainable)
    gets = cap.gets_per_sample(cfg.data.order, cfg.data.block_samples)
    scale = (cfg.ingest.crop_size / 380) ** 2  # both grow with the crop's pixels
    diff_seconds = cap.DIFF_SECONDS_380.value * scale if cfg.ingest.difference_masks else 0.0
    outline_seconds = cap.OUTLINE_SECONDS_380.value * scale if cfg.ingest.face_outlines else 0.0
    spread, per_epoch = cfg.ingest.key_prefixes, cfg.data.samples_per_epoch
    try:
        plans = [(f"ingest on {cpu_node} spot nodes", cap.ingest_plan(corpus, ingest, table_prices, cpu_node, sizes, diff_seconds,
                                                                                  outline_seconds)),
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
    if diff_seconds:
        console.print(f"difference masks: {diff_seconds * 1000:.0f} ms of CPU a fake crop at {cfg.ingest.crop_size} px "
                      f"({cap.DIFF_SECONDS_380.measured}), {corpus.fake_fraction:.0%} of the videos fakes", highlight=False)
    if outline_seconds:
        console.print(f"face outlines: {outline_seconds * 1000:.0f} ms of CPU a crop at {cfg.ingest.crop_size} px "
                      f"({cap.OUTLINE_SECONDS_380.measured})", highlight=False)
    console.print(f"training rate: {train.value:g} images/s per GPU ({train.measured})", highlight=False)
    node_gpus = table_prices.size[gpu_node]["gpus"]  # there: epoch_plan refused a node type without GPUs
    if cfg.ray.num_workers < node_gpus * max(sizes):
        # The recipe's GPU count sets its batch a step (data.batch_size on each); more GPUs change it
        console.print(f"the recipe trains on {cfg.ray.num_workers} GPU(s) (ray.num_workers), {cfg.data.batch_size} crops a "
                      f"GPU; rows with more GPUs ({node_gpus} a {gpu_node}) take a larger batch a step than the recipe's",
                      highlight=False)
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
