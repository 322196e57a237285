"""`dfdc synth`, `dfdc ingest`, `dfdc manifest`: corpora in, face-crop shards and their manifest out."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from cli.common import (ConfigOpt, RayAddressOpt, SetOpt, app, config_of, console, fail)
from dfdc.config import ConfigError, SynthConfig


@app.command()
def synth(
    out: Annotated[str, typer.Option(metavar="URI", help="Folder or s3:// prefix to write the corpus to.")],
    videos: Annotated[Optional[int], typer.Option(metavar="N", help=f"Number of videos (default: the config's synth.videos, embedded {SynthConfig().videos}).")] = None,
    seed: Annotated[Optional[int], typer.Option(metavar="N", help=f"Random seed (default: the config's synth.seed, embedded {SynthConfig().seed}).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
):
    """Make a synthetic corpus in the DFDC layout (parts, metadata.json, mp4s with real and face-swapped faces).

    Example: dfdc synth --out s3://dfdc/raw/synth --videos 200 --seed 0
    """
    from data_pipeline.synth import synth as run  # noqa: PLC0415

    cfg = config_of(config, set_)
    if videos is not None:
        cfg.synth.videos = videos
    if seed is not None:
        cfg.synth.seed = seed
    run(out, cfg.synth, log=console.print)


@app.command()
def ingest(
    source: Annotated[str, typer.Option(metavar="URI", help="Corpus root: a folder or s3:// prefix (DFDC parts or zips, FaceForensics++, Celeb-DF).")],
    dest: Annotated[str, typer.Option(metavar="URI", help="Where shards and manifest.json go: a folder or s3:// prefix.")],
    dataset: Annotated[Optional[str], typer.Option(metavar="NAME", help="dfdc | faceforensics | celebdf; detected from the layout if left out.")] = None,
    ray_address: RayAddressOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(metavar="", help="Show the progress bar.")] = True,
):
    """Sample frames, find faces, crop, and write WebDataset shards plus manifest.json under DEST.

    Run it again after a crash and it finishes the rest; run it on finished work and it does nothing.

    Example: dfdc ingest --source s3://my-bucket/dfdc/raw --dest s3://my-bucket/dfdc/faces-v1
    """
    from data_pipeline.ingest import IngestError, ingest as run  # noqa: PLC0415
    from data_pipeline.manifest import print_summary  # noqa: PLC0415
    from data_pipeline.sources import SourceError  # noqa: PLC0415

    cfg = config_of(config, set_)
    if ray_address:
        cfg.ray.address = ray_address
    try:
        summary = run(source, dest, cfg, dataset=dataset, progress=progress, log=console.print)
    except (SourceError, IngestError, ConfigError) as e:
        raise fail(str(e)) from e
    print_summary(summary.manifest, console)


@app.command()
def manifest(dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset root (folder or s3:// prefix) holding manifest.json.")],
             as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the whole manifest as JSON.")] = False):
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
