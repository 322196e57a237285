"""Stream face-crop shards from S3 (or disk) into batches, without copying the dataset first.

Training: every rank draws shards at random with replacement from the manifest's train shards
(webdataset's resampled mode, seeded by run seed, epoch, rank and worker) and stops after exactly
`batches` batches, so every rank runs the same number of steps and none waits at the end of an epoch
(the DDP hang with uneven shards cannot happen). Validation reads each val shard once, split across
ranks; the loop in `loop.py` keeps ranks in step when their shares differ.
"""

from __future__ import annotations

import json
import logging
import random

import torch
import webdataset as wds
from torchvision.transforms import v2

from dfdc import storage
from dfdc.config import DataConfig

log = logging.getLogger(__name__)


def register_s3() -> None:
    """Let webdataset open s3:// URLs through s3fs (s3fs retries transient errors with back-off)."""
    from webdataset.gopen import gopen_schemes  # noqa: PLC0415

    def gopen_s3(url, mode="rb", bufsize=8192, **_):
        fs, path = storage.filesystem(url)
        return fs.open(path, mode, block_size=8 * 1024 * 1024)

    gopen_schemes["s3"] = gopen_s3


def report_and_continue(exn: Exception) -> bool:
    """A shard or sample that cannot be read is reported and skipped; the run goes on."""
    log.warning("skipping unreadable data: %r", exn)
    return True


def transforms(cfg: DataConfig, train: bool) -> v2.Compose:
    """Augmentations fit for deepfake detection: they vary what compression, scale, blur, noise and
    colour do to a face without hiding blending artifacts entirely."""
    size = cfg.image_size
    if not (train and cfg.augment):
        return v2.Compose([v2.PILToTensor(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])
    return v2.Compose([
        v2.PILToTensor(),
        v2.RandomApply([v2.JPEG((40, 95))], p=0.3),
        v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
        v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.2, 0.02)], p=0.5),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.GaussianNoise(sigma=0.02)], p=0.2),
        v2.RandomErasing(p=0.2, scale=(0.02, 0.1)),  # cutout
    ])


def _sample(transform):
    def f(sample):
        image, meta = sample
        meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
        return transform(image), torch.tensor(float(meta["label"])), meta["video"]

    return f


def _collate(samples):
    images, labels, videos = zip(*samples)
    return torch.stack(images), torch.stack(labels), list(videos)


def train_loader(urls: list[str], cfg: DataConfig, batches: int, seed: int, epoch: int, rank: int) -> wds.WebLoader:
    """Exactly `batches` batches of `cfg.batch_size` for this rank and epoch."""
    register_s3()
    base = (seed * 1_000_003 + epoch) * 10_007 + rank

    def worker_seed():
        info = torch.utils.data.get_worker_info()
        return base * 101 + (info.id if info else 0)

    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=base, worker_seed=worker_seed, deterministic=True),
        wds.tarfile_to_samples(handler=report_and_continue),
        wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100), rng=random.Random(base)),
        wds.decode("pil", handler=report_and_continue),
        wds.to_tuple("jpg", "json", handler=report_and_continue),
        wds.map(_sample(transforms(cfg, train=True)), handler=report_and_continue),
        wds.batched(cfg.batch_size, collation_fn=_collate, partial=False),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=cfg.num_workers, persistent_workers=False)
    # Across the DataLoader workers, stop after exactly `batches` batches.
    return loader.with_epoch(batches)


def val_loader(urls: list[str], cfg: DataConfig, rank: int, world: int) -> wds.WebLoader:
    """This rank's share of the val shards (every sample once across ranks), in order."""
    register_s3()
    mine = urls[rank::world]
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(mine),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=report_and_continue),
        wds.decode("pil", handler=report_and_continue),
        wds.to_tuple("jpg", "json", handler=report_and_continue),
        wds.map(_sample(transforms(cfg, train=False)), handler=report_and_continue),
        wds.batched(cfg.batch_size, collation_fn=_collate, partial=True),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=min(cfg.num_workers, max(1, len(mine))))
