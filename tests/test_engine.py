"""The DeepSpeed engine without Ray (gloo): each precision trains a few steps of `train_step`, and
the consolidated fp32 weights reproduce the engine's strict-fp32 outputs on the probe. (Ray Train
runs with bf16, offload and every ZeRO stage are in test_train.py.)"""

import os

import pytest
import torch
import torch.distributed as dist

from cluster.local.s3_server import free_port
from dfdc.config import load_config
from train.checkpoint import TAG, consolidate, probe_diff, probe_input, probe_logits, restore_buffers, restore_frozen, to_universal
from train.engine import build_engine, clip_gradients, input_dtype, to_device
from train.host_waits import HostWaits
from train.loop import train_step
from train.model import build_model


@pytest.fixture(scope="module")
def one_rank():
    saved = dict(os.environ)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    # On a GPU machine the engine is on the GPU: NCCL, as Ray Train uses there.
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


def test_model_compile_trains_as_the_eager_engine_and_saves_the_models_own_names(one_rank, tmp_path):
    """model.compile: DeepSpeed's engine.compile (torch.compile, inductor on this CPU), in place. The
    same steps give the eager engine's losses, and the checkpoint consolidates into an uncompiled
    model under its own parameter names (no torch.compile `_orig_mod.` prefix). fp32 and before the
    autocast engines below (their settings stay in DeepSpeed's globals)."""
    sets = ["model.name=test_efficientnet", "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=1",
            "deepspeed.precision=fp32", "deepspeed.zero_stage=1", "model.drop_rate=0"]  # dropout draws differ compiled
    batches = [(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)), torch.tensor([0.0, 1.0, 0.0, 1.0]))
               for i in range(3)]
    losses = {}
    for compiled in (False, True):
        cfg = load_config(None, [*sets, f"model.compile={str(compiled).lower()}"])
        torch.manual_seed(0)
        engine, _ = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10)
        assert engine.is_compiled == compiled
        losses[compiled] = [train_step(engine, *to_device(x, y, engine)).item() for x, y in batches]
    # The same forward on the same weights; then inductor's other summation orders move the weights
    # a little differently (measured: 1% apart after two updates of this tiny model).
    assert losses[True][0] == pytest.approx(losses[False][0], abs=1e-4), losses
    assert losses[True] == pytest.approx(losses[False], rel=0.03), losses
    assert not any("_orig_mod" in k for k in engine.module.state_dict())
    probe = probe_logits(engine, 32)
    engine.save_checkpoint(str(tmp_path), tag=TAG)
    model = build_model(cfg.model)
    model.load_state_dict(consolidate(str(tmp_path)), strict=True)
    assert probe_diff(model, {"input": probe_input(32), **probe}) < 1e-4


# fp32 first: DeepSpeed keeps its autocast settings in module globals, which a later engine of this
# process reads; each autocast engine sets them anew.
@pytest.mark.parametrize("precision, stage", [("fp32", 1), ("bf16", 2), ("fp16", 0), ("fp16", 1)])
def test_each_precision_trains_and_consolidates(one_rank, tmp_path, precision, stage):
    cfg = load_config(None, ["model.name=test_efficientnet", "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=1",
                             f"deepspeed.precision={precision}", f"deepspeed.zero_stage={stage}"])
    torch.manual_seed(0)
    engine, ds = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10)
    assert input_dtype(engine) == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert all(p.dtype == torch.float32 for p in engine.module.parameters())  # autocast keeps fp32 weights
    before = probe_logits(engine, 32)["logits"]
    for _ in range(3):
        images, labels = to_device(torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0]), engine)
        assert images.dtype == input_dtype(engine)
        assert images.is_contiguous(memory_format=torch.channels_last)  # on a CPU too: oneDNN's NHWC convolutions
        loss = train_step(engine, images, labels)
        assert torch.isfinite(loss)
    probe = probe_logits(engine, 32)
    assert not torch.equal(probe["logits"], before), "the weights moved"
    engine.save_checkpoint(str(tmp_path), tag=TAG)
    model = build_model(cfg.model)
    model.load_state_dict(consolidate(str(tmp_path)), strict=True)
    assert probe_diff(model, {"input": probe_input(32), **probe}) < 1e-4


