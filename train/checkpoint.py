"""Checkpoints: every rank's DeepSpeed files plus our state JSON, reported to Ray Train, which
merges them into one checkpoint in `ray.storage_path`. Complete only when the JSON is there."""

from __future__ import annotations

import json
import os
import tempfile

STATE = "dfdc_state.json"
TAG = "ds"


def save(engine, state: dict, metrics: dict, rank: int) -> None:
    import ray.train  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="dfdc-ckpt-") as d:
        engine.save_checkpoint(d, tag=TAG)  # collective: every rank writes its shard of the states
        if rank == 0:
            with open(os.path.join(d, STATE), "w") as f:
                json.dump(state, f, indent=1)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def load(engine) -> dict | None:
    """Restore the engine from the latest complete checkpoint of this run; its state, or None."""
    import ray.train  # noqa: PLC0415

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        path = os.path.join(d, STATE)
        if not os.path.exists(path):
            raise RuntimeError(f"checkpoint {ckpt.path} has no {STATE}: it was cut off while being written")
        with open(path) as f:
            state = json.load(f)
        engine.load_checkpoint(d, tag=TAG)
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
