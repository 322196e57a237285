"""Checkpoints: every rank's DeepSpeed files plus `probe.pt` and our `TrainState` (dfdc_state.json),
reported to Ray Train, which uploads all ranks' files into one checkpoint in
`ray.storage_path/run_name/` and registers it once every rank's upload is done. A run resumes from
the newest checkpoint in its folder that holds every file a load reads (`missing_files`): Ray
uploads a checkpoint's files in no set order, so a run killed mid-upload leaves a folder with some
of them, the state JSON among them or not."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import posixpath
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field

import torch

from dfdc import storage
from dfdc.config import Config

STATE = "dfdc_state.json"
REPORT = "dfdc_report.json"  # the metrics reported with the checkpoint: to report it again (report_again)
PROBE = "probe.pt"
TAG = "ds"

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a run stands, saved with every checkpoint: enough to resume at the same data position
    into the same MLflow run, and to refuse a resume whose config would change what that means."""

    epoch: int = 0  # epochs finished
    position: int = 0  # samples of the current epoch's order handed out (train/data/order.py): any world size goes on from here
    step: int = 0  # micro-batches done on each rank (DeepSpeed steps the optimizer every optim.grad_accum of them)
    world_size: int = 0  # ranks that wrote the checkpoint
    mlflow_run_id: str | None = None
    config: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)  # the run's cost so far (train/cost.py Meter.totals)
    dataset_digest: str = ""  # the manifest's (data_pipeline/manifest.py digest) the run trains on
    dataset_samples: int = 0  # train samples in an epoch

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainState:
        data = json.loads(text)
        if "batch_in_epoch" in data and "position" not in data:  # written before the epoch order had a position:
            cfg = data.get("config", {})                            # it trained on the resampled stream
            cfg.setdefault("data", {}).setdefault("order", "resampled")
            data["position"] = data["batch_in_epoch"] * cfg["data"].get("batch_size", 0) * data.get("world_size", 0)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def run_uri(cfg: Config) -> str:
    """The run's folder: its checkpoints, ledger, final model and result."""
    return storage.join(cfg.ray.storage_path, cfg.ray.run_name)


class ResumeError(ValueError):
    """The new config would change what the checkpoint's position means, or cannot load it."""


# Keys a resume may not change, and why. Everything else may (epochs, logging, evaluation, loader
# workers, checkpoint cadence, augmentation, ...).
FIXED_ON_RESUME = {
    "data.dataset": "the saved position counts batches of that dataset",
    "data.batch_size": "the saved steps and learning-rate schedule count batches of that size",
    "data.order": "the saved position is a place in that order",
    "data.block_samples": "the saved position is a place in the block order those blocks make",
    "data.window_blocks": "the saved position is a place in the block order those windows make",
    "data.streams": "the saved position is a place in the block order those streams make",
    "data.samples_per_epoch": "the saved epoch and position are a place in the slices of a pass that size makes",
    "data.ledger": "the ledger proves an epoch only when every attempt of the run wrote it",
    "optim.grad_accum": "the saved steps count micro-batches of that accumulation",
    "optim.seed": "the saved position is a place in the order that seed draws",
    "model.name": "the checkpoint holds that model's weights",
    "data.image_size": "the model and the checkpoint's probe were built for that input size",
    "deepspeed.zero_stage": "the checkpoint's optimizer state is laid out for that stage",
    "deepspeed.offload": "the checkpoint holds that optimizer's state",
    "optim.lr": "the saved scheduler would restore the old base LR and ignore the new one",
    "optim.weight_decay": "the saved optimizer would restore the old value and ignore the new one",
    "model.trainable": "the checkpoint's optimizer state covers the parameters that trained",
    "model.svd_rank": "the checkpoint holds SVD residuals of that rank",
    "model.svd_layers": "the checkpoint holds SVD residuals of those layers",
    "model.svd_parts": "the checkpoint holds one SVD residual per block of those layers",
    "model.head": "the weights learnt with the head's input normalised (l2norm) or not (linear)",
    "model.timm_args": "the checkpoint holds the weights of the model those arguments build",
    "data.pairing": "the saved position is a place in that order",
    "data.fakes": "the saved position counts the samples of an epoch with (or without) the fakes",
    "data.mean": "the weights learnt from inputs normalised that way (and the model card would record the new value)",
    "data.std": "the weights learnt from inputs normalised that way (and the model card would record the new value)",
}


