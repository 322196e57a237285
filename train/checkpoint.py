"""Checkpoints: every rank's DeepSpeed files plus our state JSON, reported to Ray Train, which
merges them into one checkpoint in `ray.storage_path`. Complete only when the JSON is there."""

from __future__ import annotations

import json
import logging
import os
import tempfile

import torch

STATE = "dfdc_state.json"
PROBE = "probe.pt"
TAG = "ds"

log = logging.getLogger(__name__)


def probe_input(image_size: int) -> torch.Tensor:
    """A fixed input whose outputs are stored with each checkpoint: reloading the checkpoint, or
    consolidating it into a plain model, must give the same outputs."""
    return torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1234))


def probe_logits(engine, image_size: int) -> torch.Tensor:
    """Collective under ZeRO-3 (forward gathers parameters): every rank calls it."""
    was_training = engine.training
    engine.eval()
    with torch.no_grad():
        out = engine(probe_input(image_size).to(engine.device)).float().cpu()
    engine.train(was_training)
    return out


def save(engine, state: dict, metrics: dict, rank: int, image_size: int) -> None:
    import ray.train  # noqa: PLC0415

    logits = probe_logits(engine, image_size)
    with tempfile.TemporaryDirectory(prefix="dfdc-ckpt-") as d:
        engine.save_checkpoint(d, tag=TAG)  # collective: every rank writes its shard of the states
        if rank == 0:
            torch.save({"input": probe_input(image_size), "logits": logits}, os.path.join(d, PROBE))
            # Written last: a checkpoint without it is incomplete.
            with open(os.path.join(d, STATE), "w") as f:
                json.dump(state, f, indent=1)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def latest_complete(ckpt):
    """`ckpt` if its state JSON is there, else the newest older checkpoint of the same run that has
    one (Ray names them checkpoint_<time>, so names sort by age); None if there is none."""
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
        if fs.get_file_info(f"{path}/{STATE}").type == pafs.FileType.File:
            if path != newest:
                log.warning("checkpoint %s has no %s (cut off while being written); resuming from %s", newest, STATE, path)
            return ray.train.Checkpoint(path, filesystem=fs)
    log.warning("no complete checkpoint in %s; starting from scratch", parent)
    return None


def load(engine, image_size: int) -> dict | None:
    """Restore the engine from the latest complete checkpoint of this run; its state, or None.
    The state gets `reload_max_abs_diff`: how far the reloaded engine's probe outputs are from the
    ones saved with the checkpoint (0 when the weights came back exactly)."""
    import ray.train  # noqa: PLC0415

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        ckpt = latest_complete(ckpt)
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        with open(os.path.join(d, STATE)) as f:
            state = json.load(f)
        engine.load_checkpoint(d, tag=TAG)
        saved = torch.load(os.path.join(d, PROBE), map_location="cpu", weights_only=True)
    state["reload_max_abs_diff"] = float((probe_logits(engine, image_size) - saved["logits"]).abs().max())
    state["resumed_from"] = ckpt.path
    return state


def consolidate(checkpoint_dir: str) -> dict:
    """One fp32 state dict from a checkpoint's ZeRO shards (DeepSpeed's zero_to_fp32). Stage 0 has
    no shards: its model file holds the whole module."""
    import glob  # noqa: PLC0415

    import torch  # noqa: PLC0415
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # noqa: PLC0415

    if glob.glob(os.path.join(checkpoint_dir, TAG, "*zero_pp_rank_*optim_states.pt")):
        return get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=TAG)
    states = torch.load(os.path.join(checkpoint_dir, TAG, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in states["module"].items()}
