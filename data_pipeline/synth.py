"""`dfdc synth`: a small corpus in the DFDC layout that behaves like the real one.

No deepfake corpus can be downloaded here, so the demo and the tests build their own:
- identities from a real face photo that ships inside scikit-image (`data.astronaut()`), each with
  its own skin tone, lighting, face shape and background;
- REAL videos: a moving, zooming camera over one identity, H.264 in mp4;
- FAKE videos made from a REAL one as face swaps are: the inner face of another identity, rendered
  on the same camera path, shrunk and enlarged again (resolution mismatch), pasted with a narrow
  feathered elliptical mask (blending seam) and without colour correction (colour mismatch); the
  idea of self-blended images (Shiohara & Yamasaki, CVPR 2022).
Parts `dfdc_train_part_N/` with `metadata.json` as DFDC ships them. Deterministic by seed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import string
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dfdc import storage
from dfdc.config import SynthConfig

# Measured once with MTCNN on data.astronaut(): face box (181, 62, 268, 172), eyes at (205, 102)
# and (247, 104), mouth corners at (202, 139) and (245, 142).
FACE_CENTER = (225.0, 117.0)
FACE_SIZE = 110.0
INNER_FACE = (225.0, 121.0, 33.0, 40.0)  # ellipse centre x, y and half-axes: brows to chin


@dataclass
class Identity:
    gains: np.ndarray  # per-channel colour gains
    gamma: float
    stretch: float  # face width / height change
    background: np.ndarray  # RGB tint mixed into the area away from the face


def _base_image() -> np.ndarray:
    from skimage import data  # noqa: PLC0415

    return data.astronaut().astype(np.float32) / 255.0


def make_identity(rng: np.random.Generator) -> Identity:
    return Identity(
        gains=rng.uniform(0.8, 1.2, size=3).astype(np.float32),
        gamma=float(rng.uniform(0.8, 1.25)),
        stretch=float(rng.uniform(0.9, 1.1)),
        background=rng.uniform(0, 1, size=3).astype(np.float32),
    )


def render_identity(base: np.ndarray, ident: Identity) -> Image.Image:
    """The base photo recoloured and reshaped into this identity (512 x 512 RGB)."""
    h, w = base.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.hypot((xx - FACE_CENTER[0]) / 130.0, (yy - FACE_CENTER[1]) / 150.0)
    away = np.clip(dist - 0.6, 0, 1)[..., None]  # 0 on the face, 1 far from it
    img = np.clip(base * ident.gains, 0, 1) ** ident.gamma
    img = img * (1 - 0.5 * away) + ident.background * 0.5 * away
    pil = Image.fromarray((img * 255).astype(np.uint8))
    # Stretch horizontally about the face centre: a different face shape.
    s = ident.stretch
    cx = FACE_CENTER[0]
    return pil.transform(pil.size, Image.AFFINE, (1 / s, 0, cx - cx / s, 0, 1, 0), resample=Image.BILINEAR)


@dataclass
class Camera:
    """A window over the 512 x 512 identity image per frame, moving and zooming linearly."""

    start: tuple[float, float, float]  # centre x, centre y, window height
    end: tuple[float, float, float]

    def window(self, k: float, aspect: float) -> tuple[float, float, float, float]:
        cx, cy, hh = (a + (b - a) * k for a, b in zip(self.start, self.end))
        ww = hh * aspect
        # Slide the window inside the photo where it fits: no black borders.
        cx = min(max(cx, ww / 2), 512 - ww / 2) if ww <= 512 else 256
        cy = min(max(cy, hh / 2), 512 - hh / 2) if hh <= 512 else 256
        return cx - ww / 2, cy - hh / 2, cx + ww / 2, cy + hh / 2


def make_camera(rng: np.random.Generator) -> Camera:
    def pose():
        return (FACE_CENTER[0] + rng.uniform(-40, 40), FACE_CENTER[1] + rng.uniform(-10, 50), rng.uniform(260, 380))

    return Camera(pose(), pose())


def _frames(img: Image.Image, cam: Camera, cfg: SynthConfig) -> list[Image.Image]:
    n = max(1, round(cfg.fps * cfg.seconds))
    aspect = cfg.width / cfg.height
    return [img.transform((cfg.width, cfg.height), Image.EXTENT, cam.window(i / max(1, n - 1), aspect), resample=Image.BILINEAR)
            for i in range(n)]


def _mask(cam: Camera, k: float, cfg: SynthConfig, scale: float, feather: float) -> np.ndarray:
    """The inner-face ellipse in frame pixels, feathered."""
    x0, y0, x1, y1 = cam.window(k, cfg.width / cfg.height)
    sx, sy = cfg.width / (x1 - x0), cfg.height / (y1 - y0)
    cx, cy, rx, ry = INNER_FACE
    box = ((cx - rx * scale - x0) * sx, (cy - ry * scale - y0) * sy, (cx + rx * scale - x0) * sx, (cy + ry * scale - y0) * sy)
    m = Image.new("L", (cfg.width, cfg.height), 0)
    ImageDraw.Draw(m).ellipse(box, fill=255)
    return np.asarray(m.filter(ImageFilter.GaussianBlur(feather)), dtype=np.float32)[..., None] / 255.0


def fake_frames(target: list[Image.Image], donor: Image.Image, cam: Camera, cfg: SynthConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Swap the donor's inner face into the target's frames, with a face swap's artifacts."""
    shrink = rng.uniform(0.3, 0.55)  # resolution mismatch
    scale = rng.uniform(0.9, 1.15)  # mask size
    feather = rng.uniform(1.0, 3.0)  # seam width
    match = rng.uniform(0.3, 0.8)  # share of the colour difference that is corrected
    out = []
    donor_frames = _frames(donor, cam, cfg)
    for i, (t, d) in enumerate(zip(target, donor_frames)):
        small = d.resize((max(1, round(cfg.width * shrink)), max(1, round(cfg.height * shrink))), Image.BILINEAR)
        d = np.asarray(small.resize((cfg.width, cfg.height), Image.BILINEAR), dtype=np.float32)
        m = _mask(cam, i / max(1, len(target) - 1), cfg, scale, feather)
        t = np.asarray(t, dtype=np.float32)
        inside = m[..., 0] > 0.5
        if inside.any():
            d = d + match * (t[inside].mean(0) - d[inside].mean(0))
        out.append(np.clip(t * (1 - m) + d * m, 0, 255).astype(np.uint8))
    return out


