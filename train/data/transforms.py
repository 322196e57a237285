"""Face crop (PIL image) -> model input tensor, for training (augmented) and for evaluation and
scoring (resized only)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def image_transform(size: int, augment: bool, mean: list[float] | None = None, std: list[float] | None = None) -> v2.Compose:
    """Augmentations fit for deepfake detection: they vary what compression, scale, blur, noise and
    colour do to a face without hiding blending artifacts entirely. `mean` and `std` (data.mean,
    data.std; the model card's): the input normalisation of pretrained weights, last."""
    norm = [v2.Normalize(mean, std)] if mean is not None else []
    if not augment:
        return v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True), *norm])
    return v2.Compose([
        v2.PILToTensor(),
        v2.RandomApply([v2.JPEG((40, 95))], p=0.3),
        v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
        v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.2, 0.02)], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.GaussianNoise(sigma=0.02)], p=0.2),
        v2.RandomErasing(p=0.2, scale=(0.02, 0.1)),  # cutout
        *norm,
    ])
