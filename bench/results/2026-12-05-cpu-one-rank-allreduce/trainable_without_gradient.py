import os, sys, glob
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
import torch, torch.distributed as dist
from cluster.local.s3_server import free_port
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
dist.init_process_group("gloo", rank=0, world_size=1)
from dfdc.config import load_config
from train.engine import build_engine, to_device
from train.model import build_model
from train import objective
for c in sorted(glob.glob("/work/main/configs/*.yaml")):
    try:
        cfg = load_config(c, ["model.pretrained=", "data.batch_size=2", "deepspeed.precision=fp32", "deepspeed.zero_stage=0"])
    except Exception as e:
        print(c, "skip", e); continue
    size = cfg.data.image_size if "vit" in cfg.model.name or "clip" in cfg.model.name else 64
    cfg = load_config(c, ["model.pretrained=", "data.batch_size=2", "deepspeed.precision=fp32", "deepspeed.zero_stage=0", f"data.image_size={size}"])
    engine, _ = build_engine(build_model(cfg.model), cfg, world_size=1, total_steps=10)
    x, y = to_device(torch.rand(2, 3, size, size), torch.tensor([0.0, 1.0]), engine)
    logits = engine(x).squeeze(1).float()
    loss = objective.loss(logits, y, engine.module, cfg.optim, None)
    engine.backward(loss)
    none = [n for n, p in engine.module.named_parameters() if p.requires_grad and p.grad is None]
    print(os.path.basename(c), cfg.model.name, "trainable", sum(p.requires_grad for p in engine.module.parameters()), "no grad:", none[:5], len(none), flush=True)
