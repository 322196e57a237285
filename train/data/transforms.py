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


def face_box_in_crop(box, margin: float) -> tuple[float, float, float, float]:
    """The face box (frame pixels, a sample's meta["box"]) as fractions of the square crop ingest
    cut around it with `margin` (data_pipeline/crops.py): the same at any crop size."""
    from data_pipeline.crops import square_box  # noqa: PLC0415

    left, top, right, _ = square_box(box, margin)
    side = right - left
    x0, y0, x1, y1 = box
    return (x0 - left) / side, (y0 - top) / side, (x1 - left) / side, (y1 - top) / side


def face_margin_crop(image, box, margin: float, sides):
    """The part of an ingested crop (a C x H x W tensor or a PIL image) that holds its face box and
    `sides` = (left, top, right, bottom) more of it, fractions of the box's width (left, right) and
    height (top, bottom), clipped to the crop: how SBI cuts its crops from a face box (random
    5-20% a side in training, 12.5% at test). Not square: the resize to the model's input stretches
    it, as SBI's does. `margin`: the ingest's crop margin, which places the box in the crop."""
    x0, y0, x1, y1 = face_box_in_crop(box, margin)
    w, h = x1 - x0, y1 - y0
    left, top, right, bottom = sides
    width, height = (image.shape[-1], image.shape[-2]) if isinstance(image, torch.Tensor) else image.size
    a, b = max(0, int((x0 - left * w) * width)), min(width, int((x1 + right * w) * width) + 1)
    c, d = max(0, int((y0 - top * h) * height)), min(height, int((y1 + bottom * h) * height) + 1)
    return image[..., c:d, a:b] if isinstance(image, torch.Tensor) else image.crop((a, c, b, d))
