"""The training loader on the S3 server: exact batch counts, bad shards skipped and counted, a
dataset that cannot be read fails the step, loader workers that leave this process's S3 client
usable."""

import dataclasses
import io
import json
import logging

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dfdc import storage
from dfdc.config import DataConfig
from data_pipeline import shard_index
from train.data.loader import DataUnavailable, epoch_loader, resampled_loader, train_loader, unreadable_total, val_loader
from train.data.index import load_train_set


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
    root = "s3://test/loader"
    sizes = {"a.tar": 5, "b.tar": 17, "c.tar": 40, "good.tar": 12}
    for i, (name, n) in enumerate(sizes.items()):
        write_shard(f"{root}/{name}", n, i % 2, start=100 * i)
    storage.write_bytes(f"{root}/bad.tar", b"this is not a tar file" * 100)
    return root


def test_unreadable_shard_is_reported_counted_and_skipped(shards, caplog):
    good, bad = f"{shards}/good.tar", f"{shards}/bad.tar"
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=0, shuffle_buffer=4, augment=False)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        batches = list(resampled_loader([good, bad], cfg, batches=5, seed=0, epoch=0, rank=0))
    assert len(batches) == 5
    warnings = [r for r in caplog.records if "skipping unreadable data" in r.message]
    assert warnings and "bad.tar" in warnings[0].getMessage()
    # Each batch carries how many reads its loader worker skipped so far: the count reaches the rank.
    seen: dict[int, int] = {}
    counts = [unreadable_total(seen, b) for b in batches]
    assert counts == sorted(counts) and counts[-1] == len(warnings)
    # Validation reads every readable sample once, across ranks, and says which shard each came from
    # (the loop counts them against the manifest).
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.data"):
        batches = [b for r in (0, 1) for b in val_loader([good, bad], cfg, r, 2)]
    assert sum(len(b.videos) for b in batches) == 12 and {s for b in batches for s in b.shards} == {good}
    assert any("skipping unreadable data" in r.message for r in caplog.records)
    # More ranks than val shards: the ranks without one get no batches (not an error).
    assert [len(list(val_loader([good], cfg, r, 3))) for r in range(3)] == [3, 0, 0]


def test_exact_batches_whatever_the_shard_sizes(shards):
    urls = [f"{shards}/a.tar", f"{shards}/b.tar", f"{shards}/c.tar"]
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=2, shuffle_buffer=10)
    for rank in (0, 1):
        batches = list(resampled_loader(urls, cfg, batches=7, seed=0, epoch=0, rank=rank))
        assert len(batches) == 7
        b = batches[0]
        assert b.images.shape == (4, 3, 24, 24) and b.labels.shape == (4,) and len(b.videos) == len(b.shards) == 4


@pytest.mark.timeout(180)
def test_a_dataset_whose_shards_are_all_gone_fails_the_step(shards):
    """Resampled shards never run out: without a bound, every rank would spin on warnings forever.
    Through two loader workers (fork server), the rank gets the workers' error."""
    gone = [f"{shards}/deleted-{i}.tar" for i in range(3)]
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=2, max_failed_reads=5)
    with pytest.raises(DataUnavailable, match=r"5 reads of training shards failed in a row .*deleted-\d\.tar: not found"):
        next(iter(resampled_loader(gone, cfg, batches=3, seed=0, epoch=0, rank=0)))


def test_samples_that_never_decode_fail_the_step_too(shards):
    """Shards that read fine but whose every sample fails to decode count as failed reads as well."""
    buf = io.BytesIO()
    with wds.TarWriter(buf) as w:
        for i in range(20):
            w.write({"__key__": f"x{i:03d}", "jpg": b"not a jpeg", "json": json.dumps({"label": 0, "video": "v"}).encode()})
    storage.write_bytes(f"{shards}/undecodable.tar", buf.getvalue())
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=0, max_failed_reads=5)
    with pytest.raises(DataUnavailable, match="5 reads of training shards failed in a row"):
        next(iter(resampled_loader([f"{shards}/undecodable.tar"], cfg, batches=3, seed=0, epoch=0, rank=0)))


@pytest.mark.timeout(120)
def test_this_process_writes_to_s3_after_loader_workers_read_it(shards):
    """Loader workers used to be forked from a process that had used s3fs, and a later S3 write in
    that process hung (docs/training.md had it as a known issue). They start from a fork server now."""
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=2)
    assert len(list(resampled_loader([f"{shards}/c.tar"], cfg, batches=3, seed=0, epoch=0, rank=0))) == 3
    storage.write_bytes(f"{shards}/written-after.txt", b"done")
    assert storage.read_bytes(f"{shards}/written-after.txt") == b"done"


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
            seen = [v for r in (0, 1) for b in val_loader(urls, cfg, r, 2) for v in b.videos]
        finally:
            monkeypatch.undo()
            s3fs.S3FileSystem.clear_instance_cache()
    assert proxy.injected["503"] >= 1 and proxy.injected["reset"] >= 1, proxy.injected
    assert len(seen) == 5 + 17 + 12


