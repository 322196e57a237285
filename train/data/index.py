"""The train set's index: where each train sample lies (shard, byte range) and, for data.pairing and
data.fakes, which unit of the epoch it belongs to. Compact, and one copy per node.

Sample ids number the samples shard by shard in manifest order. Per sample: its start and end in
its shard (uint32; int64 only for a shard past 4 GiB) and, when the epoch is shaped by labels or
pairs, its unit (int32). At 30 M samples that is 240 MB, or 360 MB with units (bench/index_memory.py
measures it), against ~11 GB per rank for the Python lists it replaced.

`node_train_set` builds it once per node from the shards' `.idx.json` files (read concurrently,
each turned into arrays at once) and writes it as `.npy` files to a node-local folder
(data.index_cache, default <tmp>/dfdc-index), under a key of the dataset's URI, its manifest's digest
and the epoch's shape. Every rank and loader worker of the node then memory-maps those files: the
page cache holds one copy, a process touches only the pages of the samples it reads, and a restarted
rank maps it again in milliseconds. A lock file makes the first process of a node build it while the
others wait; the folder appears whole (renamed into place) or not at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipeline import shard_index
from train.data.order import BlockOrder, sample_units

ARRAYS = ("starts", "ends", "units")
PARALLEL_SHARDS = 256  # shards from which the index is read by several processes


@dataclass
class TrainSet:
    """The train shards and where each sample lies in them (sample ids number samples shard by shard).
    Pickled to a loader worker, a TrainSet mapped from a node's index folder travels as the folder's
    path: the worker maps the same files instead of receiving copies of the arrays."""

    urls: list[str]
    counts: list[int]
    starts: np.ndarray  # by sample id: offset in its shard
    ends: np.ndarray
    units: np.ndarray | None = None  # by sample id (train/data/order.py sample_units); None: every sample on its own
    margin: float = 0.3  # the ingest's crop margin (ingest.margin): where the face box lies in a crop
    paired: bool = False  # units of several samples (data.pairing), kept together by the order
    folder: str | None = None  # the node's index folder these arrays are mapped from
    _samples: int | None = field(default=None, repr=False)

    @property
    def samples(self) -> int:
        """Samples in an epoch."""
        if self._samples is None:
            self._samples = int(sum(self.counts)) if self.units is None else int((self.units >= 0).sum())
        return self._samples

    @property
    def bytes(self) -> int:
        """Bytes of the samples in an epoch."""
        sizes = self.ends.astype(np.int64) - self.starts
        return int(sizes.sum() if self.units is None else sizes[self.units >= 0].sum())

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.folder:
            for name in ARRAYS:
                state[name] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.folder:
            self.starts, self.ends, self.units = _map(Path(self.folder))


def index_arrays(urls: list[str], counts: list[int], pairing: str = "none", fakes: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(starts, ends, units) of the train set from its shards' indexes, checked against the
    manifest's counts. Parsing JSON holds the GIL: past `PARALLEL_SHARDS` shards the reading is
    split over processes (from the fork server the loader's workers use), each reading its part with
    threads and returning arrays."""
    shaped = pairing != "none" or not fakes
    procs = min(os.cpu_count() or 1, 16)
    if len(urls) >= PARALLEL_SHARDS and procs > 1:
        from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

        from train.data.workers import fork_server  # noqa: PLC0415

        cut = np.linspace(0, len(urls), procs + 1).astype(int)
        with ProcessPoolExecutor(procs, mp_context=fork_server()) as pool:
            parts = list(pool.map(_read_part, [urls[a:b] for a, b in zip(cut, cut[1:])], [counts[a:b] for a, b in zip(cut, cut[1:])],
                                  [pairing] * procs, [fakes] * procs))
    else:
        parts = [_read_part(urls, counts, pairing, fakes)]
    ranges = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 2), dtype=np.int64)
    wide = ranges.size and int(ranges.max()) >= 2 ** 32
    starts, ends = (np.ascontiguousarray(ranges[:, k], dtype=np.int64 if wide else np.uint32) for k in (0, 1))
    units = None
    if shaped:
        labels = [y for p in parts for y in p[1]]
        pairs = [k for p in parts for k in p[2]] if pairing != "none" else None
        units = sample_units(labels, pairs, fakes).astype(np.int32)
    return starts, ends, units


