"""The epoch order and the ledger's reading rules, without storage services (the ledger on a folder)."""

from __future__ import annotations

import numpy as np

from train.data import ledger
from train.data.order import (BlockOrder, batches_left, block_reads, epoch_order, epoch_sizes, locate, make_order, rank_slice,
                              sample_units, slices_per_pass)


def test_an_epoch_is_a_permutation_fixed_by_seed_and_epoch_only():
    counts = [5, 17, 40, 3]
    order = epoch_order(counts, seed=7, epoch=2)
    assert sorted(order.tolist()) == list(range(65))
    assert np.array_equal(order, epoch_order(counts, 7, 2))
    assert not np.array_equal(order, epoch_order(counts, 7, 3)) and not np.array_equal(order, epoch_order(counts, 8, 2))
    shard, i = locate(order, counts)
    assert all(0 <= i[j] < counts[shard[j]] for j in range(len(order)))
    # Consecutive samples come from many shards: a window of 8 draws from at least 3 of the 4.
    assert min(len(set(shard[j:j + 8])) for j in range(0, 56, 8)) >= 2


def _paired_corpus():
    """Samples as ingest lays them out: per group, an original's frames then each fake's, two tracks
    at some frames; one fake has a frame the original lacks (a lone sample)."""
    labels, keys = [], []
    for g in range(6):
        for video, label in ((f"g{g}/real.mp4", 0), (f"g{g}/fake1.mp4", 1), (f"g{g}/fake2.mp4", 1)):
            for frame in (0, 10, 20) + ((30,) if video.endswith("fake2.mp4") and g == 0 else ()):
                for face in (0, 1) if frame == 10 else (0,):
                    labels.append(label)
                    keys.append(f"g{g}/f{frame:05d}-{face:02d}")
    return labels, keys


def test_paired_order_keeps_each_real_crop_next_to_its_fakes_and_every_sample_once():
    labels, keys = _paired_corpus()
    units = sample_units(labels, keys, fakes=True)
    order = epoch_order([len(keys)], seed=3, epoch=1, units=units)
    assert sorted(order.tolist()) == list(range(len(keys)))  # still one permutation of every sample
    assert np.array_equal(order, epoch_order([len(keys)], 3, 1, units))
    assert not np.array_equal(order, epoch_order([len(keys)], 3, 2, units))
    runs = [keys[i] for i in order]
    # each pair key's samples are consecutive: the number of runs of equal keys is the number of keys
    assert sum(1 for j in range(len(runs)) if j == 0 or runs[j] != runs[j - 1]) == len(set(keys))
    for j in range(len(runs)):
        if j == 0 or runs[j] != runs[j - 1]:
            members = [labels[i] for i in order[j:j + 3] if keys[i] == runs[j]]
            assert members == sorted(members)  # real first (sample id order within a unit)
    assert sum(1 for k in set(keys) if keys.count(k) == 1) == 1  # the lone fake frame is its own unit


def test_samples_whose_metadata_does_not_parse_stay_in_the_epoch_on_their_own():
    labels, keys = [0, 1, None, 1], ["a/f0", "a/f0", None, None]
    units = sample_units(labels, keys, fakes=False)
    assert units[1] == -1 and units[3] == -1 and units[2] >= 0 and units[0] != units[2]
    assert sorted(epoch_order([4], 0, 0, sample_units(labels, keys, fakes=True)).tolist()) == [0, 1, 2, 3]


def test_an_epoch_without_fakes_holds_every_real_sample_once():
    labels, keys = _paired_corpus()
    for pairs in (None, keys):
        order = epoch_order([len(keys)], seed=0, epoch=0, units=sample_units(labels, pairs, fakes=False))
        assert sorted(order.tolist()) == [i for i, y in enumerate(labels) if y == 0]


def _consumed(samples, positions_and_worlds, batch_size, accum=1):
    """Positions every rank takes over attempts that each start at `position` with `world` ranks and
    run `steps` optimizer steps (None: to the end of the epoch)."""
    taken = []
    for position, world, steps in positions_and_worlds:
        n = batches_left(samples, position, batch_size, world, accum)
        n = n if steps is None else min(n, steps * accum)
        for k in range(n):
            for r in range(world):
                taken += list(range(*rank_slice(position, k, r, batch_size, world)))
    return taken


