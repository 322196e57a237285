import subprocess, sys, time, tempfile, types
# data_pipeline/frames.py as it was before the skip, from git (run inside the repository)
frames_old = types.ModuleType("frames_old")
sys.modules["frames_old"] = frames_old  # its dataclasses look their module up there
exec(subprocess.run(["git", "show", "bb924c1:data_pipeline/frames.py"], capture_output=True, text=True, check=True).stdout,
     frames_old.__dict__)
from data_pipeline import frames as new
from dfdc import storage
from dfdc.config import load_config
from data_pipeline.sources import discover
from data_pipeline.synth import synth
cfg = load_config(None, ["synth.videos=2","synth.width=1920","synth.height=1080","synth.seconds=10","synth.fps=30"])
with tempfile.TemporaryDirectory() as tmp:
    synth(tmp, cfg.synth, log=lambda *_: None)
    _, scan = discover(tmp)
    vids = [storage.read_bytes(r.uri) for r in scan.records]
print(len(vids), "videos", new.decode_all(vids[0]), "frames")
for _ in range(3):
    row = {}
    for name, fn in (("old seek", lambda d: frames_old.sample_frames(d, 32)), ("new seek", lambda d: new.sample_frames(d, 32)), ("decode-all", new.decode_all)):
        t = time.perf_counter(); [fn(d) for d in vids]; row[name] = time.perf_counter() - t
    print({k: round(v, 2) for k, v in row.items()}, f"old {row['decode-all']/row['old seek']:.2f}x new {row['decode-all']/row['new seek']:.2f}x")
import numpy as np
for d in vids:
    a, b = frames_old.sample_frames(d, 32), new.sample_frames(d, 32)
    assert [f.index for f in a] == [f.index for f in b] and all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
print("identical frames on both 1080p videos")
