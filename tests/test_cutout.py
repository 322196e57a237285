"""The DFDC winner's landmark and difference-mask cutouts (train/data/cutout.py, data_pipeline/diffs.py),
without storage services."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation
from skimage.draw import line

from data_pipeline import manifest as mf
from data_pipeline.diffs import HALVES, difference, keeps, kept_counts
from data_pipeline.outlines import outline
from dfdc.config import ConfigError, load_config
from train.data.cutout import band, diff_cutout, hull_cutout, landmark_cutout

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


def test_a_fakes_difference_is_counted_in_the_halves_that_hold_it():
    """His mask is 1 - SSIM between the fake's crop and its original's, made grey: zero where they
    agree, non-zero (within SSIM's 7 px window) where a face was swapped. Counted per bit mask."""
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert kept_counts(difference(original, original)) == [0] * 6
    fake = original.copy()
    fake[10:30, 8:36] = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)  # the top-left quarter only
    mask = difference(original, fake)
    assert mask.dtype == np.uint8 and mask.shape == (96, 96)
    assert (mask[10:30, 8:36] > 0).mean() > 0.99 and not mask[40:, :].any() and not mask[:, 45:].any()
    counts = dict(zip(HALVES, kept_counts(mask)))
    assert counts["top"] == counts["left"] == counts["top-left+bottom-right"] == int((mask > 0).sum()) > 560
    assert counts["bottom"] == counts["right"] == counts["top-right+bottom-left"] == 0
    # His bit masks: mask 0 zeroes the top rows (keeps the bottom), 4 zeroes top-left and bottom-right.
    parts = keeps(4, 4)
    assert parts[0][2:].all() and not parts[0][:2].any() and parts[4][0, 3] and parts[4][3, 0] and not parts[4][0, 0]
    with pytest.raises(ValueError, match="not the same boxes"):
        difference(original, original[:90])


def test_the_diff_cutout_keeps_a_part_that_holds_the_fakes_difference():
    """A real crop is cut at the first try, each part as often; a fake only where more than 20 px of
    its difference remain, within 5 tries (his loop), else not at all; a fake without a difference
    (not cut with its original's boxes) never."""
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    parts = torch.from_numpy(keeps(32, 32))

    def part_of(out):
        if torch.equal(out, image):
            return None
        [i] = [i for i in range(6) if torch.equal(out[0] > 0, parts[i])]
        assert (out[:, parts[i]] == 200).all()
        return i

    rng = np.random.default_rng(0)
    real = Counter(part_of(diff_cutout(image, 0, None, rng)) for _ in range(3000))
    assert None not in real and all(abs(real[i] / 3000 - 1 / 6) < 0.03 for i in range(6)), real
    fake = Counter(part_of(diff_cutout(image, 1, [0, 21, 20, 0, 5, 0], rng)) for _ in range(3000))
    assert set(fake) == {None, 1} and abs(fake[1] / 3000 - (1 - (5 / 6) ** 5)) < 0.03, fake  # only "top" holds > 20
    assert all(part_of(diff_cutout(image, 1, kept, rng)) is None for kept in (None, [20] * 6) for _ in range(50))
    pair = diff_cutout(torch.stack([image, image + 1]), 0, None, np.random.default_rng(2))
    assert torch.equal(pair[0] == 0, pair[1] == 0)  # an SBI pair: one cut for both
    with pytest.raises(ValueError, match="6 counts"):
        diff_cutout(image, 1, [1, 2], rng)


def test_the_diff_cutout_is_refused_without_its_masks_and_settings_by_name():
    with pytest.raises(ConfigError, match="data.diff_cutout needs data.order"):
        load_config(None, ["data.diff_cutout=0.08", "data.order=resampled"])
    with pytest.raises(ConfigError, match="ingest.difference_masks needs ingest.reuse_original_boxes"):
        load_config(None, ["ingest.difference_masks=true", "ingest.reuse_original_boxes=false"])
    with pytest.raises(mf.ManifestError, match="s3://b/faces was not: ingest it again"):
        mf.check_difference_masks({"config": {"ingest": {"difference_masks": False}}}, "s3://b/faces")
    mf.check_difference_masks({"config": {"ingest": {"difference_masks": True}}}, "s3://b/faces")


