"""Self-blended images (SBI; Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images",
CVPR 2022): pseudo-fakes made from a real face crop alone.

Two copies of the crop play source and target. One of them, chosen at random, gets colour and
frequency changes; the source and the face mask then move and scale a little together (the
paper's `randaffine` moves both). The source is pasted into the target under the softened mask.
The result carries the traces a face swap leaves (a blending boundary, mismatched colour,
resampling, a landmark shift) without any particular generator's fingerprint, so a detector
trained on it as "fake" has to learn those generic traces.

As in the paper, the target itself is the pseudo-fake's real counterpart: the two differ only under
the mask. When the colour change went to the target, the whole real counterpart carries it too, so
"globally altered" is no cue for "fake". The loader puts both in the batch (real, then fake) and
augments them identically (train/data/loader.py).

The paper's mask is the convex hull of dlib's 81 facial landmarks (68 a quarter of the time). Our
crops carry only MTCNN's five points (eyes, nose, mouth corners), whose hull covers little more than
the eyes-to-mouth triangle. So the mask here is an ellipse fitted to the five points instead: centred
a little below the eyes, oriented along the eyes-to-mouth direction, its axes scaled from the eye
distance and the eyes-to-mouth distance so that it reaches the brows and the chin. Without landmarks
it is the ellipse inscribed in the face box that the crop's margin implies. Its outline is then
deformed at random (axis scales, rotation, offset, a low-frequency wobble of the boundary) in place
of the paper's elastic warp of the hull. What that changes: the paper's 81-point hull follows the
jaw line and the forehead of each face, its mask edge lies on the face's own contour; an ellipse
from five points lies near it on frontal faces, and crosses cheek or background on turned ones.

Everything random comes from the caller's `numpy.random.Generator`, so a seed reproduces a sample
byte for byte in any loader worker.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

# The paper draws 1 half the time: most pseudo-fakes are fully pasted, some only partly.
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)

# A landmark ellipse covering less of the crop than this means the points are unusable (all in one
# spot, or far outside the crop); blending under it would label an almost untouched real face "fake".
MIN_MASK_FRACTION = 0.02

# The five points must lie inside the undeformed ellipse at most this far from its centre (in units of
# its radius), so that the worst random shrink and wobble below still keep every point under the mask.
LANDMARK_REACH = 0.75


def self_blend(image: torch.Tensor, landmarks, rng: np.random.Generator,
               margin: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """image: 3 x H x W uint8 face crop (square, H == W usually). landmarks: None, or MTCNN's five points
    (left eye, right eye, nose, left mouth corner, right mouth corner) as [[x, y], ...] in fractions of the
    crop's width and height (0..1). Returns (the real counterpart: the target, 3 x H x W uint8; the
    self-blended pseudo-fake, 3 x H x W uint8; the blending mask, H x W float32 in [0, 1]). Off the mask
    the pseudo-fake is exactly the real counterpart."""
    _check_image(image)
    height, width = image.shape[1:]
    # The mask first: bad landmarks should fail before any work is done.
    face = mask_from_landmarks((height, width), landmarks, rng, margin)
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    source, target = source_and_target(pixels, rng)
    source, face = move_together(source, face, rng)
    mask = torch.from_numpy(soften_mask(face, rng))
    real = _to_tensor(target)
    return real, blend(_to_tensor(source), real, mask), mask


def blend(source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """source * mask + target * (1 - mask), both 3 x H x W uint8, mask H x W in [0, 1]. Where the mask is
    0 the result is exactly the target."""
    base = target.to(torch.float32)
    # target + (source - target) * mask: exact where the mask is 0 or 1, and one pass fewer.
    out = source.to(torch.float32).sub_(base).mul_(mask.to(torch.float32)).add_(base)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def mask_from_landmarks(size: tuple[int, int], landmarks, rng: np.random.Generator, margin: float = 0.3) -> np.ndarray:
    """The randomly deformed face region, before blur and blending ratio: size = (height, width), returns
    a height x width float32 array of 0s and 1s. From the five points when given and usable, else from
    the face box implied by `margin`. Points outside the crop are allowed; the mask is cut at its edge."""
    height, width = size
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    points = None if landmarks is None else _check_landmarks(landmarks) * np.array([width, height])
    # Drawn before knowing which ellipse is used, so a seed consumes the same numbers either way.
    deform = _random_deformation(rng)
    ellipse = None if points is None else _landmark_ellipse(points)
    if ellipse is not None:
        mask = _rasterise(size, *ellipse, deform)
        if mask.mean() >= MIN_MASK_FRACTION:
            return mask
    return _rasterise(size, *_box_ellipse(size, margin), deform)


def soften_mask(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Feathered edge and blending ratio: a Gaussian blur whose width is random and proportional to the
    face's size (so the look does not depend on the crop's resolution), then a ratio from BLEND_RATIOS."""
    scale = math.sqrt(float(face.sum()))  # about the face's side, in pixels
    sigma = rng.uniform(0.02, 0.08) * scale
    ratio = BLEND_RATIOS[rng.integers(len(BLEND_RATIOS))]
    # Zero padding, not reflection: the mask must fade out at the crop's edge, not be mirrored back in.
    soft = ndimage.gaussian_filter(face, sigma, mode="constant", truncate=3.0) if sigma > 0.3 else face.copy()
    top = soft.max()
    if top > 0:
        soft *= ratio / top  # blurring a small face lowers its peak; the ratio alone should set it
    return np.clip(soft, 0.0, 1.0).astype(np.float32)


