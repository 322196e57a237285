import tempfile, time, sys
import numpy as np, torch
from dfdc import storage
from dfdc.config import load_config
from data_pipeline.frames import sample_frames
from data_pipeline.sources import discover
from data_pipeline.synth import synth
cfg = load_config(None, ["synth.videos=3","synth.width=1920","synth.height=1080","synth.seconds=4","detector.min_face_size=40"])
with tempfile.TemporaryDirectory() as tmp:
    synth(tmp, cfg.synth, log=lambda *_: None)
    _, scan = discover(tmp)
    frames = [f.image for r in scan.records for f in sample_frames(storage.read_bytes(r.uri), 16)]
np.save(__import__("os").environ.get("FRAMES", "frames.npy"), np.stack(frames))
print(len(frames), frames[0].shape, torch.get_num_threads())
