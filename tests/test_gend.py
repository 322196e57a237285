"""GenD's parts (WACV 2026): the classifier on L2-normalised features, the uniformity and alignment
losses against the definitions computed pair by pair, label smoothing, the cyclic schedule, and the
choice of the best validation checkpoint. Plain torch and data; the Ray Train run is in test_recipes."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dfdc.config import ConfigError, ModelConfig, load_config
from train import objective
from train.engine import lr_lambda
from train.model import build_model
from train.model.network import NormalizedLinear
from train.run import checkpoint_config, selected_checkpoint

VIT = {"name": "test_vit", "timm_args": {"img_size": 32, "patch_size": 8}}


def test_the_l2norm_head_sees_only_the_features_direction_and_keeps_them_for_the_losses():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**VIT, head="l2norm"))
    head = model.get_classifier()
    assert isinstance(head, NormalizedLinear)
    x = torch.randn(4, head.in_features)
    assert torch.allclose(head(x), head(3.7 * x), atol=1e-6)  # length no longer moves the logit
    plain = build_model(ModelConfig(**VIT))
    assert set(plain.state_dict()) == set(model.state_dict())  # the same parameters, by name
    model.train()
    model(torch.rand(3, 3, 32, 32))
    features = NormalizedLinear.features_of(model)
    assert features.shape == (3, head.in_features) and torch.allclose(features.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(RuntimeError, match="no L2-normalised features"):
        NormalizedLinear.features_of(model)  # taken once a pass


def _by_pairs(x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Uniformity and label-aware alignment as Wang & Isola define them, one pair at a time."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    d2 = {(i, j): float(((x[i] - x[j]) ** 2).sum()) for i, j in pairs}
    unif = math.log(sum(math.exp(-2 * d2[p]) for p in pairs) / len(pairs))
    same = [p for p in pairs if labels[p[0]] == labels[p[1]]]
    align = sum(d2[p] for p in same) / len(same)
    return unif, align


def test_uniformity_and_alignment_are_the_definitions():
    torch.manual_seed(1)
    x = F.normalize(torch.randn(7, 5), dim=1)
    labels = torch.tensor([0.0, 1, 0, 1, 1, 0, 0])
    unif, align = _by_pairs(x, labels)
    assert float(objective.uniformity(x)) == pytest.approx(unif, rel=1e-5)
    assert float(objective.alignment(x, labels)) == pytest.approx(align, rel=1e-5)
    # one sample, or no two of a label: nothing to measure
    assert float(objective.uniformity(x[:1])) == 0.0 and float(objective.alignment(x[:2], torch.tensor([0.0, 1.0]))) == 0.0
    # identical features: the floor, not -inf
    assert float(objective.uniformity(x[:1].repeat(4, 1))) == pytest.approx(0.0, abs=1e-6)


def test_the_loss_adds_gends_terms_and_smooths_labels():
    cfg = load_config(None, ["model.head=l2norm", "optim.uniformity_weight=0.5", "optim.alignment_weight=0.1",
                             "optim.label_smoothing=0.01"])
    torch.manual_seed(2)
    model = build_model(ModelConfig(**{**VIT, "head": "l2norm"}))
    model.train()
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    logits = model(torch.rand(4, 3, 32, 32)).squeeze(1)
    features = model.get_classifier().features
    expected = (F.binary_cross_entropy_with_logits(logits, labels * 0.99 + 0.005)
                + 0.5 * objective.uniformity(features) + 0.1 * objective.alignment(features, labels))
    got = objective.loss(logits, labels, model, cfg.optim)
    assert torch.allclose(got, expected) and got.requires_grad
    # without the terms: plain binary cross-entropy, as before
    assert torch.allclose(objective.loss(logits, labels, model, None), F.binary_cross_entropy_with_logits(logits, labels))


def test_schedules():
    cyclic = lr_lambda(warmup=2, total=32, schedule="cyclic", cycle=10, floor=0.01)
    assert cyclic(0) == pytest.approx(0.5) and cyclic(2) == pytest.approx(1.0)
    assert cyclic(11) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.9)))  # near the floor
    assert cyclic(12) == pytest.approx(1.0) and cyclic(22) == pytest.approx(1.0)  # restarts every 10 steps
    assert all(cyclic(s) > cyclic(s + 1) for s in range(2, 11))
    cosine = lr_lambda(warmup=0, total=100, floor=0.1)
    assert cosine(100) == pytest.approx(0.1) and cosine(50) == pytest.approx(0.55)
    assert lr_lambda(warmup=5, total=100, schedule="constant")(70) == 1.0


def _result(reports: list[dict]):
    return SimpleNamespace(checkpoint=f"ckpt-{len(reports) - 1}",
                           best_checkpoints=[(f"ckpt-{i}", m) for i, m in enumerate(reports)])


def test_the_best_validation_checkpoint_is_the_model():
    reports = [{"step": 4, "val_video_auc": 0.7, "val_video_log_loss": 0.6},
               {"step": 6, "val_video_auc": float("nan"), "val_video_log_loss": float("nan")},  # mid-epoch
               {"step": 8, "val_video_auc": 0.9, "val_video_log_loss": 0.5},
               {"step": 12, "val_video_auc": 0.9, "val_video_log_loss": 0.55},
               {"step": 16, "val_video_auc": 0.8, "val_video_log_loss": 0.7}]
    pick = lambda select: selected_checkpoint(_result(reports), load_config(None, [f"eval.select={select}"]))  # noqa: E731
    assert pick("last") == "ckpt-4"
    assert pick("best_video_auc") == "ckpt-3"  # a tie: the later epoch
    assert pick("best_video_log_loss") == "ckpt-2"
    assert selected_checkpoint(_result([{"step": 1, "val_video_auc": float("nan")}]),
                               load_config(None, ["eval.select=best_video_auc"])) == "ckpt-0"  # nothing scored: the last
    kept = checkpoint_config(load_config(None, ["eval.select=best_video_log_loss", "ray.num_to_keep=1"]))
    assert (kept.num_to_keep, kept.checkpoint_score_attribute, kept.checkpoint_score_order) == (1, "val_video_log_loss", "min")
    assert checkpoint_config(load_config(None, [])).checkpoint_score_attribute is None


@pytest.mark.parametrize("sets, message", [
    (["eval.select=best"], "eval.select must be last or one of best_video_auc, best_video_ap, best_video_log_loss"),
    (["optim.uniformity_weight=0.5"], "need model.head=l2norm"),
    (["model.head=cosine"], "model.head must be linear or l2norm"),
    (["optim.schedule=step"], "optim.schedule must be one of cosine, cyclic, constant"),
    (["optim.min_lr=1"], "optim.min_lr must be between 0 and optim.lr"),
    (["optim.label_smoothing=1"], r"optim.label_smoothing must be in \[0, 1\), got 1.0"),
])
def test_bad_settings_are_named(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)
