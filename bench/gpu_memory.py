"""Peak memory of each recipe's training step per GPU, estimated on this CPU, and the per-GPU batch
that would fill each GPU the cluster configs use.

No GPU is needed: the recipe's model (random weights) is built on the CPU, its parameters and
buffers are swapped for fake tensors (torch's FakeTensorMode: shapes and dtypes, no data), and one
step of a plain PyTorch loop (autocast in the recipe's precision, the recipe's loss, backward,
clip_grad_norm_, fused AdamW, after a first step made AdamW's state) runs under torch's own memory
tracker (`torch.distributed._tools.mem_tracker.MemTracker`, the tool torchtitan's memory estimate
uses), which adds up the storages alive at each moment, rounded as CUDA's caching allocator rounds
them. The peak splits into parameters, gradients, optimizer state, activations and temporaries.

What it leaves out: CUDA's own context and the cuDNN/cuBLAS workspaces, the allocator's
fragmentation, the DeepSpeed engine's extra buffers (at ZeRO-0 on several ranks a flat copy of the
gradients while they are all-reduced, after the backward pass, when the activations are gone), and
the alignment loss's pairs (GenD; its tensors are N x N for N images, under 1 MiB at 64). The fake
tensors are on the CPU, so autocast follows the CPU's op lists, not CUDA's. Checked once against a
GPU: GenD's FF++ recipe (ViT-L/14, 224 px, batch 64, bf16), whose plain step peaked at 14.36 GiB of
allocated memory on an H200 (bench/results/2026-12-04-h200-recipes/gend_vitl14.log).

Peak memory grows with the batch by the activations; the bench estimates the recipe's batch and
twice it, fits a line, and prints the largest batch whose estimated peak stays under 90% of each
GPU's memory (a margin for what is left out above; the margin itself is not measured).

Usage: python bench/gpu_memory.py [configs/NAME.yaml ...] [--set KEY=VALUE ...]
Default: every recipe in configs/ that trains at a real size (not demo.yaml or sweep_demo.yaml).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, from any folder

# The GPUs of cluster/aws/prices.yaml's instances, GiB: g5 (A10G), g6 (L4), p4d (A100 40GB), p5 (H100).
GPUS = {"A10G / L4, 24 GiB": 24, "A100, 40 GiB": 40, "H100, 80 GiB": 80}
USABLE = 0.9
DEMOS = ("demo.yaml", "sweep_demo.yaml")


class _NoHook:
    def remove(self) -> None:
        pass


def tracker():
    """torch's MemTracker, told not to hook frozen parameters (it hooks every parameter's gradient,
    and a parameter that does not require one refuses the hook)."""
    from torch.distributed._tools.mem_tracker import MemTracker  # noqa: PLC0415

    class Tracker(MemTracker):
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            for p in module.parameters():
                if not p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                    self._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

    return Tracker()


def to_fake(model: torch.nn.Module) -> None:
    """Every parameter and buffer replaced, in place, by a fake tensor of its shape, stride and dtype
    (inside an active FakeTensorMode)."""
    for m in model.modules():
        for group in (m._parameters, m._buffers):
            for k, v in group.items():
                if v is not None:
                    fake = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype)
                    group[k] = torch.nn.Parameter(fake, requires_grad=v.requires_grad) if isinstance(v, torch.nn.Parameter) else fake


def peak(cfg, model: torch.nn.Module, images: int) -> dict[str, float]:
    """The estimated peak of one step at `images` a GPU, GiB, by kind and in total."""
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: PLC0415

    from train import objective  # noqa: PLC0415
    from train.engine import AUTOCAST  # noqa: PLC0415

    dtype = getattr(torch, AUTOCAST[cfg.deepspeed.precision]) if cfg.deepspeed.precision in AUTOCAST else None
    size = cfg.data.image_size
    with FakeTensorMode(allow_non_fake_inputs=True):
        to_fake(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
        # the inputs as train.engine.to_device makes them: in the autocast dtype, channels-last
        x = torch.rand(images, 3, size, size, dtype=dtype or torch.float32).contiguous(memory_format=torch.channels_last)
        y = (torch.rand(images) > 0.5).float()

        def step() -> None:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                logits = model(x).squeeze(1).float()
            loss = objective.loss(logits, y, model, cfg.optim)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # AdamW's state made; the step measured is a later one
        mt = tracker()
        mt.track_external(model, opt, x, y)
        with mt:
            step()
        snap = max(mt.get_tracker_snapshot("peak").values(), key=lambda d: d.get("Total", 0))
    return {getattr(k, "value", k): v / 2**30 for k, v in snap.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", help="recipes (configs/NAME.yaml); default: every recipe but the demos")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    from bench.train_step import step_images  # noqa: PLC0415
    from dfdc.config import load_config  # noqa: PLC0415
    from train.model import build_model  # noqa: PLC0415

    root = Path(__file__).resolve().parents[1]
    configs = args.configs or [c for c in sorted(glob.glob(str(root / "configs" / "*.yaml"))) if Path(c).name not in DEMOS]
    print(f"Estimated peak memory of one training step per GPU (fake tensors on {torch.__version__}; GiB); "
          f"batch: images a GPU in a step; fits: the largest batch under {USABLE:.0%} of the GPU")
    print(f"{'recipe':30} {'model':44} {'px':>4} {'batch':>5} {'peak':>6} {'params':>7} {'grads':>6} {'AdamW':>6} "
          f"{'activ.':>7} {'temp':>5} {'GiB/img':>8}  " + "  ".join(f"fits {g}" for g in GPUS))
    rows = []
    for path in configs:
        t = time.perf_counter()
        # no pretrained weights; GenD's alignment pairs select by label, a shape fake tensors cannot know
        cfg = load_config(path, ["model.pretrained=", "optim.alignment_weight=0", *args.set])
        images = step_images(cfg)
        estimates = {}
        for n in (images, 2 * images):
            torch.manual_seed(0)
            estimates[n] = peak(cfg, build_model(cfg.model), n)
        one, two = estimates[images], estimates[2 * images]
        per_image = (two["Total"] - one["Total"]) / images
        fixed = one["Total"] - per_image * images
        fits = {g: int((USABLE * gib - fixed) // per_image) for g, gib in GPUS.items()}
        name = Path(path).name
        print(f"{name:30} {cfg.model.name[:44]:44} {cfg.data.image_size:4} {images:5} {one['Total']:6.2f} {one['Parameter']:7.2f} "
              f"{one['Gradient']:6.2f} {one['Optstate']:6.2f} {one['Activation']:7.2f} {one['Temp']:5.2f} {per_image:8.3f}  "
              + "  ".join(f"{fits[g]:>{len('fits ' + g)}}" for g in GPUS) + f"   ({time.perf_counter() - t:.0f} s)", flush=True)
        rows.append({"config": name, "model": cfg.model.name, "size": cfg.data.image_size, "precision": cfg.deepspeed.precision,
                     "batch": images, "peak_gib": {k: round(v, 3) for k, v in one.items()},
                     "peak_gib_at_twice_the_batch": round(two["Total"], 3), "gib_per_image": round(per_image, 4),
                     "largest_batch_under_90pct": fits})
    print(json.dumps({"torch": torch.__version__, "usable_fraction": USABLE, "gpus_gib": GPUS, "recipes": rows}))


if __name__ == "__main__":
    main()
