"""Pretrained weights (train/model/weights.py): a state dict file or timm's hub weights load with
their counts logged, anything but the head missing is refused, and the input normalisation the
weights expect is required. The hub is read offline from a cache laid out as the hub lays it out,
holding weights saved from a randomly initialised model."""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch

from dfdc.config import ConfigError, ModelConfig, load_config
from train.model import build_model
from train.model.weights import check_normalisation, load_weights
from train.run import check_model_input

NAME = "test_efficientnet.r160_in1k"  # timm's pretrained tag: hub repo timm/test_efficientnet.r160_in1k


def _source(seed: int = 0, num_classes: int = 1000) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(NAME, pretrained=False, num_classes=num_classes)


def _backbone_equal(model: torch.nn.Module, source: torch.nn.Module) -> bool:
    theirs = source.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items() if not k.startswith("classifier."))


def test_a_state_dict_file_loads_all_but_the_head_and_logs_its_counts(tmp_path, caplog):
    source = _source()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING, logger="train.model.weights"):
        model = build_model(ModelConfig(name=NAME, pretrained=str(tmp_path / "w.pth")))
    own = len(model.state_dict())
    assert _backbone_equal(model, source)
    # ImageNet's 1000-class head does not fit one logit: 2 tensors missing (kept at random), 2 unused
    assert f"loaded {own - 2} tensors; 2 missing (the classifier head classifier" in caplog.text
    assert "; 2 in the file not used" in caplog.text


def test_weights_that_leave_part_of_the_backbone_missing_are_refused(tmp_path):
    state = _source().state_dict()
    dropped = [k for k in state if k.startswith("blocks.1.")]
    for k in dropped:
        del state[k]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=rf"partial.pth: {len(dropped)} of the model's \d+ tensors are not in it: blocks\.1\."):
        load_weights(_source(num_classes=1), str(tmp_path / "partial.pth"))
    # another architecture: almost nothing fits
    torch.manual_seed(0)
    torch.save(timm.create_model("test_vit", num_classes=1000).state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"vit.pth: \d+ of the model's \d+ tensors are not in it"):
        load_weights(_source(num_classes=1), str(tmp_path / "vit.pth"))


def _hub_cache(root, source: torch.nn.Module) -> None:
    """models--timm--NAME/{refs/main, snapshots/<commit>/model.safetensors}: the hub cache's layout."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--timm--{NAME}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, snapshot / "model.safetensors")


def test_hub_weights_come_from_the_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import, which is done
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError, match=rf"model.pretrained hub: the weights of '{NAME}' could not be fetched"):
        build_model(ModelConfig(name=NAME, pretrained="hub"))  # nothing cached, and offline
    source = _source(seed=3)
    _hub_cache(tmp_path / "hub", source)
    model = build_model(ModelConfig(name=NAME, pretrained="hub"))
    assert _backbone_equal(model, source) and model.get_classifier().out_features == 1


def test_pretrained_weights_refuse_inputs_not_normalised_as_they_were_trained():
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with pytest.raises(ValueError, match=r"tf_efficientnet_b7.ns_jft_in1k expect inputs normalised with mean \[0.485, 0.456, 0.406\]"):
        check_normalisation("tf_efficientnet_b7.ns_jft_in1k", "s3://b/w.pth", None, None)
    check_normalisation("tf_efficientnet_b7.ns_jft_in1k", "s3://b/w.pth", *imagenet)
    # AdvProp's weights were trained on pixels scaled to [-1, 1]
    with pytest.raises(ValueError, match=r"expect mean \[0.5, 0.5, 0.5\] and std \[0.5, 0.5, 0.5\], but data.mean is \[0.485"):
        check_normalisation("tf_efficientnet_b4.ap_in1k", "hub", *imagenet)
    check_normalisation("tf_efficientnet_b4.ap_in1k", None, None, None)  # random init: nothing to match
    # every shipped recipe passes its own check
    recipes = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
    assert len([r for r in recipes if load_config(r, []).model.pretrained]) >= 7
    for recipe in recipes:
        check_model_input(load_config(recipe, []))
    with pytest.raises(ConfigError, match="data.mean and data.std are not set"):
        check_model_input(load_config("configs/dfdc_b7.yaml", ["data.mean=null", "data.std=null"]))
