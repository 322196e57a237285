"""`make demo`: the main job on embedded defaults, on the local stack.

Starts the local S3 server (unless it runs), synthesizes a DFDC-layout corpus onto it, ingests it
into face-crop shards on S3, prints the manifest summary, and stops what it started.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from cluster import local
from dfdc.config import load_config

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
RAW = f"s3://{local.DEFAULT_BUCKET}/raw/demo-synth"
FACES = f"s3://{local.DEFAULT_BUCKET}/faces/demo-synth"


def main() -> int:
    from dfdc.cli import console, print_summary  # noqa: PLC0415

    cfg = load_config(CONFIG)
    state, started = local.up()
    os.environ.update(state.server().env())
    console.print(f"local S3 server at {state.server().endpoint} ({'started' if started else 'already running'})")
    try:
        from data_pipeline.ingest import ingest  # noqa: PLC0415
        from data_pipeline.synth import synth  # noqa: PLC0415

        t0 = time.monotonic()
        synth(RAW, cfg.synth, log=console.print)
        console.print(f"synth took {time.monotonic() - t0:.0f}s")
        t0 = time.monotonic()
        summary = ingest(RAW, FACES, cfg, log=console.print)
        console.print(f"ingest took {time.monotonic() - t0:.0f}s")
        print_summary(summary.manifest)
        console.print(f"shards and manifest: {FACES}/manifest.json")
    finally:
        if started:
            local.down()
            console.print("stopped the local S3 server (its data stays in .dfdc/s3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