def test_positions_cover_the_order_once_across_changes_of_world_size():
    samples, b = 103, 4
    # 2 ranks for 5 steps (position 40), then 3 ranks to the end.
    taken = _consumed(samples, [(0, 2, 5), (40, 3, None)], b)
    assert len(taken) == len(set(taken)) and taken == list(range(len(taken)))
    assert samples - len(taken) < b * 3  # the remainder: less than one global batch of the last world size
    # Every rank runs the same number of batches, in whole optimizer steps.
    assert batches_left(samples, 0, b, 2, accum := 3) % accum == 0 and batches_left(samples, 0, b, 2, 3) == 12
    assert batches_left(10, 0, 4, 3) == 0


def test_ledger_keeps_each_attempts_batches_below_the_next_resume(tmp_path):
    run = str(tmp_path / "run")
    keys = [f"k{i}" for i in range(12)]
    order = keys  # the test's "permutation": identity
    a0 = ledger.start_attempt(run, {"world_size": 2, "batch_size": 2, "grad_accum": 1, "dataset": "-"})
    a1 = ledger.start_attempt(run, {"world_size": 1, "batch_size": 2, "grad_accum": 1, "dataset": "-"})
    assert (a0, a1) == (0, 1)
    for rank in (0, 1):  # attempt 0: two global batches (positions 0..7), then it died; its checkpoint was at 4
        book = ledger.Ledger(run, a0, rank)
        book.begin_epoch(0, None)
        for g in (0, 4):
            p = g + 2 * rank
            book.add(p, order[p:p + 2], [])
        book.flush()
    book = ledger.Ledger(run, a1, 0)  # attempt 1 on one rank resumes at 4 and goes to the end
    book.begin_epoch(0, resumed_from=4)
    for p in range(4, 12, 2):
        book.add(p, order[p:p + 1], order[p + 1:p + 2])  # one unreadable sample per batch: still consumed
    book.flush()
    [result] = ledger.check(run, keys, allow_skipped=True)
    assert result.ok and result.once == 12 and result.never == 0 and result.skipped == 4, result
    assert result.attempts == [0, 1] and result.end == 12 and result.step == 2
    # Samples skipped as unreadable fail the check unless allowed.
    assert not ledger.check(run, keys)[0].ok
    # Each batch is compared with the epoch's order, recomputed: here the identity; another order fails.
    assert ledger.check(run, keys, order_of=lambda epoch: keys, allow_skipped=True)[0].ok
    [shuffled] = ledger.check(run, keys, order_of=lambda epoch: keys[1:] + keys[:1], allow_skipped=True)
    assert not shuffled.ok and shuffled.misplaced == 6, shuffled
    # Epochs up to the run's last checkpoint (epoch 2, position 5: epochs 0, 1 and 2) that the ledger lacks.
    checked = ledger.check(run, keys, allow_skipped=True, through=(2, 5))
    assert [(r.epoch, r.missing, r.ok) for r in checked] == [(0, False, True), (1, True, False), (2, True, False)]
    # An epoch that is part of a pass (data.samples_per_epoch): its samples are its order's, not every train key.
    part = keys[:8] + keys[10:]
    [sliced] = ledger.check(run, None, order_of=lambda epoch: part, allow_skipped=True)
    assert not sliced.ok and sliced.samples == 10 and sliced.unknown == 2, sliced  # k8, k9 belong to another epoch
    [sliced] = ledger.check(run, None, order_of=lambda epoch: keys, allow_skipped=True, through=(2, 5))[1:2]
    assert sliced.missing and sliced.samples == 12
    # Without its resume line, attempt 1 reads as a start of the epoch over: attempt 0's batches are
    # dropped and positions 0..3 are a gap.
    path = tmp_path / "run/ledger/epoch-0/attempt-1-rank-0.jsonl"
    path.write_text("\n".join(path.read_text().splitlines()[1:]) + "\n")
    [broken] = ledger.check(run, keys)
    assert not broken.ok and broken.gaps == [(0, 4)] and broken.never == 4


