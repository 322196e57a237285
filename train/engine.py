"""Our config -> the DeepSpeed config and engine. The DeepSpeed JSON is derived, never hand-edited.

Precision: `bf16` and `fp16` train through DeepSpeed's `torch_autocast`: parameters, gradients and
BatchNorm statistics stay fp32, convolutions and matmuls run in the low precision (as timm trains
CNNs with AMP). DeepSpeed's own `bf16` mode casts parameters but leaves buffers fp32, and a BatchNorm
layer then fails on its first forward pass (bf16 weights, fp32 running statistics).
"""

from __future__ import annotations

import math

import torch

from dfdc.config import Config

AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}
# DeepSpeed's reduce_bucket_size default, in elements. ZeRO 1-3 allocate a gradient bucket of that
# many elements whatever the model's size: 1.86 GiB in fp32, more than all of EfficientNet-B7's
# gradients and AdamW state together (bench/model_states.py).
REDUCE_BUCKET = 500_000_000


def clips_in_step(cfg: Config) -> bool:
    """Whether `train.loop.train_step` clips the gradients' norm (torch's clip_grad_norm_) rather
    than DeepSpeed: at ZeRO-0 without fp16's loss scaler, whose gradients must be unscaled first.
    DeepSpeed's own clipping at ZeRO-0 launches two kernels per parameter tensor and makes two
    tensors from Python floats every step, each a copy the host waits for on a GPU
    (bench/step_syncs.py counts them); torch's does neither. At ZeRO 1-3 DeepSpeed's optimizer
    clips its own shards of the gradients."""
    return cfg.deepspeed.zero_stage == 0 and cfg.deepspeed.precision != "fp16" and cfg.optim.grad_clip > 0


def deepspeed_config(cfg: Config, world_size: int, universal: bool = False, trainable_params: int = 0) -> dict:
    """`universal`: the engine will load a checkpoint converted to DeepSpeed's universal format (one
    written by another number of ranks, see checkpoint.py). `trainable_params`: the model's, to size
    ZeRO's gradient bucket to no more than the gradients it can ever hold (0: DeepSpeed's default)."""
    ds = cfg.deepspeed  # checked when the config was loaded (dfdc/config.py)
    zero: dict = {"stage": ds.zero_stage}
    if ds.zero_stage > 0 and trainable_params > 0:
        zero["reduce_bucket_size"] = min(REDUCE_BUCKET, trainable_params)
    if ds.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if ds.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    out = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.data.batch_size * cfg.optim.grad_accum * world_size,
        "gradient_clipping": 0.0 if clips_in_step(cfg) else cfg.optim.grad_clip,
        "zero_optimization": zero,
        # A torch optimizer works on CPU and GPU alike (DeepSpeed's fused Adam needs CUDA);
        # with offload, DeepSpeed wants its own CPU Adam.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer (on by default) waits for the device at the start of every
        # forward pass and at the end of every step, so the host cannot queue the next step's
        # work while the GPU runs this one. Its figure goes to DeepSpeed's log, which we do not read.
        "timers": {"throughput": {"enabled": False}},
    }
    if universal:
        out["checkpoint"] = {"load_universal": True}
    if ds.precision != "fp32":
        # No "lower precision safe" modules: weights are gathered (ZeRO-3) and gradients reduced in
        # fp32, as with AMP under DDP. Else ZeRO-3 gathers convolution weights in bf16, the model the
        # engine runs is no longer the fp32 weights it saves, and the probe check cannot hold.
        out["torch_autocast"] = {"enabled": True, "dtype": AUTOCAST[ds.precision], "lower_precision_safe_modules": []}
    return out


