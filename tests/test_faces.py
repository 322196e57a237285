"""MTCNN as the ingest runs it: frames larger than detector.max_side are shrunk before detection,
and the boxes and five points come back in the frame's own pixels."""

import numpy as np
from PIL import Image

from dfdc.config import DetectorConfig
from data_pipeline.faces import build_detector, iou


def test_a_shrunk_frame_gives_boxes_and_points_in_the_frames_own_pixels():
    from skimage import data  # noqa: PLC0415

    photo = data.astronaut()  # 512 x 512, one face at about (181, 62, 268, 172)
    big = np.asarray(Image.fromarray(photo).resize((1024, 768), Image.BICUBIC))  # x2 across, x1.5 down
    full = build_detector(DetectorConfig(max_side=1024, batch_size=2)).detect([big, big])
    shrunk = build_detector(DetectorConfig(max_side=512, batch_size=2)).detect([big, big])
    assert len(full[0]) == len(shrunk[0]) == 1 and len(shrunk[1]) == 1
    a, b = full[0][0], shrunk[0][0]
    assert b.box == shrunk[1][0].box  # one batch, frame for frame
    assert iou(a.box, b.box) > 0.85, (a.box, b.box)
    x0, y0, x1, y1 = b.box
    assert 181 * 2 - 30 < x0 < 181 * 2 + 30 and 62 * 1.5 - 30 < y0 < 62 * 1.5 + 30, b.box
    # the eyes, nose and mouth in the frame's pixels, inside the box and near full size's
    for (px, py), (qx, qy) in zip(a.landmarks, b.landmarks):
        assert x0 < qx < x1 and y0 < qy < y1
        assert abs(px - qx) < 0.1 * (x1 - x0) and abs(py - qy) < 0.1 * (y1 - y0)
