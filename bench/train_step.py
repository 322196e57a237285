"""Training step time, side by side in one run: plain torch DDP and DeepSpeed ZeRO 0/1/2/3 on the
same model and batch, 2 ranks over gloo on this machine's CPUs (or NCCL on GPUs); then the share of
step time spent waiting for data when shards stream from a local S3 server.

Usage: python bench/train_step.py [--model efficientnet_b0] [--size 128] [--batch 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cluster.s3_server import free_port


def step_times(rank: int, world: int, port: int, args, mode: str, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from dfdc.config import load_config  # noqa: PLC0415
    from train.engine import build_engine  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    cfg = load_config(None, [f"model.name={args.model}", f"data.batch_size={args.batch}", "optim.warmup_steps=1"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    images = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 2, (args.batch,)).float()
    if mode == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def step():
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(net(images).squeeze(1), labels).backward()
            opt.step()
    else:
        cfg.deepspeed.zero_stage = int(mode[-1])
        engine, _ = build_engine(model, cfg, world, total_steps=1000)

        def step():
            loss = F.binary_cross_entropy_with_logits(engine(images).squeeze(1), labels)
            engine.backward(loss)
            engine.step()

    for _ in range(3):
        step()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    dist.barrier()
    if rank == 0:
        out.put((mode, (time.perf_counter() - t) / args.steps))
    dist.destroy_process_group()


def data_wait(args) -> float:
    """Stream a synthetic ingested corpus from a local S3 server through the training loader, and
    time a model step per batch: the fraction of wall time spent waiting for the next batch."""
    from dfdc.config import load_config  # noqa: PLC0415
    from cluster.s3_server import temporary_server  # noqa: PLC0415
    from data_pipeline import manifest as mf  # noqa: PLC0415
    from data_pipeline.ingest import ingest  # noqa: PLC0415
    from data_pipeline.synth import synth  # noqa: PLC0415
    from train.data import train_loader  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    with temporary_server("bench"):
        cfg = load_config(None, ["synth.videos=30", "ingest.frames_per_video=8", f"ingest.crop_size={args.size}",
                                 "ingest.videos_per_task=6", "ingest.val_fraction=0", f"data.batch_size={args.batch}",
                                 f"data.image_size={args.size}", "data.num_workers=2", f"model.name={args.model}"])
        synth("s3://bench/raw", cfg.synth, log=lambda *_: None)
        ingest("s3://bench/raw", "s3://bench/faces", cfg, progress=False, log=lambda *_: None)
        import ray  # noqa: PLC0415

        ray.shutdown()
        urls = mf.shard_urls("s3://bench/faces", mf.load("s3://bench/faces"), "train")
        model = build_model(cfg.model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        wait = busy = 0.0
        end = time.perf_counter()
        for i, (images, labels, _) in enumerate(train_loader(urls, cfg.data, args.steps + 3, 0, 0, 0)):
            got = time.perf_counter()
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(model(images).squeeze(1), labels).backward()
            opt.step()
            done = time.perf_counter()
            if i >= 3:  # after the loader's workers have started
                wait += got - end
                busy += done - got
            end = done
        return wait / (wait + busy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    rows = {}
    for mode in ("ddp", "zero0", "zero1", "zero2", "zero3"):
        out = ctx.Queue()
        mp.start_processes(step_times, args=(2, free_port(), args, mode, out), nprocs=2, join=True, start_method="spawn")
        name, seconds = out.get()
        rows[name] = seconds
    print(f"{args.model} at {args.size}px, batch {args.batch} per rank, 2 ranks (gloo, CPU), {args.steps} timed steps")
    print(f"{'engine':10} {'step (ms)':>10} {'vs DDP':>8}")
    for name, s in rows.items():
        print(f"{name:10} {s * 1000:10.0f} {s / rows['ddp']:7.2f}x")
    print(f"data-wait fraction streaming from a local S3 server (1 process, 2 loader workers): {data_wait(args):.1%}")


if __name__ == "__main__":
    main()