def source_and_target(pixels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two H x W x 3 uint8 copies of `pixels`: colour and frequency changes go to one of them at random
    (the paper alters either side, so that neither the pasted face nor its surroundings alone betray it)."""
    altered = _frequency_change(_colour_change(pixels, rng), rng)
    if rng.random() < 0.5:
        return altered, pixels
    return pixels, altered


def move_together(source: np.ndarray, face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The source (H x W x 3 uint8) and the hard face mask (H x W, 0 or 1) scaled by 0.95..1/0.95 about
    the centre and shifted up to 3% across and 1.5% up or down, the same map for both (the paper's
    `randaffine` ranges): the mask stays on the moved face, and the mismatch with the target is the
    landmark shift of a face swap. What comes in from outside is black (mask 0)."""
    height, width = face.shape
    scale = rng.uniform(0.95, 1 / 0.95)
    dx, dy = rng.uniform(-0.03, 0.03) * width, rng.uniform(-0.015, 0.015) * height
    cx, cy = width / 2, height / 2
    # PIL wants the map from output to input pixels: the inverse of x -> scale (x - c) + c + d.
    coeffs = (1 / scale, 0, cx - (cx + dx) / scale, 0, 1 / scale, cy - (cy + dy) / scale)
    moved = np.asarray(Image.fromarray(source).transform((width, height), Image.AFFINE, coeffs, resample=Image.BILINEAR))
    mask = np.asarray(Image.fromarray(face.astype(np.float32)).transform((width, height), Image.AFFINE, coeffs, resample=Image.BILINEAR))
    return moved, (mask >= 0.5).astype(np.float32)


def gallery(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Image.Image:
    """(real counterpart, mask, pseudo-fake) per row -> one RGB grid, a row per sample, for a look in MLflow. Tiles
    are as large as the largest image; smaller ones sit in their tile's top-left corner on black."""
    if not rows:
        raise ValueError("gallery needs at least one row")
    tile_h = max(max(t.shape[-2] for t in row) for row in rows)
    tile_w = max(max(t.shape[-1] for t in row) for row in rows)
    canvas = np.zeros((tile_h * len(rows), tile_w * 3, 3), np.uint8)
    for r, row in enumerate(rows):
        if len(row) != 3:
            raise ValueError(f"gallery row {r} has {len(row)} items, expected (real, mask, pseudo-fake)")
        for c, item in enumerate(row):
            tile = _as_rgb(item)
            h, w = tile.shape[:2]
            canvas[r * tile_h:r * tile_h + h, c * tile_w:c * tile_w + w] = tile
    return Image.fromarray(canvas)


def _check_image(image) -> None:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        what = f"{type(image).__name__} {getattr(image, 'dtype', '')} {tuple(getattr(image, 'shape', ()))}"
        raise ValueError(f"image must be a 3 x H x W uint8 tensor, got {what}")
    if image.shape[1] < 2 or image.shape[2] < 2:
        raise ValueError(f"image is too small to blend: {tuple(image.shape)}")


def _check_landmarks(landmarks) -> np.ndarray:
    try:
        points = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"landmarks must be 5 [x, y] pairs of numbers: {e}") from None
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2) (eyes, nose, mouth corners as [x, y]), got {points.shape}")
    if not np.isfinite(points).all():
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(points))[:, 0]})
        raise ValueError(f"landmarks are not finite (NaN or inf) at point(s) {bad}")
    return points