# After the fp16 engines above: an fp16 engine's settings stay in DeepSpeed's globals, and bf16 sets its own.
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_zero0_step_never_makes_the_host_wait(one_rank, precision):
    """Every recipe's stage: nothing in the step (forward, backward, clipping, AdamW, the schedule)
    waits for the device, reads a value back or copies a Python value to it. Before: DeepSpeed's
    throughput timer synchronized twice a step, its ZeRO-0 clipping made two tensors from floats
    (two blocking host-to-GPU copies on a GPU), and the unfused AdamW read each step count back."""
    cfg = load_config(None, ["model.name=test_efficientnet", "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=1",
                             f"deepspeed.precision={precision}", "deepspeed.zero_stage=0"])
    engine, _ = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=20)
    images, labels = to_device(torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0]), engine)
    for _ in range(3):  # DeepSpeed's timer starts waiting from its third step
        train_step(engine, images, labels)
    with HostWaits() as waits:
        for _ in range(3):
            loss = train_step(engine, images, labels)
    assert torch.isfinite(loss)
    assert waits.counts["ops"] > 0  # it saw the step
    assert not waits.where, dict(waits.where)


def test_zero0_clips_as_torch_does(one_rank):
    """The ZeRO-0 engine's step (its clipping done by train_step) moves the weights as a plain
    PyTorch step with clip_grad_norm_ and the same AdamW does; the clip bites (tiny max norm)."""
    sets = ["model.name=test_efficientnet", "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=0", "optim.lr=0.01",
            "deepspeed.precision=fp32", "deepspeed.zero_stage=0", "optim.grad_clip=0.001", "optim.schedule=constant",
            "model.drop_rate=0"]
    cfg = load_config(None, sets)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    plain = build_model(cfg.model)
    plain.load_state_dict(model.state_dict())
    engine, ds = build_engine(model, cfg, world_size=1, total_steps=20)
    assert ds["gradient_clipping"] == 0.0  # DeepSpeed's own clipping is off: train_step clips
    opt = torch.optim.AdamW(plain.parameters(), lr=0.01, weight_decay=cfg.optim.weight_decay, fused=True)
    batches = [(torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)), torch.tensor([0.0, 1.0, 0.0, 1.0]))
               for i in range(3)]
    for x, y in batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(engine(x).squeeze(1).float(), y)
        engine.backward(loss)
        clip_gradients(engine)
        clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in engine.module.parameters()]))
        assert clipped == pytest.approx(0.001, rel=1e-3)
        engine.step()
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(plain(x).squeeze(1).float(), y).backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.001)
        opt.step()
    for (name, a), b in zip(engine.module.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_one_rank_zero0_step_dispatches_what_a_plain_step_does(one_rank):
    """One rank at ZeRO-0 (one GPU): the engine's step launches no more work than a plain PyTorch
    step of the same model, optimizer and clipping. Before: DeepSpeed all-reduced the gradients of
    its one rank, flattening each into a buffer and copying it back, five more ops per parameter
    tensor (2,039 ops a step against 971 for EfficientNet-B0: bench/step_syncs.py)."""
    cfg = load_config(None, ["model.name=test_efficientnet", "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=0",
                             "deepspeed.precision=fp32", "deepspeed.zero_stage=0", "optim.schedule=constant", "model.drop_rate=0"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    plain = build_model(cfg.model)
    plain.load_state_dict(model.state_dict())
    engine, _ = build_engine(model, cfg, world_size=1, total_steps=20)
    opt = torch.optim.AdamW(plain.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
    x, y = to_device(torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0]), engine)  # both steps' inputs

    def plain_step():
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(plain(x).squeeze(1).float(), y).backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.optim.grad_clip)
        opt.step()

    ops = {}
    for name, step in (("plain", plain_step), ("engine", lambda: train_step(engine, x, y, optim=cfg.optim))):
        step()  # optimizer state made
        with HostWaits() as waits:
            step()
        ops[name] = waits.counts["ops"]
    n_params = len(list(model.parameters()))
    assert ops["engine"] <= ops["plain"] + 8 < ops["plain"] + n_params, (ops, n_params)  # + 8: the loss's own few ops


ZERO3_BF16 = ["model.name=efficientnet_b0", "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=1",
              "deepspeed.precision=bf16", "deepspeed.zero_stage=3"]


def _two_ranks(rank: int, port: int, folder: str, sets: list[str]) -> None:
    """Three steps on two ranks of the config `sets`, then a checkpoint (and its probe) in `folder`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    _train_and_save(rank, folder, sets)
    dist.destroy_process_group()


def _train_and_save(rank: int, folder: str, sets: list[str]) -> None:
    cfg = load_config(None, sets)
    torch.manual_seed(0)
    engine, _ = build_engine(build_model(cfg.model), cfg, world_size=2, total_steps=10)
    for _ in range(3):
        train_step(engine, *to_device(torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0]), engine))
    probe = probe_logits(engine, 32)
    engine.save_checkpoint(folder, tag=TAG)
    if rank == 0:  # with the steps and the fp16 loss scale the checkpoint was saved with
        torch.save({"input": probe_input(32), **probe, "scale": _loss_scale(engine), "steps": engine.global_steps,
                    "lr_steps": engine.lr_scheduler.last_epoch}, os.path.join(folder, "probe.pt"))
    dist.barrier()


def _one_rank_resumes(rank: int, port: int, folder: str) -> None:
    """Load the 2-rank ZeRO-3 checkpoint in `folder` on one rank through DeepSpeed's universal format."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    cfg = load_config(None, ZERO3_BF16)
    engine, ds = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10, universal=True)
    assert ds["checkpoint"] == {"load_universal": True}
    to_universal(folder, os.path.join(folder, "universal"))
    engine.load_checkpoint(os.path.join(folder, "universal"), tag=TAG)
    restore_buffers(engine.module, folder)  # the universal format has no buffers (BatchNorm statistics)
    probe = torch.load(os.path.join(folder, "probe.pt"), weights_only=True)
    assert (probe_logits(engine, 32)["logits_fp32"] - probe["logits_fp32"]).abs().max() < 1e-5
    assert engine.global_steps == 3 and engine.lr_scheduler.last_epoch == 3  # the schedule goes on where it was
    assert torch.isfinite(train_step(engine, *to_device(torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0]), engine)))


