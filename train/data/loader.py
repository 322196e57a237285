"""Stream face-crop shards from S3 (or disk) into batches, without copying the dataset first.

Training (`train_loader`, one stream of every epoch left; `epoch_loader`, one epoch): each epoch is
one order of all train samples (train/data/order.py: in blocks, the default, or one permutation),
handed out in global batches; each rank reads only its own samples, with ranged reads
(train/data/reader.py), a block's samples together. Loader worker w of a rank makes the rank's
batches w, w + workers, ...; the DataLoader takes them round-robin, so they arrive in order, each
tagged with its position, which the loop checks.

`resampled_loader` (`data.order: resampled`, what training did before) draws shards at random with
replacement: no index needed, but an epoch is not one pass (about a third of the samples are not
seen and others twice). Kept to compare with (bench/loader_order.py) and for datasets whose
shards cannot be indexed.

Validation reads each val shard once, split across ranks; the loop in `loop.py` keeps ranks in
step when their shares differ.

Loader workers start from the rank's fork server (train/data/workers.py), not by forking the rank.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random

import numpy as np

import torch
import webdataset as wds

from dfdc import storage
from dfdc.config import DataConfig
from train.data.order import batches_left, epoch_sizes, make_order, rank_slice
from train.data.index import TrainSet, node_order
from train.data.reader import DataUnavailable, SampleReader
from train.data.samples import Batch, Decode, collate, decode_sample, register_s3, worker_init
from train.data.cutout import diff_cutout, hull_cutout, landmark_cutout
from train.data.sbi import self_blend
from train.data.transforms import face_margin_crop, image_transform
from train.data.workers import fork_server

log = logging.getLogger(__name__)

# The members webdataset may decode. Its default handlers also unpickle `.pyd`/`.pkl` members and
# torch.load `.pth` ones, so a shard from storage could run code: everything else stays raw bytes.
DECODED = ["jpg", "json"]


class ReadErrors:
    """webdataset's error handler: an unreadable shard or sample is logged, counted and skipped, but
    after `limit` failures in a row (no good sample between them) the stream stops with
    DataUnavailable. Resampled shards never run out, so without the limit a dataset that cannot be
    read at all (expired keys, deleted shards) would keep every rank spinning on warnings."""

    def __init__(self, limit: int | None, what: str):
        self.limit, self.what = limit, what
        self.in_a_row = self.total = 0

    def __call__(self, exn: Exception) -> bool:
        self.total += 1
        self.in_a_row += 1
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and ("/" in a)), "?")
        why = storage.explain(exn, url) or f"{type(exn).__name__}: {exn}"
        log.warning("skipping unreadable data (%d in a row): %s", self.in_a_row, why)
        if self.limit and self.in_a_row >= self.limit:
            raise DataUnavailable(f"{self.in_a_row} reads of {self.what} failed in a row (data.max_failed_reads); "
                                  f"the last: {why}")
        return True

    def ok(self, sample):
        self.in_a_row = 0
        return sample

    def tag(self, batch: Batch) -> Batch:
        """Attach this worker's count of skipped reads, so the rank can report them."""
        info = torch.utils.data.get_worker_info()
        return batch._replace(unreadable=(info.id if info else 0, self.total))


def _worker_seed(base: int) -> int:
    info = torch.utils.data.get_worker_info()
    return base * 101 + (info.id if info else 0)


def _loader(pipeline, num_workers: int, pin_memory: bool, generator: torch.Generator | None = None) -> wds.WebLoader:
    register_s3()
    context = fork_server() if num_workers else None
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers, persistent_workers=False,
                         multiprocessing_context=context, worker_init_fn=worker_init if num_workers else None,
                         pin_memory=pin_memory, generator=generator)


def resampled_loader(urls: list[str], cfg: DataConfig, batches: int, seed: int, epoch: int, rank: int,
                     pin_memory: bool = False) -> wds.WebLoader:
    """Exactly `batches` batches of `cfg.batch_size` for this rank and epoch, from shards drawn with replacement."""
    base = (seed * 1_000_003 + epoch) * 10_007 + rank
    errors = ReadErrors(cfg.max_failed_reads, "training shards")
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=base, worker_seed=functools.partial(_worker_seed, base), deterministic=True),
        wds.tarfile_to_samples(handler=errors),
        wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100), rng=random.Random(base)),
        wds.decode("pil", only=DECODED, handler=errors),
        wds.to_tuple("jpg", "json", "__url__", "__key__", handler=errors),
        wds.map(Decode(image_transform(cfg.image_size, cfg.augment, cfg.mean, cfg.std)), handler=errors),
        wds.map(errors.ok),  # a sample made it through every stage: the run of failures ends
        wds.batched(cfg.batch_size, collation_fn=collate, partial=False),
        wds.map(errors.tag),
    )
    # Across the DataLoader workers, stop after exactly `batches` batches. The generator seeds the
    # workers' torch RNG (random augmentations) per run seed, epoch and rank, not the same on all ranks.
    loader = _loader(pipeline, cfg.num_workers, pin_memory, generator=torch.Generator().manual_seed(base))
    return loader.with_epoch(batches)