def test_dlib_outlines_a_real_face_and_finds_none_where_there_is_none():
    """The winner's outline: dlib's detector on the crop, its 68-point predictor, the jaw line and
    eyebrows (27 points). On skimage's astronaut (a real photograph) they surround her face; on a
    crop with no face there is no outline, so the crop is never cut."""
    from skimage import data

    crop = data.astronaut()[0:300, 100:400]  # her face at about x 80-170, y 80-170 of this crop
    points = outline(crop)
    assert points is not None and len(points) == 27
    xs, ys = np.array(points).T * 300
    assert 60 < xs.min() < xs.mean() < xs.max() < 200 and 50 < ys.min() < ys.max() < 220, points
    assert ys[8] > ys[0] and ys[8] > ys[16]  # the chin (point 8) below the jaw's ends
    assert outline(np.full((120, 120, 3), 128, dtype=np.uint8)) is None


def test_the_hull_cutout_blacks_out_one_half_of_the_outline():
    """Split at the polygon's centroid: the lower, upper, right or left half of the face goes black,
    each a quarter of the draws (his two draws); the rest of the crop is untouched."""
    image = torch.full((3, 40, 40), 200, dtype=torch.uint8)
    square = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]  # pixels 10-30 each way
    seen = Counter()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        black = hull_cutout(image, square, rng)[0] == 0
        rows, cols = black.any(1).nonzero().flatten(), black.any(0).nonzero().flatten()
        assert 150 < black.sum() < 260  # half of the 20 x 20 face, split at its centroid
        tall, wide = len(rows), len(cols)
        side = ("lower" if rows.min() >= 19 else "upper") if wide > tall else ("right" if cols.min() >= 19 else "left")
        assert 9 <= rows.min() and rows.max() <= 30 and 9 <= cols.min() and cols.max() <= 30  # inside the outline
        seen[side] += 1
    assert all(abs(seen[s] / 2000 - 0.25) < 0.04 for s in ("lower", "upper", "right", "left")), seen
    assert image.min() == 200  # the input is not changed
    pair = hull_cutout(torch.stack([image, image + 1]), square, np.random.default_rng(1))
    assert torch.equal(pair[0] == 0, pair[1] == 0)
    with pytest.raises(ValueError, match="3 or more finite"):
        hull_cutout(image, [[0.1, 0.2]], rng)


def test_the_hull_cutout_is_refused_without_outlines_by_name():
    with pytest.raises(ConfigError, match="data.hull_cutout needs data.order"):
        load_config(None, ["data.hull_cutout=0.2", "data.order=resampled"])
    with pytest.raises(mf.ManifestError, match="ingest.face_outlines=true; s3://b/faces was not"):
        mf.check_face_outlines({"config": {"ingest": {}}}, "s3://b/faces")
    mf.check_face_outlines({"config": {"ingest": {"face_outlines": True}}}, "s3://b/faces")


def test_ingest_stores_the_outline_of_each_face_it_crops(tmp_path):
    """ingest.face_outlines: extract (what each ingest task runs per video) gives every crop whose
    face dlib finds its outline; the synthetic faces are skimage's astronaut, recoloured."""
    from data_pipeline.extract import extract
    from data_pipeline.faces import build_detector
    from data_pipeline.sources import discover
    from data_pipeline.synth import synth
    from dfdc import storage

    cfg = load_config(None, ["synth.videos=1", "synth.seconds=1.0", "synth.fps=6", "ingest.frames_per_video=3",
                             "ingest.crop_size=160", "ingest.face_outlines=true"])
    synth(str(tmp_path / "raw"), cfg.synth, log=lambda *_: None)
    _, scan = discover(str(tmp_path / "raw"))
    record = scan.records[0]
    result = extract(record, storage.read_bytes(record.uri), build_detector(cfg.detector), cfg.ingest)
    assert result.samples and all(len(s.meta["outline"]) == 27 for s in result.samples), [s.meta.get("outline") for s in result.samples]
    cfg.ingest.face_outlines = False
    assert not any("outline" in s.meta for s in extract(record, storage.read_bytes(record.uri), build_detector(cfg.detector),
                                                           cfg.ingest).samples)