def test_ledger_drops_batches_past_any_later_resume(tmp_path):
    """Attempt 2 fell back to an older checkpoint (position 2) than attempt 1 resumed from (4):
    attempt 0's batches at 2 and beyond were redone and must not count twice."""
    run = str(tmp_path / "run")
    keys = [f"k{i}" for i in range(8)]
    for a in range(3):
        ledger.start_attempt(run, {"world_size": 1, "batch_size": 2, "grad_accum": 1, "dataset": "-"})
    lines = {0: (None, [0, 2, 4]), 1: (4, [4]), 2: (2, [2, 4, 6])}
    for attempt, (resumed, positions) in lines.items():
        book = ledger.Ledger(run, attempt, 0)
        book.begin_epoch(0, resumed)
        for p in positions:
            book.add(p, keys[p:p + 2], [])
        book.flush()
    [result] = ledger.check(run, keys)
    assert result.ok and result.once == 8 and result.more_than_once == 0, result


def test_an_attempt_that_only_resumed_sets_the_remainder(tmp_path):
    """Resumed at 8 of 10 on 2 ranks (4 per step): no batch left, but the remainder rule is that
    attempt's (2 < 4), not the 1-rank attempt's (2 samples per step)."""
    run = str(tmp_path / "run")
    keys = [f"k{i}" for i in range(10)]
    ledger.start_attempt(run, {"world_size": 1, "batch_size": 2, "grad_accum": 1, "dataset": "-"})
    ledger.start_attempt(run, {"world_size": 2, "batch_size": 2, "grad_accum": 1, "dataset": "-"})
    book = ledger.Ledger(run, 0, 0)
    book.begin_epoch(0, None)
    for p in (0, 2, 4, 6):
        book.add(p, keys[p:p + 2], [])
    book.flush()
    book = ledger.Ledger(run, 1, 0)
    book.begin_epoch(0, 8)
    book.flush()
    [result] = ledger.check(run, keys)
    assert result.ok and result.attempts == [0, 1] and result.step == 4 and result.never == 2, result


def test_keys_end_at_the_first_dot_of_the_file_name():
    from data_pipeline.shard_index import split_name

    assert split_name("ff.c23/abc%2Emp4/f00001-00.jpg") == ("ff.c23/abc%2Emp4/f00001-00", "jpg")
    assert split_name("s00001.json") == ("s00001", "json")


def _worker_ids(order, position, world, workers, batch_size, samples):
    """{(rank, loader worker): the sample ids it takes} from `position` to the end of the epoch."""
    n = batches_left(samples, position, batch_size, world)
    out = {}
    for r in range(world):
        for w in range(workers):
            spans = [rank_slice(position, k, r, batch_size, world) for k in range(w, n, workers)]
            out[r, w] = np.concatenate([order[a:b] for a, b in spans]) if spans else np.zeros(0, dtype=np.int64)
    return out