def _epoch(train, cfg, world, position=0, batches=None, epoch=0):
    """Every rank's batches of one attempt: {rank: [Batch, ...]}."""
    from train.data.order import batches_left

    n = batches_left(train.samples, position, cfg.batch_size, world) if batches is None else batches
    return {r: list(epoch_loader(train, cfg, 3, epoch, position, n, r, world)) for r in range(world)}


def test_an_epoch_is_every_sample_once_in_the_same_order_for_any_world_size(shards):
    """Uneven shards (5, 17 and 40 samples), 2 loader workers: every rank gets the same number of
    batches, consecutive samples come from several shards, and an epoch run as 2 ranks for 3 global
    batches then 3 ranks to the end takes the same samples, in the same order, as 1 rank alone."""
    urls = [f"{shards}/a.tar", f"{shards}/b.tar", f"{shards}/c.tar"]
    assert shard_index.ensure(urls, log=lambda *_: None) == 3  # shards written without an index get one
    train = load_train_set(urls, [5, 17, 40])
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=2, augment=False)

    alone = [k for b in _epoch(train, cfg, 1)[0] for k in b.keys]
    assert len(alone) == 60 and len(set(alone)) == 60  # 62 samples: the last 2 (< one batch) wait for the next epoch

    first = _epoch(train, cfg, 2, batches=3)
    rest = _epoch(train, cfg, 3, position=24)
    assert [len(v) for v in first.values()] == [3, 3] and [len(v) for v in rest.values()] == [3, 3, 3]
    by_position = {b.position: b.keys for batches in (*first.values(), *rest.values()) for b in batches}
    assert sorted(by_position) == list(range(0, 60, 4))
    assert [k for p in sorted(by_position) for k in by_position[p]] == alone[:60]
    assert len({k[:4] for k in alone[:8]}) >= 2, "a batch mixes shards"  # keys s000.., s001.., s002.. by shard
    # Ranged reads fetch about the samples' own bytes (little read amplification).
    fetched = sum(b.read[0] for batches in (*first.values(), *rest.values()) for b in batches)
    assert train.bytes * 60 / 62 * 0.9 < fetched < train.bytes * 1.5
    assert _epoch(train, cfg, 1, epoch=1)[0][0].keys != alone[:4], "each epoch has its own order"
    # Training reads every epoch left from one stream, whose loader workers live across epochs: the
    # same batches, epoch after epoch, from a position in the first.
    for rank in (0, 1):
        stream = [(b.position, b.keys) for b in train_loader(train, cfg, 3, 0, 8, 2, rank, 2)]
        by_epoch = [(b.position, b.keys) for e, p in ((0, 8), (1, 0)) for b in _epoch(train, cfg, 2, position=p, epoch=e)[rank]]
        assert stream == by_epoch and len(stream) == 6 + 7  # (62 - 8) // 8, then 62 // 8


