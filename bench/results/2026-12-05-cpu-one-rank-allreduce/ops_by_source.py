import os, sys, collections, traceback
sys.path.insert(0, sys.argv.pop(1))
import torch, torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from cluster.local.s3_server import free_port
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
from bench.step_syncs import build, DEFAULTS
from train.engine import to_device
from train.loop import train_step

class Src(TorchDispatchMode):
    def __init__(s): super().__init__(); s.c = collections.Counter()
    def __torch_dispatch__(s, func, types, args=(), kwargs=None):
        fr = [f for f in traceback.extract_stack()[:-1] if "site-packages/deepspeed" in f.filename or "/work/main/" in f.filename or "torch/optim" in f.filename or "torch/nn/utils" in f.filename]
        key = "model/autograd"
        for f in reversed(fr):
            if "timm" in f.filename: continue
            key = f"{f.filename.split('site-packages/')[-1].replace('/work/main/','')}:{f.lineno} {f.name}"
            break
        s.c[(key, func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

base = DEFAULTS + ["model.pretrained="] + sys.argv[2:]
for name in sys.argv[1].split(","):
    step, cfg = build(name, base, None, torch.device("cpu"))
    images = torch.rand(cfg.data.batch_size, 3, cfg.data.image_size, cfg.data.image_size); labels = torch.randint(0, 2, (cfg.data.batch_size,)).float()
    batch = (images, labels) if name == "plain" else to_device(images, labels, step)
    for _ in range(3): train_step(step, *batch, optim=cfg.optim)
    with Src() as s: train_step(step, *batch, optim=cfg.optim)
    tot = sum(s.c.values()); print(f"== {name}: {tot} ops")
    agg = collections.Counter()
    for (k, op), n in s.c.items(): agg[k] += n
    for k, n in agg.most_common(25): print(f"{n:6} {k}  " + ",".join(f"{op}:{m}" for (kk, op), m in s.c.most_common() if kk == k)[:150])
