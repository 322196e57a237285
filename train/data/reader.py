"""Read chosen samples out of tar shards with ranged reads: the train set's byte ranges (from the
shards' indexes, train/data/index.py), one concurrent batch of GETs per call
(train/data/range_reads.py).

Storage failures (after the HTTP client's own retries) are retried here a bounded number of times and then
raised as DataUnavailable: a sample is never set aside because the network or the keys failed.
Only a sample whose own bytes cannot be parsed or decoded is skipped (and named).
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from fsspec.utils import merge_offset_ranges

from data_pipeline import shard_index
from dfdc import storage
from train.data.index import TrainSet
from train.data.order import locate
from train.data.range_reads import range_reads
from train.data.samples import decode_jpeg

log = logging.getLogger(__name__)

class DataUnavailable(RuntimeError):
    """The training data cannot be read: storage kept failing, or many samples in a row were unreadable."""


@dataclass
class Sample:
    key: str
    image: torch.Tensor  # 3 x H x W, uint8
    meta: dict
    url: str


class SampleReader:
    """Fetch samples by id. Counts what it read (bytes, requests) for the read-amplification figures."""

    def __init__(self, train: TrainSet, retries: int, merge_gap: int = 0, client: str = "curl", slowdown_timeout: float = 1800.0):
        self.train, self.retries, self.merge_gap, self.client = train, retries, merge_gap, client
        self.slowdown_timeout = slowdown_timeout
        self.bytes = self.requests = self.throttled = 0
        self._keys: dict[int, list[str]] = {}

    def key_of(self, sample_id: int) -> str:
        """The key of a sample from its shard's index (for samples whose own bytes are unreadable)."""
        shard, i = (int(x[0]) for x in locate(np.array([sample_id]), self.train.counts))
        if shard not in self._keys:
            self._keys[shard] = [s[0] for s in shard_index.read(self.train.urls[shard])]
        return self._keys[shard][int(i)]

    def fetch(self, ids: np.ndarray) -> list[Sample | Exception]:
        """The samples `ids`, in that order; a sample whose bytes cannot be parsed is its exception."""
        raw = self.fetch_raw(ids)
        return [self.parse(int(i), raw[int(i)]) for i in ids]

    def fetch_raw(self, ids: np.ndarray) -> dict[int, bytes]:
        """Each sample's bytes (a piece of tar), by sample id. Samples that lie next to one another
        in a shard (a block of the block order) are read with one GET."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if not ids.size:
            return {}
        shard, _ = locate(ids, self.train.counts)
        starts, ends = self.train.starts[ids], self.train.ends[ids]
        by_sample = np.lexsort((starts, shard))
        paths = [self.train.urls[shard[j]] for j in by_sample]
        merged = merge_offset_ranges(paths, [int(starts[j]) for j in by_sample], [int(ends[j]) for j in by_sample],
                                     max_gap=self.merge_gap, sort=False)
        blobs = self._get(*merged)
        out: dict[int, bytes] = {}
        r = 0
        for j in by_sample:
            url, start, end = self.train.urls[shard[j]], int(starts[j]), int(ends[j])
            while not (merged[0][r] == url and merged[1][r] <= start and end <= merged[2][r]):
                r += 1
            offset = start - merged[1][r]
            out[int(ids[j])] = blobs[r][offset:offset + end - start]
        return out

    def parse(self, sample_id: int, data: bytes) -> Sample | Exception:
        shard, _ = locate(np.array([sample_id]), self.train.counts)
        return _parse(data, self.train.urls[int(shard[0])])

    def _get(self, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
        """The ranges' bytes. Failed ranges are fetched again, only they. Storage failures up to
        `retries` more times, 1, 2, 4, ... s apart; then DataUnavailable names the first. Throttling
        (503 SlowDown, 429: the server asks for fewer requests, as S3 does past a prefix's ~5,500
        GET/s) is no failure: those ranges wait with jittered exponential back-off (a random wait up
        to 0.25, 0.5, 1, ... 16 s) for as long as the server serves anything, and fail only after
        `slowdown_timeout` seconds in which no read got through."""
        reads = range_reads(self.client) if self.client != "s3fs" and paths[0].startswith("s3://") else None
        out: list = [None] * len(paths)
        todo = list(range(len(paths)))
        failures = waits = 0
        served = time.monotonic()
        while True:
            some = [paths[i] for i in todo], [starts[i] for i in todo], [ends[i] for i in todo]
            blobs = reads.cat_ranges(*some) if reads else s3fs_cat_ranges(*some)
            self.requests += len(todo)
            failed = []
            for i, blob in zip(todo, blobs):
                if isinstance(blob, BaseException):
                    failed.append((i, blob))
                else:
                    out[i] = blob
                    self.bytes += len(blob)
                    served = time.monotonic()
            if not failed:
                return out
            todo = [i for i, _ in failed]
            other = [(i, e) for i, e in failed if not _throttled(e)]
            i, exc = other[0] if other else failed[0]
            why = storage.explain(exc, paths[i]) or f"{paths[i]}: {type(exc).__name__}: {exc}"
            if other:
                failures += 1
                if failures > self.retries:
                    raise DataUnavailable(f"{len(other)} of {len(paths)} ranged reads of training shards failed "
                                          f"{self.retries + 1} times (data.read_retries); the first: {why}")
                log.warning("retrying %d failed ranged reads in %d s: %s", len(failed), 2 ** (failures - 1), why)
                time.sleep(2 ** (failures - 1))
                continue
            if time.monotonic() - served > self.slowdown_timeout:
                raise DataUnavailable(f"the storage answered every read with throttling (503 SlowDown or 429) for "
                                      f"{time.monotonic() - served:.0f} s (data.slowdown_timeout_s); the last: {why}")
            self.throttled += len(failed)
            wait = random.uniform(0, min(16.0, 0.25 * 2 ** waits))
            waits = min(waits + 1, 16)
            log.info("storage throttled %d ranged reads; waiting %.2f s", len(failed), wait)
            time.sleep(wait)


def _throttled(exc: BaseException) -> bool:
    """Whether a failed read was the server asking for fewer requests (HTTP 503 or 429, SlowDown)."""
    if getattr(exc, "throttled", False):
        return True
    response = getattr(exc, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    return code in ("SlowDown", "Throttling", "TooManyRequests") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (429, 503)


def s3fs_cat_ranges(uris: list[str], starts: list[int], ends: list[int]) -> list:
    """The ranges through fsspec (s3fs for s3://): `data.range_reads: s3fs`."""
    fs, _ = storage.filesystem(uris[0])
    return fs.cat_ranges([storage.filesystem(u)[1] for u in uris], starts, ends, on_error="return")


def _parse(data: bytes, url: str) -> Sample | Exception:
    """One sample's members (a piece of tar) to its key, decoded image and metadata."""
    try:
        members = {}
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                if m.isfile():
                    key, ext = shard_index.split_name(m.name)
                    members[ext] = tar.extractfile(m).read()
        return Sample(key, decode_jpeg(members["jpg"]), json.loads(members["json"]), url)
    except ImportError:  # a decoder this machine lacks: no sample's fault, and every sample would be skipped
        raise
    except Exception as e:  # noqa: BLE001  the sample's own bytes: tar, JPEG or JSON that does not parse
        return e
