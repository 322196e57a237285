import time, numpy as np, torch
from PIL import Image
frames = np.load(__import__("os").environ.get("FRAMES", "frames.npy"))[:16]
def T(name, fn):
    fn(); t=time.perf_counter(); [fn() for _ in range(3)]; print(f"{name:28} {(time.perf_counter()-t)/3/16*1000:7.2f} ms/frame")
T("PIL bilinear (fromarray)", lambda: [Image.fromarray(f).resize((960,540), Image.BILINEAR) for f in frames])
T("PIL reduce(2)", lambda: [Image.fromarray(f).reduce(2) for f in frames])
T("torch u8 bilinear aa", lambda: torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0,3,1,2), size=(540,960), mode="bilinear", antialias=True))
T("np stack", lambda: np.stack(list(frames)))
