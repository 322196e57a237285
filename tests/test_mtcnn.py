"""The batched MTCNN (data_pipeline/mtcnn.py, detector.name "mtcnn") against facenet-pytorch's own
code with the same networks ("mtcnn-facenet"), on a real photo: the same faces, with boxes and five
points a few pixels apart (the batched one resamples with other kernels, so not bit for bit)."""

import numpy as np
import pytest
from PIL import Image

from dfdc.config import DetectorConfig
from data_pipeline.faces import build_detector, iou


def _frames() -> list[np.ndarray]:
    from skimage import data  # noqa: PLC0415

    photo = Image.fromarray(data.astronaut())  # 512 x 512, one face at about (181, 62, 268, 172)
    rng = np.random.default_rng(0)
    frames = []
    for size, at in [(512, (100, 40)), (300, (420, 250)), (512, (-200, 60)), (None, None)]:
        canvas = Image.fromarray(rng.integers(90, 160, (600, 800, 3), dtype=np.uint8))
        if size:  # the third is pasted past the frame's left edge, a fifth of the face with it
            canvas.paste(photo.resize((size, size), Image.BICUBIC), at)
        frames.append(np.array(canvas))
    return frames


@pytest.mark.parametrize("thresholds", [[0.6, 0.7, 0.7], [0.85, 0.95, 0.95]])
def test_the_batched_mtcnn_finds_facenet_pytorchs_faces(thresholds):
    frames = _frames()
    cfg = DetectorConfig(batch_size=4, min_face_size=20, thresholds=thresholds)
    ours = build_detector(cfg).detect(frames)
    theirs = build_detector(DetectorConfig(**{**cfg.__dict__, "name": "mtcnn-facenet"})).detect(frames)
    assert [len(f) for f in theirs] == [1, 1, 1, 0], theirs
    assert theirs[2][0].box[0] < 0  # a box past the frame: its crops are clipped
    assert [len(f) for f in ours] == [len(f) for f in theirs]
    for mine, ref in zip(ours, theirs):
        for a, b in zip(mine, ref):
            width = b.box[2] - b.box[0]
            assert iou(a.box, b.box) > 0.85, (a.box, b.box)
            assert abs(a.score - b.score) < 0.02
            assert np.abs(np.subtract(a.landmarks, b.landmarks)).max() < 0.05 * width, (a.landmarks, b.landmarks)


def test_frames_too_small_for_the_smallest_face_have_none():
    # no pyramid level at all (facenet-pytorch's own code raises on this)
    found = build_detector(DetectorConfig(min_face_size=40)).detect([np.zeros((30, 50, 3), np.uint8)] * 2)
    assert found == [[], []]
