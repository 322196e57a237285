"""The detector network: any timm backbone with a single-logit head."""

from __future__ import annotations

import timm
import torch

from dfdc.config import ModelConfig
from train.model import trainable
from train.model.weights import load_weights


def build_model(cfg: ModelConfig, decompose: bool = True) -> torch.nn.Module:
    """The model with `model.trainable` applied (train/model/trainable.py). `decompose` False: for weights
    loaded from a model file or checkpoint next, so the SVD of random weights is skipped."""
    try:
        model = timm.create_model(cfg.name, pretrained=False, num_classes=1, drop_rate=cfg.drop_rate, **cfg.timm_args)
    except (RuntimeError, TypeError) as e:  # timm's "Unknown model"; an argument the model does not take
        raise ValueError(f"model.name {cfg.name!r}: {e}") from e
    if cfg.pretrained:
        load_weights(model, cfg.pretrained, cfg.name, cfg.timm_args)
    return trainable.apply(model, cfg.trainable, cfg.svd_rank, cfg.svd_layers, decompose=decompose, svd_parts=cfg.svd_parts,
                           orth_weight=cfg.svd_orth_weight, keepsv_weight=cfg.svd_keepsv_weight)