def _read_part(urls: list[str], counts: list[int], pairing: str, fakes: bool) -> tuple[np.ndarray, list | None, list | None]:
    """These shards' (start, end) rows, and their labels and pair keys when the epoch's shape needs
    them: each index becomes arrays as soon as it is read."""
    shaped = pairing != "none" or not fakes

    def one(url_count):
        url, count = url_count
        index = shard_index.read(url, count)
        if shaped and index and len(index[0]) < 5:
            raise ValueError(f"{shard_index.index_uri(url)} holds no labels or source videos, which data.pairing={pairing} "
                             f"and data.fakes={str(fakes).lower()} need: it was written before indexes held them; delete the "
                             f"dataset's *{shard_index.SUFFIX} files and train again to rebuild them")
        ranges = np.array([(s[1], s[2]) for s in index], dtype=np.int64).reshape(-1, 2)
        labels = [s[3] for s in index] if shaped else None
        pairs = ([f"{s[4]}/{s[0].rsplit('/', 1)[-1]}" if s[4] else None for s in index]
                 if shaped and pairing != "none" else None)
        return ranges, labels, pairs

    with ThreadPoolExecutor(16) as pool:
        read = list(pool.map(one, zip(urls, counts)))
    ranges = np.concatenate([r[0] for r in read]) if read else np.zeros((0, 2), dtype=np.int64)
    labels = [y for r in read for y in r[1]] if shaped else None
    pairs = [k for r in read for k in r[2]] if shaped and pairing != "none" else None
    return ranges, labels, pairs


def load_train_set(urls: list[str], counts: list[int], pairing: str = "none", fakes: bool = True) -> TrainSet:
    """The train set of these shards, held in this process."""
    return TrainSet(list(urls), list(counts), *index_arrays(urls, counts, pairing, fakes), paired=pairing != "none")


def train_set_of(dataset: str, manifest: dict | None = None, pairing: str = "none", fakes: bool = True,
                 cache: str | None = "") -> TrainSet:
    """The train set of an ingested dataset (its manifest's train shards, in manifest order), mapped
    from this node's index folder under `cache` ("" the default, <tmp>/dfdc-index; None: held in this
    process, nothing written)."""
    from data_pipeline import manifest as mf  # noqa: PLC0415

    manifest = manifest or mf.load(dataset)
    urls = mf.shard_urls(dataset, manifest, "train")
    counts = [s["samples"] for s in manifest["shards"] if s["split"] == "train"]
    if cache is None:
        train = load_train_set(urls, counts, pairing, fakes)
    else:
        key = hashlib.sha256(json.dumps([dataset, mf.digest(manifest), pairing, fakes]).encode()).hexdigest()[:20]
        folder = node_index(Path(cache or Path(tempfile.gettempdir()) / "dfdc-index") / key,
                            lambda: index_arrays(urls, counts, pairing, fakes))
        train = TrainSet(urls, counts, *_map(folder), paired=pairing != "none", folder=str(folder))
    train.margin = mf.crop_margin(manifest)
    return train


def node_index(folder: Path, build) -> Path:
    """`folder`, holding the arrays `build()` returns (a dict of them by name, or the index's
    (starts, ends, units)), built by the first process of this node that asks; the others wait on
    its lock and find it done."""
    if (folder / "done").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if (folder / "done").exists():
            return folder
        part = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            arrays = build()
            for name, array in (arrays if isinstance(arrays, dict) else dict(zip(ARRAYS, arrays))).items():
                if array is not None:
                    np.save(part / f"{name}.npy", array)
            (part / "done").write_text("")
            shutil.rmtree(folder, ignore_errors=True)  # a folder without `done` was left by a build cut off
            os.rename(part, folder)
        finally:
            shutil.rmtree(part, ignore_errors=True)
    return folder


def map_folder(folder: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a node folder, memory-mapped, by name."""
    return {p.stem: np.load(p, mmap_mode="r") for p in Path(folder).glob("*.npy")}


def _map(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    arrays = map_folder(folder)
    return arrays["starts"], arrays["ends"], arrays.get("units")


def node_order(train: TrainSet, seed: int, epoch: int, batch_size: int, block: int, window: int, streams: int,
               per_epoch: int | None = None, keep_epochs: int = 3) -> BlockOrder:
    """The block order of `epoch`, computed once per node beside the node's index (a folder per
    epoch, ~30 MB at 30 M samples) and memory-mapped by every rank and loader worker, which then
    compute only the windows they read. Folders of epochs `keep_epochs` or more before this one
    are removed when a new one is built (a loader worker is at most one epoch off its rank)."""
    index = Path(train.folder)
    settings = hashlib.sha256(json.dumps([seed, batch_size, block, window, streams] + ([per_epoch] if per_epoch else [])).encode()).hexdigest()[:12]
    name = f"{index.name}.order-{settings}-"
    folder = index.with_name(f"{name}{epoch}")

    def build() -> dict:
        order = BlockOrder(train.counts, seed, epoch, batch_size, block, window, streams, train.units, train.paired, per_epoch)
        for old in index.parent.glob(f"{name}*"):
            tail = old.name[len(name):].split(".")[0]
            if tail.isdigit() and int(tail) <= epoch - keep_epochs:
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
        return order.arrays

    def mapped() -> BlockOrder:
        return BlockOrder.mapped(map_folder(node_index(folder, build)), seed, epoch, batch_size, window, train.units,
                                 train.paired, folder=str(folder))

    try:
        return mapped()
    except (FileNotFoundError, KeyError):  # removed between the check and the mapping (another run, epochs ahead): again
        return mapped()
