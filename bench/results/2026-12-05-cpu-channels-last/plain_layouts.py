"""Ad-hoc, kept with its log: a plain PyTorch step (fp32, fused AdamW, BCE) with NCHW inputs,
channels-last inputs, and channels-last inputs and weights; median ms of 6 steps after 2, two
rounds. Run: .venv/bin/python bench/results/2026-12-05-cpu-channels-last/plain_layouts.py"""
import time, torch, timm, statistics
torch.manual_seed(0)
def run(name, size, batch, xcl, wcl, steps=6):
    m = timm.create_model(name, num_classes=1)
    if wcl: m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), fused=True)
    x = torch.rand(batch, 3, size, size); y = torch.rand(batch)
    if xcl: x = x.contiguous(memory_format=torch.channels_last)
    def step():
        opt.zero_grad(); torch.nn.functional.binary_cross_entropy_with_logits(m(x).squeeze(1), y).backward(); opt.step()
    for _ in range(2): step()
    ts=[]
    for _ in range(steps):
        t=time.perf_counter(); step(); ts.append(time.perf_counter()-t)
    return statistics.median(ts)*1e3
for name,size,batch in [("efficientnet_b0",128,8),("efficientnet_b4",224,4)]:
    for r in range(2):
        print(name, size, batch, {k: round(run(name,size,batch,*v),1) for k,v in {"nchw":(0,0),"cl-in":(1,0),"cl-both":(1,1)}.items()}, flush=True)
