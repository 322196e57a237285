"""Face-crop shards (WebDataset tars, local or s3://) to samples. The training loader and
evaluation both read shards through here, so neither imports the other."""

from __future__ import annotations

import json
from typing import NamedTuple

import torch

from dfdc import storage


def _open_s3(url, mode="rb", bufsize=8192, **_):
    # Ranged reads of 8 MB blocks; s3fs retries throttling, 5xx and dropped connections with back-off.
    return storage.open_input(url)


def register_s3() -> None:
    """Let webdataset open s3:// URLs through s3fs. Per process: DataLoader workers start as fresh
    processes (forkserver), so `worker_init` calls it again in each."""
    from webdataset.gopen import gopen_schemes  # noqa: PLC0415

    gopen_schemes["s3"] = _open_s3


def worker_init(_worker_id: int) -> None:
    register_s3()


def decode_jpeg(data: bytes) -> torch.Tensor:
    """A face crop's JPEG as a 3 x H x W uint8 tensor, by simplejpeg (libjpeg-turbo): the same pixels
    as PIL, 1.8x its speed at 128 px and 1.3x at 380 px on this machine (bench/jpeg_decode.py).
    torchvision's decoder is about as fast, but deprecated since torchvision 0.29. What simplejpeg refuses (it cannot read the
    header of some grayscale JPEGs) goes to PIL, which raises for bytes that are no image."""
    import simplejpeg  # noqa: PLC0415

    try:
        return torch.from_numpy(simplejpeg.decode_jpeg(data, colorspace="RGB")).permute(2, 0, 1)
    except ValueError:
        import io  # noqa: PLC0415

        import numpy as np  # noqa: PLC0415
        from PIL import Image  # noqa: PLC0415

        return torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)


class Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    videos: list[str]
    shards: list[str]  # the shard each sample came from
    unreadable: tuple[int, int] = (0, 0)  # (loader worker, reads it skipped so far)
    keys: list[str] = []  # the samples' keys (the ledger's record)
    position: int = -1  # where this batch starts in the epoch's order (-1: a stream without one)
    skipped: list[str] = []  # keys of this batch's samples whose own bytes could not be read
    read: tuple[int, int] = (0, 0)  # (bytes, requests) fetched from storage for this batch


class Decode:
    """(PIL image, meta JSON, shard URL, key) -> (image tensor, label, video, shard URL, key). A
    class, not a closure: DataLoader workers get the pipeline pickled. `face_margin`: the crop cut
    again around its face box with that margin on every side (data.eval_face_margin), from a crop
    ingested with `crop_margin`."""

    def __init__(self, transform, face_margin: float | None = None, crop_margin: float = 0.3):
        self.transform, self.face_margin, self.crop_margin = transform, face_margin, crop_margin

    def __call__(self, sample):
        image, meta, url, key = sample
        meta = json.loads(meta) if isinstance(meta, (bytes, str)) else meta
        if self.face_margin is not None:
            from train.data.transforms import face_margin_crop  # noqa: PLC0415

            image = face_margin_crop(image, meta["box"], self.crop_margin, (self.face_margin,) * 4)
        return *decode_sample(image, meta, self.transform), url, key


def collate(samples) -> Batch:
    """(image tensor, label, video, shard URL, key) samples to a Batch."""
    images, labels, videos, urls, keys = zip(*samples)
    # A key of None: the second item of a sample that trains as two (SBI's real and pseudo-fake).
    return Batch(torch.stack(images), torch.stack(labels), list(videos), list(urls), keys=[k for k in keys if k is not None])


def decode_sample(image, meta: dict, transform) -> tuple[torch.Tensor, torch.Tensor, str]:
    return transform(image), torch.tensor(float(meta["label"])), meta["video"]
