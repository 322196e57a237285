"""Face detectors side by side on the same frames: speed, and recall against MTCNN (issue 27: a
faster detector that ships its weights inside a registry package is kept only if it finds >= 0.99
of the faces MTCNN finds).

  MTCNN, facenet-pytorch  facenet-pytorch's own code ("mtcnn-facenet") at the default settings
            (thresholds 0.6, 0.7, 0.7; min_face_size 40 at 960 px): the reference
  MTCNN, batched          the ingest's ("mtcnn", data_pipeline/mtcnn.py): the same networks and
                          weights, its pyramid, crops and memory layout changed for speed
  ..., his thresholds     the DFDC winner's thresholds (0.85, 0.95, 0.95): fewer candidates reach
                          the second and third networks; also with his min_face_size
                          (facenet-pytorch's 20 on the half-size frame)
  ..., B7 recipe          configs/dfdc_b7.yaml's detector section (his thresholds, min_face_size
                          60), on the CPU
  dlib HOG  dlib's frontal face detector (built into dlib, from the dlib-bin wheel), as the DFDC
            winner's convex-hull cutout runs it; upsample 0

Frames: synthetic DFDC-like videos at --width x --height, --frames sampled per video by the
ingest's own sampler, both detectors on the same frames shrunk to detector.max_side (960 px: half
of 1080p, the winner's half size). Recall: the share of the reference's faces with a face of
IoU >= --iou from the other detector. MediaPipe was not tried: its wheel (1.2.3 on this registry)
ships no model files, and its face detector needs one downloaded. Neither dlib's HOG nor OpenCV's
Haar cascades give MTCNN's five points, which ingest stores for SBI and the landmark cutout.

Usage: python bench/face_detectors.py [--videos 6] [--width 1920] [--height 1080] [--frames 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    ap.add_argument("--iou", type=float, default=0.5)
    args = ap.parse_args()

    import dlib  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from dfdc import storage  # noqa: PLC0415
    from dfdc.config import load_config  # noqa: PLC0415
    from data_pipeline.faces import build_detector, iou  # noqa: PLC0415
    from data_pipeline.frames import sample_frames  # noqa: PLC0415
    from data_pipeline.sources import discover  # noqa: PLC0415
    from data_pipeline.synth import synth  # noqa: PLC0415

    cfg = load_config(None, [f"synth.videos={args.videos}", f"synth.width={args.width}", f"synth.height={args.height}",
                             f"synth.seconds={args.seconds}", "detector.min_face_size=40"])
    with tempfile.TemporaryDirectory() as tmp:
        synth(tmp, cfg.synth, log=lambda *_: None)
        _, scan = discover(tmp)
        frames = [f.image for r in scan.records for f in sample_frames(storage.read_bytes(r.uri), args.frames)]
    h, w = frames[0].shape[:2]
    scale = min(1.0, cfg.detector.max_side / max(h, w))
    size = (round(w * scale), round(h * scale))
    print(f"{len(frames)} frames of {w}x{h} from {len(scan.records)} synthetic videos, detected at {size[0]}x{size[1]}; "
          f"{os.cpu_count()} cores")

    def timed(detect) -> tuple[list, float]:
        detect(frames[:2])  # warm-up
        t = time.perf_counter()
        found = detect(frames)
        return found, len(frames) / (time.perf_counter() - t)

    def boxes(detector):
        return lambda images: [[f.box for f in fs] for fs in detector.detect(images)]

    def mtcnn(name="mtcnn", **changes):
        return boxes(build_detector(dataclasses.replace(cfg.detector, name=name, **changes)))

    his = [0.85, 0.95, 0.95]
    reference, mtcnn_fps = timed(mtcnn("mtcnn-facenet"))
    b7 = load_config("configs/dfdc_b7.yaml", ["detector.device=cpu"]).detector
    others = {
        "MTCNN, batched": mtcnn(),
        "MTCNN, facenet-pytorch, his thresholds": mtcnn("mtcnn-facenet", thresholds=his),
        "MTCNN, batched, his thresholds": mtcnn(thresholds=his),
        "MTCNN, batched, his thresholds and min face 20 (his)": mtcnn(thresholds=his, min_face_size=20),
        f"MTCNN, {b7.name}, B7 recipe ({b7.thresholds}, min face {b7.min_face_size})": boxes(build_detector(b7)),
    }
    hog = dlib.get_frontal_face_detector()

    def dlib_hog(images):  # on the frames MTCNN sees: shrunk to max_side
        small = [np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in images]
        return [[(r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale) for r in hog(im, 0)] for im in small]

    others["dlib HOG"] = dlib_hog
    faces = [(i, box) for i, bs in enumerate(reference) for box in bs]
    print(f"{'detector':60} {'frames/s':>9} {'vs ref':>7} {'recall vs ref':>14} {'mean IoU':>9} {'faces':>6} {'unmatched':>10}")
    print(f"{'MTCNN, facenet-pytorch (the reference)':60} {mtcnn_fps:9.1f} {1.0:6.2f}x {'':>14} {'':>9} {len(faces):6d}")
    for name, detect in others.items():
        found, fps = timed(detect)
        best = [max((iou(box, other) for other in found[i]), default=0.0) for i, box in faces]
        hits = [b for b in best if b >= args.iou]
        recall = len(hits) / len(faces) if faces else float("nan")
        total = sum(len(f) for f in found)
        print(f"{name:60} {fps:9.1f} {fps / mtcnn_fps:6.2f}x {recall:14.3f} {np.mean(hits) if hits else float('nan'):9.3f} "
              f"{total:6d} {total - len(hits):10d}")
    print(f"recall: the share of the reference's {len(faces)} faces with a face of IoU >= {args.iou} from the other; mean IoU: "
          "of those matches; unmatched: its faces that match none of the reference's")


if __name__ == "__main__":
    main()
