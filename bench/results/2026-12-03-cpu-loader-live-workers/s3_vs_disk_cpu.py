"""Where blocks-on-S3 loses to blocks-on-disk: CPU seconds of this process (and its loader workers)
and of the rclone server, per epoch, for the same loader on S3 and on disk."""
import dataclasses, os, sys, tempfile, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]  # run from the repository: .venv/bin/python bench/results/.../s3_vs_disk_cpu.py
sys.path.insert(0, str(ROOT / "bench")); sys.path.insert(0, str(ROOT))
import argparse

def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in parts[11:15]) / os.sysconf("SC_CLK_TCK")  # self + reaped children

def tree_cpu(pid):
    # this process and its children (alive ones, via /proc children lists)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu(p)
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return total

from train_step import dataset
from loader import timed_epoch, ours
from data_pipeline import manifest as mf, shard_index
from dfdc import storage
from dfdc.config import load_config
from train.data.index import train_set_of
from cluster.local.s3_server import temporary_server
import cluster.local.s3_server as s3mod

def main():
    args = argparse.Namespace(dataset=None)
    cfg = load_config(None, ["data.image_size=128", "data.batch_size=8", "synth.videos=96", "ingest.frames_per_video=8",
        "ingest.faces_per_frame=1", "ingest.crop_size=128", "ingest.videos_per_task=4", "ingest.val_fraction=0", "ingest.shard_bytes=1000000"])
    servers = []
    orig = s3mod.start_s3_server
    def spy(*a, **k):
        s = orig(*a, **k); servers.append(s); return s
    s3mod.start_s3_server = spy
    with dataset(args, cfg) as root, tempfile.TemporaryDirectory() as tmp:
        shard_index.ensure(mf.shard_urls(root, mf.load(root), "train"), log=lambda *_: None)
        disk = f"{tmp}/faces"
        fs, path = storage.filesystem(root)
        fs.get(path.rstrip("/") + "/", disk + "/", recursive=True)
        on_s3, on_disk = train_set_of(root), train_set_of(disk)
        rpid = servers[0].pid
        for w in (0, 1, 2):
            for rnd in range(3):
                for where, train in (("S3", on_s3), ("disk", on_disk)):
                    data_cfg = dataclasses.replace(cfg.data, num_workers=w, order="blocks", streams=2, window_blocks=4)
                    c0, r0, t0 = tree_cpu(os.getpid()), cpu(rpid), time.perf_counter()
                    # tree_cpu misses exited workers: add RUSAGE_CHILDREN
                    rate = timed_epoch(ours(train, data_cfg, 1))
                    wall = time.perf_counter() - t0
                    own = tree_cpu(os.getpid()) - c0
                    print(f"workers {w} round {rnd} {where:4}: {rate:6.1f} samples/s, wall {wall:5.2f} s, loader CPU {own:5.2f} s, "
                          f"S3 server CPU {cpu(rpid) - r0:5.2f} s, machine busy {(own + cpu(rpid) - r0) / wall / os.cpu_count():.0%}", flush=True)

if __name__ == "__main__":
    main()
