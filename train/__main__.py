"""`python -m train --config configs/X.yaml [--set a.b=c ...]`: what `ray job submit` runs on a
cluster (and `dfdc train` runs on the local Ray). Prints the run's result; the same result is in
`<storage_path>/<run_name>/result.json`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dfdc.config import ConfigError, load_config
from dfdc.storage import StorageError, join


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    ap.add_argument("--config", "-c", type=Path, help="YAML config; embedded defaults otherwise")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override a key, e.g. optim.lr=3e-4")
    args = ap.parse_args(argv)
    try:  # before the imports of torch, DeepSpeed and Ray: a bad config answers at once
        cfg = load_config(args.config, args.sets)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from data_pipeline.manifest import ManifestError  # noqa: PLC0415
    from dfdc.reach import Unreachable  # noqa: PLC0415
    from train.checkpoint import ResumeError  # noqa: PLC0415
    from train.run import RESULT_FILE, run, run_uri  # noqa: PLC0415

    try:
        out = run(cfg, Path(os.environ.get("DFDC_HOME", ".dfdc")))
    except (ConfigError, ResumeError, ManifestError) as e:  # what the user gave is wrong: exit 2, as a usage error
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (StorageError, Unreachable) as e:  # storage, Ray or MLflow failed: exit 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = out["metrics"] or {}
    print(f"val video log loss: {m.get('val_video_log_loss', float('nan')):.4f}  val video AUC: {m.get('val_video_auc', float('nan')):.4f}")
    if out.get("calibration"):
        c = out["calibration"]
        print(f"temperature: {c['temperature']:.3f}  val video log loss calibrated: {c['val_video_log_loss_calibrated']:.4f}")
    if out.get("stopped"):
        print(f"stopped early: {out['stopped']} (budget.dollars passed; the model is the checkpoint taken when it did)")
    if out.get("cost"):
        c = out["cost"]
        print(f"cost (estimate): ${c['cost_dollars']:.4f}, {c['cost_gpu_hours']:.3f} GPU-hours, {c['cost_node_hours']:.3f} node-hours")
    print(f"checkpoint: {out['checkpoint']}")
    print(f"result: {join(run_uri(cfg), RESULT_FILE)}")
    print(f"model: {out['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
