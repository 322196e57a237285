"""`make demo`: the main job on embedded defaults, on the local stack.

Starts the local S3 server (unless it runs) and a Ray head with its dashboard on 127.0.0.1,
synthesizes a DFDC-layout corpus onto S3, ingests it into face-crop shards on S3 (Ray tasks), submits
the training through Ray's Jobs API (2 workers, DeepSpeed ZeRO-2, MLflow in sqlite), follows its
log, reads the driver's `result.json`, evaluates the final model on the val split (metrics and
plots), scores a held-out video, copies the model to `$DFDC_HOME/models/` (usable with nothing
running), prints `model: PATH`, and stops what it started.

`python -m cluster.local.demo --set optim.epochs=1 ...` changes keys of configs/demo.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from rich.console import Console

from cluster.local import stack
from dfdc.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "demo.yaml"
RAW = f"s3://{stack.DEFAULT_BUCKET}/raw/demo-synth"
FACES = f"s3://{stack.DEFAULT_BUCKET}/faces/demo-synth"
HELD_OUT = f"s3://{stack.DEFAULT_BUCKET}/raw/demo-held-out"

console = Console(soft_wrap=True, highlight=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.local.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override a key of configs/demo.yaml")
    sets = ap.parse_args(argv).sets
    from cluster.local.ray_head import auth_env, new_token, start_head  # noqa: PLC0415
    from data_pipeline.manifest import print_summary  # noqa: PLC0415

    cfg = load_config(CONFIG, sets)
    home = stack.home()
    state, started = stack.up()
    # This process and the Ray head (like a node with an instance role) hold the keys; jobs and
    # tasks get only the endpoint.
    os.environ.update(state.server().env())
    os.environ["DFDC_HOME"] = str(home)
    console.print(f"local S3 server at {state.server().endpoint} ({'started' if started else 'already running'})")
    head = None
    # Token authentication, set before this process first imports ray (which reads it then).
    token = new_token(home / "ray-auth-token")
    os.environ.update(auth_env(token))
    try:
        t0 = time.monotonic()
        head = start_head(num_cpus=2, dashboard=True, log_path=home / "logs" / "ray-head.log", env=state.server().env(),
                          token_path=token)
        console.print(f"Ray head at {head.address}, dashboard {head.dashboard_url} ({time.monotonic() - t0:.0f}s); "
                      f"its clients need RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token}")

        from data_pipeline.ingest import ingest  # noqa: PLC0415
        from data_pipeline.synth import synth  # noqa: PLC0415

        t0 = time.monotonic()
        synth(RAW, cfg.synth, log=console.print)
        console.print(f"synth took {time.monotonic() - t0:.0f}s")
        t0 = time.monotonic()
        cfg.ray.address = head.address
        summary = ingest(RAW, FACES, cfg, log=console.print)
        console.print(f"ingest took {time.monotonic() - t0:.0f}s")
        print_summary(summary.manifest, console)

        result = train_job(head.dashboard_url, home, cfg, sets)
        if result is None:
            return 1
        m = result["metrics"]
        console.print(f"validation (video level): log loss {m.get('val_video_log_loss', float('nan')):.4f}, "
                      f"AUC {m.get('val_video_auc', float('nan')):.4f}")
        evaluate_and_score(result["model"], cfg, home)
        local_model = copy_model(result["model"], home / "models" / result["run_name"])
        console.print(f"MLflow: .venv/bin/mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}  (then http://127.0.0.1:5000)")
        console.print(f"the model was trained into {result['model']}; a copy that needs nothing running: {local_model}")
        console.print(f"score your own videos with it: .venv/bin/dfdc score clip.mp4 --checkpoint {local_model}")
        console.print(f"model: {local_model}")
    finally:
        import ray  # noqa: PLC0415

        ray.shutdown()
        if head is not None:
            head.stop()
            console.print("stopped the Ray head")
        if started:
            stack.down()
            console.print("stopped the local S3 server (its data stays in .dfdc/s3)")
    return 0


def train_job(dashboard_url: str, home: Path, cfg: Config, sets: list[str]) -> dict | None:
    """`python -m train` as a job through the Jobs API; its result.json once it succeeded."""
    from cluster import jobs  # noqa: PLC0415
    from dfdc import storage  # noqa: PLC0415
    from train.run import RESULT_FILE, new_run_name  # noqa: PLC0415

    run_name = new_run_name(cfg)  # a fresh name: two demos never share a run
    args = [*sets, f"data.dataset={FACES}", f"ray.run_name={run_name}"]
    entrypoint = shlex.join([sys.executable, "-m", "train", "--config", str(CONFIG), *[a for s in args for a in ("--set", s)]])
    client, job = jobs.submit(dashboard_url, entrypoint, {"DFDC_HOME": str(home), "PYTHONUNBUFFERED": "1"})
    console.print(f"submitted training job {job}: {entrypoint}")
    t0 = time.monotonic()
    shown: set[str] = set()  # the driver echoes worker lines that the job log also holds

    def show(line: str) -> None:
        if _worth_showing(line) and line not in shown:
            shown.add(line)
            console.print(f"  [dim]{line.strip()[:240]}[/dim]")

    status = jobs.follow(client, job, show)
    console.print(f"training job {job}: {status} after {time.monotonic() - t0:.0f}s")
    if status != "SUCCEEDED":
        console.print(f"[red]the training job did not succeed[/red]; its log: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']} .venv/bin/ray job logs {job} --address {dashboard_url}")
        return None
    return json.loads(storage.read_bytes(storage.join(cfg.ray.storage_path, run_name, RESULT_FILE)))


def copy_model(model_uri: str, folder: Path) -> Path:
    """The model file and its card in a local folder: `--checkpoint` then works in any shell, with
    the local S3 server stopped and no S3 settings."""
    from dfdc import storage  # noqa: PLC0415
    from train.model.file import card_uri  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    local = folder / Path(model_uri).name
    storage.write_bytes(str(local), storage.read_bytes(model_uri))
    storage.write_bytes(card_uri(str(local)), storage.read_bytes(card_uri(model_uri)))
    return local


def evaluate_and_score(model_uri: str, cfg: Config, home: Path) -> None:
    """`dfdc evaluate` on the val split (Ray tasks), then `dfdc score` on a video from a corpus
    made with another seed, which no training saw."""
    import dataclasses  # noqa: PLC0415

    from data_pipeline.synth import synth  # noqa: PLC0415
    from train import tracking  # noqa: PLC0415
    from train.evaluation.evaluate import evaluate  # noqa: PLC0415
    from train.scoring import report  # noqa: PLC0415
    from train.scoring.score import expand, score  # noqa: PLC0415

    t0 = time.monotonic()
    tracking.resolve(cfg, home)
    out = home / cfg.eval.out
    result = evaluate(model_uri, [FACES], cfg, out, log=console.print)
    console.print(f"evaluation took {time.monotonic() - t0:.0f}s (temperature {result['temperature']:.3f}, "
                  f"{cfg.eval.aggregate} aggregation); files:")
    for f in result["files"]:
        console.print(f"  {f}")

    synth(HELD_OUT, dataclasses.replace(cfg.synth, videos=1, seed=cfg.synth.seed + 1000), log=lambda *_: None)
    video = expand([HELD_OUT])[0]
    (line, crops), = score([video], model_uri, cfg, use_ray=False, progress=False, top_crops=4)
    page = out / "held-out.html"
    report.write(page, [(line, crops)], model_uri)
    brief = {k: line.get(k) for k in ("video", "p_fake", "faces_found", "error")}
    console.print(f"scored a held-out video: {json.dumps(brief)}; report {page}")


def _worth_showing(line: str) -> bool:
    """Epoch results and the final lines, not every worker's start-up chatter."""
    if "GetTimeoutError" in line:  # Ray Train asking a fixed-size cluster's autoscaler for resources: harmless
        return False
    return bool(re.search(r"epoch \d+/\d+: step|^val video|^temperature|^model:|^checkpoint:|^run |Error|error:", line))


if __name__ == "__main__":
    sys.exit(main())
