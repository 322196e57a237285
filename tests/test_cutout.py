"""The DFDC winner's landmark cutout (train/data/cutout.py), without storage services."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation
from skimage.draw import line

from dfdc.config import ConfigError, load_config
from train.data.cutout import band, landmark_cutout

# MTCNN's five points as fractions of a crop: eyes, nose, mouth corners (a frontal face)
FACE = [[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]]


@pytest.mark.parametrize("a, b, reach", [((40, 50), (90, 52), 12), ((60, 60), (75, 30), 7), ((10, 100), (110, 90), 20)])
def test_the_band_is_the_winners_line_dilated_by_a_cross(a, b, reach):
    """His band: a 2 px line, then `binary_dilation` (a cross, so an L1 ball) `reach` times; ours:
    the pixels within L1 distance reach + 1 of the segment's raster pixels. A 1 px raster line
    (skimage's, not his OpenCV's) dilated reach + 1 times: the masks coincide but for rounding."""
    ref = np.zeros((128, 128), dtype=bool)
    ref[line(a[1], a[0], b[1], b[0])] = True
    ref = binary_dilation(ref, iterations=reach + 1)
    ours = band(128, 128, a, b, reach + 1).numpy()
    iou = (ours & ref).sum() / (ours | ref).sum()
    assert iou > 0.97, iou


def test_the_cutout_takes_the_eyes_mouth_or_nose_as_often_as_the_winners_draws():
    """Eyes 1/2, mouth 1/4, nose 1/8, nothing 1/8; the band is black and covers its part only."""
    image = torch.full((3, 64, 64), 200, dtype=torch.uint8)
    points = np.array(FACE) * 64
    at = {"eyes": points[0], "mouth": points[3], "nose": points[2]}  # each inside its own band only
    seen = Counter()
    rng = np.random.default_rng(0)
    for _ in range(4000):
        out = landmark_cutout(image, FACE, rng)
        hit = [part for part, (x, y) in at.items() if out[0, int(y), int(x)] == 0]
        seen[hit[0] if len(hit) == 1 else "nothing" if not hit else "more"] += 1
        assert out.dtype == image.dtype and ((out == 0) | (out == 200)).all()
    assert seen["more"] == 0 and image.min() == 200  # the input is not changed
    for part, p in (("eyes", 0.5), ("mouth", 0.25), ("nose", 0.125), ("nothing", 0.125)):
        assert abs(seen[part] / 4000 - p) < 0.03, seen
    # An SBI pair (N x C x H x W) loses the same band
    pair = landmark_cutout(torch.stack([image, image + 1]), FACE, np.random.default_rng(3))
    assert torch.equal(pair[0] == 0, pair[1] == 0)


def test_bad_landmarks_and_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="5 finite"):
        landmark_cutout(torch.zeros(3, 8, 8, dtype=torch.uint8), [[0.1, 0.2]] * 4, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"data.landmark_cutout must be in \[0, 1\], got 1.5"):
        load_config(None, ["data.landmark_cutout=1.5"])
    with pytest.raises(ConfigError, match="data.landmark_cutout needs data.order"):
        load_config(None, ["data.landmark_cutout=0.7", "data.order=resampled"])
