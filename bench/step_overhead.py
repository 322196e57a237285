"""What the training step costs beyond the model's own arithmetic, on one GPU, side by side in one run:

  plain    a bare PyTorch step (autocast, fused AdamW, no DeepSpeed) with NCHW or channels-last
           inputs, NCHW or channels-last weights, cudnn.benchmark off or on
  engine   the project's step (`train.loop.train_step` on `train.engine.build_engine`, timed by
           bench/train_step.py's in-memory loop) at ZeRO 0 and 2, cudnn.benchmark off or on

Each row is images/s on one batch that stays on the GPU. Needs a CUDA GPU.

Usage: python bench/step_overhead.py [--model efficientnet_b4] [--size 380] [--batches 32 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def rate(step, batch: int, steps: int = 20, warmup: int = 6) -> float:
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t = time.perf_counter()
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def plain(model_name: str, size: int, batch: int, weights_cl: bool, inputs_cl: bool) -> float:
    import timm  # noqa: PLC0415

    model = timm.create_model(model_name, num_classes=1).cuda()
    if weights_cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch, 3, size, size, device="cuda").to(torch.bfloat16)
    if inputs_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device="cuda").float()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return rate(step, batch)


def engine(model_name: str, size: int, batch: int, zero: int) -> float:
    from bench.train_step import in_memory  # noqa: PLC0415
    from dfdc.config import load_config  # noqa: PLC0415
    from train.engine import build_engine  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    cfg = load_config(None, [f"model.name={model_name}", f"data.image_size={size}", f"data.batch_size={batch}",
                             "deepspeed.precision=bf16", f"deepspeed.zero_stage={zero}", "optim.warmup_steps=1"])
    eng, _ = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10**6)
    return in_memory(eng, cfg, 20, 6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_b4")
    ap.add_argument("--size", type=int, default=380)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/step_overhead.py needs a CUDA GPU (it times GPU kernels and cuDNN settings)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `bench.train_step`, from any folder

    import torch.distributed as dist  # noqa: PLC0415

    from cluster.local.s3_server import free_port  # noqa: PLC0415

    rows = []
    for batch in args.batches:
        for weights_cl, inputs_cl in ((False, False), (False, True), (True, True)):
            for bench in (False, True):
                torch.backends.cudnn.benchmark = bench
                r = plain(args.model, args.size, batch, weights_cl, inputs_cl)
                rows.append(("plain", batch, f"weights {'NHWC' if weights_cl else 'NCHW'}, inputs {'NHWC' if inputs_cl else 'NCHW'}", bench, r))
                print(*rows[-1], flush=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.set_device(0)
    for zero in (0, 2):
        for batch in args.batches:
            for bench in (False, True):
                torch.backends.cudnn.benchmark = bench
                rows.append(("engine", batch, f"ZeRO-{zero}, inputs NHWC", bench, engine(args.model, args.size, batch, zero)))
                print(*rows[-1], flush=True)
                torch.cuda.empty_cache()
    dist.destroy_process_group()
    print(f"\n{args.model} at {args.size}px, bf16, on {torch.cuda.get_device_name(0)}")
    print(f"{'step':7} {'batch':>5} {'layout / ZeRO':32} {'cudnn.benchmark':>15} {'images/s':>9}")
    for kind, batch, what, bench, r in rows:
        print(f"{kind:7} {batch:5} {what:32} {str(bench):>15} {r:9.1f}")


if __name__ == "__main__":
    main()
