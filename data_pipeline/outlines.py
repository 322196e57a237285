"""The face's outline in a crop, as the DFDC winner's convex-hull cutout finds it
(selimsef/dfdc_deepfake_challenge, `blackout_convex_hull` in training/datasets/classifier_dataset.py):
dlib's HOG face detector on the crop, its first face, dlib's 68-point shape predictor, and of those
points the jaw line (0-16) and the eyebrows back (26-17), a polygon around the face.

He ran this in his training loader, on every crop drawn for the cutout; here ingest runs it once per
crop (ingest.face_outlines) and stores the 27 points as fractions of the crop (`outline`), so
training pays a polygon fill. A crop where dlib finds no face gets none and is never cut, as his
code left it (its `except: pass`).

The predictor's weights come from the face-recognition-models package. They were trained on iBUG
300-W, whose licence excludes commercial use; the model's author notes it therefore cannot be used in
a commercial product (davisking/dlib-models). ingest.face_outlines is off unless a config turns it
on (docs/recipes.md)."""

from __future__ import annotations

import importlib.util
import os
from functools import cache

import numpy as np

OUTLINE = [*range(17), *range(26, 16, -1)]  # his `landmarks[[*range(17), *range(26, 16, -1)]]`


def predictor_path() -> str:
    """The 68-point model's file inside face-recognition-models, found without importing the package
    (its __init__ needs pkg_resources, which new setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("ingest.face_outlines needs the face-recognition-models package (make install)")
    path = os.path.join(spec.submodule_search_locations[0], "models", "shape_predictor_68_face_landmarks.dat")
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: reinstall face-recognition-models")
    return path


@cache
def _models():
    import dlib  # noqa: PLC0415

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(predictor_path())


def outline(crop: np.ndarray) -> list[list[float]] | None:
    """27 [x, y] points, fractions of the crop's width and height, around the first face dlib finds
    in `crop` (H x W x 3 uint8 RGB); None when it finds none."""
    detector, predictor = _models()
    crop = np.ascontiguousarray(crop)
    faces = detector(crop)
    if not faces:
        return None
    shape = predictor(crop, faces[0])
    h, w = crop.shape[:2]
    return [[round(shape.part(i).x / w, 4), round(shape.part(i).y / h, 4)] for i in OUTLINE]