def test_the_block_order_is_one_pass_fixed_by_seed_and_epoch_and_read_a_block_per_get():
    """Uneven shards, 64 x 32-sample blocks' worth of streams: every sample once, the same order for
    any world size; a world size that divides the stream count reads every block whole with one GET
    (GETs per sample = 1/block), one that does not reads more GETs but never more bytes."""
    counts = [5000, 3100, 7000, 777, 4500]
    o = BlockOrder(counts, seed=5, epoch=1, batch_size=32, block=32, window=32, streams=16)
    flat = o.all()
    assert o.samples == sum(counts) and np.array_equal(np.sort(flat), np.arange(sum(counts)))
    assert np.array_equal(flat, BlockOrder(counts, 5, 1, 32, 32, 32, 16).all())
    assert not np.array_equal(flat[:1000], BlockOrder(counts, 5, 2, 32, 32, 32, 16).all()[:1000])
    assert np.array_equal(o[1000:1100], flat[1000:1100]) and np.array_equal(o[20300:o.samples + 5], flat[20300:])
    blocks = o.first.size
    for world, workers in [(1, 1), (2, 2), (4, 4), (16, 1), (8, 2)]:
        assert o.reads_in_blocks(world) and o.loader_workers(world, workers) == workers
        taken = _worker_ids(o, 0, world, workers, 32, o.samples)
        ids = np.concatenate(list(taken.values()))
        assert ids.size == len(set(ids.tolist())) and sum(counts) - ids.size < 32 * world
        gets = sum(block_reads(o, v) for v in taken.values())
        assert gets <= blocks + 2 * o.streams, (world, workers, gets, blocks)  # the epoch's last chunks may split a block
    # A world that does not divide the stream count: still every sample once; each read is a sample's bytes only.
    assert not o.reads_in_blocks(3) and o.loader_workers(3, 2) == 2
    taken = _worker_ids(o, 0, 3, 1, 32, o.samples)
    assert sum(v.size for v in taken.values()) == len(set(np.concatenate(list(taken.values())).tolist()))
    assert sum(block_reads(o, v) for v in taken.values()) > 2 * blocks
    # Loader workers are cut down so that each stream stays with one of them.
    assert o.loader_workers(4, 3) == 2 and o.loader_workers(16, 8) == 1


def test_a_batch_of_the_block_order_draws_from_as_many_blocks_as_it_has_samples():
    """Each window spreads its blocks' samples evenly: a 32-sample batch holds samples of about 32
    different blocks, as a permutation's would (of 32 different places in the dataset)."""
    counts = [20000] * 8
    o = BlockOrder(counts, seed=0, epoch=0, batch_size=32, block=32, window=32, streams=8)
    distinct = [len(np.unique(o.block_of(o[p:p + 32]))) for p in range(0, o.samples - 32, 32)]
    assert np.mean(distinct) > 0.95 * 32 and min(distinct) >= 16, (np.mean(distinct), min(distinct))
    # A dataset smaller than a window per stream: blocks of one sample, fewer streams (a divisor
    # of the 64 asked), batches as mixed as a permutation's.
    small = BlockOrder([100, 90, 70], seed=0, epoch=0, batch_size=8, block=32, window=32, streams=64)
    assert small.block == 1 and small.streams == 8 and np.array_equal(np.sort(small.all()), np.arange(260))
    assert np.mean([len(np.unique(small.block_of(small[p:p + 8]))) for p in range(0, 256, 8)]) == 8
    assert BlockOrder([500, 500], seed=0, epoch=0, batch_size=8, block=32, window=4, streams=8).block == 1000 // 32
    assert BlockOrder([5000, 5000], seed=0, epoch=0, batch_size=8, block=32, window=4, streams=8).block == 32


def test_block_order_keeps_pairs_together_and_real_only_epochs_read_runs_of_reals():
    labels, keys = _paired_corpus()
    units = sample_units(labels, keys, fakes=True)
    o = BlockOrder([len(keys)], seed=3, epoch=1, batch_size=4, block=4, window=3, streams=2, units=units, paired=True)
    order = o.all()
    assert np.array_equal(np.sort(order), np.arange(len(keys)))
    runs = [keys[i] for i in order]
    # A pair key's samples follow one another: a unit is only ever cut where a batch-sized chunk
    # ends (its rest then comes in this rank's next chunk of the same stream), or where one of the
    # 2 streams ends (a block that the stream's end cuts).
    seen, elsewhere = set(), 0
    for j, k in enumerate(runs):
        elsewhere += k in seen and runs[j - 1] != k and j % 4 != 0
        seen.add(k)
    assert elsewhere <= 2 * o.streams
    # A block never cuts a unit: every unit lies in one block.
    blocks = o.block_of(np.arange(len(keys)))
    assert all(len({blocks[i] for i in range(len(keys)) if units[i] == u}) == 1 for u in set(units.tolist()))
    # Real crops only: blocks hold runs of consecutive real samples (one range of the tar each).
    reals = BlockOrder([len(keys)], seed=0, epoch=0, batch_size=4, block=4, window=3, streams=2,
                       units=sample_units(labels, None, fakes=False))
    assert sorted(reals.all().tolist()) == [i for i, y in enumerate(labels) if y == 0]
    assert all(labels[i] == 0 for f, n in zip(reals.first, reals.size) for i in range(f, f + n))