def test_bf16_zero3_over_two_ranks_consolidates_and_resumes_on_one(tmp_path, monkeypatch):
    """ZeRO-3 gathers each rank's shards of a weight for the forward pass. Under autocast DeepSpeed
    gathers convolution weights in bf16 unless told not to; then the model that ran was not the fp32
    weights saved (efficientnet_b0: 1.0e-4 relative on the probe, measured). Two processes, because
    a single rank gathers nothing; efficientnet_b0, because ZeRO-3 keeps small weights gathered.
    Then one rank loads that 2-rank checkpoint through DeepSpeed's universal format and goes on."""
    import torch.multiprocessing as mp

    # Both ranks on the CPU (gloo), also on a GPU machine: NCCL refuses two ranks on one GPU.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    mp.start_processes(_two_ranks, args=(free_port(), str(tmp_path), ZERO3_BF16), nprocs=2, join=True, start_method="spawn")
    model = build_model(load_config(None, ["model.name=efficientnet_b0"]).model)
    model.load_state_dict(consolidate(str(tmp_path)), strict=True)
    probe = torch.load(tmp_path / "probe.pt", weights_only=True)
    assert probe_diff(model, probe) < 1e-5

    # In a process of its own too: a ZeRO-3 engine patches torch.nn.functional.linear for the rest of
    # its process (DeepSpeed's zero3_linear_wrap), which later TorchScript exports here cannot trace.
    mp.start_processes(_one_rank_resumes, args=(free_port(), str(tmp_path)), nprocs=1, join=True, start_method="spawn")


def _optimizer_numel(engine) -> int:
    """Elements the optimizer keeps fp32 state for (ZeRO 1-2: flat fp32 partitions; ZeRO-3: its
    fp32 partitions; 0: the torch optimizer's own groups)."""
    opt = engine.optimizer
    for attr in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        if hasattr(opt, attr):
            return sum(t.numel() for t in getattr(opt, attr))
    return sum(p.numel() for g in opt.param_groups for p in g["params"])


