"""WebDataset tar shards: written to a local temporary file, uploaded whole when full, then their
index of sample byte ranges (shard_index.py).

A shard therefore appears at its final key only complete (an S3 PUT is atomic; on local disk we
rename). Names are fixed by the unit and a counter, so a redone unit rewrites the same keys.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import webdataset as wds

from dfdc import storage
from data_pipeline import shard_index
from data_pipeline.extract import Sample


def key_prefix(unit: str, prefixes: int) -> int:
    """The key prefix (0 .. prefixes - 1) of a unit's shards: a hash of its name, the same on every run."""
    import zlib  # noqa: PLC0415

    return zlib.crc32(unit.encode()) % prefixes


@dataclass
class ShardInfo:
    url: str  # relative to the dataset root (where manifest.json is)
    split: str
    samples: int
    bytes: int
    labels: dict[str, int] = field(default_factory=dict)  # {"real": n, "fake": m}


class ShardWriter:
    def __init__(self, dest: str, prefix: str, split: str, max_bytes: int, key_prefixes: int = 1):
        self.dest, self.prefix, self.split, self.max_bytes = dest, prefix, split, max_bytes
        self.folder = f"shards/{split}" if key_prefixes <= 1 else f"shards/{key_prefix(prefix, key_prefixes)}/{split}"
        self.shards: list[ShardInfo] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="dfdc-shard-")
        self._writer = None
        self._path = None
        self._count = 0
        self._labels: Counter = Counter()

    def write(self, sample: Sample) -> None:
        if self._writer is None:
            self._path = os.path.join(self._tmp.name, f"{len(self.shards)}.tar")
            # mtime fixed: a redone unit gives byte-identical shards.
            self._writer = wds.TarWriter(self._path, mtime=0.0)
        self._writer.write({"__key__": sample.key, "jpg": sample.jpg, "json": json.dumps(sample.meta).encode()})
        self._count += 1
        self._labels["fake" if sample.meta["label"] else "real"] += 1
        if os.path.getsize(self._path) >= self.max_bytes:
            self._finish()

    def _finish(self) -> None:
        self._writer.close()
        rel = f"{self.folder}/{self.prefix}-{len(self.shards):04d}.tar"
        size = os.path.getsize(self._path)
        uri = storage.join(self.dest, rel)
        storage.put_file(self._path, uri)
        shard_index.write_for_local_tar(self._path, uri)  # after the shard: an index never lists a missing shard
        os.remove(self._path)
        self.shards.append(ShardInfo(url=rel, split=self.split, samples=self._count, bytes=size,
                                     labels={"real": self._labels["real"], "fake": self._labels["fake"]}))
        self._writer, self._count, self._labels = None, 0, Counter()

    def close(self) -> list[ShardInfo]:
        """Upload the last shard; the shards written."""
        if self._writer is not None:
            self._finish()
        self.discard()
        return self.shards

    def discard(self) -> None:
        """Drop the local temporary files (after `close`, or when the unit failed)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._tmp.cleanup()
