"""Face detection behind a small protocol, and face tracks across a video's sampled frames.

The detector is chosen by `detector.name`: "mtcnn" (MTCNN, the DFDC winner's detector, with
facenet-pytorch's weights, which ship inside its wheel, so it runs offline; its stages batched in
data_pipeline/mtcnn.py), "mtcnn-facenet" (the same networks run by facenet-pytorch's own code, as the
winner ran them: 1.7x slower on the CPU), or "package.module:factory" for
your own: `factory(cfg: DetectorConfig)` returns an object with
`detect(images: list[np.ndarray]) -> list[list[Face]]`.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dfdc.config import ConfigError, DetectorConfig


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the frame's pixels
    score: float
    # MTCNN's five points in the frame's pixels: left eye, right eye, nose, left and right mouth
    # corners ((x, y) each); None from a detector that gives none. Self-blended images mask with them.
    landmarks: tuple[tuple[float, float], ...] | None = None


BUILT_IN = ("mtcnn", "mtcnn-facenet")


class Detector(Protocol):
    def detect(self, images: list[np.ndarray]) -> list[list[Face]]: ...


class MTCNNDetector:
    def __init__(self, cfg: DetectorConfig, batched: bool = True):
        import torch  # noqa: PLC0415
        from facenet_pytorch import MTCNN  # noqa: PLC0415  (imports torchvision: slow)

        self.cfg, self.batched = cfg, batched
        self.model = MTCNN(keep_all=True, device=torch.device(cfg.device), min_face_size=cfg.min_face_size,
                           thresholds=list(cfg.thresholds), post_process=False)

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        out: list[list[Face]] = []
        for start in range(0, len(images), self.cfg.batch_size):
            chunk = images[start:start + self.cfg.batch_size]
            batch, scale = self._batch(chunk)
            for boxes, scores, points in self._run(batch):
                out.append([Face(tuple(float(v) / scale for v in box), float(score),
                                 tuple((float(x) / scale, float(y) / scale) for x, y in five))
                            for box, score, five in zip(boxes, scores, points) if score >= self.cfg.min_score])
        return out

    def _run(self, batch):
        if self.batched:
            from data_pipeline import mtcnn  # noqa: PLC0415

            m = self.model
            return mtcnn.detect((m.pnet, m.rnet, m.onet), batch, self.cfg.min_face_size, self.cfg.thresholds)
        # facenet-pytorch takes N x H x W x 3 and permutes it to N x 3 x H x W: a view of contiguous
        # memory makes that contiguous, on which its area pyramid ran 1.7x faster than on channels-last
        boxes, scores, points = self.model.detect(batch.contiguous().permute(0, 2, 3, 1), landmarks=True)
        return [([], [], []) if b is None else (b, p, pts) for b, p, pts in zip(boxes, scores, points)]

    def _batch(self, chunk: list[np.ndarray]):
        """The frames shrunk to `max_side`, as one N x 3 x H x W uint8 tensor in channels-last memory
        on the detector's device. Why not PIL images: PIL's bilinear resize of a 1920x1080 frame took
        17 ms here, torch's on uint8 3 ms (and uint8 moves a quarter of float's bytes to a GPU).
        MTCNN batches only frames of one size; a video's frames all share one."""
        import torch  # noqa: PLC0415
        from torch.nn.functional import interpolate  # noqa: PLC0415

        h, w = chunk[0].shape[:2]
        scale = min(1.0, self.cfg.max_side / max(h, w))
        size = (round(h * scale), round(w * scale))
        small = []
        for im in chunk:
            t = torch.as_tensor(im)
            if scale < 1:  # in: a view of the H x W x 3 frame; out: planar, viewed as H x W x 3 again
                t = interpolate(t.permute(2, 0, 1).unsqueeze(0), size=size, mode="bilinear", antialias=True)[0].permute(1, 2, 0)
            small.append(t)
        batch = torch.stack(small).permute(0, 3, 1, 2)  # one copy into N x H x W x 3 memory: channels-last
        return batch.to(self.model.device), scale


def check_allowed(name: str, plugins: Collection[str] | None) -> None:
    if name not in BUILT_IN and plugins is not None and name not in plugins:
        raise ConfigError(f"the model card names the detector {name!r}, which this command does not allow: list it "
                          "in detector.plugins (--set 'detector.plugins=[...]') if you trust that code")


def build_detector(cfg: DetectorConfig, plugins: Collection[str] | None = None) -> Detector:
    """The detector `cfg` names. `plugins`: when `cfg` came from stored data (a model card), the
    plug-in paths the command's own config allows; a card cannot make this process import anything
    else. None: `cfg` is the command's own config."""
    check_allowed(cfg.name, plugins)
    if cfg.name in BUILT_IN:
        return MTCNNDetector(cfg, batched=cfg.name == "mtcnn")
    if ":" in cfg.name:
        module, _, attr = cfg.name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"detector.name {cfg.name!r}: cannot load it ({e})") from e
        return factory(cfg)
    raise ConfigError(f"detector.name {cfg.name!r} is not one of {', '.join(BUILT_IN)} nor a 'package.module:factory' path")


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def track(per_frame: list[list[Face]], keep: int, min_iou: float) -> list[list[tuple[int, Face]]]:
    """Keep the `keep` most confident faces of each frame and give each a track id: a face continues
    the track whose last box it overlaps most (IoU >= min_iou), else it starts a new track."""
    last: dict[int, tuple] = {}  # track id -> last box
    out = []
    for faces in per_frame:
        chosen = sorted(faces, key=lambda f: -f.score)[:keep]
        free = dict(last)
        assigned = []
        for face in chosen:
            best = max(free, key=lambda t: iou(free[t], face.box), default=None)
            if best is not None and iou(free[best], face.box) >= min_iou:
                track_id = best
                del free[best]
            else:
                track_id = len(last)
            last[track_id] = face.box
            assigned.append((track_id, face))
        out.append(sorted(assigned, key=lambda a: a[0]))
    return out