def test_a_pass_is_cut_into_the_nearest_whole_number_of_epochs():
    """data.samples_per_epoch: k = round(pass / samples_per_epoch) epochs a pass, whatever the world size."""
    for samples, per_epoch, k in [(1000, 100, 10), (1049, 100, 10), (1050, 100, 11), (3_810_000, 120_000, 32), (105, 70, 2),
                                  (149, 100, 1), (500, None, 1), (500, 500, 1), (500, 900, 1)]:
        assert slices_per_pass(samples, per_epoch, 4) == k
        if per_epoch and k > 1:
            assert abs(samples / k - per_epoch) <= per_epoch / (2 * k) + 1e-9
    assert slices_per_pass(50, 4, 8) == 6  # no epoch below a batch


def test_epochs_of_a_pass_are_its_blocks_in_parts_each_block_read_whole_and_every_sample_once_a_pass():
    """The block order with data.samples_per_epoch: a pass's k epochs hold every sample once
    between them, each epoch a part of the pass's permuted blocks that it reads as a whole epoch
    reads its blocks (one GET a block at world sizes that divide the stream count), batches as
    mixed as a whole epoch's; the next pass is another permutation; the sizes come without
    building the orders, and the ledger's recomputed order is the loader's."""
    counts = [20000, 12400, 28000, 3108, 18000]
    per_epoch, b = 16000, 32
    k = slices_per_pass(sum(counts), per_epoch, b)
    assert k == 5
    epochs = [BlockOrder(counts, seed=5, epoch=e, batch_size=b, block=32, window=32, streams=8, per_epoch=per_epoch) for e in range(2 * k)]
    for p in range(2):
        ids = np.concatenate([o.all() for o in epochs[p * k:(p + 1) * k]])
        assert np.array_equal(np.sort(ids), np.arange(sum(counts)))
    assert not np.array_equal(epochs[0].all()[:500], epochs[k].all()[:500])
    assert [o.samples for o in epochs] == epoch_sizes("blocks", counts, 5, range(2 * k), b, 32, 32, 8, per_epoch=per_epoch)
    assert all(abs(o.samples - sum(counts) / k) < 0.05 * per_epoch for o in epochs)
    assert np.array_equal(make_order("blocks", counts, 5, 7, b, 32, 32, 8, per_epoch=per_epoch).all(), epochs[7].all())
    whole = BlockOrder(counts, seed=5, epoch=0, batch_size=b, block=32, window=32, streams=8)
    mixed = np.mean([len(np.unique(whole.block_of(whole[p:p + b]))) for p in range(0, whole.samples - b, b)])
    for o in epochs[:k]:
        assert o.block == 32 and o.streams == 8
        blocks_read = np.unique(o.block_of(o.all())).size
        for world, workers in [(1, 1), (4, 2), (8, 1)]:
            taken = _worker_ids(o, 0, world, workers, b, o.samples)
            gets = sum(block_reads(o, v) for v in taken.values())
            assert gets <= blocks_read + 2 * o.streams, (world, gets, blocks_read)
        distinct = [len(np.unique(o.block_of(o[p:p + b]))) for p in range(0, o.samples - b, b)]
        assert np.mean(distinct) >= 0.95 * mixed, (np.mean(distinct), mixed)
    # The permutation order: the pass's permutation in k parts
    perm = [make_order("permutation", counts, 5, e, b, 32, 8, 16, per_epoch=per_epoch) for e in range(k)]
    assert np.array_equal(np.concatenate([o.all() for o in perm]), epoch_order(counts, 5, 0))
    assert [o.samples for o in perm] == epoch_sizes("permutation", counts, 5, range(k), b, 32, 8, 16, per_epoch=per_epoch)
    # Unsliced epochs are what they were before the setting existed
    assert np.array_equal(make_order("blocks", counts, 5, 3, b, 32, 8, 16).all(), BlockOrder(counts, 5, 3, b, 32, 8, 16).all())
