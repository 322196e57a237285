"""Which parameters of a timm model train (`model.trainable`), for the recipes that tune a small part
of a large pretrained encoder:

- `all`: every parameter (the EfficientNet recipes).
- `layernorm`: the normalisation layers' own parameters and the classifier head; GenD (WACV 2026)
  tunes CLIP / DINOv3 / PE encoders this way (about 0.03% of a ViT-L's weights).
- `head`: the classifier head only (a linear probe).
- `svd`: Effort (ICML 2025): each chosen linear layer W = U S Vh is split into its principal part
  (the top singular components, frozen) and a residual of the last `svd_rank` components, whose
  U, S and Vh train; plus the head. A fused q/k/v projection splits into one residual each
  (`model.svd_parts`); Effort's orthogonality and singular-value losses are options, off by default
  as in its released code (`model.svd_orth_weight`, `model.svd_keepsv_weight`).

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
    sum equals the original weight up to the SVD's rounding.

    `parts` > 1 splits the weight's rows into that many equal blocks, each decomposed on its own with
    its own residual: timm's fused `attn.qkv` (q, k and v stacked) becomes three residuals, as Effort
    adapts CLIP's separate q, k and v projections; one shared residual would tie them together.

    `orth_weight`, `keepsv_weight` > 0: Effort's regularisers, computed in forward while training and
    left in `penalty` for the loss (train/loop.py adds the mean over layers), so that under ZeRO-3 they
    see the gathered parameters. Orthogonality: 0.5 ||U U^T - I||_F + 0.5 ||V V^T - I||_F of the full
    factors (principal and residual) of each block; singular values: | ||W||_F^2 - ||W_0||_F^2 |. The
    principal factors are not stored: for a square block (attention projections are) the terms
    follow exactly from the residual factors and their initial values (kept as buffers)."""

    def __init__(self, linear: nn.Linear, rank: int, decompose: bool = True, parts: int = 1,
                 orth_weight: float = 0.0, keepsv_weight: float = 0.0):
        super().__init__()
        out_features, in_features = linear.weight.shape
        if parts < 1 or out_features % parts:
            raise ValueError(f"an SVD residual in {parts} parts needs output features divisible by {parts}, got {out_features}")
        rows = out_features // parts
        rank = min(rank, min(rows, in_features))
        self.orth_weight, self.keepsv_weight = orth_weight, keepsv_weight
        regularised = orth_weight > 0 or keepsv_weight > 0
        if regularised and rows != in_features:
            raise ValueError(f"Effort's regularisers need square blocks (attention projections); this layer's are {rows} x {in_features}")
        if decompose:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # LAPACK's factors vary in the last bits with its thread count: the same in every process
            try:
                factors = [torch.linalg.svd(block.detach().float(), full_matrices=False)
                           for block in linear.weight.reshape(parts, rows, in_features)]
            finally:
                torch.set_num_threads(threads)
            keep = min(rows, in_features) - rank
            main = torch.cat([(u[:, :keep] * s[:keep]) @ vh[:keep] for u, s, vh in factors])
            us, ss, vhs = zip(*factors)
            u, s, vh = torch.stack([x[:, keep:] for x in us]), torch.stack([x[keep:] for x in ss]), torch.stack([x[keep:] for x in vhs])
        else:  # shapes only: a saved state dict is loaded on top (evaluation, scoring, consolidation)
            main = torch.zeros(out_features, in_features)
            u, s, vh = torch.zeros(parts, rows, rank), torch.zeros(parts, rank), torch.zeros(parts, rank, in_features)
        if parts == 1:  # the unsplit layer keeps its 2-D factors: model files written before the split load as they are
            u, s, vh = u[0], s[0], vh[0]
        self.parts = parts
        # Row-major copies: SVD returns column-major factors, whose slices DeepSpeed cannot broadcast
        # as bytes (it views every parameter so at start).
        self.weight_main = nn.Parameter(main.clone(memory_format=torch.contiguous_format), requires_grad=False)
        self.u, self.s, self.vh = (nn.Parameter(t.clone(memory_format=torch.contiguous_format)) for t in (u, s, vh))
        self.bias = None
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.penalty: torch.Tensor | None = None
        if regularised:  # what the regularisers compare against, saved with the model
            self.register_buffer("u0", self.u.detach().clone())
            self.register_buffer("vh0", self.vh.detach().clone())
            norms = linear.weight.detach().float().reshape(parts, rows, in_features).square().sum((1, 2))
            self.register_buffer("norm0", norms if decompose else torch.zeros(parts))

    def _blocks(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.parts > 1 else t.unsqueeze(0)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight, for code that reads a linear layer's `weight` (shape, dtype)."""
        if self.parts == 1:
            return self.weight_main + (self.u * self.s) @ self.vh
        residual = (self.u * self.s.unsqueeze(1)) @ self.vh  # parts x rows x in
        return self.weight_main + residual.reshape(self.weight_main.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.training and (self.orth_weight > 0 or self.keepsv_weight > 0):
            self.penalty = self._penalty(weight)
        return F.linear(x, weight, self.bias)

    def _penalty(self, weight: torch.Tensor) -> torch.Tensor:
        u, vh, u0, vh0 = (self._blocks(t) for t in (self.u, self.vh, self.u0, self.vh0))
        gram = lambda a, b: a.transpose(1, 2) @ b  # noqa: E731  (parts x r x r)
        sq = lambda t: t.square().sum((1, 2))  # noqa: E731
        # U U^T - I = u u^T - u0 u0^T: the principal columns are the complement of the initial residual's
        u_term = (sq(gram(u, u)) + sq(gram(u0, u0)) - 2 * sq(gram(u, u0))).clamp_min(0).sqrt()
        # V V^T - I: the residual rows' overlap with the principal ones (twice) and their own Gram's distance from I
        eye = torch.eye(vh.shape[1], device=vh.device, dtype=vh.dtype)
        overlap = sq(vh) - sq(vh @ vh0.transpose(1, 2))
        v_term = (2 * overlap + sq(vh @ vh.transpose(1, 2) - eye)).clamp_min(0).sqrt()
        orth = 0.5 * u_term + 0.5 * v_term
        keepsv = (weight.reshape(self._blocks(self.u).shape[0], -1).square().sum(1) - self.norm0).abs()
        return (self.orth_weight * orth + self.keepsv_weight * keepsv).mean()


def regularisation(model: nn.Module) -> torch.Tensor | None:
    """The mean of the SVD layers' Effort penalties left by this forward pass, or None when none has one."""
    found = [m.penalty for m in model.modules() if isinstance(m, SVDResidualLinear) and m.penalty is not None]
    for m in model.modules():
        if isinstance(m, SVDResidualLinear):
            m.penalty = None
    return torch.stack(found).mean() if found else None


def is_norm(module: nn.Module) -> bool:
    """Normalisation layers of torch and timm (LayerNorm, LayerNorm2d, RmsNorm, GroupNorm,
    BatchNorm2d, BatchNormAct2d, ...): timm's own classes do not all derive from torch's."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or "Norm" in type(module).__name__


def apply(model: nn.Module, mode: str, svd_rank: int = 1, svd_layers: list[str] | tuple = (), decompose: bool = True,
          svd_parts: dict | None = None, orth_weight: float = 0.0, keepsv_weight: float = 0.0) -> nn.Module:
    """Freeze all but what `mode` trains (in place; returns the model). `decompose` False builds the
    SVD layers' shapes without decomposing (the weights come from a file next). `svd_parts`: layer
    name suffix -> blocks its weight splits into (SVDResidualLinear)."""
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
            parts = next((n for suffix, n in (svd_parts or {}).items() if name == suffix or name.endswith("." + suffix)), 1)
            setattr(model.get_submodule(parent), child,
                    SVDResidualLinear(linear, svd_rank, decompose, int(parts), orth_weight, keepsv_weight))
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