def test_epochs_shorter_than_a_pass_train_each_sample_once_a_pass_from_one_stream(shards):
    """data.samples_per_epoch: the loader's stream over two passes of 3 epochs each (62 samples,
    ~20 an epoch) on 2 ranks, from a position in the first epoch, is the epochs one by one; every
    pass trains each sample at most once, leaving fewer than a global batch an epoch."""
    from train.data.loader import sizes_of_epochs

    urls = [f"{shards}/a.tar", f"{shards}/b.tar", f"{shards}/c.tar"]
    shard_index.ensure(urls, log=lambda *_: None)
    train = load_train_set(urls, [5, 17, 40])
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=2, augment=False, samples_per_epoch=20)
    sizes = sizes_of_epochs(train, cfg, 3, range(6))
    assert sum(sizes[:3]) == sum(sizes[3:]) == 62 and all(18 <= n <= 23 for n in sizes), sizes
    streams = {rank: [(b.position, b.keys) for b in train_loader(train, cfg, 3, 0, 8, 6, rank, 2)] for rank in (0, 1)}
    for rank in (0, 1):
        by_epoch = [(b.position, b.keys) for e in range(6) for b in _epoch(train, cfg, 2, position=8 if e == 0 else 0, epoch=e,
                                                                          batches=(sizes[e] - (8 if e == 0 else 0)) // 8)[rank]]
        assert streams[rank] == by_epoch
    for first in (0, 3):
        once = [k for e in range(first, first + 3) for batches in _epoch(train, cfg, 2, epoch=e, batches=sizes[e] // 8).values()
                for b in batches for k in b.keys]
        assert len(set(once)) == len(once) > 62 - 3 * 8


def test_a_sample_whose_bytes_are_bad_is_skipped_and_named_a_missing_shard_fails_the_step(shards):
    buf = io.BytesIO()
    with wds.TarWriter(buf) as w:
        for i in range(8):
            jpg = io.BytesIO()
            Image.new("RGB", (16, 16)).save(jpg, format="JPEG")
            w.write({"__key__": f"m{i:03d}", "jpg": b"not a jpeg" if i == 5 else jpg.getvalue(),
                     "json": json.dumps({"label": 0, "video": "v"}).encode()})
    storage.write_bytes(f"{shards}/mixed.tar", buf.getvalue())
    shard_index.ensure([f"{shards}/mixed.tar"], log=lambda *_: None)
    train = load_train_set([f"{shards}/mixed.tar"], [8])
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=0, augment=False)
    batches = list(epoch_loader(train, cfg, 0, 0, 0, 2, 0, 1))
    assert sorted(k for b in batches for k in b.keys) == [f"m{i:03d}" for i in range(8) if i != 5]
    assert [k for b in batches for k in b.skipped] == ["m005"]

    storage.write_bytes(f"{shards}/doomed.tar", storage.read_bytes(f"{shards}/good.tar"))
    shard_index.ensure([f"{shards}/doomed.tar"], log=lambda *_: None)
    train = load_train_set([f"{shards}/doomed.tar"], [12])
    storage.remove(f"{shards}/doomed.tar")  # storage, not content: retried, then the step fails; nothing is skipped
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=0, read_retries=1)
    with pytest.raises(DataUnavailable, match=r"failed 2 times \(data.read_retries\).*doomed\.tar: not found"):
        next(iter(epoch_loader(train, cfg, 0, 0, 0, 3, 0, 1)))


@pytest.mark.parametrize("client", ["curl", "presigned"])
def test_ranged_reads_retry_s3_errors_and_never_show_the_signed_url(client, shards, s3_server, monkeypatch, caplog):
    """The epoch loader's ranged GETs (presigned URLs over libcurl or urllib3, train/data/range_reads.py)
    through a proxy that answers 503 SlowDown to one read in three and drops the connection of
    another: every sample arrives. With keys the server refuses, and with nothing listening, the step
    fails naming the shard and the cause, and no message holds the presigned URL's signature or credential."""
    import s3fs

    from tests.flaky_proxy import FlakyProxy, every_third_read_fails

    urls = [f"{shards}/a.tar", f"{shards}/b.tar"]
    shard_index.ensure(urls, log=lambda *_: None)
    train = load_train_set(urls, [5, 17])

    def epoch(read_retries=4, client=client):
        cfg = DataConfig(image_size=24, batch_size=2, num_workers=0, augment=False, read_retries=read_retries,
                         range_reads=client)
        return [k for b in epoch_loader(train, cfg, 0, 0, 0, 11, 0, 1) for k in b.keys]

    def use(**env):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()  # clients made before keep the old settings

    caplog.set_level(logging.DEBUG, logger="urllib3")  # urllib3 logs request URLs at DEBUG: scrubbed
    assert epoch() == epoch(client="s3fs"), "data.range_reads: s3fs reads the same samples"
    try:
        with FlakyProxy(s3_server.endpoint, every_third_read_fails(".tar")) as proxy:
            use(AWS_ENDPOINT_URL=proxy.endpoint)
            assert len(set(epoch())) == 22
        assert proxy.injected["503"] >= 2 and proxy.injected["reset"] >= 2, proxy.injected

        use(AWS_ENDPOINT_URL=s3_server.endpoint, AWS_SECRET_ACCESS_KEY="not-the-secret")
        with pytest.raises(DataUnavailable, match=r"a\.tar|b\.tar") as refused:
            epoch(read_retries=1)
        assert "credentials refused" in str(refused.value)

        from cluster.local.s3_server import free_port

        use(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
        with pytest.raises(DataUnavailable) as nobody:
            epoch(read_retries=1)
        assert "connection refused" in str(nobody.value)
        for text in (str(refused.value), str(nobody.value), *(r.getMessage() for r in caplog.records)):
            assert "X-Amz-" not in text and s3_server.key not in text, text  # the query of a presigned URL
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.timeout(300)
def test_reads_past_the_request_rate_back_off_and_every_sample_arrives_once(shards, s3_server, monkeypatch):
    """Through a proxy that answers 503 SlowDown past 5 GETs a second (S3's per-prefix cap, scaled
    down), an epoch read one GET a sample (the permutation order, 2 ranks) gets every sample exactly
    once: throttled reads wait with jittered back-off, neither lost, repeated nor counted as failures
    (data.read_retries=0 would end the step at the first failure). A server that throttles
    everything fails the step once data.slowdown_timeout_s passes without a read getting through."""
    import s3fs

    from tests.flaky_proxy import FlakyProxy, capped

    urls = [f"{shards}/a.tar", f"{shards}/b.tar", f"{shards}/c.tar"]
    shard_index.ensure(urls, log=lambda *_: None)
    train = load_train_set(urls, [5, 17, 40])
    cfg = DataConfig(image_size=24, batch_size=4, num_workers=0, augment=False, order="permutation", read_retries=0)
    try:
        with FlakyProxy(s3_server.endpoint, capped(5)) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
            s3fs.S3FileSystem.clear_instance_cache()
            keys = [k for batches in _epoch(train, cfg, 2).values() for b in batches for k in b.keys]
        assert proxy.injected["503"] > 0 and len(keys) == len(set(keys)) == 56, (proxy.injected, len(keys))
        with FlakyProxy(s3_server.endpoint, capped(0)) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
            s3fs.S3FileSystem.clear_instance_cache()
            with pytest.raises(DataUnavailable, match=r"throttling \(503 SlowDown or 429\) for [0-9]+ s \(data.slowdown_timeout_s\)"):
                _epoch(train, dataclasses.replace(cfg, slowdown_timeout_s=2.0), 1)
    finally:
        monkeypatch.undo()
        s3fs.S3FileSystem.clear_instance_cache()


def test_the_loaders_jpeg_decoder_gives_pils_pixels():
    """train.data.samples.decode_jpeg (simplejpeg, faster) against PIL on crops as ingest encodes them, a
    grayscale JPEG (simplejpeg refuses its header: PIL decodes it) and bytes that are not a JPEG."""
    import io

    import numpy as np
    from PIL import Image

    from data_pipeline.crops import encode_jpeg
    from train.data.samples import decode_jpeg

    rng = np.random.default_rng(3)
    for size, quality in [(64, 95), (380, 90), (97, 50)]:
        data = encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), quality)
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
        got = decode_jpeg(data)
        assert str(got.dtype) == "torch.uint8" and tuple(got.shape) == (3, size, size)
        assert np.array_equal(got.numpy(), pil)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 40), dtype=np.uint8), mode="L").save(buf, format="JPEG")
    got = decode_jpeg(buf.getvalue())
    assert tuple(got.shape) == (3, 32, 40)
    assert np.array_equal(got.numpy(), np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).transpose(2, 0, 1))
    with pytest.raises(OSError):  # PIL's UnidentifiedImageError: the loader skips and names such a sample
        decode_jpeg(b"not a jpeg at all")


