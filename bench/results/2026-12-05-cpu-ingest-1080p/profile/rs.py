import time, numpy as np, torch
from torch.nn.functional import interpolate
from PIL import Image
frames = np.load(__import__("os").environ.get("FRAMES", "frames.npy"))[:16]
small = np.stack([np.asarray(Image.fromarray(f).resize((960,540), Image.BILINEAR)) for f in frames])
x = torch.as_tensor(small).permute(0,3,1,2).float()
sizes = [(int(540*s+1), int(960*s+1)) for s in [0.2*0.709**k for k in range(7)]]
def T(name, fn):
    fn(); t=time.perf_counter(); [fn() for _ in range(3)]; print(f"{name:28} {(time.perf_counter()-t)/3*1000:7.1f} ms")
T("area channels_last(as is)", lambda: [interpolate(x, size=s, mode="area") for s in sizes])
xc = x.contiguous()
T("area contiguous", lambda: [interpolate(xc, size=s, mode="area") for s in sizes])
T("bilinear antialias CL", lambda: [interpolate(x, size=s, mode="bilinear", antialias=True) for s in sizes])
T("bilinear antialias contig", lambda: [interpolate(xc, size=s, mode="bilinear", antialias=True) for s in sizes])
xu = torch.as_tensor(small).permute(0,3,1,2)
T("uint8 bilinear aa CL", lambda: [interpolate(xu, size=s, mode="bilinear", antialias=True) for s in sizes])
pils=[Image.fromarray(f) for f in small]
T("PIL BOX", lambda: [[p.resize((s[1],s[0]), Image.BOX) for p in pils] for s in sizes])
a = interpolate(xc, size=sizes[0], mode="area"); b = interpolate(xc, size=sizes[0], mode="bilinear", antialias=True)
print("max abs diff area vs bilinear-aa", (a-b).abs().max().item(), "mean", (a-b).abs().mean().item())
