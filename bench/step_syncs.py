"""What makes the host wait in one training step, and what the step costs, side by side in one run:

  plain            a plain PyTorch step of the same model, loss, batch and precision: autocast, fused
                   AdamW, its schedule, torch's clip_grad_norm_ (bench/zero_vs_ddp.py's PlainStep,
                   what a DDP user writes)
  zero0            the project's step (`train.loop.train_step` on `train.engine.build_engine`)
  zero0-ds-clip    the same engine with DeepSpeed's own settings as the project used them until
                   5 December 2026: its throughput timer on, its own ZeRO-0 clipping, AdamW fused only
                   on CUDA, its all-reduce of one rank's gradients (the engine before
                   `train/engine.py` turned these off)
  zero1-3          the project's step at ZeRO 1, 2 and 3

For each: ms per step (median of --rounds, configurations in turn), aten ops dispatched per step
(about one kernel launch each on a GPU), and per step the host's waits as `train.host_waits`
counts them: DeepSpeed's device synchronizations, values read back to the host, tensors made from
Python values (on a GPU each is a copy the host waits for). On a GPU also the synchronizations
CUDA itself saw (torch.cuda.set_sync_debug_mode). One process, world size 1 (gloo on CPU, NCCL on
a GPU), one in-memory batch.

Usage: python bench/step_syncs.py [--config configs/NAME.yaml] [--set KEY=VALUE ...] [--steps 8]
           [--warmup 3] [--rounds 3] [--configs plain zero0 ...]
Default: efficientnet_b0 at 128 px, batch 8, fp32 (this CPU); with --config, the recipe's model,
trainable parts, head, losses and precision, at its size and batch unless --set says otherwise
(random weights: its pretrained ones are not loaded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, from any folder

CONFIGS = ("plain", "zero0", "zero0-ds-clip", "zero1", "zero2", "zero3")  # ZeRO-3 last: it patches F.linear for the process
DEFAULTS = ["model.name=efficientnet_b0", "data.image_size=128", "data.batch_size=8", "deepspeed.precision=fp32"]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def deepspeed_defaults(model: torch.nn.Module, cfg):
    """The engine as `build_engine` made it before 5 December 2026: DeepSpeed's throughput timer and
    its own ZeRO-0 clipping on, AdamW fused only on CUDA. Same config otherwise, without the LR
    schedule (which dispatches no op and waits for nothing)."""
    import deepspeed  # noqa: PLC0415

    from train.engine import deepspeed_config  # noqa: PLC0415

    params = [p for p in model.parameters() if p.requires_grad]
    ds = deepspeed_config(cfg, 1, trainable_params=sum(p.numel() for p in params))
    ds["gradient_clipping"] = cfg.optim.grad_clip
    del ds["timers"]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=torch.cuda.is_available())
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    return engine


def build(name: str, base: list[str], config: str | None, device: torch.device):
    from dfdc.config import load_config  # noqa: PLC0415
    from train.engine import build_engine  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    stage = 0 if name in ("plain", "zero0-ds-clip") else int(name.removeprefix("zero"))
    cfg = load_config(config, [*base, f"deepspeed.zero_stage={stage}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if name == "plain":
        from bench.zero_vs_ddp import PlainStep  # noqa: PLC0415

        return PlainStep(model, cfg, device), cfg
    if name == "zero0-ds-clip":
        return deepspeed_defaults(model, cfg), cfg
    return build_engine(model, cfg, world_size=1, total_steps=10**6)[0], cfg


@contextlib.contextmanager
def cuda_syncs(counts: dict):
    """Counts the synchronizations CUDA saw (a warning each in torch's sync debug mode)."""
    if not torch.cuda.is_available():
        yield
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counts["cuda_syncs"] = sum("synchroniz" in str(w.message) for w in seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a recipe (configs/NAME.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per configuration and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    args = ap.parse_args()
    from cluster.local.s3_server import free_port  # noqa: PLC0415
    from train.engine import to_device  # noqa: PLC0415
    from train.host_waits import HostWaits, per_step  # noqa: PLC0415
    from train.loop import train_step  # noqa: PLC0415

    cuda = torch.cuda.is_available()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    base = ([] if args.config else DEFAULTS) + ["model.pretrained="] + args.set  # random weights: the step, not what it learns
    configs = [c for c in CONFIGS if c in args.configs]
    steps, counts = {}, {}
    for name in configs:
        step, cfg = build(name, base, args.config, device)
        g = torch.Generator().manual_seed(0)
        images = torch.rand(cfg.data.batch_size, 3, cfg.data.image_size, cfg.data.image_size, generator=g)
        labels = torch.randint(0, 2, (cfg.data.batch_size,), generator=g).float()
        batch = to_device(images, labels, step)  # the plain step too: the engine's inputs
        for _ in range(args.warmup):  # DeepSpeed's timer starts waiting from its third step
            train_step(step, *batch, optim=cfg.optim)
        sync()
        counts[name] = {}
        with HostWaits() as waits, cuda_syncs(counts[name]):
            for _ in range(3):
                train_step(step, *batch, optim=cfg.optim)
        sync()  # outside: not one of the step's own
        counts[name] |= per_step(waits, 3) | {"where": dict(waits.where)}
        if "cuda_syncs" in counts[name]:
            counts[name]["cuda_syncs"] /= 3
        steps[name] = (step, batch, cfg)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (step, batch, cfg) in steps.items():
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                train_step(step, *batch, optim=cfg.optim)
            sync()
            times[name].append((time.perf_counter() - t) / args.steps)
    med = {name: statistics.median(t) for name, t in times.items()}
    cfg = steps[configs[0]][2]
    where = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"{cfg.model.name} at {cfg.data.image_size}px, batch {cfg.data.batch_size}, {cfg.deepspeed.precision}, "
          f"grad_clip {cfg.optim.grad_clip}, 1 rank on {where}; {args.steps} steps x {args.rounds} rounds in turn after {args.warmup}")
    first = configs[0]
    print(f"{'step':14} {'ms/step':>9} {'vs ' + first:>10} {'ops/step':>9} {'DS syncs':>9} {'reads':>6} {'from Python':>12}"
          + (f" {'CUDA syncs':>11}" if cuda else "") + "   rounds (ms)")
    for name in configs:
        c = counts[name]
        print(f"{name:14} {med[name] * 1e3:9.1f} {med[name] / med[first]:9.2f}x {c['ops']:9.0f} {c['device_syncs']:9.1f} "
              f"{c['reads']:6.1f} {c['from_python']:12.1f}" + (f" {c['cuda_syncs']:11.1f}" if cuda else "")
              + "   " + ", ".join(f"{t * 1e3:.0f}" for t in times[name]))
    for name in configs:
        for site, n in sorted(counts[name]["where"].items()):
            print(f"  {name}: {n / 3:.1f} a step: {site}")
    print(json.dumps({"device": where, "model": cfg.model.name, "size": cfg.data.image_size, "batch": cfg.data.batch_size,
                      "precision": cfg.deepspeed.precision, "ms_per_step": {n: [round(t * 1e3, 2) for t in ts] for n, ts in times.items()},
                      "per_step": {n: {k: v for k, v in c.items() if k != "where"} for n, c in counts.items()}}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
