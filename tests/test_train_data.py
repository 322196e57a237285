"""The training loader on the S3 server: exact batch counts, and bad shards skipped, not fatal."""

import io
import json
import logging

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dfdc import storage
from dfdc.config import DataConfig
from train.data import train_loader, val_loader


def write_shard(uri: str, n: int, label: int, start: int = 0) -> None:
    buf = io.BytesIO()
    with wds.TarWriter(buf) as w:
        for i in range(start, start + n):
            img = Image.fromarray((np.random.default_rng(i).random((32, 32, 3)) * 255).astype(np.uint8))
            jpg = io.BytesIO()
            img.save(jpg, format="JPEG")
            w.write({"__key__": f"s{i:05d}", "jpg": jpg.getvalue(), "json": json.dumps({"label": label, "video": f"v{i // 4}"}).encode()})
    storage.write_bytes(uri, buf.getvalue())


@pytest.fixture(scope="module")
def shards(s3_server):
    # Written before any loader forks its workers: a known hang (see docs/training.md) stalls the
    # parent's next S3 request after forked loader workers have read from S3.
    root = "s3://test/loader"
    sizes = {"a.tar": 5, "b.tar": 17, "c.tar": 40, "good.tar": 12}
    for i, (name, n) in enumerate(sizes.items()):
        write_shard(f"{root}/{name}", n, i % 2, start=100 * i)
    storage.write_bytes(f"{root}/bad.tar", b"this is not a tar file" * 100)
    return root


def test_unreadable_shard_is_reported_and_skipped(shards, caplog):
    good, bad = f"{shards}/good.tar", f"{shards}/bad.tar"
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=0, shuffle_buffer=4, augment=False)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        batches = list(train_loader([good, bad], cfg, batches=5, seed=0, epoch=0, rank=0))
    assert len(batches) == 5
    assert any("skipping unreadable data" in r.message for r in caplog.records)
    # Validation reads every readable sample once, across ranks, and reports the rest.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.data"):
        seen = [v for r in (0, 1) for _, _, videos in val_loader([good, bad], cfg, r, 2) for v in videos]
    assert len(seen) == 12
    assert any("skipping unreadable data" in r.message for r in caplog.records)


def test_exact_batches_whatever_the_shard_sizes(shards):
    urls = [f"{shards}/a.tar", f"{shards}/b.tar", f"{shards}/c.tar"]
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=2, shuffle_buffer=10)
    for rank in (0, 1):
        batches = list(train_loader(urls, cfg, batches=7, seed=0, epoch=0, rank=rank))
        assert len(batches) == 7
        images, labels, videos = batches[0]
        assert images.shape == (4, 3, 24, 24) and labels.shape == (4,) and len(videos) == 4



def test_transient_s3_errors_are_retried(shards, s3_server, monkeypatch):
    """Through a proxy that answers 503 SlowDown to one shard read in three and drops the
    connection of another: every batch still arrives, with every sample of the shards read."""
    import s3fs

    from tests.flaky_proxy import FlakyProxy, every_third_read_fails

    urls = [f"{shards}/a.tar", f"{shards}/b.tar", f"{shards}/good.tar"]
    cfg = DataConfig(image_size=24, batch_size=1, num_workers=0, shuffle_buffer=1, augment=False)
    with FlakyProxy(s3_server.endpoint, every_third_read_fails(".tar")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        s3fs.S3FileSystem.clear_instance_cache()  # clients made before keep the old endpoint
        try:
            seen = [v for r in (0, 1) for _, _, videos in val_loader(urls, cfg, r, 2) for v in videos]
        finally:
            monkeypatch.undo()
            s3fs.S3FileSystem.clear_instance_cache()
    assert proxy.injected["503"] >= 1 and proxy.injected["reset"] >= 1, proxy.injected
    assert len(seen) == 5 + 17 + 12