def _watch_gradient_buckets(engine) -> list[int]:
    """Bytes of ZeRO-1/2's gradient buckets each time the engine allocates them (as a backward pass starts)."""
    opt, seen = engine.optimizer, []
    setup = opt.setup_buckets

    def watched() -> None:
        setup()
        seen.append(sum(t.untyped_storage().nbytes() for b in opt.ipg_buckets.values() for t in b.buffer))

    opt.setup_buckets = watched
    return seen


# ZeRO-3 runs in processes of its own below: its engine patches torch.nn.functional.linear for the
# rest of its process, which later TorchScript exports in this one cannot trace.
@pytest.mark.parametrize("mode, stage", [("layernorm", 2), ("svd", 2), ("head", 1), ("svd", 1)])
def test_frozen_parameters_stay_bit_identical_and_have_no_optimizer_state(one_rank, tmp_path, mode, stage):
    cfg = load_config(None, ["model.name=test_vit", "model.timm_args={img_size: 32, patch_size: 8}", f"model.trainable={mode}",
                             "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=1", "optim.lr=0.01",
                             f"deepspeed.zero_stage={stage}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    engine, _ = build_engine(model, cfg, world_size=1, total_steps=10)
    # ZeRO pads each partition to an alignment: at most a few elements per group beyond the trainable ones
    assert 0 < sum(initial[n].numel() for n in trains) <= _optimizer_numel(engine) < sum(initial[n].numel() for n in trains) + 64
    buckets = _watch_gradient_buckets(engine)
    for _ in range(3):
        train_step(engine, *to_device(torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0]), engine))
    # ZeRO's gradient bucket holds at most the trainable gradients (DeepSpeed's default: 5e8
    # elements, 1.86 GiB in fp32, whatever the model)
    assert buckets and 0 < max(buckets) <= 4 * sum(initial[n].numel() for n in trains)
    probe = probe_logits(engine, 32)
    engine.save_checkpoint(str(tmp_path), tag=TAG)
    weights = consolidate(str(tmp_path))
    assert set(weights) == set(initial)
    changed = {k for k in initial if not torch.equal(weights[k], initial[k])}
    assert changed == trains, f"changed but frozen: {changed - trains}; trainable but unchanged: {trains - changed}"
    if mode == "svd":
        assert all(k.endswith((".u", ".s", ".vh")) or k.startswith("head.") for k in changed)
    rebuilt = build_model(cfg.model, decompose=False)
    rebuilt.load_state_dict(weights, strict=True)
    assert probe_diff(rebuilt, {"input": probe_input(32), **probe}) < 1e-4
    # and the engine's own checkpoint round-trips: a new engine loads it and gives the same outputs
    torch.manual_seed(1)
    again, _ = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10)
    again.load_checkpoint(str(tmp_path), tag=TAG)
    assert torch.equal(probe_logits(again, 32)["logits"], probe["logits"])


def _frozen_one_rank_resumes(folder: str, stage: int) -> None:
    cfg = load_config(None, FROZEN_VIT + [f"deepspeed.zero_stage={stage}"])
    torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
    universal = stage > 0  # as train.checkpoint decides: stage 0's optimizer state is whole in every checkpoint
    engine, _ = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10, universal=universal)
    if universal:
        to_universal(folder, os.path.join(folder, "universal"))
        engine.load_checkpoint(os.path.join(folder, "universal"), tag=TAG)
        restore_frozen(engine, folder)
    else:
        engine.load_checkpoint(folder, tag=TAG)
    probe = torch.load(os.path.join(folder, "probe.pt"), weights_only=True)
    assert (probe_logits(engine, 32)["logits_fp32"] - probe["logits_fp32"]).abs().max() < 1e-5
    assert engine.global_steps == 3 and engine.lr_scheduler.last_epoch == 3, stage
    assert torch.isfinite(train_step(engine, *to_device(torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0]), engine)))