def encode_mp4(frames: list, fps: int, keyframe_interval: int = 15) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        first = np.asarray(frames[0])
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast", "g": str(keyframe_interval)}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _name(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        name = "".join(rng.choice(list(string.ascii_lowercase), size=10)) + ".mp4"
        if name not in used:
            used.add(name)
            return name


def synth(out: str, cfg: SynthConfig, log=print) -> dict:
    """Write the corpus under `out` (folder or s3:// prefix); returns {part: metadata}.

    `synth.json`, written last, records the settings: the same call again finds it and does nothing."""
    marker = storage.join(out, "synth.json")
    settings = dataclasses.asdict(cfg)
    if storage.exists(marker) and json.loads(storage.read_bytes(marker)).get("settings") == settings:
        parts = json.loads(storage.read_bytes(marker))["parts"]
        log(f"synth: {out} already holds this corpus ({sum(len(m) for m in parts.values())} videos): nothing to do")
        return parts
    rng = np.random.default_rng(cfg.seed)
    base = _base_image()
    identities = [make_identity(rng) for _ in range(max(2, cfg.identities))]
    rendered = [render_identity(base, ident) for ident in identities]
    reals = max(1, round(cfg.videos / (1 + cfg.fakes_per_real)))
    used: set[str] = set()
    parts: dict[str, dict] = {}
    made = 0
    for r in range(reals):
        if made >= cfg.videos:
            break
        part = f"dfdc_train_part_{r % max(1, cfg.parts)}"
        meta = parts.setdefault(part, {})
        who = int(rng.integers(len(identities)))
        cam = make_camera(rng)
        frames = _frames(rendered[who], cam, cfg)
        real_name = _name(rng, used)
        storage.write_bytes(storage.join(out, part, real_name), encode_mp4(frames, cfg.fps, cfg.keyframe_interval))
        meta[real_name] = {"label": "REAL", "split": "train"}
        made += 1
        for _ in range(cfg.fakes_per_real):
            if made >= cfg.videos:
                break
            donor = (who + 1 + int(rng.integers(len(identities) - 1))) % len(identities)
            fake = fake_frames(frames, rendered[donor], cam, cfg, rng)
            fake_name = _name(rng, used)
            storage.write_bytes(storage.join(out, part, fake_name), encode_mp4(fake, cfg.fps, cfg.keyframe_interval))
            meta[fake_name] = {"label": "FAKE", "split": "train", "original": real_name}
            made += 1
    for part, meta in parts.items():
        storage.write_bytes(storage.join(out, part, "metadata.json"), json.dumps(meta, indent=1, sort_keys=True).encode())
    storage.write_bytes(marker, json.dumps({"settings": settings, "parts": parts}, indent=1).encode())
    log(f"synth: {made} videos ({sum(v['label'] == 'FAKE' for m in parts.values() for v in m.values())} fake) "
        f"in {len(parts)} parts under {out}")
    return parts
