"""Small corpora for the tests: real mp4s from the synthesizer, laid out as each dataset ships."""

from __future__ import annotations

import functools
import io
import json
import zipfile

import numpy as np

from dfdc import storage
from dfdc.config import SynthConfig
from data_pipeline import synth

CFG = SynthConfig(width=160, height=120, fps=12, seconds=1.0)


@functools.lru_cache(maxsize=None)
def face_videos(n: int = 4, seed: int = 0) -> list[bytes]:
    """`n` distinct mp4s of a face: real, or a face-swapped fake every other one."""
    rng = np.random.default_rng(seed)
    base = synth._base_image()
    people = [synth.render_identity(base, synth.make_identity(rng)) for _ in range(2)]
    out = []
    for i in range(n):
        cam = synth.make_camera(rng)
        frames = synth._frames(people[0], cam, CFG)
        if i % 2:
            frames = synth.fake_frames(frames, people[1], cam, CFG, rng)
        out.append(synth.encode_mp4(frames, CFG.fps))
    return out


@functools.lru_cache(maxsize=None)
def faceless_video() -> bytes:
    """A real mp4 of a moving gradient: no face in it."""
    frames = []
    for t in range(12):
        x = np.linspace(0, 255, CFG.width)[None, :, None] + t * 10
        frames.append(np.broadcast_to(x % 255, (CFG.height, CFG.width, 3)).astype(np.uint8))
    return synth.encode_mp4(frames, CFG.fps)


def put(root: str, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        storage.write_bytes(storage.join(root, path), data)


def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    return buf.getvalue()


def metadata(entries: dict[str, tuple[str, str | None]]) -> bytes:
    return json.dumps({name: {"label": label, "split": "train", **({"original": orig} if orig else {})}
                       for name, (label, orig) in entries.items()}).encode()
