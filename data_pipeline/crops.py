"""Square face crops with a margin, resized and JPEG-encoded."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def square_box(box, margin: float) -> tuple[int, int, int, int]:
    """A square around `box`, its side the box's longer side plus `margin` of it on each side."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    side = max(1, round(side))
    return left, top, left + side, top + side


def crop_face(image: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """The square crop, `size` x `size`. Parts outside the frame are black, so the face stays
    centred and at the same scale as in crops away from the border."""
    square = square_box(box, margin)
    crop = Image.fromarray(image).crop(square)  # PIL fills outside the image with zeros
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def points_in_crop(points, box, margin: float) -> list[list[float]]:
    """Frame points (a face's landmarks) as fractions of the crop `crop_face` makes of `box`: the
    same at any crop size."""
    left, top, right, _ = square_box(box, margin)
    side = right - left
    return [[round((x - left) / side, 4), round((y - top) / side, 4)] for x, y in points]
