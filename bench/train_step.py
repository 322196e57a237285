"""Training speed of the real step (`train.loop.train_step`, what every Ray Train worker runs), side
by side in one run on this machine's accelerator (a GPU if there is one, else the CPU):

  in-memory  the step on one batch already on the device, over and over: the compute limit
             (also with NCHW inputs instead of channels-last, to show what the layout buys)
  streamed   the same step fed by the training loader (`train.data.batches`, in --order) from
             face-crop shards on S3: images/s, its ratio to in-memory, the fraction of wall time
             the rank waited for the next batch, and the cores the rank and the other processes
             (loader workers, S3 server) kept busy, beside the in-memory step's
  plain      (--plain) a bare PyTorch step of the same model, trainable parts, loss, batch and
             inputs, with no DeepSpeed: autocast, fused AdamW, torch's clipping; timed first and
             last, the faster counting

With --config, a recipe's own model, trainable parts, head, losses, size, batch, ZeRO stage and
precision (random weights). On a GPU, the peak memory torch held in each part.

One process, one rank (world size 1, gloo on CPU or NCCL on GPU), the DeepSpeed engine the config
builds. Without --dataset, a synthetic corpus is ingested (crops at --size) onto a throwaway local S3
server first.

Usage: python bench/train_step.py [--config configs/NAME.yaml] [--set KEY=VALUE] [--plain] [--model efficientnet_b0] [--size 128] [--batch 8] [--steps 20]
           [--precision fp32] [--zero 2] [--workers 2] [--order permutation] [--dataset s3://bucket/faces]
GPU:   python bench/train_step.py --model efficientnet_b4 --size 380 --batch 32 --precision bf16 --workers 8
       python bench/train_step.py --config configs/gend_clip_vitl14_ffpp.yaml --plain --order blocks --dataset s3://bench/faces224
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def step_images(cfg) -> int:
    """Images in one step's batch: with data.sbi 1.0 (the SBI recipe) every real crop trains beside
    its pseudo-fake, so twice data.batch_size."""
    return cfg.data.batch_size * (2 if cfg.data.sbi == 1.0 else 1)


class CpuUse:
    """Cores kept busy over a stretch, by this process (the rank: the step's threads) and by every
    other process on the machine together (beside a streamed step: the loader's workers and the
    local S3 server), from Linux's counters through psutil. On a machine with few cores the others
    take cores the step would use, a slowdown the rank's data-wait fraction does not show."""

    def __init__(self) -> None:
        self.machine, self.own, self.wall = self._busy(), time.process_time(), time.perf_counter()

    @staticmethod
    def _busy() -> float:
        import psutil  # noqa: PLC0415

        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    def cores(self) -> tuple[float, float]:
        """(the rank's cores, the other processes' cores) since this was made."""
        wall = time.perf_counter() - self.wall
        own = (time.process_time() - self.own) / wall
        return round(own, 2), round((self._busy() - self.machine) / wall - own, 2)


def in_memory(engine, cfg, steps: int, warmup: int, channels_last: bool = True) -> float:
    """Images/s of train_step on one batch that stays on the device."""
    from train.engine import to_device  # noqa: PLC0415
    from train.loop import train_step  # noqa: PLC0415

    size, batch = cfg.data.image_size, step_images(cfg)
    images, labels = to_device(torch.rand(batch, 3, size, size), torch.randint(0, 2, (batch,)).float(), engine, channels_last)
    for _ in range(warmup):
        train_step(engine, images, labels, optim=cfg.optim)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        train_step(engine, images, labels, optim=cfg.optim)
    sync()
    return steps * batch / (time.perf_counter() - t)


def streamed(engine, cfg, root: str, steps: int, warmup: int) -> tuple[float, float, tuple[float, float]]:
    """(images/s, data-wait fraction, CpuUse cores) of train_step fed by the training loader (in
    its default order, epochs chained), after `warmup` steps (the loader's workers start then)."""
    from data_pipeline import manifest as mf  # noqa: PLC0415
    from data_pipeline import shard_index  # noqa: PLC0415
    from train.data.loader import batches  # noqa: PLC0415
    from train.engine import to_device  # noqa: PLC0415
    from train.loop import train_step  # noqa: PLC0415
    from train.data.index import train_set_of  # noqa: PLC0415

    urls = mf.shard_urls(root, mf.load(root), "train")
    shard_index.ensure(urls, log=lambda *_: None)  # a dataset ingested before shards had indexes
    train = train_set_of(root)
    wait, images_seen = 0.0, 0
    it = iter(batches(train, urls, cfg.data, warmup + steps))
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0, wait, images_seen, use = time.perf_counter(), 0.0, 0, CpuUse()
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        images_seen += len(batch.images)
        images, labels = to_device(batch.images, batch.labels, engine)
        train_step(engine, images, labels, optim=cfg.optim)
    sync()
    wall = time.perf_counter() - t0
    return images_seen / wall, wait / wall, use.cores()


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


def plain(cfg, steps: int, warmup: int) -> float:
    """Images/s of a plain PyTorch step on the same model, trainable parts, loss, batch and inputs
    as the engine's, with no DeepSpeed: bench/zero_vs_ddp.py's PlainStep (autocast in the config's
    precision, fused AdamW, its schedule, torch's clipping, NCHW weights) driven by the same
    `train_step`, on the same channels-last batch. (Channels-last weights added nothing on an H100.)"""
    from bench.zero_vs_ddp import PlainStep  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    torch.manual_seed(0)
    step = PlainStep(build_model(cfg.model).train(), cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rate = in_memory(step, cfg, steps, warmup)
    del step
    return rate


def say(what: str) -> None:
    """Each part's figure as soon as it is measured (stderr, unbuffered): a run cut short by a time
    limit, as GPU time often is, still leaves what it measured."""
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def peak_gib() -> float | None:
    """The most GPU memory torch held since the last reset, in GiB (None on a CPU)."""
    if not torch.cuda.is_available():
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return round(peak, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a recipe (configs/NAME.yaml): its model, trainable parts, head, losses, size, batch, "
                                     "ZeRO stage and precision; the flags below override it. Its pretrained weights are not loaded")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a config override, repeatable")
    ap.add_argument("--model", help="model.name (default efficientnet_b0 without --config)")
    ap.add_argument("--size", type=int, help="data.image_size (default 128 without --config)")
    ap.add_argument("--batch", type=int, help="data.batch_size, per rank (default 8 without --config)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--stream-steps", type=int, help="timed steps of the streamed run (default --steps), e.g. an epoch's")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="deepspeed.precision (default fp32 without --config)")
    ap.add_argument("--zero", type=int, help="deepspeed.zero_stage (default 2 without --config)")
    ap.add_argument("--workers", type=int, help="data.num_workers, DataLoader workers (default 2 without --config)")
    ap.add_argument("--order", default="permutation", choices=("blocks", "permutation", "resampled"), help="data.order of the streamed run")
    ap.add_argument("--plain", action="store_true", help="also time a plain PyTorch step of the same model, loss and batch")
    ap.add_argument("--dataset", help="an ingested dataset (with manifest.json) to stream instead of a synthetic one")
    args = ap.parse_args()

    import torch.distributed as dist  # noqa: PLC0415

    from cluster.local.s3_server import free_port  # noqa: PLC0415
    from dfdc.config import load_config  # noqa: PLC0415
    from train.engine import build_engine  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    defaults = {} if args.config else {"model": "efficientnet_b0", "size": 128, "batch": 8, "precision": "fp32", "zero": 2, "workers": 2}
    flags = {k: getattr(args, k) if getattr(args, k) is not None else defaults.get(k)
             for k in ("model", "size", "batch", "precision", "zero", "workers")}
    keys = {"model": "model.name", "size": "data.image_size", "batch": "data.batch_size", "precision": "deepspeed.precision",
            "zero": "deepspeed.zero_stage", "workers": "data.num_workers"}
    cfg = load_config(args.config, [
        *(f"{keys[k]}={v}" for k, v in flags.items() if v is not None), f"data.order={args.order}",
        "model.pretrained=",  # random weights: the bench times the step, not what it learns
        "optim.warmup_steps=1",
        # the synthetic corpus: crops at the model's size, several shards
        "synth.videos=24", "ingest.frames_per_video=8", "ingest.faces_per_frame=1", "ingest.videos_per_task=4",
        "ingest.val_fraction=0", "ingest.shard_bytes=2000000", *args.overrides,
    ])
    cfg.ingest.crop_size = cfg.data.image_size
    d, m = cfg.data, cfg.model
    with dataset(args, cfg) as root:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
        if torch.cuda.is_available():
            torch.cuda.set_device(0)
        say("started")
        plain_rate = plain(cfg, args.steps, args.warmup) if args.plain else None
        peak_plain = peak_gib()
        if plain_rate is not None:
            say(f"plain: {plain_rate:.1f} images/s, peak {peak_plain} GiB")
        torch.manual_seed(0)
        engine, _ = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10**6)
        say("engine built")
        # In-memory before and after streaming; the faster counts as the limit (whatever else ran on
        # the machine just before, e.g. the ingest's Ray workers shutting down, slows one of them).
        before = in_memory(engine, cfg, args.steps, args.warmup)
        peak_engine = peak_gib()
        say(f"in-memory: {before:.1f} images/s, peak {peak_engine} GiB")
        rate, wait, streamed_cores = streamed(engine, cfg, root, args.stream_steps or args.steps, args.warmup)
        peak_streamed = peak_gib()
        say(f"streamed: {rate:.1f} images/s, data-wait {wait:.1%}, peak {peak_streamed} GiB")
        use = CpuUse()
        after = in_memory(engine, cfg, args.steps, args.warmup)
        in_memory_cores = use.cores()
        say(f"in-memory again: {after:.1f} images/s")
        nchw = in_memory(engine, cfg, args.steps, args.warmup, channels_last=False)
        if plain_rate is not None:  # again last, as the engine ran before and after: the faster counts
            plain_runs = [plain_rate, plain(cfg, args.steps, args.warmup)]
            say(f"plain again: {plain_runs[1]:.1f} images/s")
            plain_rate = max(plain_runs)
        compute = max(before, after)
        dist.destroy_process_group()
    trained = sum(p.numel() for p in engine.module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in engine.module.parameters())
    print(f"{m.name} at {d.image_size}px ({m.trainable} trainable: {trained / 1e6:.1f} M of {total / 1e6:.1f} M parameters, head {m.head}), "
          f"batch {step_images(cfg)}, {cfg.deepspeed.precision}, ZeRO-{cfg.deepspeed.zero_stage}, 1 rank on {device_name()}, "
          f"{d.num_workers} loader workers ({args.order} order), {args.steps} timed steps after {args.warmup} "
          f"({args.stream_steps or args.steps} streamed)"
          + (f", config {args.config}" if args.config else ""))
    print(f"{'step fed by':12} {'images/s':>9} {'vs in-memory':>13}")
    print(f"{'in-memory':12} {compute:9.1f} {1.0:12.2f}x   (runs before and after streaming: {before:.1f}, {after:.1f})")
    print(f"{'streamed':12} {rate:9.1f} {rate / compute:12.2f}x   data-wait fraction {wait:.1%}")
    if nchw is not None:
        print(f"{'NCHW inputs':12} {nchw:9.1f} {nchw / compute:12.2f}x   (in-memory, inputs not channels-last)")
    if plain_rate is not None:
        print(f"{'plain torch':12} {plain_rate:9.1f} {plain_rate / compute:12.2f}x   (no DeepSpeed, runs first and last: "
              f"{plain_runs[0]:.1f}, {plain_runs[1]:.1f}; the engine in-memory is {compute / plain_rate:.2f}x of it, "
              f"streamed {rate / plain_rate:.2f}x)")
    print(f"CPU cores busy (rank, other processes): in-memory {in_memory_cores[0]}, {in_memory_cores[1]}; "
          f"streamed {streamed_cores[0]}, {streamed_cores[1]} (the others: the loader's workers, the local S3 server)")
    if peak_engine is not None:
        print(f"peak GPU memory, GiB: engine in-memory {peak_engine}, streamed {peak_streamed}, plain {peak_plain}")
    print(json.dumps({"device": device_name(), "config": args.config, "model": m.name, "trainable": m.trainable, "head": m.head,
                      "trainable_params": trained, "params": total, "size": d.image_size, "batch": step_images(cfg), "stream_steps": args.stream_steps or args.steps,
                      "precision": cfg.deepspeed.precision, "zero": cfg.deepspeed.zero_stage, "workers": d.num_workers, "order": args.order,
                      "in_memory_images_per_s": round(compute, 2), "in_memory_runs": [round(before, 2), round(after, 2)], "streamed_images_per_s": round(rate, 2),
                      "streamed_vs_in_memory": round(rate / compute, 3), "data_wait_fraction": round(wait, 3),
                      "cpu_cores_rank_others": {"in_memory": in_memory_cores, "streamed": streamed_cores},
                      "in_memory_nchw_images_per_s": None if nchw is None else round(nchw, 2),
                      "plain_images_per_s": None if plain_rate is None else round(plain_rate, 2),
                      "plain_runs": None if plain_rate is None else [round(r, 2) for r in plain_runs],
                      "engine_vs_plain": None if plain_rate is None else round(compute / plain_rate, 3),
                      "streamed_vs_plain": None if plain_rate is None else round(rate / plain_rate, 3),
                      "peak_gib": {"engine_in_memory": peak_engine, "streamed": peak_streamed, "plain": peak_plain}}))


if __name__ == "__main__":
    main()
