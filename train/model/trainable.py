"""Which parameters of a timm model train (`model.trainable`), for the recipes that tune a small part
of a large pretrained encoder:

- `all`: every parameter (the EfficientNet recipes).
- `layernorm`: the normalisation layers' own parameters and the classifier head; GenD (WACV 2026)
  tunes CLIP / DINOv3 / PE encoders this way (about 0.03% of a ViT-L's weights).
- `head`: the classifier head only (a linear probe).
- `svd`: Effort (ICML 2025): each chosen linear layer W = U S Vh is split into its principal part
  (the top singular components, frozen) and a residual of the last `svd_rank` components, whose
  U, S and Vh train; plus the head. Effort's orthogonality and singular-value losses are not built.

Frozen parameters have requires_grad False: the engine gives the optimizer only the others, so
DeepSpeed keeps no optimizer state for them and saves them with the module's states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfdc.config import TRAINABLE


class SVDResidualLinear(nn.Module):
    """A linear layer as a frozen principal part plus a trainable low-rank residual. At start the
    sum equals the original weight up to the SVD's rounding."""

    def __init__(self, linear: nn.Linear, rank: int, decompose: bool = True):
        super().__init__()
        out_features, in_features = linear.weight.shape
        rank = min(rank, min(out_features, in_features))
        if decompose:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # LAPACK's factors vary in the last bits with its thread count: the same in every process
            try:
                u, s, vh = torch.linalg.svd(linear.weight.detach().float(), full_matrices=False)
            finally:
                torch.set_num_threads(threads)
            keep = s.numel() - rank
            main = (u[:, :keep] * s[:keep]) @ vh[:keep]
            u, s, vh = u[:, keep:], s[keep:], vh[keep:]
        else:  # shapes only: a saved state dict is loaded on top (evaluation, scoring, consolidation)
            main = torch.zeros(out_features, in_features)
            u, s, vh = torch.zeros(out_features, rank), torch.zeros(rank), torch.zeros(rank, in_features)
        # Row-major copies: SVD returns column-major factors, whose slices DeepSpeed cannot broadcast
        # as bytes (it views every parameter so at start).
        self.weight_main = nn.Parameter(main.clone(memory_format=torch.contiguous_format), requires_grad=False)
        self.u, self.s, self.vh = (nn.Parameter(t.clone(memory_format=torch.contiguous_format)) for t in (u, s, vh))
        self.bias = None
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight, for code that reads a linear layer's `weight` (shape, dtype)."""
        return self.weight_main + (self.u * self.s) @ self.vh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def is_norm(module: nn.Module) -> bool:
    """Normalisation layers of torch and timm (LayerNorm, LayerNorm2d, RmsNorm, GroupNorm,
    BatchNorm2d, BatchNormAct2d, ...): timm's own classes do not all derive from torch's."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or "Norm" in type(module).__name__


def apply(model: nn.Module, mode: str, svd_rank: int = 1, svd_layers: list[str] | tuple = (), decompose: bool = True) -> nn.Module:
    """Freeze all but what `mode` trains (in place; returns the model). `decompose` False builds the
    SVD layers' shapes without decomposing (the weights come from a file next)."""
    if mode not in TRAINABLE:
        raise ValueError(f"model.trainable must be one of {', '.join(TRAINABLE)}, got {mode!r}")
    if mode == "all":
        return model
    if mode == "svd":
        targets = [(name, m) for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and any(name == s or name.endswith("." + s) for s in svd_layers)]
        if not targets:
            raise ValueError(f"model.trainable=svd: no linear layer of {type(model).__name__} is named like "
                             f"model.svd_layers={list(svd_layers)}")
        for name, linear in targets:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, SVDResidualLinear(linear, svd_rank, decompose))
    head = set(map(id, model.get_classifier().parameters()))
    for p in model.parameters():
        p.requires_grad = id(p) in head
    if mode == "layernorm":
        for m in model.modules():
            if is_norm(m):
                for p in m.parameters(recurse=False):
                    p.requires_grad = True
    elif mode == "svd":
        for m in model.modules():
            if isinstance(m, SVDResidualLinear):
                for p in (m.u, m.s, m.vh):
                    p.requires_grad = True
    return model


def counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (the frozen SVD principal parts count as parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total}
