"""MTCNN's three stages (Zhang et al., 2016) on a batch of frames, with facenet-pytorch's networks and
weights, in fewer and cheaper tensor calls than facenet-pytorch's own `detect_face`.

What differs, for speed on the CPU (measured on 1080p frames shrunk to 960x540 in
`bench/face_detectors.py`; docs/performance.md):
- the image pyramid is antialiased bilinear on uint8, a vectorized kernel on channels-last memory,
  where facenet-pytorch converts the whole batch to float and runs area interpolation on it (its
  pyramid was the largest single cost of detection);
- the second and third stages crop every candidate face in one `roi_align` call, where facenet-pytorch
  interpolates each candidate on its own: at the default thresholds, about 950 calls a batch of 16;
- every network reads channels-last tensors (the second and third networks ran 2.7-2.8x faster so).
The first two do not resample exactly as facenet-pytorch does, so boxes and points can differ from
its by a few pixels and, near a threshold, a face can differ: the bench reports recall against
facenet-pytorch's MTCNN (detector.name "mtcnn-facenet"), and tests/test_mtcnn.py holds the two to
the same faces.
"""

from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import bbreg, batched_nms_numpy, generateBoundingBox, rerec
from torch.nn.functional import interpolate
from torchvision.ops import batched_nms, roi_align

FACTOR = 0.709  # facenet-pytorch's pyramid step
# roi_align's bilinear samples per output pixel, per side. Its adaptive choice (box side / output side)
# reads every pixel of a large box: 1.7x this whole module's time on 48 frames, for the same faces.
SAMPLES = 2


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return (x.float() - 127.5) * 0.0078125


def _candidates(pnet, frames: torch.Tensor, min_face: int, threshold: float):
    """Stage one: the proposal network over the pyramid, boxes kept by NMS within each level and
    then within each frame, moved by their regression and made square."""
    h, w = frames.shape[-2:]
    scale, side = 12.0 / min_face, min(h, w) * 12.0 / min_face  # stepped as facenet-pytorch steps them
    boxes, frame_of = [], []
    # CUDA's antialiased resize takes floating point only (torch dispatches it for float types);
    # the CPU's uint8 kernel is its fastest. The GPU path has not been run (no GPU lent).
    source = frames if frames.device.type == "cpu" else frames.float()
    while side >= 12:
        level = interpolate(source, size=(int(h * scale + 1), int(w * scale + 1)), mode="bilinear", antialias=True)
        reg, probs = pnet(_normalized(level))
        b, i = generateBoundingBox(reg, probs[:, 1], scale, threshold)
        keep = batched_nms(b[:, :4], b[:, 4], i, 0.5)
        boxes.append(b[keep])
        frame_of.append(i[keep])
        scale, side = scale * FACTOR, side * FACTOR
    if not boxes:  # frames smaller than min_face: no level at all
        return torch.zeros(0, 5, device=frames.device), torch.zeros(0, dtype=torch.long, device=frames.device)
    boxes, frame_of = torch.cat(boxes), torch.cat(frame_of)
    keep = batched_nms(boxes[:, :4], boxes[:, 4], frame_of, 0.7)
    boxes, frame_of = boxes[keep], frame_of[keep]
    size = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
    return rerec(torch.cat([boxes[:, :4] + boxes[:, 5:9] * size, boxes[:, 4:5]], 1)), frame_of


def _crops(frames: torch.Tensor, boxes: torch.Tensor, frame_of: torch.Tensor, side: int):
    """Each box's pixels, clipped to its frame as facenet-pytorch clips them, resized to side x side
    in one call; and which boxes had any pixels (the others are dropped)."""
    h, w = frames.shape[-2:]
    b = boxes[:, :4].trunc()
    x0, y0 = b[:, 0].clamp(min=1) - 1, b[:, 1].clamp(min=1) - 1
    x1, y1 = b[:, 2].clamp(max=w), b[:, 3].clamp(max=h)
    ok = (x1 > x0) & (y1 > y0)
    rois = torch.stack([frame_of.to(b.dtype), x0, y0, x1, y1], 1)[ok]
    # aligned=True: a box's edges are pixel edges, so pixel i is sampled at its centre, i + 0.5
    return roi_align(frames, rois, side, spatial_scale=1.0, sampling_ratio=SAMPLES, aligned=True), ok


def _refine(net, frames, boxes, frame_of, side, threshold):
    crops, ok = _crops(frames, boxes, frame_of, side)
    boxes, frame_of = boxes[ok], frame_of[ok]
    out = net(_normalized(crops).contiguous(memory_format=torch.channels_last))
    score = out[-1][:, 1]
    keep = score > threshold
    boxes = torch.cat([boxes[keep, :4], score[keep, None]], 1)
    return boxes, frame_of[keep], [o[keep] for o in out[:-1]]


def detect(nets, frames: torch.Tensor, min_face: int, thresholds) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Faces in N x 3 x H x W uint8 frames (channels-last memory is the fast one): per frame, boxes
    (K x 4: x0, y0, x1, y1), scores (K) and five points (K x 5 x 2), the largest face first, as
    facenet-pytorch's `MTCNN(select_largest=True)` orders them."""
    pnet, rnet, onet = nets
    frames = frames.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        boxes, frame_of = _candidates(pnet, frames, min_face, thresholds[0])
        points = torch.zeros(0, 5, 2, device=frames.device)
        pixels = frames.to(torch.float, memory_format=torch.contiguous_format) if len(boxes) else None
        if len(boxes):
            boxes, frame_of, (reg,) = _refine(rnet, pixels, boxes, frame_of, 24, thresholds[1])
            keep = batched_nms(boxes[:, :4], boxes[:, 4], frame_of, 0.7)
            boxes = rerec(bbreg(boxes[keep], reg[keep]))
            frame_of = frame_of[keep]
        if len(boxes):
            boxes, frame_of, (reg, marks) = _refine(onet, pixels, boxes, frame_of, 48, thresholds[2])
            size = boxes[:, 2:4] - boxes[:, 0:2] + 1
            points = torch.stack([size[:, :1] * marks[:, :5] + boxes[:, :1] - 1,
                                  size[:, 1:2] * marks[:, 5:] + boxes[:, 1:2] - 1], 2)
            boxes = bbreg(boxes, reg)
            keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], frame_of, 0.7, "Min")
            boxes, frame_of, points = boxes[keep], frame_of[keep], points[keep]
    boxes, points, frame_of = boxes.cpu().numpy(), points.cpu().numpy(), frame_of.cpu().numpy()
    out = []
    for n in range(len(frames)):
        mine = frame_of == n
        b, p = boxes[mine], points[mine]
        order = np.argsort((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[::-1]
        out.append((b[order, :4], b[order, 4], p[order]))
    return out