def val_loader(urls: list[str], cfg: DataConfig, rank: int, world: int, pin_memory: bool = False, crop_margin: float = 0.3):
    """This rank's share of the val shards (every sample once across ranks), in order. Unreadable
    shards are skipped here; validation counts them against the manifest. `crop_margin`: the
    ingest's (for data.eval_face_margin)."""
    mine = urls[rank::world]
    if not mine:  # fewer val shards than ranks: this rank validates nothing (the loop keeps it in step)
        return []
    errors = ReadErrors(None, "val shards")
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(mine),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=errors),
        wds.decode("pil", only=DECODED, handler=errors),
        wds.to_tuple("jpg", "json", "__url__", "__key__", handler=errors),
        wds.map(Decode(image_transform(cfg.image_size, False, cfg.mean, cfg.std), cfg.eval_face_margin, crop_margin), handler=errors),
        wds.batched(cfg.batch_size, collation_fn=collate, partial=True),
    )
    return _loader(pipeline, min(cfg.num_workers, max(1, len(mine))), pin_memory)


def unreadable_total(seen: dict[int, int], batch: Batch) -> int:
    """Reads skipped so far by all loader workers, given the last count seen from each."""
    worker, count = batch.unreadable
    seen[worker] = count
    return sum(seen.values())


def epoch_order_of(train: TrainSet, cfg: DataConfig, seed: int, epoch: int):
    """The epoch's order as `cfg.order` (blocks or permutation) draws it (train/data/order.py), a
    whole pass or, with data.samples_per_epoch, its part of one; the block order of a train set
    mapped from a node's index is computed once per node and mapped."""
    if cfg.order == "blocks" and train.folder:
        return node_order(train, seed, epoch, cfg.batch_size, cfg.block_samples, cfg.window_blocks, cfg.streams,
                          cfg.samples_per_epoch)
    return make_order(cfg.order, train.counts, seed, epoch, cfg.batch_size, cfg.block_samples, cfg.window_blocks,
                      cfg.streams, train.units, train.paired, cfg.samples_per_epoch)


def sizes_of_epochs(train: TrainSet, cfg: DataConfig, seed: int, epochs: range) -> list[int]:
    """Samples in each of `epochs`' orders (train/data/order.py epoch_sizes)."""
    return epoch_sizes(cfg.order, train.counts, seed, epochs, cfg.batch_size, cfg.block_samples, cfg.window_blocks, cfg.streams,
                       train.units, train.paired, cfg.samples_per_epoch)


