"""The loader bench's peers (run by bench/loader.py, in .venv-peers): MosaicML Streaming and LitData
on the same JPEG crops, converted to their formats and uploaded to the same S3 server, decoded and
augmented by the project's own functions. Prints one JSON line: conversion seconds and samples/s per
(peer, loader workers, epoch), `--rounds` runs each. Every round starts from an empty local cache, so
epoch 1 downloads and epoch 2 reads the cache, as a peer's users see it.

Usage (from bench/loader.py): .venv-peers/bin/python bench/peer_loaders.py --images DIR --remote s3://bucket/prefix
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import streaming
import torch

from train.data.samples import decode_jpeg
from train.data.transforms import image_transform

# LitData downloads chunks with obstore, whose client it builds without `allow_http`: it refuses the
# local server's http:// endpoint (AWS is https). Allowing plain HTTP here changes nothing else; at
# module level so that spawned DataLoader workers, which import this module, get it too.
import litdata.streaming.downloader as _litdata_downloader  # noqa: E402

_litdata_downloader._OBSTORE_CLIENT_OPTIONS = {**_litdata_downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": "true"}


def timed_epoch(loader) -> float:
    """Samples/s from an epoch's first batch to its last, as bench/loader.py counts."""
    it = iter(loader)
    next(it)
    t, samples = time.perf_counter(), 0
    for _, labels in it:
        samples += len(labels)
    return samples / (time.perf_counter() - t)


class Transform:
    """{'jpg': bytes, 'label': int} -> (image tensor, label): the project's decode and augmentation."""

    def __init__(self, size: int):
        self.transform = image_transform(size, augment=True)

    def __call__(self, item: dict):
        return self.transform(decode_jpeg(item["jpg"])), torch.tensor(float(item["label"]))


def to_mds(images: Path, samples: list[dict], local: str, remote: str) -> None:
    from streaming import MDSWriter  # noqa: PLC0415

    with MDSWriter(out=(local, remote), columns={"jpg": "bytes", "label": "int"}, size_limit=1_000_000) as out:
        for s in samples:
            out.write({"jpg": (images / s["file"]).read_bytes(), "label": s["label"]})


def _litdata_item(arg: tuple[str, int]) -> dict:
    path, label = arg
    return {"jpg": Path(path).read_bytes(), "label": label}


def to_litdata(images: Path, samples: list[dict], local: str, remote: str) -> None:
    """Optimized to a local folder, then uploaded: LitData's own upload first lists the target with
    ListObjectsV2 and reads its `KeyCount`, which rclone's answer lacks (AWS sends it)."""
    import boto3  # noqa: PLC0415
    import litdata  # noqa: PLC0415

    litdata.optimize(fn=_litdata_item, inputs=[(str(images / s["file"]), s["label"]) for s in samples], output_dir=local,
                     chunk_bytes=1_000_000, num_workers=1, verbose=False)
    bucket, prefix = remote.removeprefix("s3://").split("/", 1)
    client = boto3.client("s3")
    for f in sorted(Path(local).iterdir()):
        client.upload_file(str(f), bucket, f"{prefix}/{f.name}")


def storage_options() -> dict:
    return {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}


class MDSImages(streaming.StreamingDataset):
    """MosaicML Streaming's dataset, its items through the project's Transform (at module level:
    DataLoader workers get it pickled)."""

    def __init__(self, transform, **kw):
        super().__init__(**kw)
        self.transform = transform

    def __getitem__(self, idx):
        return self.transform(super().__getitem__(idx))


def streaming_loader(remote: str, cache: str, size: int, batch: int, workers: int):
    ds = MDSImages(Transform(size), remote=remote, local=cache, shuffle=True, batch_size=batch)
    return torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers)


def litdata_loader(remote: str, cache: str, size: int, batch: int, workers: int):
    import litdata  # noqa: PLC0415

    ds = litdata.StreamingDataset(remote, cache_dir=cache, shuffle=True, storage_options=storage_options(),
                                  transform=Transform(size))
    return litdata.StreamingDataLoader(ds, batch_size=batch, num_workers=workers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True, help="a folder of JPEG crops with samples.json")
    ap.add_argument("--remote", required=True, help="s3:// prefix for the converted datasets")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])  # what MosaicML Streaming reads
    images = Path(args.images)
    samples = json.loads((images / "samples.json").read_text())
    converted = {}
    with tempfile.TemporaryDirectory(prefix="dfdc-peers-") as tmp:
        t = time.perf_counter()
        to_mds(images, samples, f"{tmp}/mds-out", f"{args.remote}/mds")
        converted["streaming"] = time.perf_counter() - t
        t = time.perf_counter()
        to_litdata(images, samples, f"{tmp}/litdata-out", f"{args.remote}/litdata")
        converted["litdata"] = time.perf_counter() - t

        from streaming.base.util import clean_stale_shared_memory  # noqa: PLC0415

        rates: dict[tuple[str, int, int], list[float]] = {}
        for r in range(args.rounds):
            for w in (int(x) for x in args.workers.split(",")):
                for name, make in (("streaming", streaming_loader), ("litdata", litdata_loader)):
                    cache = f"{tmp}/cache-{name}-{w}-{r}"
                    clean_stale_shared_memory()
                    loader = make(f"{args.remote}/{name if name == 'litdata' else 'mds'}", cache, args.size, args.batch, w)
                    for epoch in (1, 2):
                        rates.setdefault((name, w, epoch), []).append(timed_epoch(loader))
                    del loader
                    shutil.rmtree(cache, ignore_errors=True)
                print(f"peers: round {r + 1}, {w} workers done", file=sys.stderr)
    print(json.dumps({"converted": converted, "rates": [[n, w, e, rs] for (n, w, e), rs in rates.items()]}))


if __name__ == "__main__":
    main()
