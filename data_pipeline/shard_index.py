"""Where each sample lies in its shard: `<shard>.idx.json` beside every `<shard>.tar`.

A sample is a run of tar members (`key.jpg`, `key.json`); its byte range, from its first member's
header to the end of its last member's (padded) data, is itself a valid piece of tar. With these
ranges the training loader reads any sample of any shard with one ranged GET, so an epoch can be a
permutation of all samples (not of shards) without reading whole shards on every rank.

Ingest writes the index right after the shard; `ensure` builds missing ones for datasets ingested
before indexes existed, by reading each tar once.
"""

from __future__ import annotations

import json
import re
import tarfile
from typing import IO

from dfdc import storage

FORMAT = "dfdc-scale/shard-index"
VERSION = 1
SUFFIX = ".idx.json"


class ShardIndexError(ValueError):
    """A shard's index is missing its fields or does not match the manifest."""


_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member, by webdataset's rule: the key ends at the first dot of the
    file name (dots in folder names stay in the key)."""
    m = _NAME.match(name)
    return (m.group(1), m.group(2)) if m else (name, "")


def index_uri(shard_uri: str) -> str:
    return shard_uri.removesuffix(".tar") + SUFFIX


def build(fileobj: IO[bytes]) -> list[list]:
    """[[key, start, end, label, source], ...] in the tar's order, from a stream of the tar (read once,
    front to back). Label (0 real, 1 fake) and source (the original video a fake was made from; a
    real's own video) come from the sample's JSON, None where it has none or it does not parse:
    paired batches and real-only epochs need them without reading every sample."""
    samples: list[list] = []
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_name(member.name)
            end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            if samples and samples[-1][0] == key:
                samples[-1][2] = end
            else:
                samples.append([key, member.offset, end, None, None])
            if ext == "json":
                samples[-1][3:] = _label_and_source(tar.extractfile(member).read())
    return samples


def _label_and_source(data: bytes) -> list:
    try:
        meta = json.loads(data)
        return [int(meta["label"]) if meta.get("label") is not None else None, meta.get("original") or meta.get("video")]
    except (ValueError, TypeError, AttributeError):  # a sample whose JSON is broken: the loader names it when read
        return [None, None]


def encode(samples: list[list]) -> bytes:
    """Sources are stored once per index and referred to by number in the samples."""
    sources = list(dict.fromkeys(s[4] for s in samples if len(s) > 4 and s[4] is not None))
    number = {g: i for i, g in enumerate(sources)}
    rows = [s[:4] + [number.get(s[4])] if len(s) > 4 else s for s in samples]
    return json.dumps({"format": FORMAT, "version": VERSION, "sources": sources, "samples": rows}, separators=(",", ":")).encode()


def write_for_local_tar(path: str, shard_uri: str) -> int:
    """Index a finished local tar and store the index beside the shard's URI; its sample count."""
    with open(path, "rb") as f:
        samples = build(f)
    storage.write_bytes(index_uri(shard_uri), encode(samples))
    return len(samples)


def read(shard_uri: str, expected: int | None = None) -> list[list]:
    """The index of a shard, checked against the manifest's sample count when given: [key, start,
    end] per sample, then label and source video where the index has them (indexes written before
    they were added have not: 3 fields)."""
    uri = index_uri(shard_uri)
    data = json.loads(storage.read_bytes(uri))
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ShardIndexError(f"{uri} is not a {FORMAT} v{VERSION} index")
    samples = data["samples"]
    sources = data.get("sources", [])
    for s in samples:
        if len(s) > 4 and s[4] is not None:
            s[4] = sources[s[4]]
    if expected is not None and len(samples) != expected:
        raise ShardIndexError(f"{uri} lists {len(samples)} samples but the manifest says the shard holds {expected}: "
                          f"the shard was rewritten after its index; rebuild the index (delete it and train again)")
    return samples


def ensure(shard_uris: list[str], log=print) -> int:
    """Build the index of every shard that has none (datasets ingested before indexes existed). The
    number built."""
    built = 0
    for uri in shard_uris:
        if storage.exists(index_uri(uri)):
            continue
        with storage.named(uri), storage.open_input(uri) as f:
            samples = build(f)
        storage.write_bytes(index_uri(uri), encode(samples))
        built += 1
    if built:
        log(f"indexed {built} shard(s) that had no {SUFFIX} (read each once)")
    return built
