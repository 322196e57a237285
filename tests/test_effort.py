"""Effort's SVD residuals (train/model/trainable.py): a fused q/k/v projection gets one residual per
projection, and the orthogonality and singular-value regularisers match Effort's definitions computed
the long way, with the principal factors in hand. Plain torch, tiny layers."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from dfdc.config import ModelConfig
from train.model import build_model
from train.model.trainable import SVDResidualLinear, regularisation


def test_a_fused_qkv_gets_three_independent_residuals():
    torch.manual_seed(0)
    linear = nn.Linear(16, 48)  # q, k, v of a 16-wide attention, stacked
    layer = SVDResidualLinear(linear, rank=2, parts=3)
    assert layer.u.shape == (3, 16, 2) and layer.s.shape == (3, 2) and layer.vh.shape == (3, 2, 16)
    torch.testing.assert_close(layer.weight, linear.weight, atol=1e-5, rtol=1e-5)
    # A loss on the q outputs alone moves only q's residual. With one residual for the fused matrix
    # (before), its U spanned all 48 rows and every factor got a gradient from q alone.
    layer(torch.randn(4, 16))[:, :16].square().sum().backward()
    assert layer.u.grad[0].abs().sum() > 0 and layer.vh.grad[0].abs().sum() > 0
    assert torch.all(layer.u.grad[1:] == 0) and torch.all(layer.s.grad[1:] == 0) and torch.all(layer.vh.grad[1:] == 0)


def test_model_svd_parts_splits_timms_qkv_and_counts_its_parameters():
    cfg = ModelConfig(name="test_vit", trainable="svd", svd_rank=1, timm_args={"img_size": 32, "patch_size": 8})
    model = build_model(cfg)
    d = timm.create_model("test_vit", img_size=32, patch_size=8).embed_dim
    qkv = [m for n, m in model.named_modules() if n.endswith("attn.qkv")]
    assert qkv and all(isinstance(m, SVDResidualLinear) and m.parts == 3 for m in qkv)
    blocks = len(qkv)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = d + 1
    # per block: q, k and v each r (d + d + 1), the output projection r (d + d + 1)
    assert trainable == blocks * 4 * (2 * d + 1) + head
    unsplit = build_model(ModelConfig(**{**cfg.__dict__, "svd_parts": {}}))
    assert sum(p.numel() for p in unsplit.parameters() if p.requires_grad) == blocks * ((4 * d + 1) + (2 * d + 1)) + head


def _effort_terms(layer: SVDResidualLinear, original: torch.Tensor, part: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Effort's regularisers for one block, as its released code writes them: the principal factors
    U_r, V_r from the original weight's SVD, concatenated with the current residual factors."""
    rows = original.shape[0] // layer.parts
    block = original[part * rows:(part + 1) * rows].double()
    u_full, s_full, vh_full = torch.linalg.svd(block)
    keep = rows - layer.u.shape[-1]
    u = layer.u[part] if layer.parts > 1 else layer.u
    vh = layer.vh[part] if layer.parts > 1 else layer.vh
    U = torch.cat([u_full[:, :keep], u.double()], dim=1)
    V = torch.cat([vh_full[:keep], vh.double()], dim=0)
    eye = torch.eye(rows, dtype=torch.float64)
    orth = 0.5 * torch.linalg.norm(U @ U.T - eye) + 0.5 * torch.linalg.norm(V @ V.T - eye)
    current = layer.weight.detach().double()[part * rows:(part + 1) * rows]
    keepsv = (current.square().sum() - block.square().sum()).abs()
    return orth, keepsv


@pytest.mark.parametrize("parts", [1, 3])
def test_the_regularisers_are_efforts_to_the_number(parts):
    torch.manual_seed(1)
    linear = nn.Linear(12, 12 * parts)
    original = linear.weight.detach().clone()
    layer = SVDResidualLinear(linear, rank=2, parts=parts, orth_weight=1.0, keepsv_weight=0.5)
    layer.train()
    layer(torch.randn(3, 12))
    assert layer.penalty is not None and float(layer.penalty.detach()) < 1e-4  # at start: orthonormal, same norm
    with torch.no_grad():  # training moved the residuals
        for t in (layer.u, layer.s, layer.vh):
            t.add_(0.1 * torch.randn_like(t))
    layer(torch.randn(3, 12))
    expected = torch.stack([1.0 * o + 0.5 * k for o, k in (_effort_terms(layer, original, p) for p in range(parts))]).mean()
    torch.testing.assert_close(layer.penalty.double(), expected, atol=1e-4, rtol=1e-4)
    assert float(expected.detach()) > 0.01
    # the loss takes the mean over layers and clears them for the next step
    torch.testing.assert_close(regularisation(nn.Sequential(layer)).double(), expected, atol=1e-4, rtol=1e-4)
    assert layer.penalty is None and regularisation(nn.Sequential(layer)) is None


def test_regularisers_off_by_default_and_refused_for_non_square_blocks():
    torch.manual_seed(2)
    layer = SVDResidualLinear(nn.Linear(12, 36), rank=1, parts=3)
    layer.train()
    layer(torch.randn(2, 12))
    assert layer.penalty is None and not hasattr(layer, "u0")  # nothing extra in the model file
    with pytest.raises(ValueError, match="need square blocks"):
        SVDResidualLinear(nn.Linear(12, 20), rank=1, orth_weight=1.0)