def lr_lambda(warmup: int, total: int, schedule: str = "cosine", cycle: int = 0, floor: float = 0.0):
    """Linear warm-up to the base LR, then (cosine) cosine to `floor` (a fraction of the base LR) at
    `total` optimizer steps; (cyclic) cosine to `floor` over every `cycle` steps after the warm-up,
    then back to the base LR (cosine annealing with warm restarts); (constant) the base LR."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if schedule == "constant":
            return 1.0
        if schedule == "cyclic":
            progress = ((step - warmup) % max(1, cycle)) / max(1, cycle)
        else:
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_engine(model: torch.nn.Module, cfg: Config, world_size: int, total_steps: int, universal: bool = False):
    """The DeepSpeed engine around `model`, on this process's accelerator (a GPU when there is one).
    The process group must exist already (Ray Train or the caller made it)."""
    import types  # noqa: PLC0415

    import deepspeed  # noqa: PLC0415  (slow import; only where training runs)

    cuda = torch.cuda.is_available()
    # The weights stay contiguous (NCHW): DeepSpeed broadcasts each weight as a byte view at start,
    # which a channels-last weight refuses ("stride(-1) must be 1", seen on an H100). Channels-last
    # inputs (to_device) are enough for cuDNN to pick NHWC convolutions.
    params = [p for p in model.parameters() if p.requires_grad]
    ds_config = deepspeed_config(cfg, world_size, universal, trainable_params=sum(p.numel() for p in params))
    if cfg.deepspeed.offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # noqa: PLC0415

        optimizer = DeepSpeedCPUAdam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, adamw_mode=True)
    else:
        # fused: one kernel for the whole update (CUDA and CPU alike), instead of several per
        # parameter tensor, and its step counts stay on the device (the unfused update reads each
        # back to the host).
        optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
    o = cfg.optim
    cycle = round(total_steps / max(1, o.epochs) * o.cycle_epochs)  # the run's steps per epoch, times the cycle's epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.warmup_steps, total_steps, o.schedule, cycle,
                                                                       o.min_lr / o.lr if o.lr else 0.0))
    # On a GPU, the device this process uses now (the one Ray Train gave the rank), not DeepSpeed's
    # guess from LOCAL_RANK, which is wrong when workers share a GPU.
    args = types.SimpleNamespace(device_rank=torch.cuda.current_device()) if cuda else None
    engine, _, _, _ = deepspeed.initialize(args=args, model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    if torch.distributed.get_world_size() == 1 and cfg.deepspeed.zero_stage == 0:
        # One rank has nothing to average. DeepSpeed's ZeRO-0 all-reduce would still flatten every
        # gradient into one buffer and copy each back: five ops per parameter tensor, more than the
        # whole plain step dispatches (bench/step_syncs.py: 1,068 a step for EfficientNet-B0, against 971).
        # It also gave a trainable parameter the loss never reached a zero gradient, which AdamW then
        # decays; without it such a parameter keeps none and AdamW skips it, as in plain PyTorch
        # (every recipe's trainable parameters get a gradient: checked on 5 December 2026).
        engine.enable_backward_allreduce = False
    if cfg.model.compile:
        # In place (nn.Module.compile): parameter names and state dicts stay the model's own, so
        # checkpoints load into an uncompiled model.
        engine.compile()
    engine.dfdc_grad_clip = cfg.optim.grad_clip if clips_in_step(cfg) else 0.0  # read by clip_gradients
    return engine, ds_config


def clip_gradients(engine) -> None:
    """Between `engine.backward` and `engine.step`: where `clips_in_step`, the gradients' norm
    clipped to the config's at each optimizer step, after DeepSpeed averaged them over the ranks
    in its backward pass (ZeRO-0 all-reduces there). foreach on a GPU: a kernel per group, not
    per tensor, and the clip coefficient stays on the device."""
    max_norm = getattr(engine, "dfdc_grad_clip", 0.0)
    if max_norm and engine.is_gradient_accumulation_boundary():
        torch.nn.utils.clip_grad_norm_(engine.module.parameters(), max_norm)  # it skips parameters without gradients


def input_dtype(engine) -> torch.dtype:
    """What inputs are cast to on the device: the autocast dtype when training in bf16 or fp16 (the
    first convolution runs in it anyway, and the copy is half the size)."""
    return engine.torch_autocast_dtype() if engine.torch_autocast_enabled() else torch.float32


def to_device(images: torch.Tensor, labels: torch.Tensor, engine, channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on the engine's device: copied once (asynchronously from pinned memory), cast there,
    channels-last, on a GPU and a CPU alike: cuDNN and oneDNN then pick their NHWC convolutions
    (bench/train_step.py times the step without it too: 1.4-2x on an H100, 1.2-1.4x on this CPU)."""
    images = images.to(engine.device, non_blocking=True).to(input_dtype(engine))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(engine.device, non_blocking=True)
