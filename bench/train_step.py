"""Training speed of the real step (`train.loop.train_step`, what every Ray Train worker runs), side
by side in one run on this machine's accelerator (a GPU if there is one, else the CPU):

  in-memory  the step on one batch already on the device, over and over: the compute limit
             (on a GPU also with NCHW inputs instead of channels-last, to show what the layout buys)
  streamed   the same step fed by the training loader (`train.data.batches`, in --order, by default the
             epoch permutation) from face-crop shards on S3: images/s, its ratio to in-memory, and the fraction of wall time the rank
             waited for the next batch

One process, one rank (world size 1, gloo on CPU or NCCL on GPU), the DeepSpeed engine the config
builds. Without --dataset, a synthetic corpus is ingested (crops at --size) onto a throwaway local S3
server first.

Usage: python bench/train_step.py [--model efficientnet_b0] [--size 128] [--batch 8] [--steps 20]
           [--precision fp32] [--zero 2] [--workers 2] [--order permutation] [--dataset s3://bucket/faces]
GPU:   python bench/train_step.py --model efficientnet_b4 --size 380 --batch 32 --precision bf16 --workers 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def in_memory(engine, cfg, steps: int, warmup: int, channels_last: bool = True) -> float:
    """Images/s of train_step on one batch that stays on the device."""
    from train.engine import to_device  # noqa: PLC0415
    from train.loop import train_step  # noqa: PLC0415

    size, batch = cfg.data.image_size, cfg.data.batch_size
    images, labels = to_device(torch.rand(batch, 3, size, size), torch.randint(0, 2, (batch,)).float(), engine, channels_last)
    for _ in range(warmup):
        train_step(engine, images, labels)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        train_step(engine, images, labels)
    sync()
    return steps * batch / (time.perf_counter() - t)


def streamed(engine, cfg, root: str, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, data-wait fraction) of train_step fed by the training loader (in its default
    order, epochs chained), after `warmup` steps (the loader's workers start then)."""
    from data_pipeline import manifest as mf  # noqa: PLC0415
    from data_pipeline import shard_index  # noqa: PLC0415
    from train.data.loader import batches  # noqa: PLC0415
    from train.engine import to_device  # noqa: PLC0415
    from train.loop import train_step  # noqa: PLC0415
    from train.data.index import train_set_of  # noqa: PLC0415

    urls = mf.shard_urls(root, mf.load(root), "train")
    shard_index.ensure(urls, log=lambda *_: None)  # a dataset ingested before shards had indexes
    train = train_set_of(root)
    wait = 0.0
    it = iter(batches(train, urls, cfg.data, warmup + steps))
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0, wait = time.perf_counter(), 0.0
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        images, labels = to_device(batch.images, batch.labels, engine)
        train_step(engine, images, labels)
    sync()
    wall = time.perf_counter() - t0
    return steps * cfg.data.batch_size / wall, wait / wall


@contextlib.contextmanager
def dataset(args, cfg):
    """The dataset root: --dataset, or a synthetic corpus ingested onto a throwaway S3 server."""

    if args.dataset:
        yield args.dataset
        return
    import ray  # noqa: PLC0415

    from cluster.local.s3_server import temporary_server  # noqa: PLC0415
    from data_pipeline.ingest import ingest  # noqa: PLC0415
    from data_pipeline.synth import synth  # noqa: PLC0415

    with temporary_server("bench"):
        synth("s3://bench/raw", cfg.synth, log=lambda *_: None)
        ingest("s3://bench/raw", "s3://bench/faces", cfg, progress=False, log=lambda *_: None)
        ray.shutdown()
        yield "s3://bench/faces"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--order", default="permutation", choices=("permutation", "resampled"), help="data.order of the streamed run")
    ap.add_argument("--dataset", help="an ingested dataset (with manifest.json) to stream instead of a synthetic one")
    args = ap.parse_args()

    import torch.distributed as dist  # noqa: PLC0415

    from cluster.local.s3_server import free_port  # noqa: PLC0415
    from dfdc.config import load_config  # noqa: PLC0415
    from train.engine import build_engine  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    cfg = load_config(None, [
        f"model.name={args.model}", f"data.image_size={args.size}", f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}", f"data.order={args.order}", f"deepspeed.precision={args.precision}", f"deepspeed.zero_stage={args.zero}",
        "optim.warmup_steps=1",
        # the synthetic corpus: crops at the model's size, several shards
        "synth.videos=24", "ingest.frames_per_video=8", "ingest.faces_per_frame=1", f"ingest.crop_size={args.size}",
        "ingest.videos_per_task=4", "ingest.val_fraction=0", "ingest.shard_bytes=2000000",
    ])
    with dataset(args, cfg) as root:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
        if torch.cuda.is_available():
            torch.cuda.set_device(0)
        torch.manual_seed(0)
        engine, _ = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10**6)
        # In-memory before and after streaming; the faster counts as the limit (whatever else ran on
        # the machine just before, e.g. the ingest's Ray workers shutting down, slows one of them).
        before = in_memory(engine, cfg, args.steps, args.warmup)
        rate, wait = streamed(engine, cfg, root, args.steps, args.warmup)
        after = in_memory(engine, cfg, args.steps, args.warmup)
        nchw = in_memory(engine, cfg, args.steps, args.warmup, channels_last=False) if torch.cuda.is_available() else None
        compute = max(before, after)
        dist.destroy_process_group()
    print(f"{args.model} at {args.size}px, batch {args.batch}, {args.precision}, ZeRO-{args.zero}, 1 rank on {device_name()}, "
          f"{args.workers} loader workers ({args.order} order), {args.steps} timed steps after {args.warmup}")
    print(f"{'step fed by':12} {'images/s':>9} {'vs in-memory':>13}")
    print(f"{'in-memory':12} {compute:9.1f} {1.0:12.2f}x   (runs before and after streaming: {before:.1f}, {after:.1f})")
    print(f"{'streamed':12} {rate:9.1f} {rate / compute:12.2f}x   data-wait fraction {wait:.1%}")
    if nchw is not None:
        print(f"{'NCHW inputs':12} {nchw:9.1f} {nchw / compute:12.2f}x   (in-memory, inputs not channels-last)")
    print(json.dumps({"device": device_name(), "model": args.model, "size": args.size, "batch": args.batch,
                      "precision": args.precision, "zero": args.zero, "workers": args.workers, "order": args.order,
                      "in_memory_images_per_s": round(compute, 2), "in_memory_runs": [round(before, 2), round(after, 2)], "streamed_images_per_s": round(rate, 2),
                      "streamed_vs_in_memory": round(rate / compute, 3), "data_wait_fraction": round(wait, 3),
                      "in_memory_nchw_images_per_s": None if nchw is None else round(nchw, 2)}))


if __name__ == "__main__":
    main()