_MISSING = object()
# What a key added later meant in a checkpoint written before it, where that differs from today's
# default: SVD layers were not split before model.svd_parts.
_BEFORE_THE_KEY = {"model.svd_parts": {}}


def _get(config: dict, key: str, missing=None):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def check_resume(saved: TrainState, cfg: Config, world_size: int | None, where: str, dataset_digest: str | None = None) -> None:
    """Refuse to resume from the checkpoint at `where` when the new config changes a key that fixes
    the meaning of its position or its state, or when the dataset's manifest changed since (its
    `dataset_digest` now); the message names what changed. `world_size` None: not known yet (an
    elastic run, checked again by the workers)."""
    if dataset_digest and saved.dataset_digest and dataset_digest != saved.dataset_digest:
        raise ResumeError(f"cannot resume from {where}: the manifest of {cfg.data.dataset} changed since the run began (digest "
                          f"{saved.dataset_digest}, now {dataset_digest}; {saved.dataset_samples} train samples an epoch then): "
                          f"the saved position is a place in the old dataset's order; start a new run")
    new, defaults = cfg.to_dict(), Config().to_dict()
    for key, why in FIXED_ON_RESUME.items():
        # A key added after the checkpoint was written had its default then (model.trainable: all).
        old_value = _get(saved.config, key, _MISSING)
        if old_value is _MISSING:
            old_value = _BEFORE_THE_KEY.get(key, _get(defaults, key))
        new_value = _get(new, key)
        if saved.config and old_value != new_value:
            raise ResumeError(f"cannot resume from {where}: {key} was {old_value!r} and is now {new_value!r} ({why}); "
                              f"set it back, or start a new run (another ray.run_name, or none for a fresh name)")
    # Another world size: the position is global (train/data/order.py) and the ZeRO state is converted
    # to DeepSpeed's universal format on load (stages 1-3; stage 0's state is whole in every file).
    # A resampled stream has no global order to go on from, so it keeps its world size.
    if world_size and saved.world_size and saved.world_size != world_size and cfg.data.order == "resampled":
        raise ResumeError(f"cannot resume from {where}: ray.num_workers was {saved.world_size} and is now {world_size}, "
                          f"and data.order=resampled has no global position to go on from; set it back, or start a new run")


def probe_input(image_size: int) -> torch.Tensor:
    """A fixed input whose outputs are stored with each checkpoint: reloading the checkpoint, or
    consolidating it into a plain model, must give the same outputs."""
    return torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1234))


@contextlib.contextmanager
def strict_fp32():
    """fp32 without TF32 (on by default for cuDNN convolutions): outputs a CPU can reproduce."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def probe_logits(engine, image_size: int) -> dict[str, torch.Tensor]:
    """The engine's outputs on the probe as it trains (autocast in bf16/fp16), and in strict fp32
    (the model without autocast), which the consolidated model on any machine must reproduce.
    Collective under ZeRO-3 (forward gathers parameters): every rank calls it."""
    from train.engine import input_dtype  # noqa: PLC0415

    was_training = engine.training
    engine.eval()
    x = probe_input(image_size).to(engine.device)
    with torch.no_grad():
        trained = engine(x.to(input_dtype(engine))).float().cpu()
        with strict_fp32():
            fp32 = engine.module(x).float().cpu()
    engine.train(was_training)
    return {"logits": trained, "logits_fp32": fp32}


def save(engine, state: TrainState, metrics: dict, rank: int, image_size: int) -> None:
    """Collective: every rank calls it at the same step (see loop.checkpoint_now)."""
    import ray.train  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="dfdc-ckpt-") as d:
        write(engine, state, metrics, rank, image_size, d)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def write(engine, state: TrainState, metrics: dict, rank: int, image_size: int, folder: str) -> None:
    """Collective: this rank's files of a checkpoint, into the local `folder`."""
    probe = probe_logits(engine, image_size)
    engine.save_checkpoint(folder, tag=TAG)  # every rank writes its shard of the states
    if rank == 0:
        torch.save({"input": probe_input(image_size), **probe}, os.path.join(folder, PROBE))
        with open(os.path.join(folder, REPORT), "w") as f:
            json.dump(metrics, f, default=float)
        with open(os.path.join(folder, STATE), "w") as f:
            f.write(state.to_json())


