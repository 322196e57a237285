"""Our config -> the DeepSpeed config and engine. The DeepSpeed JSON is derived, never hand-edited."""

from __future__ import annotations

import math

import torch

from dfdc.config import Config

PRECISIONS = ("fp32", "bf16", "fp16")


def deepspeed_config(cfg: Config, world_size: int) -> dict:
    ds = cfg.deepspeed
    if ds.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {ds.zero_stage}")
    if ds.precision not in PRECISIONS:
        raise ValueError(f"deepspeed.precision must be one of {', '.join(PRECISIONS)}, got {ds.precision!r}")
    zero: dict = {"stage": ds.zero_stage}
    if ds.offload and ds.zero_stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if ds.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.data.batch_size * cfg.optim.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16"},
        # A torch optimizer works on CPU and GPU alike (DeepSpeed's fused Adam needs CUDA);
        # with offload, DeepSpeed wants its own CPU Adam.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_lambda(warmup: int, total: int):
    """Linear warm-up to the base LR, then cosine to zero at `total` optimizer steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def build_engine(model: torch.nn.Module, cfg: Config, world_size: int, total_steps: int):
    import deepspeed  # noqa: PLC0415  (slow import; only where training runs)

    ds_config = deepspeed_config(cfg, world_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.deepspeed.offload and cfg.deepspeed.zero_stage > 0:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: PLC0415

        optimizer = DeepSpeedCPUAdam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim.warmup_steps, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine, ds_config
