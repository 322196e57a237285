"""The detector network: any timm backbone with a single-logit head."""

from __future__ import annotations

import io

import timm
import torch

from dfdc import storage
from dfdc.config import ModelConfig
from train import trainable


def build_model(cfg: ModelConfig, decompose: bool = True) -> torch.nn.Module:
    """The model with `model.trainable` applied (train/trainable.py). `decompose` False: for weights
    loaded from a model file or checkpoint next, so the SVD of random weights is skipped."""
    try:
        model = timm.create_model(cfg.name, pretrained=False, num_classes=1, drop_rate=cfg.drop_rate, **cfg.timm_args)
    except (RuntimeError, TypeError) as e:  # timm's "Unknown model"; an argument the model does not take
        raise ValueError(f"model.name {cfg.name!r}: {e}") from e
    if cfg.pretrained:
        load_weights(model, cfg.pretrained)
    return trainable.apply(model, cfg.trainable, cfg.svd_rank, cfg.svd_layers, decompose=decompose)


def load_weights(model: torch.nn.Module, uri: str) -> None:
    """Backbone weights from a state dict file (local or s3://); the classifier head is left as is
    when its shape differs (ImageNet's 1000 classes vs our one logit)."""
    state = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"model.pretrained {uri}: no tensor in it fits {type(model).__name__}")
    model.load_state_dict(usable, strict=False)
