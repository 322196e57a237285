"""The training loader beside its limit and its peers, side by side in one run: samples/s delivered
as training tensors (the project's JPEG decode and augmentation, batch --batch, --size px crops), one
rank, 1 and 2 loader workers, epoch 1 and epoch 2, on the same face crops (ours: one loader whose
workers live across both epochs, as training runs it):

  blocks, S3   the training loader in its default order (`data.order: blocks`: one ranged GET per
               block of consecutive samples) on shards on a local S3 server (rclone)
  blocks, disk the same loader on a copy of the same shards on local disk: the limit
  perm., S3    the loader with `data.order: permutation` (one ranged GET per sample), on S3
  perm., disk  the same on local disk
  naive        one GET per sample of a JPEG object through boto3, in a torch DataLoader (what users
               write without shards)
  streaming    MosaicML Streaming (MDS shards on the same server, a local cache)   } bench/peer_loaders.py,
  litdata      LitData (optimized chunks on the same server, a local cache)         } in .venv-peers

Rates count the samples after an epoch's first batch, over the time from that batch to the last, so
that starting the loader's worker processes (the same for all) does not swamp short epochs. Peers
and the naive loader build their caches or connections in epoch 1; epoch 2 is where a local cache
shows. The conversion to each peer's format (from JPEG files on local disk, with the upload) is
timed too. Rounds run in turn (--rounds): this machine's runs vary by 10-20%, so the table gives
medians and the spread of the ratio to blocks-on-S3. Blocks are forced to 32 crops, as on a large
dataset (data.streams=2, data.window_blocks=4): with the default 64 streams and windows of 32, a
corpus this small would get blocks of 1 crop (data.block_samples shrinks to what the corpus fills).

Usage: python bench/loader.py [--videos 96] [--size 128] [--batch 8] [--workers 1,2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.progress import track

HERE = Path(__file__).resolve().parent
PEERS_PYTHON = HERE.parent / ".venv-peers" / "bin" / "python"


def timed_epoch(batches) -> float:
    """Samples/s of one epoch, from its first batch to its last (see the module docstring)."""
    it = iter(batches)
    next(it)
    t, samples = time.perf_counter(), 0
    for batch in it:
        samples += len(batch[1])
    return samples / (time.perf_counter() - t)


class NaiveObjects(torch.utils.data.Dataset):
    """One boto3 GET per sample, each JPEG its own object: the loader people write first."""

    def __init__(self, bucket: str, keys: list[str], labels: list[int], size: int):
        from train.data.transforms import image_transform  # noqa: PLC0415

        self.bucket, self.keys, self.labels = bucket, keys, labels
        self.transform = image_transform(size, augment=True)
        self.client = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        import boto3  # noqa: PLC0415

        from train.data.samples import decode_jpeg  # noqa: PLC0415

        if self.client is None:  # one client per worker process
            self.client = boto3.client("s3")
        data = self.client.get_object(Bucket=self.bucket, Key=self.keys[i])["Body"].read()
        return self.transform(decode_jpeg(data)), torch.tensor(float(self.labels[i]))


def ours(train, cfg, epochs: int = 2) -> list[float]:
    """Samples/s of each of `epochs` epochs of the training loader, its loader workers living across
    the epochs as in training (train/data/loader.py train_loader): each epoch timed from its first
    batch to its last, so epoch 1 still holds the workers' set-up (an S3 client each) and later
    epochs do not."""
    from train.data.loader import train_loader  # noqa: PLC0415
    from train.data.order import batches_left  # noqa: PLC0415

    per_epoch = batches_left(train.samples, 0, cfg.batch_size, 1)
    it = iter(train_loader(train, cfg, 0, 0, 0, epochs, 0, 1))
    rates = []
    for _ in range(epochs):
        next(it)
        t, samples = time.perf_counter(), 0
        for _ in range(per_epoch - 1):
            samples += len(next(it).labels)
        rates.append(samples / (time.perf_counter() - t))
    return rates


def export_images(urls: list[str], out: Path) -> list[dict]:
    """Every train sample of the shards as a JPEG file (the bytes the shards hold) and its label."""
    import webdataset as wds  # noqa: PLC0415

    out.mkdir(parents=True)
    samples = []
    for i, s in enumerate(wds.WebDataset(urls, shardshuffle=False, empty_check=False)):
        (out / f"{i}.jpg").write_bytes(s["jpg"])
        samples.append({"file": f"{i}.jpg", "label": int(json.loads(s["json"])["label"])})
    (out / "samples.json").write_text(json.dumps(samples))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=96, help="synthetic videos to ingest (8 crops each)")
    ap.add_argument("--size", type=int, default=128, help="crop size (px)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="loader worker counts, comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dataset", help="an ingested dataset on S3 (with manifest.json) instead of a synthetic one")
    args = ap.parse_args()
    if not PEERS_PYTHON.exists():
        sys.exit(f"{PEERS_PYTHON} is missing: `make bench` makes it (uv sync --project bench/peers)")

    from train_step import dataset  # noqa: PLC0415  (bench/: the same synthetic corpus)

    from data_pipeline import manifest as mf  # noqa: PLC0415
    from data_pipeline import shard_index  # noqa: PLC0415
    from dfdc import storage  # noqa: PLC0415
    from dfdc.config import load_config  # noqa: PLC0415
    from train.data.index import train_set_of  # noqa: PLC0415

    cfg = load_config(None, [
        f"data.image_size={args.size}", f"data.batch_size={args.batch}",
        f"synth.videos={args.videos}", "ingest.frames_per_video=8", "ingest.faces_per_frame=1", f"ingest.crop_size={args.size}",
        "ingest.videos_per_task=4", "ingest.val_fraction=0", "ingest.shard_bytes=1000000",
    ])
    workers = [int(w) for w in args.workers.split(",")]
    with dataset(args, cfg) as root, tempfile.TemporaryDirectory(prefix="dfdc-loader-bench-") as tmp:
        shard_index.ensure(mf.shard_urls(root, mf.load(root), "train"), log=lambda *_: None)
        disk = f"{tmp}/faces"
        fs, path = storage.filesystem(root)
        fs.get(path.rstrip("/") + "/", disk + "/", recursive=True)
        on_s3, on_disk = train_set_of(root), train_set_of(disk)
        samples = export_images(mf.shard_urls(disk, mf.load(disk), "train"), Path(tmp) / "images")
        bucket = root.removeprefix("s3://").split("/", 1)[0]
        t = time.perf_counter()
        for s in samples:
            storage.write_bytes(f"s3://{bucket}/naive/{s['file']}", (Path(tmp) / "images" / s["file"]).read_bytes())
        converted = {"naive": time.perf_counter() - t}
        naive = NaiveObjects(bucket, [f"naive/{s['file']}" for s in samples], [s["label"] for s in samples], args.size)

        rates: dict[tuple[str, int, int], list[float]] = {}
        for _ in track(range(args.rounds), description="ours, naive"):
            for w in workers:
                for order, short in (("blocks", "blocks"), ("permutation", "perm.")):
                    data_cfg = dataclasses.replace(cfg.data, num_workers=w, order=order, streams=2, window_blocks=4)
                    for where, train in (("S3", on_s3), ("disk", on_disk)):
                        for epoch, rate in enumerate(ours(train, data_cfg), 1):
                            rates.setdefault((f"{short}, {where}", w, epoch), []).append(rate)
                loader = torch.utils.data.DataLoader(naive, batch_size=args.batch, shuffle=True, num_workers=w,
                                                     multiprocessing_context="forkserver")
                for epoch in (1, 2):  # a DataLoader restarts its workers each epoch: new clients, as in epoch 1
                    rates.setdefault(("naive", w, epoch), []).append(timed_epoch(loader))
        peers = subprocess.run([str(PEERS_PYTHON), str(HERE / "peer_loaders.py"), "--images", f"{tmp}/images",
                                "--remote", f"s3://{bucket}/peers", "--size", str(args.size), "--batch", str(args.batch),
                                "--workers", args.workers, "--rounds", str(args.rounds)],
                               stdout=subprocess.PIPE, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(HERE.parent)))
        got = json.loads(peers.stdout.strip().splitlines()[-1])
        converted |= got["converted"]
        for name, w, epoch, rs in got["rates"]:
            rates[name, w, epoch] = rs

    print(f"{len(samples)} crops at {args.size} px ({on_s3.bytes / 1e6:.1f} MB), batch {args.batch}, 1 rank, "
          f"{os.cpu_count()} cores, {args.rounds} rounds; samples/s after each epoch's first batch")
    names = ["blocks, S3", "blocks, disk", "perm., S3", "perm., disk", "naive", "streaming", "litdata"]
    print(f"{'loader':12} {'workers':>7} {'epoch':>5} {'samples/s':>10} {'vs blocks, S3':>14} {'by round':>12}")
    for (name, w, epoch), rs in sorted(rates.items(), key=lambda kv: (kv[0][1], kv[0][2], names.index(kv[0][0]))):
        base = rates["blocks, S3", w, epoch]
        pairs = [base_r / r for r, base_r in zip(rs, base)]
        print(f"{name:12} {w:7d} {epoch:5d} {statistics.median(rs):10.1f} {statistics.median(base) / statistics.median(rs):13.2f}x "
              f"{min(pairs):7.2f}-{max(pairs):.2f}x")
    for w in workers:
        for epoch in (1, 2):
            s3, disk = (statistics.median(rates[f"blocks, {where}", w, epoch]) for where in ("S3", "disk"))
            print(f"blocks on S3 / blocks on disk, {w} workers, epoch {epoch}: {s3 / disk:.2f}x (target >= 1.0x)")
    print("'vs blocks, S3': how many times faster ours in blocks on S3 is; conversion from JPEG files on disk to each format on S3, "
          "upload included: " + ", ".join(f"{k} {v:.1f} s" for k, v in converted.items()))
    print(json.dumps({"crops": len(samples), "size": args.size, "batch": args.batch, "converted_s": converted,
                      "rates": [[n, w, e, [round(r, 1) for r in rs]] for (n, w, e), rs in rates.items()]}))


if __name__ == "__main__":
    main()
