"""`make demo`: the main job on embedded defaults, on the local stack.

Starts the local S3 server (unless it runs) and a Ray head with its dashboard on 127.0.0.1,
synthesizes a DFDC-layout corpus onto S3, ingests it into face-crop shards on S3 (Ray tasks), submits
the training through Ray's Jobs API (2 workers, DeepSpeed ZeRO-2, MLflow in sqlite), follows its
log, prints validation log loss and AUC, evaluates the final model on the val split (metrics and
plots), scores a held-out video, prints `model: URI`, and stops what it started.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from cluster import local
from dfdc.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "demo.yaml"
RAW = f"s3://{local.DEFAULT_BUCKET}/raw/demo-synth"
FACES = f"s3://{local.DEFAULT_BUCKET}/faces/demo-synth"
HELD_OUT = f"s3://{local.DEFAULT_BUCKET}/raw/demo-held-out"


def main() -> int:
    from cluster.ray_head import start_head  # noqa: PLC0415
    from dfdc import storage  # noqa: PLC0415
    from dfdc.cli import console, print_summary  # noqa: PLC0415

    cfg = load_config(CONFIG)
    home = local.home()
    state, started = local.up()
    os.environ.update(state.server().env())
    os.environ["DFDC_HOME"] = str(home)
    console.print(f"local S3 server at {state.server().endpoint} ({'started' if started else 'already running'})")
    head = None
    try:
        t0 = time.monotonic()
        head = start_head(num_cpus=2, dashboard=True, log_path=home / "logs" / "ray-head.log", env=storage.worker_env())
        console.print(f"Ray head at {head.address}, dashboard {head.dashboard_url} ({time.monotonic() - t0:.0f}s)")
        os.environ["RAY_AUTH_MODE"] = "disabled"

        from data_pipeline.ingest import ingest  # noqa: PLC0415
        from data_pipeline.synth import synth  # noqa: PLC0415

        t0 = time.monotonic()
        synth(RAW, cfg.synth, log=console.print)
        console.print(f"synth took {time.monotonic() - t0:.0f}s")
        t0 = time.monotonic()
        cfg.ray.address = head.address
        summary = ingest(RAW, FACES, cfg, log=console.print)
        console.print(f"ingest took {time.monotonic() - t0:.0f}s")
        print_summary(summary.manifest)

        result = submit_training(head.dashboard_url, home, console)
        if result is None:
            return 1
        console.print(f"validation (video level): log loss {result['log_loss']}, AUC {result['auc']}")
        evaluate_and_score(result["model"], cfg, home, console)
        console.print(f"MLflow: .venv/bin/mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}  (then http://127.0.0.1:5000)",
                      soft_wrap=True, highlight=False)
        console.print(f"model: {result['model']}", highlight=False, soft_wrap=True)
    finally:
        import ray  # noqa: PLC0415

        ray.shutdown()
        if head is not None:
            head.stop()
            console.print("stopped the Ray head")
        if started:
            local.down()
            console.print("stopped the local S3 server (its data stays in .dfdc/s3)")
    return 0


def evaluate_and_score(model_uri: str, cfg, home: Path, console) -> None:
    """`dfdc evaluate` on the val split (Ray tasks), then `dfdc score` on a video from a corpus
    made with another seed, which no training saw."""
    import dataclasses  # noqa: PLC0415
    import json  # noqa: PLC0415

    from data_pipeline.synth import synth  # noqa: PLC0415
    from train import report, tracking  # noqa: PLC0415
    from train.evaluate import evaluate  # noqa: PLC0415
    from train.score import expand, score  # noqa: PLC0415

    t0 = time.monotonic()
    tracking.resolve(cfg, home)
    out = home / cfg.eval.out
    result = evaluate(model_uri, [FACES], cfg, out, log=console.print)
    console.print(f"evaluation took {time.monotonic() - t0:.0f}s (temperature {result['temperature']:.3f}, "
                  f"{cfg.eval.aggregate} aggregation); files:")
    for f in result["files"]:
        console.print(f"  {f}", highlight=False, soft_wrap=True)

    synth(HELD_OUT, dataclasses.replace(cfg.synth, videos=1, seed=cfg.synth.seed + 1000), log=lambda *_: None)
    video = expand([HELD_OUT])[0]
    (line, crops), = score([video], model_uri, cfg, use_ray=False, progress=False, top_crops=4)
    page = out / "held-out.html"
    report.write(page, [(line, crops)], model_uri)
    brief = {k: line.get(k) for k in ("video", "p_fake", "faces_found", "error")}
    console.print(f"scored a held-out video: {json.dumps(brief)}; report {page}", highlight=False, soft_wrap=True)


def submit_training(dashboard_url: str, home: Path, console) -> dict | None:
    """`ray job submit` through the Jobs API; follow the job's log until it ends."""
    from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: PLC0415

    from dfdc import storage  # noqa: PLC0415

    client = JobSubmissionClient(dashboard_url)
    entrypoint = f"{sys.executable} -m train --config {CONFIG} --set data.dataset={FACES} --set ray.run_name=demo-{int(time.time())}"
    env = storage.worker_env() | {"DFDC_HOME": str(home), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env})
    console.print(f"submitted training job {job}: {entrypoint}", highlight=False)
    t0 = time.monotonic()
    printed = 0
    shown: set[str] = set()  # the driver echoes worker lines that the job log also holds
    while True:
        status = client.get_job_status(job)
        logs = client.get_job_logs(job)
        for line in logs[printed:].splitlines():
            if _worth_showing(line) and line not in shown:
                shown.add(line)
                console.print(f"  [dim]{line.strip()[:240]}[/dim]", highlight=False, soft_wrap=True)
        printed = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(5)
    console.print(f"training job {job}: {status.value} after {time.monotonic() - t0:.0f}s")
    if status != JobStatus.SUCCEEDED:
        console.print(f"[red]the training job did not succeed[/red]; its log: ray job logs {job} --address {dashboard_url}")
        return None
    loss = re.search(r"val video log loss: (\S+)\s+val video AUC: (\S+)", logs)
    model = re.search(r"^model: (\S+)", logs, re.M)
    return {"log_loss": loss.group(1) if loss else "?", "auc": loss.group(2) if loss else "?", "model": model.group(1) if model else "?"}


def _worth_showing(line: str) -> bool:
    """Epoch results and the final lines, not every worker's start-up chatter."""
    if "GetTimeoutError" in line:  # Ray Train asking a fixed-size cluster's autoscaler for resources: harmless
        return False
    return bool(re.search(r"epoch \d+/\d+: step|^val video|^temperature|^model:|^checkpoint:|Error|error:", line))


if __name__ == "__main__":
    sys.exit(main())
