"""Crops cut again around the face box (data.face_margin, data.eval_face_margin): SBI's crops, 5-20% of
the box a side in training and 12.5% at test, cut from the square crops ingest wrote."""

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline import manifest as mf
from data_pipeline.crops import crop_face
from dfdc.config import ConfigError, DataConfig, load_config
from train.data.loader import EpochStream
from train.data.reader import Sample
from train.data.samples import Decode
from train.data.transforms import face_margin_crop, image_transform

BOX = (150.0, 80.0, 230.0, 200.0)  # 80 wide, 120 high, in a 400 x 300 frame


def frame(seed: int = 0) -> np.ndarray:
    """A smooth gradient with texture, the face box painted brighter in red: positions are visible."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:300, 0:400]
    img = np.stack([xs / 400 * 120, ys / 300 * 120, (xs + ys) / 700 * 120], axis=2) + rng.integers(0, 30, (300, 400, 3))
    x0, y0, x1, y1 = (int(v) for v in BOX)
    img[y0:y1, x0:x1, 0] += 120
    return img.astype(np.uint8)


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


@pytest.mark.parametrize("margin", [0.3, 0.2])
def test_the_cut_is_sbis_crop_of_the_frame(margin):
    """Cut from an ingested crop, a margin of 12.5% a side gives what SBI cuts from the frame itself
    (box +- 12.5% of its width and height), up to the two resizes; the tensor and PIL paths agree."""
    full = frame()
    crop = crop_face(full, BOX, margin, 256)
    x0, y0, x1, y1 = BOX
    w, h = x1 - x0, y1 - y0
    want = full[int(y0 - 0.125 * h):int(y1 + 0.125 * h), int(x0 - 0.125 * w):int(x1 + 0.125 * w)]
    got = face_margin_crop(as_tensor(crop), BOX, margin, (0.125,) * 4)
    pil = face_margin_crop(Image.fromarray(crop), BOX, margin, (0.125,) * 4)
    assert pil.size == (got.shape[-1], got.shape[-2])
    assert np.array_equal(np.asarray(pil), got.permute(1, 2, 0).numpy())
    assert abs(got.shape[-1] / got.shape[-2] - w / h) < 0.03  # not square: the box's own shape
    size = (got.shape[-1], got.shape[-2])
    reference = np.asarray(Image.fromarray(want).resize(size, Image.BILINEAR)).astype(float)
    assert np.abs(got.permute(1, 2, 0).numpy().astype(float) - reference).mean() < 12  # texture 0-30: the same place


def test_each_side_gets_its_own_margin():
    crop = as_tensor(crop_face(frame(), BOX, 0.3, 300))
    box_only = face_margin_crop(crop, BOX, 0.3, (0, 0, 0, 0))
    red = box_only[0].float() - box_only[1].float()
    assert (red > 60).float().mean() > 0.9  # the face box alone
    wide = face_margin_crop(crop, BOX, 0.3, (0.2, 0.05, 0.05, 0.2))
    inside = (wide[0].float() - wide[1].float()) > 60
    cols, rows = inside.float().mean(0) > 0.5, inside.float().mean(1) > 0.5
    first_col, last_col = int(cols.float().argmax()), len(cols) - int(cols.flip(0).float().argmax())
    first_row, last_row = int(rows.float().argmax()), len(rows) - int(rows.flip(0).float().argmax())
    width, height = last_col - first_col, last_row - first_row
    assert abs(first_col / width - 0.2) < 0.03 and abs((len(cols) - last_col) / width - 0.05) < 0.03
    assert abs(first_row / height - 0.05) < 0.03 and abs((len(rows) - last_row) / height - 0.2) < 0.03


def test_training_draws_each_samples_margins_from_seed_epoch_and_sample_and_cuts_an_sbi_pair_alike():
    cfg = DataConfig(image_size=64, augment=False, face_margin=[0.05, 0.2])
    stream = EpochStream(types.SimpleNamespace(margin=0.3), cfg, seed=7, epoch=0, position=0, batches=0, rank=0, world=1)
    image = as_tensor(crop_face(frame(), BOX, 0.3, 200))
    meta = {"box": list(BOX), "label": 0, "video": "v.mp4"}
    shapes = {tuple(stream.recrop(image, meta, epoch, 5).shape) for epoch in range(6)}
    assert len(shapes) > 1  # a new draw each epoch
    assert torch.equal(stream.recrop(image, meta, 3, 5), stream.recrop(image, meta, 3, 5))  # the same on any worker
    for sample_id in range(20):
        cut = stream.recrop(image, meta, 1, sample_id)
        # the crop: a square of 120 x 1.6 frame pixels at 200 px; the box 80 wide; 5-20% of that a side
        assert 200 * 80 / 192 * 1.1 - 2 <= cut.shape[-1] <= 200 * 80 / 192 * 1.4 + 2
    pair = torch.stack([image, image.flip(-1)])
    cut = stream.recrop(pair, meta, 2, 9)
    assert cut.shape[:2] == (2, 3) and torch.equal(cut[0], stream.recrop(image, meta, 2, 9))
    sbi = EpochStream(types.SimpleNamespace(margin=0.3), DataConfig(image_size=64, augment=False, face_margin=[0.05, 0.2], sbi=1.0),
                      seed=7, epoch=0, position=0, batches=0, rank=0, world=1)
    items = sbi.items(Sample("k", image, meta | {"landmarks": None}, "s3://b/x.tar"), 0, 3)
    assert [i[0].shape for i in items] == [(3, 64, 64), (3, 64, 64)] and [float(i[1]) for i in items] == [0.0, 1.0]
    assert DataConfig(image_size=64).face_margin is None and torch.equal(
        EpochStream(types.SimpleNamespace(margin=0.3), DataConfig(image_size=64), 7, 0, 0, 0, 0, 1).recrop(image, meta, 0, 1), image)


def test_validation_evaluation_and_scoring_cut_with_the_cards_margin():
    crop = Image.fromarray(crop_face(frame(), BOX, 0.3, 200))
    meta = {"box": list(BOX), "label": 1, "video": "v.mp4"}
    tf = image_transform(64, False)
    plain, label, video, url, key = Decode(tf)((crop, meta, "u", "k"))
    cut = Decode(tf, 0.125, 0.3)((crop, meta, "u", "k"))[0]
    assert plain.shape == cut.shape == (3, 64, 64) and not torch.equal(plain, cut)
    assert torch.equal(cut, tf(face_margin_crop(crop, BOX, 0.3, (0.125,) * 4)))


def test_settings_are_checked_and_a_margin_wider_than_the_crops_is_refused():
    cfg = load_config(None, ["data.face_margin=[0.05, 0.2]", "data.eval_face_margin=0.125"])
    assert cfg.data.face_margin == [0.05, 0.2] and cfg.data.eval_face_margin == 0.125
    for bad in (["data.face_margin=[0.2, 0.05]"], ["data.face_margin=[0.1]"], ["data.eval_face_margin=-0.1"],
                ["data.face_margin=[0.05, 0.2]", "data.order=resampled"]):
        with pytest.raises(ConfigError, match="face_margin"):
            load_config(None, bad)
    manifest = {"config": {"ingest": {"margin": 0.15}}}
    assert mf.crop_margin(manifest) == 0.15 and mf.crop_margin({}) == 0.3
    mf.check_face_margin(0.15, manifest, "s3://b/ffpp", "data.face_margin")
    # the SBI recipe's crops: 560 px at margin 0.3 hold 385 px at the narrowest cut, 490 px at the widest
    sbi = load_config(Path(__file__).resolve().parent.parent / "configs" / "sbi_effnet_b4.yaml")
    made = {"config": {"ingest": {"margin": sbi.ingest.margin, "crop_size": sbi.ingest.crop_size}}}
    assert round(mf.face_cut_pixels(made, sbi.data.face_margin[0])) == 385 >= sbi.data.image_size
    assert round(mf.face_cut_pixels(made, sbi.data.face_margin[1])) == 490
    with pytest.raises(mf.ManifestError, match=r"s3://b/ffpp was ingested with ingest.margin=0.15.*data.face_margin"):
        mf.check_face_margin(0.2, manifest, "s3://b/ffpp", "data.face_margin")