def test_a_decoder_missing_from_the_environment_fails_the_read_instead_of_skipping_samples(monkeypatch):
    """Only a sample's own bytes may make the loader skip it. A decoder the machine lacks (simplejpeg
    was missing from a GPU machine's packages: every sample was skipped as unreadable until
    data.max_failed_reads ended the run) is the environment's fault: it raises at the first sample."""
    import io
    import tarfile

    from data_pipeline.crops import encode_jpeg
    from train.data.reader import _parse

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("k.jpg", encode_jpeg(np.zeros((16, 16, 3), np.uint8), 90)), ("k.json", b'{"label": 0}')]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert _parse(buf.getvalue(), "s3://b/x.tar").key == "k"
    assert isinstance(_parse(b"not a tar", "s3://b/x.tar"), Exception)  # the sample's own bytes: skipped, named
    monkeypatch.setitem(__import__("sys").modules, "simplejpeg", None)  # `import simplejpeg` now raises ImportError
    with pytest.raises(ImportError):
        _parse(buf.getvalue(), "s3://b/x.tar")


def test_the_curl_client_answers_several_threads_at_once(shards):
    """One CurlRangeReads per process, shared by whatever thread fetches: concurrent calls each get
    their own bytes (a curl handle is not for two threads; the client serialises calls)."""
    from concurrent.futures import ThreadPoolExecutor

    from train.data.range_reads import CurlRangeReads

    url = f"{shards}/a.tar"
    data = storage.read_bytes(url)
    spans = [(k, min(len(data), k + 700)) for k in range(0, len(data) - 1, max(1, len(data) // 40))]
    reads = CurlRangeReads()

    def one(_):
        return reads.cat_ranges([url] * len(spans), [a for a, _ in spans], [b for _, b in spans])

    with ThreadPoolExecutor(4) as pool:
        for got in pool.map(one, range(8)):
            assert got == [data[a:b] for a, b in spans]
