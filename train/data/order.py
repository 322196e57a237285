"""The order of an epoch and where a run stands in it.

An epoch's order is a pure function of (seed, epoch, the manifest's train shards and the order's
settings): the number of ranks and loader workers does not enter it. Sample ids number the samples
shard by shard in manifest order (shard 0's samples, then shard 1's, ...).

Two orders (data.order):
- `blocks` (the default, `BlockOrder`): consecutive samples of a shard travel together, so that one
  ranged GET serves a block of them. Blocks are permuted, dealt to `streams` canonical streams, and
  read in windows of `window` blocks whose samples are spread evenly over the window (each batch of
  a window draws from as many of its blocks as it has samples). The streams are interleaved batch by
  batch, so a rank whose number divides the stream count reads the same streams all epoch: every
  block is read whole, by one rank, once.
- `permutation` (`Permutation`): one permutation of all samples; one GET per sample. For small
  datasets, where a block would hold most of a shard.

Ranks take the order in global batches of `batch_size x world` samples: in global batch k, rank r
gets positions [P + k*G + r*B, P + k*G + (r+1)*B), P being where this attempt started the epoch.
So the state of the stream is one number, the position: samples of the epoch's order handed out
before the current global batch. Any world size can go on from it; with the block order, world
sizes that divide the stream count also read in whole blocks (`reads_in_blocks`).

An epoch shorter than a pass (data.samples_per_epoch): a pass over the train set is cut into
k = round(samples / samples_per_epoch) epochs (`slices_per_pass`, the same for any world size);
epoch e is part e mod k of pass e // k. The block order cuts a pass at whole blocks: the pass's
blocks are permuted once (seed, pass) and each epoch takes the next k-th of them, which it deals
to streams and windows as a whole epoch would, so blocks are still read whole and every sample
trains once a pass. The permutation order takes the next k-th of the pass's permutation (a unit
of data.pairing that such a cut splits has its members in two epochs). An epoch's order is still
a pure function of (seed, epoch, manifest, settings).

The end of an epoch: every rank runs the same number of batches, in whole optimizer steps, so the
last `(samples - P) mod (batch_size x world x grad_accum)` samples of the order (fewer than one
optimizer step's worth) are not trained on in that epoch. The next pass is a new order, so each
pass leaves out different ones (with data.samples_per_epoch, a remainder at each epoch's end).
"""

from __future__ import annotations

import numpy as np


def epoch_order(counts: list[int], seed: int, epoch: int, units: np.ndarray | None = None) -> np.ndarray:
    """Sample ids in the order of `epoch`. `units` (`sample_units`): the unit of each sample id, -1
    for samples outside the epoch; then the units are permuted and each unit's samples follow one
    another (by sample id)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    if units is None:
        return rng.permutation(int(sum(counts)))
    ids = np.flatnonzero(units >= 0)
    n = int(units.max()) + 1 if ids.size else 0
    place = np.empty(n, dtype=np.int64)
    place[rng.permutation(n)] = np.arange(n)
    return ids[np.argsort(place[units[ids]], kind="stable")]


def sample_units(labels: list, pair_keys: list | None, fakes: bool) -> np.ndarray:
    """The unit of each sample (ids in order) for `epoch_order`.

    Paired (`pair_keys`, data.pairing=video): the samples that share a pair key, a real crop and the
    crops of the fakes made from its video at the same frame and face track, are one unit. "Once"
    stays what it was: each sample of the epoch once, a pair's members next to each other in the
    order; only a unit that a batch boundary cuts has its members in consecutive batches.
    `fakes` False: fake samples are left out of the epoch (-1). A sample whose label or key is None
    (its metadata does not parse) is a unit of its own in the epoch: the loader names and counts it
    when its bytes fail to decode."""
    n = len(labels)
    if pair_keys is None:
        units = np.arange(n, dtype=np.int64)
    else:
        number: dict = {}
        units = np.fromiter((number.setdefault(k if k is not None else ("lone", i), len(number)) for i, k in enumerate(pair_keys)),
                            dtype=np.int64, count=n)
    if not fakes:
        units = np.where(np.array([y != 1 for y in labels], dtype=bool), units, -1)
    return units


def locate(ids: np.ndarray, counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(shard number, sample number within the shard) of each sample id."""
    starts = np.concatenate([[0], np.cumsum(counts)])
    shard = np.searchsorted(starts, ids, side="right") - 1
    return shard, ids - starts[shard]


