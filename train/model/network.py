"""The detector network: any timm backbone with a single-logit head."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F

from dfdc.config import ModelConfig
from train.model import trainable
from train.model.weights import classifier_prefix, load_weights


class NormalizedLinear(torch.nn.Linear):
    """The classifier on L2-normalised features (GenD's head): the features' length no longer sets the
    logit, only their direction. While training it keeps the normalised features of its last call for
    GenD's losses (train/objective.py). Same parameters as the linear layer it replaces."""

    features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(x, p=2, dim=-1)
        if self.training:
            self.features = z
        return F.linear(z, self.weight, self.bias)

    @staticmethod
    def features_of(model: torch.nn.Module) -> torch.Tensor:
        """The normalised features the model's head saw in this forward pass (then forgotten)."""
        head = next((m for m in model.modules() if isinstance(m, NormalizedLinear)), None)
        if head is None or head.features is None:
            raise RuntimeError("no L2-normalised features from this forward pass: GenD's losses need model.head=l2norm, in training mode")
        features, head.features = head.features, None
        return features


def normalize_head(model: torch.nn.Module) -> torch.nn.Module:
    """Replace the timm model's classifier (a Linear) with a NormalizedLinear holding its weights."""
    name = classifier_prefix(model)
    head = model.get_submodule(name) if name else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"model.head=l2norm needs a linear classifier; {type(model).__name__}'s is {type(head).__name__}")
    new = NormalizedLinear(head.in_features, head.out_features, bias=head.bias is not None)
    new.load_state_dict(head.state_dict())
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def build_model(cfg: ModelConfig, decompose: bool = True) -> torch.nn.Module:
    """The model with `model.trainable` applied (train/model/trainable.py). `decompose` False: for weights
    loaded from a model file or checkpoint next, so the SVD of random weights is skipped."""
    try:
        model = timm.create_model(cfg.name, pretrained=False, num_classes=1, drop_rate=cfg.drop_rate, **cfg.timm_args)
    except (RuntimeError, TypeError) as e:  # timm's "Unknown model"; an argument the model does not take
        raise ValueError(f"model.name {cfg.name!r}: {e}") from e
    if cfg.pretrained:
        load_weights(model, cfg.pretrained, cfg.name, cfg.timm_args)
    if cfg.head == "l2norm":
        normalize_head(model)
    return trainable.apply(model, cfg.trainable, cfg.svd_rank, cfg.svd_layers, decompose=decompose, svd_parts=cfg.svd_parts,
                           orth_weight=cfg.svd_orth_weight, keepsv_weight=cfg.svd_keepsv_weight)
