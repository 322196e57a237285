"""The training loss: binary cross-entropy on the one logit (optionally label-smoothed), plus what a
recipe adds: GenD's uniformity and alignment on the L2-normalised features (Wang & Isola, "Understanding
Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere", 2020), and
Effort's SVD regularisers. Each extra term comes from the modules' own forward pass (the head keeps
its normalised input, the SVD layers their penalty), so it is computed on the gathered weights under
ZeRO-3 and on this rank's micro-batch, as GenD computes it per device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dfdc.config import OptimConfig
from train.model import trainable
from train.model.network import NormalizedLinear


def loss(logits: torch.Tensor, labels: torch.Tensor, module: torch.nn.Module, cfg: OptimConfig | None = None,
         pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The micro-batch's loss: logits (N,) float, labels (N,) 0/1."""
    smoothing = cfg.label_smoothing if cfg else 0.0
    targets = labels * (1 - smoothing) + smoothing / 2 if smoothing else labels
    out = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
    if cfg and (cfg.uniformity_weight or cfg.alignment_weight):
        features = NormalizedLinear.features_of(module)
        if cfg.uniformity_weight:
            out = out + cfg.uniformity_weight * uniformity(features)
        if cfg.alignment_weight:
            out = out + cfg.alignment_weight * alignment(features, labels)
    penalty = trainable.regularisation(module)  # Effort's, when model.svd_*_weight asks for them
    return out if penalty is None else out + penalty.float()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E exp(-t |x_i - x_j|^2) over the distinct pairs of unit vectors x (N, D): lowest when they
    spread over the sphere. Floored at log 1e-6, as GenD's code does, so identical features give a
    finite value."""
    if x.shape[0] < 2:
        return x.new_zeros(())
    return torch.pdist(x.float(), p=2).pow(2).mul(-t).exp().mean().clamp(min=1e-6).log()


def alignment(x: torch.Tensor, labels: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """E |x_i - x_j|^alpha over the distinct pairs with the same label: lowest when each class sits
    at one point; 0 when no two samples share a label."""
    same = (labels[:, None] == labels[None, :]).triu(diagonal=1)
    i, j = same.nonzero(as_tuple=True)
    if i.numel() == 0:
        return x.new_zeros(())
    x = x.float()
    return (x[i] - x[j]).norm(p=2, dim=1).pow(alpha).mean()
