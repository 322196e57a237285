"""The DFDC winner's cutouts (selimsef/dfdc_deepfake_challenge, training/datasets/classifier_dataset.py):
a train crop loses a part of the face to black, so the detector cannot lean on one part.

The landmark cutout (his `remove_landmark`): per crop drawn for it (data.landmark_cutout, his 0.7 for
crops with landmarks), the eyes with probability 1/2, else the mouth with 1/2, else the nose with 1/2
(so 1/8 of the draws change nothing), as his code draws. His landmarks were MTCNN's five points, as
ingest stores them (eyes, nose, mouth corners, fractions of the crop). The band: the segment between
the eyes (between the mouth corners; from the nose to the eyes' midpoint), 2 px thick, dilated by a
quarter of the eye distance (a third of the mouth's width), his `cv2.line` and `binary_dilation`,
whose cross-shaped step makes the band the pixels within that L1 distance of the segment.

The difference-mask cutout (his `prepare_bit_masks` branch): black outside one of six halves or
pairs of opposite quarters, drawn up to 5 times; a real crop takes the first, a fake only one where
more than 20 px of its difference from its original remain (`diff_kept`, data_pipeline/diffs.py),
so a fake keeps some of what makes it fake. A fake without a difference (not cut with its
original's boxes) is never cut, as his code did without a mask file.

The convex-hull cutout (his `blackout_convex_hull`): the polygon of the face's outline (dlib's jaw
line and eyebrows, `outline`, data_pipeline/outlines.py) split at its centroid, above or below (1/2),
then which half (1/2), or left or right alike; that half of the face goes black. A crop without an
outline (dlib found no face) is not cut, as his code left it."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.draw import polygon

from data_pipeline.diffs import keeps

TRIES = 5  # his `tries = 6; current_try = 1; while current_try < tries`
KEPT_PX = 20  # his `np.count_nonzero(mask * bitmap_msk) > 20`


def landmark_cutout(image: torch.Tensor, landmarks, rng: np.random.Generator) -> torch.Tensor:
    """`image` (C x H x W, or N x C x H x W for an SBI pair: one band for all) with a band over its
    eyes, mouth or nose, blacked out; the same tensor when the draw changes nothing. `landmarks`:
    five [x, y] fractions of the crop."""
    points = np.asarray(landmarks, dtype=np.float64) * [image.shape[-1], image.shape[-2]]
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(f"landmarks must be 5 finite [x, y] pairs (eyes, nose, mouth corners), got {landmarks!r}")
    eyes, nose, mouth = points[:2], points[2], points[3:]
    eye_gap = float(np.hypot(*(eyes[1] - eyes[0])))
    if rng.random() > 0.5:
        a, b, reach = eyes[0], eyes[1], eye_gap // 4
    elif rng.random() > 0.5:
        a, b, reach = mouth[0], mouth[1], float(np.hypot(*(mouth[1] - mouth[0]))) // 3
    elif rng.random() > 0.5:
        a, b, reach = nose, eyes.mean(axis=0), eye_gap // 4
    else:
        return image
    out = image.clone()
    out[..., band(image.shape[-2], image.shape[-1], a, b, reach + 1)] = 0
    return out


def band(height: int, width: int, a, b, reach: float) -> torch.Tensor:
    """H x W mask of the pixels within L1 distance `reach` of the segment a-b (pixel coordinates) drawn
    as raster pixels: a raster line dilated `reach` times by a cross, as one taxicab distance
    transform over the segment's box (about a millisecond at 380 px)."""
    steps = max(2, int(max(abs(b[0] - a[0]), abs(b[1] - a[1]))) + 1)  # a point per pixel of its longer side, rounded
    along = np.linspace(0.0, 1.0, steps)
    xs = np.rint(a[0] + along * (b[0] - a[0])).astype(np.int64)
    ys = np.rint(a[1] + along * (b[1] - a[1])).astype(np.int64)
    pad = int(reach) + 1
    x0, y0 = int(xs.min()) - pad, int(ys.min()) - pad  # the box, not clipped to the image: a line past its edge still counts
    box = np.ones((int(ys.max()) + pad + 1 - y0, int(xs.max()) + pad + 1 - x0), dtype=bool)
    box[ys - y0, xs - x0] = False
    near = ndimage.distance_transform_cdt(box, metric="taxicab") <= reach
    mask = torch.zeros(height, width, dtype=torch.bool)
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(height, y0 + box.shape[0]), min(width, x0 + box.shape[1])
    if top < bottom and left < right:
        mask[top:bottom, left:right] = torch.from_numpy(near[top - y0:bottom - y0, left - x0:right - x0])
    return mask


def diff_cutout(image: torch.Tensor, label: int, diff_kept: list[int] | None, rng: np.random.Generator) -> torch.Tensor:
    """`image` (C x H x W, or N x C x H x W for an SBI pair: one cut for all) black outside one of the
    six parts `diff_kept` counts; the same tensor when no try is allowed (a fake whose difference
    lies in no part drawn, or has none)."""
    if diff_kept is not None and len(diff_kept) != 6:
        raise ValueError(f"diff_kept must hold 6 counts (one per bit mask), got {diff_kept!r}")
    for _ in range(TRIES):
        choice = int(rng.integers(6))
        if label == 0 or (diff_kept is not None and diff_kept[choice] > KEPT_PX):
            keep = torch.from_numpy(np.ascontiguousarray(keeps(image.shape[-2], image.shape[-1])[choice]))
            return image * keep.to(image.dtype)
    return image


def hull_cutout(image: torch.Tensor, outline, rng: np.random.Generator) -> torch.Tensor:
    """`image` (C x H x W, or N x C x H x W for an SBI pair: one cut for all) with one half of the
    face's outline polygon black. `outline`: [x, y] fractions of the crop, 3 points or more."""
    points = np.asarray(outline, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 3 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise ValueError(f"outline must be 3 or more finite [x, y] points, got {outline!r}")
    h, w = image.shape[-2], image.shape[-1]
    ys, xs = polygon(points[:, 1] * h, points[:, 0] * w, shape=(h, w))
    hull = np.zeros((h, w), dtype=bool)
    hull[ys, xs] = True
    if not hull.any():
        return image
    y, x = int(ys.mean()), int(xs.mean())  # his skimage.measure.centroid, truncated
    first = rng.random() > 0.5  # his order of draws: which side is spared, then rows or columns
    if rng.random() > 0.5:
        if first:
            hull[:y, :] = False  # the lower half goes black
        else:
            hull[y:, :] = False
    elif first:
        hull[:, :x] = False  # the right half
    else:
        hull[:, x:] = False
    out = image.clone()
    out[..., torch.from_numpy(hull)] = 0
    return out
