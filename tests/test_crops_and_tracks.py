import io

import numpy as np
from PIL import Image

from data_pipeline.crops import crop_face, encode_jpeg, points_in_crop, square_box
from data_pipeline.faces import Face, iou, track


def test_square_box_adds_margin_on_each_side():
    assert square_box((10, 20, 30, 60), 0.0) == (0, 20, 40, 60)
    x0, y0, x1, y1 = square_box((100, 100, 200, 150), 0.3)
    assert x1 - x0 == y1 - y0 == 160
    assert (x0 + x1) / 2 == 150 and (y0 + y1) / 2 == 125


def test_crop_keeps_the_face_centred_at_the_border():
    image = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_face(image, (0, 0, 20, 20), 0.5, 40)
    assert crop.shape == (40, 40, 3)
    assert crop[0, 0].tolist() == [0, 0, 0]  # outside the frame: black
    assert crop[-1, -1].tolist() == [200, 200, 200]


def test_landmarks_become_fractions_of_the_crop():
    box, margin = (100, 100, 200, 200), 0.3  # the crop is the square (70, 70)-(230, 230)
    assert points_in_crop([(150, 150), (70, 230), (100, 100)], box, margin) == [[0.5, 0.5], [0.0, 1.0], [0.1875, 0.1875]]


def test_jpeg_roundtrip():
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(image, 95))))
    assert decoded.shape == image.shape


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 15, 10)) - 1 / 3) < 1e-9


def test_track_follows_faces_and_keeps_the_best_k():
    a = lambda x: Face((x, 0, x + 10, 10), 0.99)  # noqa: E731
    frames = [
        [a(0), a(100)],
        [a(102), a(2), Face((50, 50, 60, 60), 0.5)],  # order swapped, a weak third face
        [a(4)],
        [a(200)],  # far from every track: a new one
    ]
    tracks = track(frames, keep=2, min_iou=0.3)
    assert [[t for t, _ in f] for f in tracks] == [[0, 1], [0, 1], [0], [2]]
    assert tracks[1][0][1].box[0] == 2 and tracks[1][1][1].box[0] == 102
