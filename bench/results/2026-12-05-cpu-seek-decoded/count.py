"""How many frames seeking decodes for DFDC's 32 samples of a 300-frame 1080p video, against the 300
decode-all decodes: the most seeking can gain from decoding less. Synthetic videos (dfdc synth, x264
at the corpus's settings), a keyframe every 30 and every 250 frames. Run from the repository root."""
import tempfile

from data_pipeline.frames import decode_all, sample_frames
from data_pipeline.sources import discover
from data_pipeline.synth import synth
from dfdc import storage
from dfdc.config import load_config

for gop in (30, 250):
    cfg = load_config(None, ["synth.videos=3", "synth.width=1920", "synth.height=1080", "synth.seconds=10", "synth.fps=30",
                             f"synth.keyframe_interval={gop}"])
    with tempfile.TemporaryDirectory() as tmp:
        synth(tmp, cfg.synth, log=lambda *_: None)
        _, scan = discover(tmp)
        videos = [storage.read_bytes(r.uri) for r in scan.records]
    counts: dict[str, int] = {}
    sampled = sum(len(sample_frames(v, 32, counts)) for v in videos)
    total = sum(decode_all(v) for v in videos)
    print(f"keyframe every {gop}: {len(videos)} videos, {total} frames, {sampled} sampled; seeking decoded "
          f"{counts['decoded']} ({counts['decoded'] / sampled:.1f} a sampled frame); decode-all decodes "
          f"{total / counts['decoded']:.2f}x as many", flush=True)
