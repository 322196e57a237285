"""Where a fake differs from its original: the DFDC winner's difference masks, reduced to what his
cutout reads from them (selimsef/dfdc_deepfake_challenge: preprocessing/generate_diffs.py writes
the masks, training/datasets/classifier_dataset.py reads them).

He kept, per fake crop, a grey PNG of 1 - SSIM between it and its original's crop of the same frame
and face box (skimage's SSIM over the three channels, 7 px windows), and his cutout only ever asks
one thing of it: how many of its pixels are non-zero in the part of the crop one of six bit masks
keeps (a half, or two opposite quarters). So ingest stores those six counts in the fake's metadata
(`diff_kept`, ~40 bytes) instead of the mask (144 KB raw at 380 px, ~460 GB for DFDC's ~3.2 M
fake crops before PNG compression, read on every fake for a cutout a few in a hundred get). Needs the fake cropped with its original's boxes (ingest.reuse_original_boxes), as
his crops were: then the two crops are pixel-aligned."""

from __future__ import annotations

import numpy as np

# His prepare_bit_masks, in his order: the part of the crop each bit mask keeps (the rest goes
# black). He split at w // 2 both ways; crops are square here.
HALVES = ("bottom", "top", "right", "left", "top-right+bottom-left", "top-left+bottom-right")


def keeps(height: int, width: int) -> np.ndarray:
    """6 x H x W booleans: the pixels each of his six bit masks keeps, in HALVES' order."""
    mid = width // 2  # his mid_h = w // 2 too
    rows = np.arange(height)[:, None] < mid  # top
    cols = np.arange(width)[None, :] < mid  # left
    return np.stack([np.broadcast_to(~rows, (height, width)), np.broadcast_to(rows, (height, width)),
                     np.broadcast_to(~cols, (height, width)), np.broadcast_to(cols, (height, width)),
                     rows != cols, rows == cols])


def difference(original: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """His mask: H x W uint8, (1 - SSIM) x 255 per channel made grey (OpenCV's weights), from two
    H x W x 3 uint8 RGB crops. Where SSIM is negative he wrapped past 255 (uint8); clipped here."""
    from skimage.metrics import structural_similarity  # noqa: PLC0415

    if original.shape != fake.shape:
        raise ValueError(f"the original's crop is {original.shape}, the fake's {fake.shape}: not the same boxes")
    _, ssim = structural_similarity(original, fake, channel_axis=-1, full=True, data_range=255)
    per_channel = np.clip((1 - ssim) * 255, 0, 255).astype(np.uint8)
    return np.rint(per_channel @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


def kept_counts(mask: np.ndarray) -> list[int]:
    """Per bit mask, the mask's non-zero pixels in the part it keeps: what his cutout compares to 20."""
    changed = mask > 0
    return [int(n) for n in (keeps(*mask.shape) & changed).sum(axis=(1, 2))]