FROZEN_VIT = ["model.name=test_vit", "model.timm_args={img_size: 32, patch_size: 8}", "model.trainable=layernorm",
              "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=1", "optim.lr=0.01"]


def _frozen_each_stage(rank: int, world: int, port: int, folder: str, stages: list[int]) -> None:
    """For each ZeRO stage in turn, in one process and one process group (DeepSpeed keeps the first
    group it sees): 2 ranks train and save, or 1 rank resumes. The spawn and its imports once."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for stage in stages:
        at = os.path.join(folder, f"stage{stage}")
        if world == 2:
            _train_and_save(rank, at, FROZEN_VIT + [f"deepspeed.zero_stage={stage}"])
        else:
            _frozen_one_rank_resumes(at, stage)
    dist.destroy_process_group()


def test_a_frozen_encoders_checkpoint_resumes_on_another_world_size(tmp_path, monkeypatch):
    """Elastic resume with frozen parameters, at ZeRO-0 (the recipes'), ZeRO-2 and ZeRO-3: a 2-rank
    checkpoint of a LayerNorm-tuned ViT (converted to DeepSpeed's universal format at stages 2 and 3)
    loads on one rank with the same outputs; its consolidated weights keep the frozen ones as they
    were built."""
    import torch.multiprocessing as mp

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    stages = [0, 2, 3]
    mp.start_processes(_frozen_each_stage, args=(2, free_port(), str(tmp_path), stages), nprocs=2, join=True, start_method="spawn")
    for stage in stages:
        cfg = load_config(None, FROZEN_VIT + [f"deepspeed.zero_stage={stage}"])
        torch.manual_seed(0)
        initial = build_model(cfg.model)
        weights = consolidate(str(tmp_path / f"stage{stage}"))
        frozen = [n for n, p in initial.named_parameters() if not p.requires_grad]
        assert frozen and all(torch.equal(weights[n], initial.state_dict()[n]) for n in frozen), stage
    mp.start_processes(_frozen_each_stage, args=(1, free_port(), str(tmp_path), stages), nprocs=1, join=True, start_method="spawn")


def _loss_scale(engine) -> float | None:
    """The fp16 loss scaler's current scale, where the engine keeps one."""
    scaler = getattr(engine.optimizer, "loss_scaler", None) or getattr(engine, "loss_scaler", None)
    return float(scaler.cur_scale) if scaler is not None and hasattr(scaler, "cur_scale") else None


def _resumes_on_one(rank: int, port: int, folder: str, sets: list[str]) -> None:
    from train.checkpoint import weights_only_loads

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    cfg = load_config(None, sets)
    torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
    engine, _ = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10, universal=True)
    with weights_only_loads():
        to_universal(folder, os.path.join(folder, "universal"))
        engine.load_checkpoint(os.path.join(folder, "universal"), tag=TAG)
    restore_buffers(engine.module, folder)
    probe = torch.load(os.path.join(folder, "probe.pt"), weights_only=True)
    assert (probe_logits(engine, 32)["logits_fp32"] - probe["logits_fp32"]).abs().max() < 1e-5
    # fp16 skips the steps whose gradients overflowed (the schedule with them): as saved, whatever they were
    assert (engine.global_steps, engine.lr_scheduler.last_epoch) == (probe["steps"], probe["lr_steps"])
    assert probe["scale"] is not None and _loss_scale(engine) == probe["scale"], (_loss_scale(engine), probe["scale"])  # fp16's scaler goes on where it was
    assert torch.isfinite(train_step(engine, *to_device(torch.rand(4, 3, 32, 32), torch.tensor([0.0, 1.0, 0.0, 1.0]), engine)))


def test_a_zero1_fp16_offload_checkpoint_of_two_ranks_resumes_on_one_with_its_optimizer_and_loss_scale(tmp_path, monkeypatch):
    """The resume across world sizes the docs claim beyond stage 3, in one run: ZeRO-1, fp16 (its
    loss scaler, which a universal load must restore) and the optimizer offloaded to DeepSpeed's
    CPU Adam. (Each alone passed too when written; folded into one to keep `make test` short.)"""
    import torch.multiprocessing as mp

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    sets = ["model.name=test_efficientnet", "data.image_size=32", "data.batch_size=4", "optim.warmup_steps=1",
            "deepspeed.precision=fp16", "deepspeed.zero_stage=1", "deepspeed.offload=true"]
    mp.start_processes(_two_ranks, args=(free_port(), str(tmp_path), sets), nprocs=2, join=True,
                       start_method="spawn")
    mp.start_processes(_resumes_on_one, args=(free_port(), str(tmp_path), sets), nprocs=1, join=True, start_method="spawn")



CUT_OFF_CASES = [("fp32", 0), ("fp32", 3), ("bf16", 1)]  # bf16 last: DeepSpeed keeps its autocast settings in globals


def _cut_off_sets(folder: str, precision: str, stage: int) -> list[str]:
    return ["model.name=test_efficientnet", "data.image_size=32", f"deepspeed.precision={precision}",
            f"deepspeed.zero_stage={stage}", f"ray.storage_path={folder}/{precision}-{stage}", "ray.run_name=run"]


def _write_two_checkpoints(rank: int, port: int, folder: str) -> None:
    """On two ranks, for each case: two checkpoints as a run writes them (checkpoint.write)."""
    from train.checkpoint import TrainState, write

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for precision, stage in CUT_OFF_CASES:
        cfg = load_config(None, _cut_off_sets(folder, precision, stage))
        torch.manual_seed(0)
        engine, _ = build_engine(build_model(cfg.model), cfg, world_size=2, total_steps=10)
        for step in (1, 2):
            path = os.path.join(cfg.ray.storage_path, "run", f"checkpoint_2026-01-01_00-00-0{step}.000000")
            write(engine, TrainState(step=step, world_size=2, config=cfg.to_dict()), {"step": step}, rank, 32, path)
    dist.destroy_process_group()


def test_a_checkpoint_lacking_any_file_a_load_reads_is_passed_over(tmp_path, monkeypatch):
    """Ray uploads a checkpoint's files in no set order, so a run killed mid-upload leaves a folder
    with some of them. CI met a ZeRO-3 one with its state and model states but no optimizer states:
    the driver resumed from it and DeepSpeed failed on every worker. Two ranks write real
    checkpoints at ZeRO 0, 3 (fp32) and 1 (bf16); take away any one file a load reads (not the
    metrics report, nor DeepSpeed's `latest` or its recovery scripts) and the driver's
    `latest_state`, the workers' `newest_stored` and the check of Ray's record (`latest_complete`)
    all go back to the older whole checkpoint. In processes of their own: a ZeRO-3 engine patches
    torch.nn.functional.linear for the rest of its process (see above)."""
    import pyarrow.fs
    import ray.train
    import torch.multiprocessing as mp

    from train.checkpoint import REPORT, latest_complete, latest_state, newest_stored

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    mp.start_processes(_write_two_checkpoints, args=(free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for precision, stage in CUT_OFF_CASES:
        cfg = load_config(None, _cut_off_sets(str(tmp_path), precision, stage))
        run = tmp_path / f"{precision}-{stage}" / "run"
        older, newest = (run / f"checkpoint_2026-01-01_00-00-0{i}.000000" for i in (1, 2))

        def found() -> list[str]:
            ray_record = ray.train.Checkpoint(str(newest), filesystem=pyarrow.fs.LocalFileSystem())
            return [os.path.basename(latest_state(str(run))[1]), os.path.basename(newest_stored(cfg).path),  # noqa: B023
                    os.path.basename(latest_complete(ray_record).path)]  # noqa: B023

        assert found() == [newest.name] * 3, (precision, stage)
        read = sorted(str(p.relative_to(newest)) for p in newest.rglob("*") if p.is_file())
        read = [f for f in read if f not in (REPORT, "latest", "zero_to_fp32.py", "zero_to_torch.py")]
        ranks_files = {"model_states": 2 if stage == 3 else 1, "optim_states": 2 if stage else 0}
        assert {k: sum(k in f for f in read) for k in ranks_files} == ranks_files, read
        for f in read:
            (newest / f).rename(tmp_path / "aside")
            assert found() == [older.name] * 3, (precision, stage, f)
            (tmp_path / "aside").rename(newest / f)
