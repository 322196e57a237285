"""The train set's index at 30 M samples, without data: memory per rank and per node, and start-up.

A synthetic index of `--samples` samples (`--shard-samples` a shard, each sample 20-60 KB of tar)
is written in the node-index format (train/data/index.py). Then one node's processes run as
training runs them: `--ranks` rank processes (spawned), each mapping the index and the epoch's
block order (64 streams, as the default; the first process of the node computes it and writes it
beside the index), looking up its first batches' byte ranges, and each
starting `--workers` loader workers from a fork server that receive the TrainSet pickled (the
folder's path) and do the same for their own batches. Once all have, every process reports RSS,
PSS (its share of pages mapped by several processes, /proc/self/smaps_rollup) and its private
anonymous memory, at the same moment: the node's figure is the sum of PSS. "Index + order"
subtracts each process's PSS before it mapped the index (the interpreter and its imports).

Separately, the node's one-time build: the shards' `.idx.json` indexes of `--json-samples` samples
(local files) read into the compact arrays, timed and scaled to `--samples`.

Usage: python bench/index_memory.py [--samples 30000000] [--shard-samples 1000] [--ranks 8] [--workers 2]
                                    [--json-samples 1000000] [--batches 200]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def memory() -> dict:
    """This process's RSS, PSS and private anonymous memory (Anonymous) in MB."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Rss", "Pss", "Anonymous"):
            out[name.lower()[:4]] = int(value.split()[0]) / 1024
    return out


def synthesize(folder: Path, samples: int, shard_samples: int, seed: int = 0) -> list[int]:
    """A node index of `samples` samples: shard counts, each shard's samples end to end."""
    from train.data.index import node_index  # noqa: PLC0415

    counts = [shard_samples] * (samples // shard_samples) + ([samples % shard_samples] if samples % shard_samples else [])

    def build():
        sizes = np.random.default_rng(seed).integers(20_000, 60_000, samples, dtype=np.int64) // 512 * 512 + 1024
        ends = np.cumsum(sizes)
        first = np.repeat(np.cumsum(counts) - np.asarray(counts), counts)
        shard_start = ends[first] - sizes[first]  # each shard's offsets start at 0
        ends -= shard_start
        return (ends - sizes).astype(np.uint32), ends.astype(np.uint32), None

    node_index(folder, build)
    return counts


def _touch(train, order, rank: int, world: int, batch: int, batches: list[int]) -> int:
    """The byte ranges of these batches of a rank (what the reader looks up before its GETs)."""
    from train.data.order import rank_slice  # noqa: PLC0415

    total = 0
    for b in batches:
        ids = order[slice(*rank_slice(0, b, rank, batch, world))]
        total += int((train.ends[ids].astype(np.int64) - train.starts[ids]).sum())
    return total


def epoch_order(train, batch: int, shared: bool):
    """The epoch's block order as training gets it (`shared`: computed once per node and mapped), or
    computed by this process itself (as before the node's order existed)."""
    from train.data.index import node_order  # noqa: PLC0415
    from train.data.order import BlockOrder  # noqa: PLC0415

    return node_order(train, 0, 0, batch, 32, 32, 64) if shared else BlockOrder(train.counts, 0, 0, batch, 32, 32, 64)


def loader_worker(train, rank: int, world: int, worker: int, workers: int, batch: int, batches: int, shared: bool, out, go) -> None:
    before = memory()
    order = epoch_order(train, batch, shared)
    _touch(train, order, rank, world, batch, list(range(worker, batches, workers)))
    out.put("ready")
    go.wait()  # every process of the node measures at once: a page mapped by several is split among them all
    out.put({"who": f"rank {rank} worker {worker}", "before": before, "after": memory()})


def rank_process(folder: str, counts: list[int], rank: int, world: int, workers: int, batch: int, batches: int, shared: bool,
                 out, go) -> None:
    from train.data.index import TrainSet, _map  # noqa: PLC0415

    before = memory()
    start = time.perf_counter()
    urls = [f"s3://bucket/shards/{i % 64:02x}/train/shard-{i:06d}.tar" for i in range(len(counts))]
    train = TrainSet(urls, counts, *_map(Path(folder)), folder=folder)
    order = epoch_order(train, batch, shared)
    _touch(train, order, rank, world, batch, [0])
    ready = time.perf_counter() - start
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["train.data.index", "train.data.order", "numpy"])
    procs = [context.Process(target=loader_worker, args=(train, rank, world, w, workers, batch, batches, shared, out, go)) for w in range(workers)]
    for p in procs:
        p.start()
    out.put("ready")
    go.wait()
    out.put({"who": f"rank {rank}", "before": before, "after": memory(), "ready_s": ready})
    for p in procs:
        p.join()


