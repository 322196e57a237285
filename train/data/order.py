"""The order of an epoch and where a run stands in it.

An epoch is one permutation of all train samples, a pure function of (seed, epoch, the manifest's
train shards): the number of ranks and loader workers does not enter it. Sample ids number the
samples shard by shard in manifest order (shard 0's samples, then shard 1's, ...).

Ranks take the order in global batches of `batch_size x world` samples: in global batch k, rank r
gets positions [P + k*G + r*B, P + k*G + (r+1)*B), P being where this attempt started the epoch.
So the state of the stream is one number, the position: samples of the epoch's order handed out
before the current global batch. Any world size can go on from it.

The end of an epoch: every rank runs the same number of batches, in whole optimizer steps, so the
last `(samples - P) mod (batch_size x world x grad_accum)` samples of the order (fewer than one
optimizer step's worth) are not trained on in that epoch. The next epoch is a new permutation, so
each epoch leaves out different ones.
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


def rank_slice(position: int, batch: int, rank: int, batch_size: int, world: int) -> tuple[int, int]:
    """The positions of a rank's `batch`-th batch after `position`: [start, end)."""
    start = position + batch * batch_size * world + rank * batch_size
    return start, start + batch_size