class EpochStream(torch.utils.data.IterableDataset):
    """This rank's batches of one epoch's order from `position` on: `batches` of them. A loader
    worker makes every `workers`-th batch. It reads in blocks: when one of its batches first needs
    a sample of a block, it fetches every sample of that block it will take this epoch (with the
    block order and a world size that divides the stream count, the whole block, in one GET), and
    keeps their bytes until their batches come. Fetches run `prefetch` batches ahead, in a thread,
    so that S3's per-request latency waits beside the CPU work."""

    def __init__(self, train: TrainSet, cfg: DataConfig, seed: int, epoch: int, position: int, batches: int,
                 rank: int, world: int, order=None, prefetch: int = 4):
        self.train, self.cfg, self.seed, self.epoch = train, cfg, seed, epoch
        self.position, self.batches, self.rank, self.world, self.prefetch = position, batches, rank, world, prefetch
        self.order = order
        self.transform = image_transform(cfg.image_size, cfg.augment, cfg.mean, cfg.std)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        order = self.order if self.order is not None else epoch_order_of(self.train, self.cfg, self.seed, self.epoch)
        yield from self.read(order, self.epoch, self.position, list(range(worker, self.batches, workers)), worker)

    def read(self, order, epoch: int, position: int, mine: list[int], worker: int):
        """This worker's batches `mine` (numbers of this rank's batches from `position`) of `epoch`."""
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        reader = SampleReader(self.train, self.cfg.read_retries, self.cfg.merge_gap_bytes, self.cfg.range_reads,
                              self.cfg.slowdown_timeout_s)
        spans = [rank_slice(position, k, self.rank, self.cfg.batch_size, self.world) for k in mine]
        plan = [order[a:b] for a, b in spans]
        # This worker's samples of each block it touches, fetched together when the block is first needed.
        if plan:
            ids = np.concatenate(plan)
            blocks = order.block_of(ids)
            first_use = np.repeat(np.arange(len(plan)), [len(p) for p in plan])
            by_block = np.argsort(blocks, kind="stable")
            edges = np.flatnonzero(np.diff(blocks[by_block])) + 1
            groups = np.split(ids[by_block], edges)
            firsts = first_use[by_block][np.concatenate([[0], edges])]
            due: dict[int, list] = {}
            for g, batch in zip(groups, firsts):
                due.setdefault(int(batch) // self.prefetch, []).append(g)
        n_groups = -(-len(plan) // self.prefetch)

        def fetch(g):
            before = reader.bytes, reader.requests
            raw = reader.fetch_raw(np.concatenate(due[g])) if g in due else {}
            return raw, (reader.bytes - before[0], reader.requests - before[1])

        cache: dict[int, bytes] = {}
        skipped_total = in_a_row = 0
        pool = ThreadPoolExecutor(1)
        try:
            pending = pool.submit(fetch, 0) if n_groups else None
            for g in range(n_groups):
                raw, read = pending.result()
                cache.update(raw)
                if g + 1 < n_groups:
                    pending = pool.submit(fetch, g + 1)
                for n in range(g * self.prefetch, min(len(plan), (g + 1) * self.prefetch)):
                    (a, _), items, skipped = spans[n], [], []
                    for sample_id in plan[n]:
                        sample = reader.parse(int(sample_id), cache.pop(int(sample_id)))
                        if not isinstance(sample, Exception):
                            try:
                                items += self.items(sample, epoch, int(sample_id))
                                in_a_row = 0
                                continue
                            except (KeyError, ValueError, TypeError, OSError) as e:  # metadata without a label, an image the transform refuses
                                sample = e
                        key = reader.key_of(int(sample_id))
                        skipped.append(key)
                        skipped_total += 1
                        in_a_row += 1
                        log.warning("skipping sample %s: its bytes cannot be read (%s: %s)", key, type(sample).__name__, sample)
                        if self.cfg.max_failed_reads and in_a_row >= self.cfg.max_failed_reads:
                            raise DataUnavailable(f"{in_a_row} samples in a row could not be read (data.max_failed_reads); "
                                                  f"the last: {key}: {type(sample).__name__}: {sample}")
                    if not items:
                        raise DataUnavailable(f"no sample of the batch at position {a} of epoch {epoch} could be read: "
                                              f"{', '.join(skipped)}")
                    first = n == g * self.prefetch
                    yield collate(items)._replace(unreadable=(worker, skipped_total), position=a, skipped=skipped,
                                                  read=read if first else (0, 0))
        finally:  # closed early or failed: do not wait for a fetch nobody will use (it may be sleeping between retries)
            pool.shutdown(wait=False, cancel_futures=True)

    def items(self, sample, epoch: int, sample_id: int) -> list[tuple]:
        """A sample's training items: itself, or with data.sbi its real counterpart and its pseudo-fake,
        transformed together (one draw of every random augmentation for both). The pair's second item
        carries no key: the ledger counts samples, and the pair is one."""
        drawn = self_blended(sample, self.cfg.sbi, self.seed, epoch, sample_id, self.train.margin)
        if drawn is None:
            image = self.recrop(self.cutout(sample.image, sample.meta, epoch, sample_id), sample.meta, epoch, sample_id)
            return [(*decode_sample(image, sample.meta, self.transform), sample.url, sample.key)]
        real, fake, _ = drawn
        pair = self.cutout(torch.stack([real, fake]), sample.meta, epoch, sample_id)
        images = self.transform(self.recrop(pair, sample.meta, epoch, sample_id))
        video = sample.meta["video"]
        return [(images[0], torch.tensor(0.0), video, sample.url, sample.key),
                (images[1], torch.tensor(1.0), video, sample.url, None)]

    def cutout(self, image: torch.Tensor, meta: dict, epoch: int, sample_id: int) -> torch.Tensor:
        """The winner's cutouts (train/data/cutout.py), drawn from (seed, epoch, sample id) alone, an
        SBI pair cut alike, in his order: with data.landmark_cutout a band on a crop with landmarks,
        else with data.hull_cutout half the face's outline, else with data.diff_cutout black outside
        a part of the crop that (for a fake) holds its difference."""
        if not (self.cfg.landmark_cutout or self.cfg.diff_cutout or self.cfg.hull_cutout):
            return image
        rng = np.random.default_rng([self.seed, epoch, sample_id, 2])
        if self.cfg.landmark_cutout and meta.get("landmarks") is not None and rng.random() < self.cfg.landmark_cutout:
            return landmark_cutout(image, meta["landmarks"], rng)
        if self.cfg.hull_cutout and rng.random() < self.cfg.hull_cutout:
            return hull_cutout(image, meta["outline"], rng) if meta.get("outline") else image
        if self.cfg.diff_cutout and rng.random() < self.cfg.diff_cutout:
            return diff_cutout(image, int(meta["label"]), meta.get("diff_kept"), rng)
        return image

    def recrop(self, image: torch.Tensor, meta: dict, epoch: int, sample_id: int) -> torch.Tensor:
        """With data.face_margin, the crop cut again around its face box, each side's margin drawn
        from (seed, epoch, sample id) alone (any number of ranks and workers draws the same), the
        real and pseudo-fake of an SBI pair cut alike; else the crop as ingested."""
        if self.cfg.face_margin is None:
            return image
        low, high = self.cfg.face_margin
        sides = np.random.default_rng([self.seed, epoch, sample_id, 1]).uniform(low, high, 4)
        return face_margin_crop(image, meta["box"], self.train.margin, sides)


class TrainStream(EpochStream):
    """This rank's batches of every epoch left, from `epoch` at `position` to `epochs`: one stream,
    so that its loader workers live across epochs (each starts the next epoch's reads while the
    rank validates). Batch t of the stream (counted across epochs) is made by loader worker
    t mod workers, as the DataLoader takes them round-robin. `batches_of(epoch, position)`: this
    rank's batches of an epoch from a position (train/data/order.py batches_left)."""

    def __init__(self, train: TrainSet, cfg: DataConfig, seed: int, epoch: int, position: int, epochs: int, rank: int,
                 world: int, batches_of, prefetch: int = 4):
        super().__init__(train, cfg, seed, epoch, position, 0, rank, world, None, prefetch)
        self.epochs, self.batches_of = epochs, batches_of

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        done = 0  # batches of the stream before this epoch's
        for epoch in range(self.epoch, self.epochs):
            position = self.position if epoch == self.epoch else 0
            n = self.batches_of(epoch, position)
            mine = [k for k in range(n) if (done + k) % workers == worker]
            done += n
            if mine:
                yield from self.read(epoch_order_of(self.train, self.cfg, self.seed, epoch), epoch, position, mine, worker)


def train_loader(train: TrainSet, cfg: DataConfig, seed: int, epoch: int, position: int, epochs: int, rank: int, world: int,
                 grad_accum: int = 1, pin_memory: bool = False, sizes: list[int] | None = None) -> wds.WebLoader:
    """This rank's batches of the rest of the run, epoch after epoch, from one set of loader
    workers that lives as long as the loader's iterator: `data.num_workers`, or fewer so that each
    of the order's streams is read by one. `sizes`: samples in each epoch from 0 (`sizes_of_epochs`,
    which the training loop has already computed); computed here when not given."""
    sizes = dict(enumerate(sizes)) if sizes is not None else dict(zip(range(epoch, epochs),
                                                                       sizes_of_epochs(train, cfg, seed, range(epoch, epochs))))
    batches_of = functools.partial(_batches_of, sizes, cfg.batch_size, world, grad_accum)
    stream = TrainStream(train, cfg, seed, epoch, position, epochs, rank, world, batches_of)
    # The generator seeds the workers' torch RNG (random augmentations) per run seed, epoch, position and rank.
    base = ((seed * 1_000_003 + epoch) * 10_007 + rank) * 1_000_003 + position
    total = sum(batches_of(e, position if e == epoch else 0) for e in range(epoch, epochs))
    order = epoch_order_of(train, cfg, seed, epoch)
    if cfg.order == "blocks" and not order.reads_in_blocks(world):
        log.warning("the block order has %d streams (data.streams=%d, fewer when the epoch has too few blocks) and %d ranks do "
                    "not divide them: each rank reads its samples a run at a time (about one GET per sample), not whole blocks",
                    order.streams, cfg.streams, world)
    workers = min(order.loader_workers(world, cfg.num_workers), max(1, total))
    return _loader(stream, workers, pin_memory, generator=torch.Generator().manual_seed(base))


def _batches_of(sizes: dict[int, int], batch_size: int, world: int, grad_accum: int, epoch: int, position: int) -> int:
    """A rank's batches of an epoch from `position` (a picklable function); `sizes`: samples per epoch."""
    return batches_left(sizes[epoch], position, batch_size, world, grad_accum)


def self_blended(sample, p: float, seed: int, epoch: int, sample_id: int, margin: float):
    """(real counterpart, pseudo-fake, mask) when a real sample is drawn for SBI, with probability `p`
    (data.sbi); else None. The draw and the blend's own randomness come from (seed, epoch, sample id)
    alone, so they are the same for any number of ranks and loader workers, and differ from epoch to
    epoch. `margin`: the ingest's crop margin, for crops without landmarks."""
    if not p or sample.meta.get("label") != 0:
        return None
    rng = np.random.default_rng([seed, epoch, sample_id])
    if rng.random() >= p:
        return None
    return self_blend(sample.image, sample.meta.get("landmarks"), rng, margin)


def sbi_gallery_rows(train: TrainSet, cfg: DataConfig, seed: int, n: int = 8, scan: int = 512) -> list:
    """(real counterpart, mask, pseudo-fake) of the first `n` pseudo-fakes epoch 0 makes among its first `scan`
    samples, in its order: what training sees before the other augmentations. Samples that cannot
    be read or blended are passed over here (training counts and names them)."""
    order = epoch_order_of(train, cfg, seed, 0)[0:scan]
    reader = SampleReader(train, cfg.read_retries, cfg.merge_gap_bytes, cfg.range_reads)
    rows = []
    for start in range(0, len(order), 64):
        ids = order[start:start + 64]
        for sample_id, sample in zip(ids, reader.fetch(ids)):
            if isinstance(sample, Exception):
                continue
            try:
                drawn = self_blended(sample, cfg.sbi, seed, 0, int(sample_id), train.margin)
            except (KeyError, ValueError, TypeError) as e:
                log.warning("sbi gallery: sample %s not blended: %s", sample.key, e)
                continue
            if drawn is not None:
                real, fake, mask = drawn
                rows.append((real, mask, fake))
            if len(rows) == n:
                return rows
    return rows


def epoch_loader(train: TrainSet, cfg: DataConfig, seed: int, epoch: int, position: int, batches: int, rank: int,
                 world: int, pin_memory: bool = False) -> wds.WebLoader:
    """This rank's next `batches` batches of the epoch's order, from the global `position`. Loader
    workers: `data.num_workers`, or fewer so that each of the order's streams is read by one worker."""
    order = epoch_order_of(train, cfg, seed, epoch)
    stream = EpochStream(train, cfg, seed, epoch, position, batches, rank, world, order)
    # The generator seeds the workers' torch RNG (random augmentations) per run seed, epoch, position and rank.
    base = ((seed * 1_000_003 + epoch) * 10_007 + rank) * 1_000_003 + position
    workers = min(order.loader_workers(world, cfg.num_workers), max(1, batches))
    return _loader(stream, workers, pin_memory, generator=torch.Generator().manual_seed(base))


def batches(train: TrainSet, urls: list[str], cfg: DataConfig, n: int, rank: int = 0, world: int = 1, seed: int = 0):
    """`n` batches of one rank from epoch 0 on, epochs chained as training runs them, in `cfg.order`
    (for bench/, which times the loader and the step outside Ray Train)."""
    size = min(sizes_of_epochs(train, cfg, seed, range(64)))  # data.samples_per_epoch: epochs differ by a block or so
    per_epoch = batches_left(size, 0, cfg.batch_size, world)
    if not per_epoch:
        raise ValueError(f"the train set's epoch holds {size} samples, fewer than one batch "
                         f"of {cfg.batch_size} x {world} rank(s) (data.fakes=false or ingest.include leave out the rest?)")
    if cfg.order != "resampled":  # one stream across epochs, as training reads it
        yield from itertools.islice(train_loader(train, cfg, seed, 0, 0, -(-n // per_epoch), rank, world), n)
        return
    epoch = 0
    while n > 0:
        take = min(n, per_epoch)
        yield from resampled_loader(urls, cfg, take, seed, epoch, rank)
        n, epoch = n - take, epoch + 1