def batches_left(samples: int, position: int, batch_size: int, world: int, grad_accum: int = 1) -> int:
    """Batches each rank runs from `position` to the end of the epoch: whole optimizer steps only."""
    step = batch_size * world * grad_accum
    return max(0, (samples - position) // step) * grad_accum


def slices_per_pass(samples: int, per_epoch: int | None, batch_size: int) -> int:
    """Epochs a pass over `samples` is cut into (data.samples_per_epoch: `per_epoch`; None, or not
    fewer than a pass: 1), the nearest whole number: an epoch then holds per_epoch samples within
    1/(2k) of it (1.6% for the DFDC winner's 120,000 of ~3.8 M crops), give or take a block. World
    size does not enter, so a resume on any world size finds the same epochs."""
    if not per_epoch or per_epoch >= samples:
        return 1
    nearest = (2 * samples + per_epoch) // (2 * per_epoch)  # samples / per_epoch, rounded half up
    return max(1, min(nearest, samples // batch_size))


def rank_slice(position: int, batch: int, rank: int, batch_size: int, world: int) -> tuple[int, int]:
    """The positions of a rank's `batch`-th batch after `position`: [start, end)."""
    start = position + batch * batch_size * world + rank * batch_size
    return start, start + batch_size


def cut_blocks(counts: list[int], units: np.ndarray | None, block: int, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """The epoch's blocks: (first sample id, size) of each, in sample id order. A block is at most
    `block` consecutive samples of one shard that are all in the epoch (units >= 0), so its bytes
    are one range of the tar. `paired`: units of several samples (data.pairing) are not cut, so a
    block may run past `block` to the end of its last unit; a unit that a shard's end cuts is in two."""
    if units is None:  # every sample in the epoch: blocks from the shard sizes alone, no per-sample arrays
        sizes_of_shards = np.asarray(counts, dtype=np.int64)
        per = -(-sizes_of_shards // block)
        offsets = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
        shard_first = np.cumsum(sizes_of_shards) - sizes_of_shards
        firsts = np.repeat(shard_first, per) + offsets * block
        return firsts, np.minimum(block, np.repeat(sizes_of_shards, per) - offsets * block)
    inside = units >= 0
    ids = np.flatnonzero(inside)
    if not ids.size:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    shard_starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    shard = np.searchsorted(shard_starts, ids, side="right") - 1
    must = np.ones(ids.size, dtype=bool)  # a block starts here: the epoch's first sample, a gap, a new shard
    must[1:] = (np.diff(ids) != 1) | (np.diff(shard) != 0)
    segments = np.flatnonzero(must)
    if not paired:
        lengths = np.diff(np.append(segments, ids.size))
        per = -(-lengths // block)
        offsets = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
        starts = np.repeat(segments, per) + offsets * block
    else:
        u = units[ids]
        last = np.zeros(int(u.max()) + 1, dtype=np.int64)
        np.maximum.at(last, u, np.arange(ids.size))
        reach = np.maximum.accumulate(last[u])  # the furthest a unit begun so far runs
        allowed = np.append(np.flatnonzero(must | np.append(True, reach[:-1] < np.arange(1, ids.size))), ids.size)
        starts_list, at = [], 0
        for seg_end in np.append(segments[1:], ids.size):
            while at < seg_end:
                starts_list.append(at)
                at = min(int(allowed[np.searchsorted(allowed, min(at + block, ids.size))]), int(seg_end))
        starts = np.array(starts_list, dtype=np.int64)
    sizes = np.diff(np.append(starts, ids.size))
    return ids[starts].astype(np.int64), sizes.astype(np.int64)


def pass_blocks(counts: list[int], seed: int, epoch: int, batch_size: int, block: int, window: int, streams: int,
                units: np.ndarray | None, paired: bool, per_epoch: int | None):
    """The block order's blocks, the same for every epoch: (block size, first sample id and size of
    each block, in sample id order), the permutation of all of them that `epoch`'s pass draws from
    (seed, epoch) (with `per_epoch`, data.samples_per_epoch: from (seed, pass)), and the cuts of it
    that make the pass's k epochs: epoch e takes perm[cuts[e mod k]:cuts[e mod k + 1]]."""
    in_pass = int(sum(counts)) if units is None else int((units >= 0).sum())
    k = slices_per_pass(in_pass, per_epoch, batch_size)
    # Blocks no larger than lets every stream of an epoch fill a window: a small dataset gets smaller
    # blocks (one sample each below streams x window samples), so its batches stay as mixed as a
    # permutation's instead of drawing from a few blocks of consecutive crops.
    size = max(1, min(block, in_pass // k // (window * streams)))
    first, sizes = cut_blocks(counts, units, size, paired)
    key = [seed, epoch, 0xB10C] if k == 1 else [seed, epoch // k, 0xB10C, k]
    perm = np.random.default_rng(np.random.SeedSequence(key)).permutation(first.size)
    return size, first, sizes, perm, [j * first.size // k for j in range(k + 1)]


def epoch_sizes(kind: str, counts: list[int], seed: int, epochs: range, batch_size: int, block: int, window: int, streams: int,
                units: np.ndarray | None = None, paired: bool = False, per_epoch: int | None = None) -> list[int]:
    """Samples in each of `epochs` of the order of `kind` (`make_order`'s settings), without
    building the orders: every epoch is a pass unless `per_epoch` cuts passes into epochs."""
    in_pass = int(sum(counts)) if units is None else int((units >= 0).sum())
    k = slices_per_pass(in_pass, per_epoch, batch_size)
    if k == 1:
        return [in_pass] * len(epochs)
    if kind != "blocks":
        return [(e % k + 1) * in_pass // k - (e % k) * in_pass // k for e in epochs]
    of_pass: dict[int, list[int]] = {}
    for e in epochs:
        if e // k not in of_pass:  # one permutation of the blocks gives every epoch of the pass
            _, _, sizes, perm, cuts = pass_blocks(counts, seed, e, batch_size, block, window, streams, units, paired, per_epoch)
            ends = np.concatenate([[0], np.cumsum(sizes[perm])])
            of_pass[e // k] = [int(ends[b] - ends[a]) for a, b in zip(cuts, cuts[1:])]
    return [of_pass[e // k][e % k] for e in epochs]


class BlockOrder:
    """The block order of one epoch (see the module's docstring). Positions are resolved lazily: a
    loader worker computes the windows of the samples it takes, not the whole epoch.

    The permuted blocks (with data.samples_per_epoch, the epoch's part of its pass's), end to end,
    are cut into `streams` streams of the same length, a whole number of batches each, so that
    position p of the epoch is the stream (p // B) mod streams, at offset (p // B // streams) * B +
    p mod B: a rank whose number divides the stream count takes the same streams all epoch. What is left over (fewer than streams x B samples) ends the epoch
    block after block (a unit's samples together), so that whoever takes it reads whole blocks; the
    end-of-epoch rule leaves most of it for the next epoch anyway. A block that a stream's end cuts
    is read in two pieces (and a unit of data.pairing that it cuts is in two places)."""

    def __init__(self, counts: list[int], seed: int, epoch: int, batch_size: int, block: int = 32, window: int = 32,
                 streams: int = 64, units: np.ndarray | None = None, paired: bool = False, per_epoch: int | None = None):
        self.seed, self.epoch, self.batch = seed, epoch, batch_size
        self.units, self.paired, self.window = units, paired, window
        self.block, self.first, self.size, perm, cuts = pass_blocks(counts, seed, epoch, batch_size, block, window, streams, units,
                                                                    paired, per_epoch)
        part = epoch % (len(cuts) - 1)
        perm = perm[cuts[part]:cuts[part + 1]]
        n_blocks = perm.size
        seq_first, seq_size = self.first[perm], self.size[perm]
        ends = np.cumsum(seq_size)
        self.samples = int(ends[-1]) if n_blocks else 0
        # Fewer streams than asked when the epoch has too few blocks to fill a window in each: the
        # largest divisor of `streams` that fits, so that world sizes that divide `streams` mostly
        # still divide it.
        fits = max(1, min(streams, n_blocks // window))
        self.streams = max(d for d in range(1, fits + 1) if streams % d == 0)
        self.length = self.samples // (self.streams * batch_size) * batch_size  # of each stream

        def pieces(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
            """(first id, size) of the pieces of blocks that samples [a, b) of the sequence are."""
            i, j = np.searchsorted(ends, a, side="right"), np.searchsorted(ends, b, side="left")
            firsts, sizes = seq_first[i:j + 1].copy(), seq_size[i:j + 1].copy()
            if firsts.size:
                cut = a - (ends[i] - seq_size[i])  # samples of the first block before `a`
                firsts[0] += cut
                sizes[0] -= cut
                sizes[-1] -= ends[min(j, n_blocks - 1)] - b
            keep = sizes > 0
            return firsts[keep], sizes[keep]

        stream_pieces = [pieces(s * self.length, (s + 1) * self.length) for s in range(self.streams)]
        window_starts = []  # per stream: where each window begins in the stream, and its end
        for _, sizes in stream_pieces:
            per_window = np.add.reduceat(sizes, np.arange(0, sizes.size, window)) if sizes.size else np.zeros(0, np.int64)
            window_starts.append(np.concatenate([[0], np.cumsum(per_window)]).astype(np.int64))
        self.bulk = self.streams * self.length
        self._windows: dict = {}
        self.folder = None
        self.arrays = {
            "first": self.first, "size": self.size,
            "piece_first": np.concatenate([f for f, _ in stream_pieces]), "piece_size": np.concatenate([z for _, z in stream_pieces]),
            "piece_at": np.concatenate([[0], np.cumsum([f.size for f, _ in stream_pieces])]).astype(np.int64),
            "window_at": np.concatenate(window_starts),
            "window_off": np.concatenate([[0], np.cumsum([w.size for w in window_starts])]).astype(np.int64),
            "scalars": np.array([self.block, self.streams, self.length, self.samples], dtype=np.int64),
        }
        # The tail, block after block (its units together), so that the ranks that take it read blocks.
        self.arrays["tail"] = self._spread(*pieces(self.bulk, self.samples), [seed, epoch, self.streams, 0], across=False)
        self._views()

    @classmethod
    def mapped(cls, arrays: dict, seed: int, epoch: int, batch_size: int, window: int, units: np.ndarray | None = None,
               paired: bool = False, folder: str | None = None) -> BlockOrder:
        """The order whose arrays (`self.arrays`, as built for the same seed, epoch and settings) are
        given, e.g. memory-mapped from a node's folder (train/data/index.py node_order): nothing is
        computed, and a process touches only the pages of the windows it reads."""
        self = cls.__new__(cls)
        self.seed, self.epoch, self.batch, self.window, self.units, self.paired = seed, epoch, batch_size, window, units, paired
        self.arrays, self.folder, self._windows = arrays, folder, {}
        self.block, self.streams, self.length, self.samples = (int(x) for x in arrays["scalars"])
        self.bulk = self.streams * self.length
        self._views()
        return self

    def _views(self) -> None:
        a = self.arrays
        self.first, self.size, self.tail = a["first"], a["size"], a["tail"]
        self.stream_pieces = [(a["piece_first"][i:j], a["piece_size"][i:j]) for i, j in zip(a["piece_at"][:-1], a["piece_at"][1:])]
        self.window_starts = [a["window_at"][i:j] for i, j in zip(a["window_off"][:-1], a["window_off"][1:])]

    def __getstate__(self) -> dict:
        """A mapped order travels to a loader worker as its folder, which the worker maps again."""
        state = dict(self.__dict__, _windows={})
        if self.folder:
            for name in ("arrays", "first", "size", "tail", "stream_pieces", "window_starts"):
                state[name] = None
        if isinstance(self.units, np.memmap) and self.units.filename:  # the node index's units: mapped again too
            state["units"] = ("mapped", str(self.units.filename))
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if isinstance(self.units, tuple):
            self.units = np.load(self.units[1], mmap_mode="r")
        if self.folder:
            from train.data.index import map_folder  # noqa: PLC0415

            self.arrays = map_folder(self.folder)
            self._views()

    def window_order(self, stream: int, w: int) -> np.ndarray:
        """The sample ids of a stream's window, in order. Each block's items (samples, or the units
        of data.pairing, whose samples stay together) are shuffled, and item j of n in a block is
        placed at (j + u) / n of the window, u uniform in [0, 1): every stretch of the window draws
        from the blocks evenly, so a batch holds samples of as many blocks as it has samples (up to
        the window's block count)."""
        key = (stream, w)
        if key in self._windows:
            return self._windows[key]
        firsts, sizes = (a[w * self.window:(w + 1) * self.window] for a in self.stream_pieces[stream])
        out = self._spread(firsts, sizes, [self.seed, self.epoch, stream, w])
        if len(self._windows) >= 4 * self.streams:  # a worker moves through windows: keep the recent ones
            self._windows.pop(next(iter(self._windows)))
        self._windows[key] = out
        return out

    def _spread(self, firsts: np.ndarray, sizes: np.ndarray, seed: list[int], across: bool = True) -> np.ndarray:
        """The samples of these pieces of blocks, each block's items shuffled and spread evenly over
        the result (`across` False: block after block)."""
        total = int(sizes.sum())
        ids = np.repeat(firsts, sizes) + np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        paired = self.units is not None and self.paired
        if not across and not paired:  # the pieces in turn, each in id order: one range of the tar each
            return ids
        block_of = np.repeat(np.arange(sizes.size), sizes)
        rng = np.random.default_rng(np.random.SeedSequence(seed))
        if paired:  # a unit is one item, even when a shard's end put its samples in two of these blocks
            _, item = np.unique(self.units[ids], return_inverse=True)
        else:
            item = np.arange(total)
        n_items = int(item.max()) + 1 if total else 0
        item_block = np.full(n_items, sizes.size, dtype=np.int64)
        np.minimum.at(item_block, item, block_of)  # an item belongs to the block of its first sample
        per_block = np.bincount(item_block, minlength=sizes.size)
        shuffled = np.lexsort((rng.random(n_items), item_block))  # items by block, in random order within each
        rank = np.empty(n_items, dtype=np.int64)
        rank[shuffled] = np.arange(n_items) - np.repeat(np.cumsum(per_block) - per_block, per_block)
        place = (rank + rng.random(n_items)) / per_block[item_block] if across else item_block + rank / per_block[item_block]
        return ids[np.lexsort((ids, place[item]))]

    def _stream_samples(self, stream: int, start: int, end: int) -> np.ndarray:
        starts = self.window_starts[stream]
        parts, at = [], start
        while at < end:
            w = int(np.searchsorted(starts, at, side="right")) - 1
            stop = min(end, int(starts[w + 1]))
            parts.append(self.window_order(stream, w)[at - starts[w]:stop - starts[w]])
            at = stop
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def __getitem__(self, span: slice) -> np.ndarray:
        """The sample ids at positions [span.start, span.stop)."""
        B, S = self.batch, self.streams
        p, end, parts = span.start, min(span.stop, self.samples), []
        while p < min(end, self.bulk):
            j, o = divmod(p, B)
            take = min(B - o, end - p)
            parts.append(self._stream_samples(j % S, (j // S) * B + o, (j // S) * B + o + take))
            p += take
        if p < end:
            parts.append(self.tail[p - self.bulk:end - self.bulk])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def all(self) -> np.ndarray:
        return self[0:self.samples]

    def block_of(self, ids: np.ndarray) -> np.ndarray:
        """The block of each sample id (a sample outside the epoch gets its preceding block's)."""
        return np.searchsorted(self.first, ids, side="right") - 1

    def reads_in_blocks(self, world: int) -> bool:
        """Whether `world` ranks each read whole blocks: the world size divides the stream count."""
        return self.streams % world == 0

    def loader_workers(self, world: int, wanted: int) -> int:
        """Loader workers per rank that keep each stream with one worker: the most, up to `wanted`,
        whose number times `world` divides the stream count (`wanted` when the world does not)."""
        if not self.reads_in_blocks(world) or wanted <= 1:
            return wanted
        per_rank = self.streams // world
        return max(d for d in range(1, wanted + 1) if per_rank % d == 0)


class Permutation:
    """`epoch_order` behind the interface of BlockOrder (data.order: permutation): every block is
    one sample."""

    def __init__(self, counts: list[int], seed: int, epoch: int, units: np.ndarray | None = None, per_epoch: int | None = None,
                 batch_size: int = 1):
        in_pass = int(sum(counts)) if units is None else int((units >= 0).sum())
        k = slices_per_pass(in_pass, per_epoch, batch_size)
        pass_no, part = divmod(epoch, k)
        self.order = epoch_order(counts, seed, pass_no, units)[part * in_pass // k:(part + 1) * in_pass // k]
        self.samples = int(self.order.size)

    def __getitem__(self, span: slice) -> np.ndarray:
        return self.order[span]

    def all(self) -> np.ndarray:
        return self.order

    def block_of(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids)

    def reads_in_blocks(self, world: int) -> bool:
        return False

    def loader_workers(self, world: int, wanted: int) -> int:
        return wanted


def make_order(kind: str, counts: list[int], seed: int, epoch: int, batch_size: int, block: int, window: int, streams: int,
               units: np.ndarray | None = None, paired: bool = False, per_epoch: int | None = None):
    """The epoch's order of `kind` (data.order: blocks or permutation); `per_epoch`:
    data.samples_per_epoch."""
    if kind == "blocks":
        return BlockOrder(counts, seed, epoch, batch_size, block, window, streams, units, paired, per_epoch)
    return Permutation(counts, seed, epoch, units, per_epoch, batch_size)


def block_reads(order, ids: np.ndarray) -> int:
    """The GETs a loader worker that takes the samples `ids` in an epoch makes: one per run of
    consecutive sample ids inside a block (the loader fetches a block's samples together)."""
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if not ids.size:
        return 0
    blocks = order.block_of(ids)
    return 1 + int(((np.diff(ids) != 1) | (np.diff(blocks) != 0)).sum())