def _landmark_ellipse(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """(centre, downward unit axis, half-width, half-height) in pixels, from the five points; None when
    they are all within a pixel of each other."""
    left_eye, right_eye, _nose, left_mouth, right_mouth = points
    eyes = (left_eye + right_eye) / 2
    mouth = (left_mouth + right_mouth) / 2
    eye_distance = float(np.linalg.norm(right_eye - left_eye))
    drop = float(np.linalg.norm(mouth - eyes))
    # Orient by eyes -> mouth rather than by the eye line: that stays right for mirrored point orders
    # and for faces turned so far that the eyes nearly coincide.
    down = (mouth - eyes) / drop if drop > 1e-6 else np.array([0.0, 1.0])
    # Brows sit about 0.8 of the eyes-to-mouth distance above the eyes and the chin as far below the
    # mouth; cheeks about an eye distance from the middle. The floors keep a turned or tilted face from
    # collapsing the ellipse to a sliver along either axis.
    half_h = max(1.3 * drop, 0.8 * eye_distance)
    half_w = max(1.05 * eye_distance, 0.9 * drop)
    if half_w < 1 or half_h < 1:
        return None
    centre = eyes + 0.5 * drop * down
    # Odd geometry (a nose far off, a face turned aside) can leave a point near or past the edge:
    # grow the ellipse until every point is well inside, as the paper's hull contains all its points.
    right = np.array([-down[1], down[0]])
    rel = points - centre
    reach = np.sqrt((rel @ right / half_w) ** 2 + (rel @ down / half_h) ** 2).max()
    grow = max(1.0, reach / LANDMARK_REACH)
    return centre, down, half_w * grow, half_h * grow


def _box_ellipse(size: tuple[int, int], margin: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The ellipse inscribed in the face box: ingest crops a square of the box's longer side plus
    `margin` of it on each side (data_pipeline/crops.py), so the box spans 1 / (1 + 2 margin) of the crop,
    centred."""
    height, width = size
    span = 1 / (1 + 2 * margin)
    return np.array([width / 2, height / 2]), np.array([0.0, 1.0]), width * span / 2, height * span / 2


def _random_deformation(rng: np.random.Generator) -> dict:
    return {
        "scale": rng.uniform(0.9, 1.1, size=2),  # half-width, half-height
        "angle": rng.uniform(-0.1, 0.1),  # radians
        "offset": rng.uniform(-0.05, 0.05, size=2),  # of the half-axes
        # The boundary's radius: 1 + sum over k = 2..4 of amp cos(k phi + phase). Low orders only: a
        # smooth dent or bulge like a jaw or brow line, not a ragged edge. At most +-0.09 in all.
        "amplitude": rng.uniform(0.0, 0.03, size=3),
        "phase": rng.uniform(0.0, 2 * math.pi, size=3),
    }


def _rasterise(size, centre, down, half_w, half_h, deform) -> np.ndarray:
    height, width = size
    cos, sin = math.cos(deform["angle"]), math.sin(deform["angle"])
    down = np.array([cos * down[0] - sin * down[1], sin * down[0] + cos * down[1]])
    right = np.array([-down[1], down[0]])
    half_w, half_h = half_w * deform["scale"][0], half_h * deform["scale"][1]
    centre = centre + deform["offset"][0] * half_w * right + deform["offset"][1] * half_h * down
    # Pixel centres, in the ellipse's own frame where its undeformed boundary is the unit circle.
    xs = np.arange(width, dtype=np.float32) + 0.5 - np.float32(centre[0])
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5 - np.float32(centre[1])
    u = (xs * np.float32(right[0]) + ys * np.float32(right[1])) / np.float32(half_w)
    v = (xs * np.float32(down[0]) + ys * np.float32(down[1])) / np.float32(half_h)
    radius = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    boundary = np.ones_like(radius)
    for k, amp, phase in zip((2, 3, 4), deform["amplitude"], deform["phase"]):
        boundary += np.float32(amp) * np.cos(k * phi + np.float32(phase))
    return (radius <= boundary).astype(np.float32)


def _colour_change(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB shift (p 0.3), hue/saturation/value shift (p 0.3), brightness and contrast (always), as one
    affine map of colour (which each of them is): one pass over the pixels."""
    matrix = np.eye(3)
    bias = np.zeros(3)
    if rng.random() < 0.3:
        bias += rng.uniform(-20, 20, size=3)
    if rng.random() < 0.3:
        matrix = rng.uniform(0.95, 1.05) * _saturation(rng.uniform(0.85, 1.15)) @ _hue_rotation(rng.uniform(-0.12, 0.12))
        bias = matrix @ bias
    contrast = 1 + rng.uniform(-0.1, 0.1)
    brightness = rng.uniform(-0.1, 0.1) * 255
    # Contrast about the image's mean grey after the changes above: with a linear map that mean follows
    # from the original's channel means without a second pass.
    grey = float((matrix @ pixels.reshape(-1, 3).mean(0) + bias).mean())
    matrix = contrast * matrix
    bias = contrast * bias + (1 - contrast) * grey + brightness
    out = pixels.reshape(-1, 3).astype(np.float32) @ matrix.T.astype(np.float32)
    out += bias.astype(np.float32)
    np.clip(out, 0, 255, out=out)
    return np.rint(out, out=out).astype(np.uint8).reshape(pixels.shape)


def _hue_rotation(angle: float) -> np.ndarray:
    """Rotation of RGB about the grey axis: a hue shift that keeps greys grey (angle in radians)."""
    axis = np.ones(3) / math.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(axis, axis)


def _saturation(factor: float) -> np.ndarray:
    """Blend towards (factor < 1) or away from (> 1) each pixel's luma."""
    luma = np.array([0.299, 0.587, 0.114])
    return factor * np.eye(3) + (1 - factor) * np.outer(np.ones(3), luma)


def _frequency_change(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Either lose detail (down- then up-scale, as a swap's resampled face has) or add it (sharpen)."""
    image = Image.fromarray(pixels)
    width, height = image.size
    if rng.random() < 0.5:
        factor = rng.uniform(2.0, 4.0)
        small = image.resize((max(1, round(width / factor)), max(1, round(height / factor))), Image.NEAREST)
        return np.asarray(small.resize((width, height), Image.BILINEAR))
    alpha, lightness = rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0)
    kernel = [-alpha] * 4 + [1 - alpha + alpha * (8 + lightness)] + [-alpha] * 4
    # PIL divides by the kernel's sum, so sharpening keeps the brightness; brightness is drawn above.
    return np.asarray(image.filter(ImageFilter.Kernel((3, 3), kernel)))


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    # Arrays from PIL are read-only, which torch warns about even though nothing writes to them.
    if not pixels.flags.writeable:
        pixels = pixels.copy()
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _as_rgb(item: torch.Tensor) -> np.ndarray:
    array = item.detach().cpu()
    if array.ndim == 2:  # a mask in [0, 1]
        grey = (array.to(torch.float32).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return np.repeat(grey[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[0] == 3:
        return array.to(torch.uint8).permute(1, 2, 0).numpy()
    raise ValueError(f"gallery items must be 3 x H x W images or H x W masks, got shape {tuple(array.shape)}")
