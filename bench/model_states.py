"""What the DeepSpeed engine holds in memory per rank beside the model, for each recipe's model and
trainable parts at ZeRO stages 0-3: the bytes of every live tensor in rank 0's process (each storage
once), less those of the model alone (parameters and buffers), after the backward pass of a second
step (activations freed, gradients not yet used) and after its optimizer step; and the gradient
buckets ZeRO 1-2 allocate in the backward pass, seen as they are made. What is left is gradients,
optimizer state, DeepSpeed's copies and buckets: what a GPU holds whatever the batch (activations
come on top). A tensor counts at its allocated size, written or not, as on a GPU. Random weights, the
recipe's model, trainable parts and image size, its precision unless --precision; batch 2 a rank.
Each configuration runs in fresh processes (--ranks of them, gloo on CPU).

Usage: python bench/model_states.py [--config configs/dfdc_b7.yaml ...] [--stages 0 1 2 3] [--ranks 2] [--precision fp32]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist

RECIPES = ["configs/dfdc_b7.yaml", "configs/sbi_effnet_b4.yaml", "configs/gend_clip_vitb16.yaml",
           "configs/gend_clip_vitl14.yaml", "configs/effort_clip_vitl14.yaml"]


def live_bytes() -> int:
    """Bytes of every tensor storage alive in this process, each storage once."""
    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            s = obj.untyped_storage()
            if s.nbytes():
                storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
    return sum(storages.values())


def bucket_bytes(engine) -> int:
    """Bytes of ZeRO-1/2's gradient reduction buckets (reduce_bucket_size elements each)."""
    buckets = getattr(engine.optimizer, "ipg_buckets", {}) or {}
    return sum(t.untyped_storage().nbytes() for b in buckets.values() for t in getattr(b, "buffer", []))


def measure(rank: int, ranks: int, port: int, config: str, stage: int, precision: str, out: str) -> None:
    sys.path.insert(0, os.getcwd())
    from dfdc.config import load_config  # noqa: PLC0415
    from train.engine import build_engine, clip_gradients, to_device  # noqa: PLC0415
    from train import objective  # noqa: PLC0415
    from train.loop import train_step  # noqa: PLC0415
    from train.model import build_model, trainable  # noqa: PLC0415

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(ranks),
                      LOCAL_RANK=str(rank), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    sets = ["model.pretrained=", f"deepspeed.zero_stage={stage}", "deepspeed.offload=false", "data.batch_size=2",
            "optim.grad_accum=1", "model.compile=false"] + ([f"deepspeed.precision={precision}"] if precision else [])
    cfg = load_config(config, sets)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    sizes = trainable.counts(model)
    before = live_bytes()
    engine, _ = build_engine(model, cfg, world_size=ranks, total_steps=10)
    images, labels = to_device(torch.rand(2, 3, cfg.data.image_size, cfg.data.image_size), torch.tensor([0.0, 1.0]), engine)
    # ZeRO-1/2 allocate their gradient buckets as the backward pass starts and free them at its end:
    # seen as they are made.
    buckets = [0]
    if hasattr(engine.optimizer, "setup_buckets"):
        setup = engine.optimizer.setup_buckets

        def seen() -> None:
            setup()
            buckets.append(bucket_bytes(engine))

        engine.optimizer.setup_buckets = seen
    train_step(engine, images, labels)  # the optimizer makes its state in its first step
    # The second step by hand, to look between backward and step (activations are freed by then)
    loss = objective.loss(engine(images).squeeze(1).float(), labels, engine.module)
    engine.backward(loss)
    del loss
    at_step = live_bytes()
    clip_gradients(engine)  # as train_step does
    engine.step()
    after = live_bytes()
    if rank == 0:
        with open(out, "w") as f:
            json.dump({**sizes, "model_bytes": before, "at_step": at_step - before, "after_step": after - before,
                       "bucket_bytes": max(buckets)}, f)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    import torch.multiprocessing as mp  # noqa: PLC0415

    from cluster.local.s3_server import free_port  # noqa: PLC0415

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", nargs="+", default=RECIPES)
    p.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--precision", default="", help="instead of the recipe's (its bf16 autocast keeps fp32 parameters, "
                   "gradients and optimizer state, so the bytes held are the same; bf16 is slow on CPUs without bf16 units)")
    args = p.parse_args()
    mib = 2**20
    precision = args.precision or "each recipe's precision"
    print(f"MiB per rank, {args.ranks} ranks (gloo, CPU), {precision}: the model; what the engine adds to it at the step (after the "
          "backward pass) and after it; the gradient buckets during the backward pass")
    print(f"{'config':28} {'trainable':>12} {'total':>12} {'stage':>5} {'model':>8} {'at step':>8} {'after':>8} {'buckets':>8}")
    for config in args.config:
        for stage in args.stages:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "m.json")
                mp.start_processes(measure, args=(args.ranks, free_port(), config, stage, args.precision, out), nprocs=args.ranks,
                                   join=True, start_method="spawn")
                with open(out) as f:
                    m = json.load(f)
            print(f"{os.path.basename(config):28} {m['trainable_params']:>12,} {m['total_params']:>12,} {stage:>5} "
                  f"{m['model_bytes'] / mib:>8.0f} {m['at_step'] / mib:>8.0f} {m['after_step'] / mib:>8.0f} "
                  f"{m['bucket_bytes'] / mib:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