def report_again(found: Found, rank: int) -> None:
    """Collective: report the checkpoint a resume found in the run's folder, with the metrics it was
    first reported with, so that Ray Train's record (the run's result, its latest and best
    checkpoints, the model file made from them) holds it. For a resume that has nothing left to
    train: the run's last checkpoint reached the folder but not the record (its controller was lost
    in between), and no later report would add it. Ray copies it into a new checkpoint folder."""
    import ray.train  # noqa: PLC0415

    import pyarrow.fs as pafs  # noqa: PLC0415

    fs, path = found.checkpoint.filesystem, f"{found.checkpoint.path.rstrip('/')}/{REPORT}"
    metrics = {}
    if fs.get_file_info(path).type == pafs.FileType.File:  # the one small file, not the whole checkpoint
        with fs.open_input_stream(path) as f:
            metrics = json.loads(f.read().decode())
    metrics = {"epoch": found.state.epoch, "step": found.state.step, "position": found.state.position} | metrics
    ray.train.report(metrics, checkpoint=found.checkpoint if rank == 0 else None)


def latest_complete(ckpt):
    """`ckpt` if it holds every file a load reads, else the newest older checkpoint of the same run
    that does (Ray names them checkpoint_<time>, so names sort by age); None if there is none."""
    import pyarrow.fs as pafs  # noqa: PLC0415
    import ray.train  # noqa: PLC0415

    fs, newest = ckpt.filesystem, ckpt.path.rstrip("/")
    parent = newest.rsplit("/", 1)[0]
    candidates = sorted(
        (i.path for i in fs.get_file_info(pafs.FileSelector(parent))
         if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_") and i.path <= newest),
        reverse=True,
    )
    for path in candidates:
        names = {posixpath.relpath(i.path, path) for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                 if i.type == pafs.FileType.File}
        state = None
        if STATE in names:
            with fs.open_input_stream(f"{path}/{STATE}") as f:
                state = TrainState.from_json(f.read().decode())
        if state is not None and not (missing := missing_files(names, state)):
            if path != newest:
                log.warning("checkpoint %s lacks files (cut off while being written); resuming from %s", newest, path)
            return ray.train.Checkpoint(path, filesystem=fs)
        log.warning("checkpoint %s is incomplete: no %s", path, ", ".join(missing) if state is not None else STATE)
    log.warning("no complete checkpoint in %s; starting from scratch", parent)
    return None


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def missing_files(names: set[str], state: TrainState) -> list[str]:
    """The files a load of this checkpoint reads that `names` (paths relative to its folder) lacks:
    the state, the probe, and DeepSpeed's files for its ZeRO stage and ranks (optimizer states
    per rank at ZeRO 1-3; model states per rank at ZeRO-3, else one file). Each file is one object,
    written whole or not at all; which of them a cut-off upload left is a matter of chance."""
    stage = state.config.get("deepspeed", {}).get("zero_stage")
    if stage is None:  # a state without its config: the file names tell
        stage = 3 if any("zero_pp_rank_" in n and n.endswith("model_states.pt") for n in names) else \
            1 if any(n.endswith("optim_states.pt") for n in names) else 0
    ranks = range(max(1, state.world_size))
    need = [[STATE], [PROBE]]
    if stage == 3:
        need += [[f"{TAG}/zero_pp_rank_{r}_mp_rank_00_model_states.pt"] for r in ranks]
    else:
        need.append([f"{TAG}/mp_rank_00_model_states.pt"])
    if stage > 0:  # bf16 runs name them bf16_zero_pp_rank_<r>_...
        need += [[f"{TAG}/{p}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for p in ("", "bf16_")] for r in ranks]
    return [either[0] for either in need if not names.intersection(either)]


def newest_stored(cfg: Config):
    """The newest checkpoint in the run's folder holding every file a load reads (a
    ray.train.Checkpoint), read from storage rather than from Ray Train's record; None if none."""
    import pyarrow.fs as pafs  # noqa: PLC0415
    import ray.train  # noqa: PLC0415

    from train.run import storage_for_ray  # noqa: PLC0415

    found = latest_state(run_uri(cfg))
    if found is None:
        return None
    path, fs = storage_for_ray(found[1])
    return ray.train.Checkpoint(path, filesystem=fs or pafs.LocalFileSystem())


def latest_state(run_uri: str) -> tuple[TrainState, str] | None:
    """The state of the newest complete checkpoint under a run's folder (local or s3://: one that
    holds every file a load reads, `missing_files`) and that checkpoint's URI, read by the driver
    before any worker starts; None for a new run."""
    fs, root = storage.filesystem(run_uri)
    with storage.named(run_uri):
        try:
            entries = fs.ls(root, detail=False)
        except FileNotFoundError:
            return None
    names = sorted((posixpath.basename(p.rstrip("/")) for p in entries), reverse=True)
    for name in (n for n in names if n.startswith("checkpoint_")):
        uri = storage.join(run_uri, name)
        files = set(storage.list_files(uri))  # listed afresh, never from a cache (storage.filesystem)
        if STATE not in files:
            log.warning("checkpoint %s is incomplete: no %s", uri, STATE)
            continue
        state = TrainState.from_json(storage.read_bytes(storage.join(uri, STATE)))
        if missing := missing_files(files, state):
            log.warning("checkpoint %s is incomplete (cut off while being written): no %s", uri, ", ".join(missing))
            continue
        return state, uri
    return None


@dataclass
class Found:
    """The checkpoint a worker resumes from, read before its engine is built."""

    checkpoint: object  # ray.train.Checkpoint
    state: TrainState
    universal: bool  # written by another number of ranks, with ZeRO state to reshard
    recorded: bool = True  # in Ray Train's record (else found in the run's folder only)


def find(cfg: Config, world_size: int, dataset_digest: str | None = None) -> Found | None:
    """The latest complete checkpoint of this run (Ray Train hands it to restarted workers), its
    state, and whether it must be converted to load on `world_size` ranks."""
    import ray.train  # noqa: PLC0415

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        ckpt = latest_complete(ckpt)
    stored, recorded = newest_stored(cfg), True
    if stored is not None and (ckpt is None or _name(stored.path) > _name(ckpt.path)):
        # Ray Train records a checkpoint only after every rank has uploaded its files; a controller
        # lost in between (its node died) leaves a whole checkpoint in the run's folder that Ray's
        # record does not name, and the driver, reading the folder, said it resumes from it.
        log.warning("Ray Train's record of run %s ends at %s, but the run's folder holds the newer complete checkpoint "
                    "%s (the record was lost with its controller): resuming from that", cfg.ray.run_name,
                    ckpt.path if ckpt is not None else "no checkpoint", stored.path)
        ckpt, recorded = stored, False
    if ckpt is None:
        return None
    with ckpt.as_directory() as d, open(os.path.join(d, STATE)) as f:
        state = TrainState.from_json(f.read())
    check_resume(state, cfg, world_size, ckpt.path, dataset_digest)
    universal = state.world_size not in (0, world_size) and cfg.deepspeed.zero_stage > 0
    return Found(ckpt, state, universal, recorded)


_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def _deepspeed_globals() -> list:
    """What DeepSpeed's checkpoint files hold besides tensors and plain containers (found by loading
    ZeRO 0-3 and universal checkpoints with nothing else allowed)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler  # noqa: PLC0415
    from deepspeed.runtime.zero.config import ZeroStageEnum  # noqa: PLC0415
    from deepspeed.utils.tensor_fragment import fragment_address  # noqa: PLC0415

    return [LossScaler, DynamicLossScaler, fragment_address, ZeroStageEnum]


_WEIGHTS_ONLY_LOCK = threading.RLock()  # the flag is process-wide: one holder at a time


@contextlib.contextmanager
def weights_only_loads():
    """Every torch.load inside unpickles tensors, plain data and `_deepspeed_globals` only, whatever
    its caller asks: DeepSpeed's loaders pass weights_only=False, and a checkpoint comes from
    storage, where a crafted pickle would run code on every worker that resumes from it."""
    with _WEIGHTS_ONLY_LOCK:
        torch.serialization.add_safe_globals(_deepspeed_globals())
        saved = os.environ.get(_FORCE_WEIGHTS_ONLY)
        os.environ[_FORCE_WEIGHTS_ONLY] = "1"  # torch reads it at each load, and it overrides the argument
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
            else:
                os.environ[_FORCE_WEIGHTS_ONLY] = saved


def to_universal(src: str, dst: str) -> None:
    """DeepSpeed's ds_to_universal on the checkpoint in `src`, written to `dst` with the same tag:
    each parameter's fp32 weights and optimizer state, whole, for any number of ranks to load."""
    import argparse  # noqa: PLC0415
    import contextlib as cl  # noqa: PLC0415
    import io  # noqa: PLC0415

    from deepspeed.checkpoint import ds_to_universal  # noqa: PLC0415

    args = argparse.Namespace(input_folder=os.path.join(src, TAG), output_folder=os.path.join(dst, TAG),
                              num_extract_workers=1, num_merge_workers=1,  # no process pool inside a Ray worker
                              keep_temp_folder=False, strict=True, inject_missing_state=True)
    with cl.redirect_stdout(io.StringIO()):  # its progress bars and prints, per parameter
        ds_to_universal.main(args)


UNIVERSAL = "universal"  # <run>/universal/<checkpoint name>/: a checkpoint converted for another world size
COMPLETE = "COMPLETE"  # written last into such a folder: without it the folder is incomplete
# The converted checkpoint as one uncompressed tar object: a folder per parameter tensor with a file
# per state (EfficientNet-B4: 418 tensors, ~1,250 files, ~210 MB) would be as many PUTs, and as
# many GETs for every rank.
# (Also, rclone's S3 server raced on concurrent PUTs into one new folder: "Dir.Rename error: file
# does not exist", then a PUT that never got its answer.)
UNIVERSAL_TAR = f"{TAG}.tar"


def universal_copy(found: Found, cfg: Config, local: str, into: str) -> bool:
    """The checkpoint `found` (downloaded to `local`) in DeepSpeed's universal format, in the
    local folder `into`. Converted once, by rank 0, and stored beside the run's checkpoints; the
    other ranks, and later restarts from the same checkpoint, download it instead of converting
    again (each rank used to convert its own copy, at every restart). Collective. Returns whether
    this call converted it."""
    import torch.distributed as dist  # noqa: PLC0415

    name = posixpath.basename(str(found.checkpoint.path).rstrip("/"))
    uri = storage.join(run_uri(cfg), UNIVERSAL, name)
    converted = False
    # A folder of the earlier layout (ds/ and COMPLETE, before the tar) is converted again.
    stored = storage.exists(storage.join(uri, COMPLETE)) and storage.exists(storage.join(uri, UNIVERSAL_TAR))
    if (not dist.is_initialized() or dist.get_rank() == 0) and not stored:
        storage.remove(uri)  # what a conversion cut off before its end left: a copy into it would nest
        to_universal(local, into)
        fs, path = storage.filesystem(uri)
        with tempfile.TemporaryDirectory(prefix="dfdc-universal-tar-") as tmp, storage.named(uri):
            packed = os.path.join(tmp, UNIVERSAL_TAR)
            with tarfile.open(packed, "w") as tar:
                tar.add(os.path.join(into, TAG), arcname=TAG)
            fs.put_file(packed, f"{path}/{UNIVERSAL_TAR}")
        storage.write_bytes(storage.join(uri, COMPLETE), found.state.to_json().encode())
        for other in {p.split("/")[0] for p in storage.list_files(storage.join(run_uri(cfg), UNIVERSAL))} - {name}:
            storage.remove(storage.join(run_uri(cfg), UNIVERSAL, other))  # conversions of older checkpoints
        converted = True
    if dist.is_initialized():
        dist.barrier()
    if not converted:
        fs, path = storage.filesystem(uri)
        with tempfile.TemporaryDirectory(prefix="dfdc-universal-tar-") as tmp, storage.named(uri):
            packed = os.path.join(tmp, UNIVERSAL_TAR)
            fs.get_file(f"{path}/{UNIVERSAL_TAR}", packed)
            with tarfile.open(packed) as tar:
                tar.extractall(into, filter="data")  # "data": no member may land outside `into`
    return converted


def restore_buffers(module: torch.nn.Module, checkpoint_dir: str) -> None:
    """Buffers (BatchNorm running statistics) from the checkpoint's first model-states file. A
    universal load restores parameters and optimizer state only: without this, running means came
    back as zeros (measured). Every rank saved the same buffers (loop.sync_buffers)."""
    path = sorted(glob.glob(os.path.join(checkpoint_dir, TAG, "*model_states.pt")))[0]
    with weights_only_loads():
        saved = torch.load(path, map_location="cpu", weights_only=True)["module"]
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name in saved:  # non-persistent buffers are not saved, and need not be
                buf.copy_(saved[name])


def restore_frozen(engine, checkpoint_dir: str) -> None:
    """Frozen parameters (model.trainable) from the checkpoint itself. A universal load restores the
    parameters the optimizer holds, so without this the frozen ones would stay as this process built
    them (measured: a ViT's outputs moved when it was built from another seed). Collective at ZeRO-3."""
    import deepspeed  # noqa: PLC0415

    frozen = [(n, p) for n, p in engine.module.named_parameters() if not p.requires_grad]
    if not frozen:
        return
    weights = consolidate(checkpoint_dir)
    partitioned = engine.zero_optimization_stage() == 3  # every rank holds a slice: gather, set, re-partition
    gathered = deepspeed.zero.GatheredParameters([p for _, p in frozen], modifier_rank=0) if partitioned else contextlib.nullcontext()
    with torch.no_grad(), gathered:
        for name, p in frozen:
            p.copy_(weights[name])


def load(engine, found: Found, cfg: Config) -> tuple[TrainState, dict]:
    """Restore the engine from `found`: its state, and what the reload measured.
    `reload_max_abs_diff` is how far the reloaded engine's probe outputs are from the ones saved
    with the checkpoint (0 when the weights came back exactly). A checkpoint of another world size
    is converted first (`found.universal`: the engine was built to load the universal format)."""
    with (found.checkpoint.as_directory() as d, tempfile.TemporaryDirectory(prefix="dfdc-universal-") as converted,
          weights_only_loads()):
        converted_here = universal_copy(found, cfg, d, converted) if found.universal else False
        engine.load_checkpoint(converted if found.universal else d, tag=TAG)
        if found.universal:
            restore_buffers(engine.module, d)
            restore_frozen(engine, d)
        saved = torch.load(os.path.join(d, PROBE), map_location="cpu", weights_only=True)
    diff = float((probe_logits(engine, cfg.data.image_size)["logits"] - saved["logits"]).abs().max())
    return found.state, {"resumed_from": found.checkpoint.path, "reload_max_abs_diff": diff, "converted": found.universal,
                         "converted_here": converted_here}


def consolidate(checkpoint_dir: str) -> dict:
    """One fp32 state dict from a checkpoint's ZeRO shards (DeepSpeed's zero_to_fp32). Stage 0 has
    no shards: its model file holds the whole module."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # noqa: PLC0415

    states = sorted(glob.glob(os.path.join(checkpoint_dir, TAG, "*model_states.pt")))
    if not states:
        raise FileNotFoundError(f"{checkpoint_dir} holds no DeepSpeed checkpoint ({TAG}/*model_states.pt)")
    with weights_only_loads():
        module = torch.load(states[0], map_location="cpu", weights_only=True)["module"]
        if not glob.glob(os.path.join(checkpoint_dir, TAG, "*zero_pp_rank_*optim_states.pt")):
            return {k: v.float() for k, v in module.items()}
        weights = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=TAG)
    # Frozen parameters (model.trainable): zero_to_fp32 rebuilds them from stage 2 and 3 files only.
    # At stage 1 the module's states hold them whole, as every rank has them.
    return weights | {k: v.float() for k, v in module.items() if k not in weights}


def probe_diff(model: torch.nn.Module, probe: dict) -> float:
    """How far a plain fp32 model's outputs on the probe are from the engine's strict-fp32 ones,
    relative to their size: the consolidated weights must reproduce the engine."""
    model.eval()
    reference = probe.get("logits_fp32", probe["logits"])
    with torch.no_grad():
        out = model(probe["input"]).float()
    return float((out - reference).abs().max() / max(1.0, float(reference.abs().max())))
