"""`make demo` end to end on a tiny corpus, as a user runs it (its own S3 server and Ray head, the
training through the Jobs API); then, in a new shell with nothing running and no S3 settings,
`dfdc score` with the model the demo printed scores a video."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from dfdc.config import load_config

TINY_DEMO = ["synth.videos=12", "synth.seconds=1.0", "synth.fps=12", "synth.width=160", "synth.height=120",
             "synth.identities=4", "detector.min_face_size=20", "ingest.frames_per_video=4", "ingest.videos_per_task=4",
             "ingest.crop_size=64", "ingest.val_fraction=0.5", "data.image_size=48", "data.batch_size=8", "optim.epochs=1", "tracking.system_metrics=false",
             "eval.fit_temperature=false"]


def test_demo_then_score_with_the_printed_model_in_a_new_shell(tmp_path):
    shell = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "DFDC_", "MLFLOW_"))}
    demo = subprocess.run([sys.executable, "-m", "cluster.local.demo", *[a for s in TINY_DEMO for a in ("--set", s)]],
                          cwd=tmp_path, env=shell, capture_output=True, text=True, timeout=1200)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "stopped the Ray head" in demo.stdout and "stopped the local S3 server" in demo.stdout
    model = re.search(r"^model: (\S+)$", demo.stdout, re.M).group(1)
    assert re.search(r"scored a held-out video: .*\"p_fake\": 0\.\d+", demo.stdout), demo.stdout[-2000:]

    from data_pipeline.synth import synth

    clip_dir = tmp_path / "mine"
    synth(str(clip_dir), load_config(None, ["synth.videos=1", "synth.seed=99", "synth.width=160", "synth.height=120",
                                            "synth.seconds=1.0", "synth.fps=12"]).synth, log=lambda *_: None)
    clip = next(clip_dir.rglob("*.mp4"))
    score = subprocess.run([str(Path(sys.executable).parent / "dfdc"), "score", str(clip), "--checkpoint", model, "--no-progress"],
                           cwd=tmp_path, env=shell, capture_output=True, text=True, timeout=300)
    assert score.returncode == 0, score.stderr[-3000:]
    line = json.loads(score.stdout)
    assert line["video"] == str(clip) and 0 <= line["p_fake"] <= 1 and line["faces_found"] > 0