def json_build(samples: int, shard_samples: int) -> tuple[float, float]:
    """Seconds to read `samples` samples' worth of .idx.json shard indexes (local files) into the
    compact arrays, and the peak RSS in MB of the largest process of the build."""
    from data_pipeline import shard_index  # noqa: PLC0415
    from train.data.index import index_arrays  # noqa: PLC0415

    folder = Path(tempfile.mkdtemp(prefix="dfdc-bench-json-"))
    try:
        rng = np.random.default_rng(1)
        urls, counts = [], []
        for s in range(-(-samples // shard_samples)):
            n = min(shard_samples, samples - s * shard_samples)
            ends = np.cumsum(rng.integers(20_000, 60_000, n) // 512 * 512 + 1024)
            rows = [[f"dfdc_train_part_{s % 50}/v{s:06d}{i:04d}/f{i % 32:03d}_0", int(e - 30_000), int(e), i % 2, f"v{i // 32}.mp4"]
                    for i, e in enumerate(ends)]
            url = str(folder / f"shard-{s:06d}.tar")
            Path(shard_index.index_uri(url)).write_bytes(shard_index.encode(rows))
            urls.append(url)
            counts.append(n)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        from train.data.workers import fork_server  # noqa: PLC0415

        warm = fork_server().Process(target=time.sleep, args=(0,))  # as in training, where the rank started it at its start
        warm.start()
        warm.join()
        start = time.perf_counter()
        index_arrays(urls, counts)
        took = time.perf_counter() - start
        return took, max(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def node_run(cache: Path, counts: list[int], args, shared: bool) -> dict:
    """One node's ranks and loader workers, each mapping the index and getting the epoch's order
    (`shared`: the node's, mapped; else its own); the table of their memory and the figures."""
    spawn = mp.get_context("spawn")
    queue, go = spawn.Queue(), spawn.Event()
    start = time.perf_counter()
    procs = [spawn.Process(target=rank_process, args=(str(cache / "index"), counts, r, args.ranks, args.workers,
                                                      args.batch, args.batches, shared, queue, go))
             for r in range(args.ranks)]
    for p in procs:
        p.start()
    processes = args.ranks * (1 + args.workers)
    assert [queue.get() for _ in range(processes)] == ["ready"] * processes
    go.set()
    reports = [queue.get() for _ in range(processes)]
    for p in procs:
        p.join()
    wall = time.perf_counter() - start
    ranks = [r for r in reports if "ready_s" in r]
    workers = [r for r in reports if "ready_s" not in r]
    grown = [r["after"]["pss"] - r["before"]["pss"] for r in reports]
    private = [r["after"]["anon"] - r["before"]["anon"] for r in reports]
    node_pss = sum(r["after"]["pss"] for r in reports)
    files = sum(p.stat().st_size for p in cache.rglob("*.npy") if shared or ".order-" not in str(p)) / 1e6
    print(f"\n{args.ranks} ranks x {args.workers} loader workers (one node), block order of 64 streams, batch {args.batch}, "
          f"{'the order computed once per node and mapped' if shared else 'each process computing the order itself'}:")
    print("| | per rank | per loader worker | node (sum of PSS) |")
    print("|---|---|---|---|")
    print(f"| RSS, MB (max) | {max(r['after']['rss'] for r in ranks):.0f} | {max(r['after']['rss'] for r in workers):.0f} | |")
    print(f"| PSS, MB (max) | {max(r['after']['pss'] for r in ranks):.0f} | {max(r['after']['pss'] for r in workers):.0f} | {node_pss:.0f} |")
    print(f"| index + order, MB (PSS grown, max) | {max(grown[i] for i, r in enumerate(reports) if 'ready_s' in r):.0f} | "
          f"{max(grown[i] for i, r in enumerate(reports) if 'ready_s' not in r):.0f} | {sum(grown):.0f} |")
    print(f"| of which private (anonymous memory grown, max) | {max(private[i] for i, r in enumerate(reports) if 'ready_s' in r):.0f} | "
          f"{max(private[i] for i, r in enumerate(reports) if 'ready_s' not in r):.0f} | {sum(private):.0f} |")
    print(f"\nshared files (index and the epoch's order, mapped; their pages count once in the node's PSS): {files:.0f} MB")
    ready = [r["ready_s"] for r in ranks]
    print(f"\nstart-up of a rank once the node's index exists (map it, compute the epoch's order, look up its first batch): "
          f"{min(ready):.2f}-{max(ready):.2f} s ({args.ranks} at once on {os.cpu_count()} CPUs); whole node run {wall:.1f} s")
    return {"node_pss_mb": round(node_pss), "index_and_order_mb": round(sum(grown)), "private_mb": round(sum(private)),
            "shared_files_mb": round(files), "rank_ready_s": [round(x, 2) for x in ready]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=30_000_000)
    ap.add_argument("--shard-samples", type=int, default=1_000)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=200, help="batches each rank's workers look up")
    ap.add_argument("--json-samples", type=int, default=1_000_000)
    args = ap.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="dfdc-bench-index-"))
    try:
        start = time.perf_counter()
        counts = synthesize(cache / "index", args.samples, args.shard_samples)
        written = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (cache / "index").iterdir()) / 1e6
        print(f"{args.samples:,} samples in {len(counts):,} shards: index {size:.0f} MB on disk (synthesised and written in {written:.1f} s)")

        figures = {}
        for shared in (False, True):
            figures["node" if shared else "process"] = node_run(cache, counts, args, shared)

        took, peak = json_build(args.json_samples, args.shard_samples)
        scaled = took * args.samples / args.json_samples
        print(f"\nthe node's one-time build from .idx.json shard indexes (local files, this machine): {args.json_samples:,} samples "
              f"in {took:.1f} s on {os.cpu_count()} CPUs, largest process's peak RSS {peak:.0f} MB; at {args.samples:,} samples ~{scaled:.0f} s (scaled, not measured)")
        print(json.dumps({"samples": args.samples, "index_mb": round(size), **figures,
                          "json_build_s_per_million": round(took * 1e6 / args.json_samples, 2)}))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
