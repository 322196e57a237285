"""Step time of the DeepSpeed engine at ZeRO stages 0-3 beside plain torch DDP, side by side in one
run: the same model, batch, optimizer (AdamW), LR schedule, gradient clipping and precision, driven by
the real step (`train.loop.train_step`; DDP through a small adapter with the engine's three calls),
on one in-memory batch per rank, over --ranks processes (gloo on CPU, NCCL when there is a GPU per
rank). With torch.compile too ("+compile": `model.compile`, the engine's own engine.compile; DDP's
model compiled before it is wrapped). Configurations run in turn, --rounds times, after --warmup
steps each (the compiled ones compile in theirs); a step's time is the slowest rank's. Prints each
one's median ms per step and its ratio to DDP.

Usage: python bench/zero_vs_ddp.py [--model efficientnet_b0] [--size 128] [--batch 8] [--ranks 2]
           [--steps 8] [--warmup 3] [--rounds 3] [--precision fp32] [--configs ddp zero0 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist

CONFIGS = ("ddp", "zero0", "zero1", "zero2", "zero3", "ddp+compile", "zero0+compile", "zero2+compile")


class PlainStep:
    """A plain PyTorch step behind the three calls `train_step` makes on a DeepSpeed engine, configured
    as `train.engine.build_engine` configures the engine: AdamW (fused), the warm-up + cosine
    schedule, gradient clipping (torch's), autocast in --precision, NCHW weights; `to_device` gives it
    the engine's inputs. bench/step_syncs.py and bench/train_step.py time it too."""

    def __init__(self, model: torch.nn.Module, cfg, device: torch.device):
        from train.engine import AUTOCAST, lr_lambda  # noqa: PLC0415

        self.device, self.module = device, model.to(device)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr,
                                           weight_decay=cfg.optim.weight_decay, fused=True)  # as build_engine's
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.optim.warmup_steps, 10**6))
        self.clip = cfg.optim.grad_clip
        self.dtype = getattr(torch, AUTOCAST[cfg.deepspeed.precision]) if cfg.deepspeed.precision in AUTOCAST else None

    # What train.engine.to_device asks of an engine, so that the plain step's inputs are the engine's:
    # cast to the autocast dtype, channels-last.
    def torch_autocast_enabled(self) -> bool:
        return self.dtype is not None

    def torch_autocast_dtype(self) -> torch.dtype | None:
        return self.dtype

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.module(images)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


class DDPEngine(PlainStep):
    """The plain step with the model in torch's DistributedDataParallel."""

    def __init__(self, model: torch.nn.Module, cfg, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

        super().__init__(model, cfg, device)
        self.module = DistributedDataParallel(self.module, device_ids=[device.index] if device.type == "cuda" else None)


def build(name: str, args, world: int, device: torch.device):
    from dfdc.config import load_config  # noqa: PLC0415
    from train.engine import build_engine  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    kind, _, compiled = name.partition("+")
    zero = 0 if kind == "ddp" else int(kind.removeprefix("zero"))
    cfg = load_config(None, [f"model.name={args.model}", f"data.image_size={args.size}", f"data.batch_size={args.batch}",
                             f"deepspeed.precision={args.precision}", f"deepspeed.zero_stage={zero}", "optim.warmup_steps=1",
                             f"model.compile={'true' if compiled else 'false'}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if kind == "ddp":
        if compiled:
            model.compile()
        return DDPEngine(model, cfg, device)
    engine, _ = build_engine(model, cfg, world_size=world, total_steps=10**6)
    return engine


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rank_main(rank: int, world: int, port: int, args, out) -> None:
    configs = args.configs
    from train.engine import to_device  # noqa: PLC0415
    from train.loop import train_step  # noqa: PLC0415

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    cuda = torch.cuda.device_count() >= world
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the ranks share this machine's cores
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    engines = {name: build(name, args, world, device) for name in configs}
    g = torch.Generator().manual_seed(rank)
    batch = {}
    for name, engine in engines.items():
        images, labels = torch.rand(args.batch, 3, args.size, args.size, generator=g), torch.randint(0, 2, (args.batch,), generator=g).float()
        batch[name] = to_device(images, labels, engine)
        for _ in range(args.warmup):
            train_step(engine, *batch[name])
    times: dict[str, list[float]] = {name: [] for name in configs}
    from rich.progress import track  # noqa: PLC0415

    for _ in track(range(args.rounds), description="rounds", disable=rank != 0):
        for name, engine in engines.items():
            sync(device)
            dist.barrier()
            t = time.perf_counter()
            for _ in range(args.steps):
                train_step(engine, *batch[name])
            sync(device)
            elapsed = torch.tensor([time.perf_counter() - t])
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank sets the step
            times[name].append(elapsed.item() / args.steps)
    if rank == 0:
        out.put({"device": torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)", "times": times})
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="per rank")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per configuration and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS, help="which to run (ddp always)")
    args = ap.parse_args()
    args.configs = ["ddp"] + [c for c in args.configs if c != "ddp"]

    import torch.multiprocessing as mp  # noqa: PLC0415

    from cluster.local.s3_server import free_port  # noqa: PLC0415

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=rank_main, args=(r, args.ranks, port, args, out)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    got = out.get(timeout=3600)
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a rank exited with {p.exitcode}")
    med = {name: statistics.median(t) for name, t in got["times"].items()}
    print(f"{args.model} at {args.size}px, batch {args.batch} per rank, {args.precision}, {args.ranks} ranks on {got['device']}, "
          f"{args.steps} steps x {args.rounds} rounds in turn after {args.warmup}")
    print(f"{'step':14} {'ms/step (median)':>17} {'vs DDP':>8} {'rounds (ms)':>20}")
    for name in args.configs:
        print(f"{name:14} {med[name] * 1e3:17.1f} {med[name] / med['ddp']:7.2f}x   "
              + ", ".join(f"{t * 1e3:.0f}" for t in got["times"][name]))
    print(json.dumps({"device": got["device"], "model": args.model, "size": args.size, "batch": args.batch, "ranks": args.ranks,
                      "precision": args.precision, "ms_per_step": {n: [round(t * 1e3, 1) for t in ts] for n, ts in got["times"].items()}}))


if __name__ == "__main__":
    main()
