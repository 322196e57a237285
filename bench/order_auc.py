"""The demo trained with each epoch order, over several seeds: the validation AUC side by side.

The block order reads consecutive crops of a shard together; the question is whether training sees
that. The demo's corpus (configs/demo.yaml: 120 synthetic videos, 8 crops each) is synthesized and
ingested once on a throwaway S3 server and Ray head of this machine; then the demo's training runs
for each order and each seed (`optim.seed`: weights, augmentation and the order itself),
`--epochs` epochs each (fewer than the demo's 12: a 4-epoch run reached AUC 1.0 here, hiding any difference),
and the video-level validation AUC and log loss of the last epoch are printed, with each order's
mean and spread. The orders:
- permutation: one permutation of all crops (`data.order: permutation`);
- blocks: the default block order. The demo is small, and the block order cuts blocks smaller than
  `data.block_samples` when an epoch has fewer than streams x window x block samples: here blocks
  of one crop, so this is nearly a permutation dealt into streams;
- blocks of 32: the block order forced to whole blocks of 32 consecutive crops at this size
  (`data.streams: 2`, `data.window_blocks: 4`): each batch of 16 draws from at most 4 blocks, far
  less mixed than the default at DFDC size (bench/block_order.py measures that order's batch
  diversity there). The hard case for blocks.

Usage: python bench/order_auc.py [--seeds 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
ORDERS = {"permutation": ["data.order=permutation"], "blocks": ["data.order=blocks"],
          "blocks of 32": ["data.order=blocks", "data.streams=2", "data.window_blocks=4"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    from cluster.local.ray_head import auth_env, new_token, start_head
    from cluster.local.s3_server import temporary_server

    with tempfile.TemporaryDirectory(prefix="dfdc-order-auc-") as tmp, temporary_server("bench") as server:
        home = Path(tmp)
        token = new_token(home / "ray-auth-token")
        os.environ.update(auth_env(token))  # before this process first imports ray
        head = start_head(num_cpus=2, dashboard=False, log_path=home / "ray-head.log", env=server.env(), token_path=token)
        try:
            from data_pipeline.ingest import ingest
            from data_pipeline.synth import synth
            from dfdc.config import load_config
            from train.data.index import train_set_of
            from train.data.order import BlockOrder
            from train.run import run

            demo = HERE.parent / "configs" / "demo.yaml"
            faces = "s3://bench/faces"
            cfg = load_config(demo, [f"ray.address={head.address}"])
            t0 = time.perf_counter()
            synth("s3://bench/raw", cfg.synth, log=lambda *_: None)
            summary = ingest("s3://bench/raw", faces, cfg, progress=False, log=lambda *_: None)
            train = train_set_of(faces, summary.manifest, cache=None)
            block = BlockOrder(train.counts, 0, 0, cfg.data.batch_size, cfg.data.block_samples, cfg.data.window_blocks, cfg.data.streams)
            print(f"demo corpus: {train.samples} train crops in {len(train.counts)} shards (synth + ingest {time.perf_counter() - t0:.0f} s); "
                  f"the block order cuts blocks of {block.block} crop(s) into {block.streams} streams at this size")
            forced = BlockOrder(train.counts, 0, 0, cfg.data.batch_size, cfg.data.block_samples, 4, 2)
            print(f"forced: blocks of {forced.block} crops in {forced.streams} streams, windows of 4 blocks")
            rows = []
            for seed in range(args.seeds):
                for order, extra in ORDERS.items():
                    sets = [f"data.dataset={faces}", *extra, f"optim.seed={seed}", f"optim.epochs={args.epochs}",
                            f"ray.run_name=auc-{order.replace(' ', '')}-{seed}", "ray.storage_path=s3://bench/runs", f"ray.address={head.address}",
                            f"tracking.uri=sqlite:///{home}/mlflow.db", "tracking.system_metrics=false", "eval.fit_temperature=false"]
                    t0 = time.perf_counter()
                    out = run(load_config(demo, sets), home)
                    m = out["metrics"]
                    rows.append({"order": order, "seed": seed, "val_video_auc": m.get("val_video_auc"),
                                 "val_video_log_loss": m.get("val_video_log_loss"), "seconds": round(time.perf_counter() - t0)})
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            import ray

            ray.shutdown()
            head.stop()

    print("\n| order | seed | val video AUC | val video log loss | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['order']} | {r['seed']} | {r['val_video_auc']:.4f} | {r['val_video_log_loss']:.4f} | {r['seconds']} |")
    print("\n| order | AUC mean | AUC min-max over seeds | log loss mean |")
    print("|---|---|---|---|")
    for order in ORDERS:
        auc = [r["val_video_auc"] for r in rows if r["order"] == order]
        loss = [r["val_video_log_loss"] for r in rows if r["order"] == order]
        print(f"| {order} | {statistics.mean(auc):.4f} | {min(auc):.4f}-{max(auc):.4f} | {statistics.mean(loss):.4f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
