"""The block order at DFDC size, without data: a synthetic train set laid out as ingest writes DFDC
(each source group an original and its fakes, each video's crops in frame order, groups after one
another into shards), the orders computed by the loader's own code (train/data/order.py), and
what they cost and how random they are, side by side in one run:

  reads       GETs per sample and bytes read per sample byte of one epoch, for world sizes 1-64
              with 8 loader workers a rank (cut down as the loader cuts them), summing every loader
              worker's GETs as the loader makes them (one per run of its consecutive samples in a
              block; train/data/order.py block_reads); the permutation reads one GET per sample
  diversity   per rank batch: distinct source groups (an original and its fakes), distinct videos
              and distinct shards, the block order beside the permutation (mean over batches)
  start-up    seconds and peak memory of computing one epoch's block order over the whole set

Usage: python bench/block_order.py [--videos 120000] [--fakes-per-real 5] [--frames 32] [--shard-samples 16000] [--batch 32]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def layout(videos: int, fakes_per_real: int, frames: int, shard_samples: int):
    """Shard sample counts, and each sample's video and source group, shard by shard."""
    group = np.repeat(np.arange(videos // (1 + fakes_per_real)), (1 + fakes_per_real) * frames)
    video = np.repeat(np.arange(group.size // frames), frames)
    n = group.size
    counts = [shard_samples] * (n // shard_samples) + ([n % shard_samples] if n % shard_samples else [])
    return counts, video, group


def worker_ids(order, world: int, workers: int, batch: int):
    """Each (rank, loader worker)'s sample ids over one epoch, as the loader hands them out."""
    from train.data.order import batches_left, rank_slice  # noqa: PLC0415

    n = batches_left(order.samples, 0, batch, world)
    for r in range(world):
        for w in range(workers):
            spans = [rank_slice(0, k, r, batch, world) for k in range(w, n, workers)]
            yield np.concatenate([order[a:b] for a, b in spans]) if spans else np.zeros(0, dtype=np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=120_000)
    ap.add_argument("--fakes-per-real", type=int, default=5)
    ap.add_argument("--frames", type=int, default=32, help="crops per video (ingest.frames_per_video, one face)")
    ap.add_argument("--shard-samples", type=int, default=16_000, help="crops per shard (~512 MB of 32 KB crops)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--worlds", default="1,2,4,8,16,32,64")
    ap.add_argument("--diversity-batches", type=int, default=4000)
    args = ap.parse_args()

    from dfdc.config import DataConfig  # noqa: PLC0415
    from train.data.order import BlockOrder, block_reads, locate, make_order  # noqa: PLC0415

    d = DataConfig()
    counts, video, group = layout(args.videos, args.fakes_per_real, args.frames, args.shard_samples)
    print(f"{sum(counts):,} samples ({args.videos:,} videos of {args.frames} crops, {len(counts)} shards of "
          f"{args.shard_samples:,}); batch {args.batch}; blocks of {d.block_samples}, windows of {d.window_blocks} "
          f"blocks, {d.streams} streams (the defaults)")

    t0, rss0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    blocks = BlockOrder(counts, 0, 0, args.batch, d.block_samples, d.window_blocks, d.streams)
    took, rss = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"start-up: one epoch's block order in {took:.2f} s, peak RSS +{(rss - rss0) / 1024:.0f} MB "
          f"({blocks.first.size:,} blocks, {blocks.streams} streams)")

    print(f"{'world':>5} {'workers':>7} {'blocks: GETs/sample':>20} {'samples/GET':>11} {'bytes/sample byte':>17} "
          f"{'permutation: GETs/sample':>24}")
    for world in map(int, args.worlds.split(",")):
        workers = blocks.loader_workers(world, 8)
        taken = list(worker_ids(blocks, world, workers, args.batch))
        samples = sum(t.size for t in taken)
        gets = sum(block_reads(blocks, t) for t in taken)
        # Each GET is one run of consecutive samples: the bytes read are the samples' own.
        print(f"{world:5d} {workers:7d} {gets / samples:20.4f} {samples / gets:11.1f} {1.0:17.2f} {1.0:24.1f}")

    perm = make_order("permutation", counts, 0, 0, args.batch, 1, 1, 1)
    print(f"{'order':12} {'source groups/batch':>20} {'videos/batch':>13} {'shards/batch':>13}  (mean over "
          f"{args.diversity_batches} batches of {args.batch})")
    means = {}
    for name, order in (("blocks", blocks), ("permutation", perm)):
        stats = []
        for k in range(args.diversity_batches):
            ids = order[k * args.batch:(k + 1) * args.batch]
            stats.append((len(np.unique(group[ids])), len(np.unique(video[ids])), len(np.unique(locate(ids, counts)[0]))))
        means[name] = np.mean(stats, axis=0)
        print(f"{name:12} {means[name][0]:20.2f} {means[name][1]:13.2f} {means[name][2]:13.2f}")
    ratio = means["blocks"] / means["permutation"]
    print(f"{'blocks/perm.':12} {ratio[0]:19.2f}x {ratio[1]:12.2f}x {ratio[2]:12.2f}x")


if __name__ == "__main__":
    main()
