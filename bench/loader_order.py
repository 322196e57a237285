"""The epoch order's price: the training loader's samples/s and read amplification with an epoch in
blocks of consecutive samples, one GET a block (`data.order: blocks`, the default), as one
permutation of the samples read by one ranged GET each (`data.order: permutation`), and as shards
drawn with replacement and streamed whole (`data.order: resampled`), on the same shards on a local
S3 server (rclone), in one run.

  speed       samples/s delivered as training tensors (decode + augment), 1 rank, 1 and 2 loader
              workers (--workers), after 2 warm-up batches; the two orders run in turn, `--rounds` times each
              (runs on this kind of machine vary by 10-20%: one pair of runs cannot tell a few
              per cent), and the table shows each one's median and the spread of the ratio; also
              the S3 server's CPU per sample when it runs on this machine (found by its port): on
              these few cores it competes with the loader, which S3 itself does not
  accounting  through a counting HTTP proxy in front of the server (no loader workers, so nothing
              is read ahead and left unused): bytes fetched per byte of the samples in the train
              split, GET requests, and how many train samples one epoch's batches saw once, never
              and more than once; blocks and the permutation also with 2 ranks (their bytes summed)
  capped      samples/s of blocks and of the permutation (no loader workers) through a proxy that
              answers GETs past `--cap-ratio` times fewer a second than the uncapped blocks'
              samples/s with 503 SlowDown (tests/flaky_proxy.py capped: S3's per-prefix cap,
              scaled to this machine), beside the same proxy uncapped; the loader backs off and
              every batch still comes. Then the same with the largest --workers count of loader
              workers, in a child process that starts the proxy before its loader's fork server
              (loader workers keep the environment, so the endpoint, of the moment it started)

Usage: python bench/loader_order.py [--size 128] [--batch 8] [--batches 80] [--workers 1,2] [--rounds 3] [--videos 96] [--merge-gap 0]
           [--block-samples 16] [--window-blocks 4] [--streams 8] [--dataset s3://...]
The block settings default to what the documented runs used, which a corpus of ~765 crops fills;
with training's defaults a corpus this small gets blocks of one sample (train/data/order.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter

import s3fs
from rich.progress import track


def server_process(endpoint: str):
    """The process serving `endpoint` on this machine (its CPU time is the server's share of the
    cores, which S3 itself does not take from a training node), or None."""
    import psutil  # noqa: PLC0415

    port = int(endpoint.rsplit(":", 1)[1]) if endpoint.count(":") == 2 else None
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
            return psutil.Process(c.pid)
    return None


def speed(train, urls, cfg, n: int, server) -> tuple[float, float]:
    """samples/s, and the server's CPU ms per sample meanwhile (nan if unknown)."""
    from train.data.loader import batches  # noqa: PLC0415

    it = batches(train, urls, cfg, n + 2)
    for _ in range(2):
        next(it)
    cpu = sum(server.cpu_times()[:2]) if server else float("nan")
    t, samples = time.perf_counter(), 0
    for batch in it:
        samples += len(batch.keys)
    cpu = sum(server.cpu_times()[:2]) - cpu if server else cpu
    return samples / (time.perf_counter() - t), cpu * 1e3 / samples


def accounting(train, urls, keys: list[str], cfg, world: int, endpoint: str) -> dict:
    """One epoch's batches of every rank, read through the counting proxy."""
    from tests.flaky_proxy import FlakyProxy  # noqa: PLC0415
    from train.data.loader import batches  # noqa: PLC0415
    from train.data.order import batches_left  # noqa: PLC0415

    cfg = dataclasses.replace(cfg, num_workers=0)
    per_rank = batches_left(train.samples, 0, cfg.batch_size, world)
    seen: Counter = Counter()
    with FlakyProxy(endpoint, lambda *_: None) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            for rank in range(world):
                for batch in batches(train, urls, cfg, per_rank, rank, world):
                    seen.update(batch.keys)
        finally:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            s3fs.S3FileSystem.clear_instance_cache()
    return {"bytes_per_sample_byte": proxy.bytes_served / train.bytes, "requests": proxy.forwarded,
            "once": sum(seen[k] == 1 for k in keys), "never": sum(seen[k] == 0 for k in keys),
            "more_than_once": sum(seen[k] > 1 for k in keys)}


def capped_runs(train, urls, cfg, n: int, cap_ratio: float) -> dict:
    """Blocks and the permutation through one proxy, uncapped, then capped at `cap_ratio` times below
    the blocks' uncapped samples/s, with `cfg.num_workers` loader workers (workers only in a process
    whose loader started after the proxy: see the module docstring)."""
    from tests.flaky_proxy import FlakyProxy, capped  # noqa: PLC0415

    runs, endpoint = {}, os.environ["AWS_ENDPOINT_URL"]
    with FlakyProxy(endpoint, lambda *_: None) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            for order in ("blocks", "permutation"):
                ocfg = dataclasses.replace(cfg, order=order)
                proxy.fail_when = lambda *_: None
                free, _ = speed(train, urls, ocfg, n, None)
                if order == "blocks":
                    cap = free / cap_ratio
                proxy.fail_when, before = capped(cap), proxy.injected["503"]
                rate, _ = speed(train, urls, ocfg, n, None)
                runs[order] = {"uncapped": free, "capped": rate, "ratio": rate / free, "refused_503": proxy.injected["503"] - before}
        finally:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            s3fs.S3FileSystem.clear_instance_cache()
    return {"cap": cap, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="crop size (px)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=80, help="timed batches per speed run")
    ap.add_argument("--workers", default="1,2", help="loader worker counts to time, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="speed runs of each order and worker count, taken in turn")
    ap.add_argument("--videos", type=int, default=96, help="synthetic videos to ingest")
    ap.add_argument("--dataset", help="an ingested dataset on S3 (with manifest.json) instead of a synthetic one")
    ap.add_argument("--merge-gap", type=int, default=0, help="data.merge_gap_bytes for the permutation order")
    # Not the training defaults (32, 32, 64): those need 65,536 samples to keep blocks of 32, and on
    # this corpus's few hundred they shrink to one sample, the permutation under another name.
    ap.add_argument("--block-samples", type=int, default=16, help="data.block_samples of the block order")
    ap.add_argument("--window-blocks", type=int, default=4, help="data.window_blocks of the block order")
    ap.add_argument("--streams", type=int, default=8, help="data.streams of the block order")
    ap.add_argument("--cap-ratio", type=float, default=8.0, help="the capped proxy's GET/s: this many times below samples/s")
    ap.add_argument("--capped-workers-only", action="store_true", help=argparse.SUPPRESS)  # the child process (see docstring)
    args = ap.parse_args()

    from train_step import dataset  # noqa: PLC0415  (bench/: the same synthetic corpus)

    from data_pipeline import manifest as mf  # noqa: PLC0415
    from data_pipeline import shard_index  # noqa: PLC0415
    from dfdc.config import load_config  # noqa: PLC0415
    from train.data.ledger import train_keys  # noqa: PLC0415
    from train.data.index import train_set_of  # noqa: PLC0415

    cfg = load_config(None, [
        f"data.image_size={args.size}", f"data.batch_size={args.batch}", "data.shuffle_buffer=100",
        f"data.merge_gap_bytes={args.merge_gap}", f"data.block_samples={args.block_samples}",
        f"data.window_blocks={args.window_blocks}", f"data.streams={args.streams}",
        f"synth.videos={args.videos}", "ingest.frames_per_video=8", "ingest.faces_per_frame=1", f"ingest.crop_size={args.size}",
        "ingest.videos_per_task=4", "ingest.val_fraction=0", "ingest.shard_bytes=1000000",
    ])
    workers_max = max(int(w) for w in args.workers.split(","))
    with dataset(args, cfg) as root:
        urls = mf.shard_urls(root, mf.load(root), "train")
        shard_index.ensure(urls, log=lambda *_: None)
        train = train_set_of(root)
        if args.capped_workers_only:
            got = capped_runs(train, urls, dataclasses.replace(cfg.data, num_workers=workers_max), args.batches, args.cap_ratio)
            print(json.dumps(got))
            return
        keys = train_keys(root)
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        runs = [(order, int(workers)) for workers in args.workers.split(",") for order in ("blocks", "permutation", "resampled")]
        every: dict = {run: [] for run in runs}
        server_ms: dict = {run: [] for run in runs}
        server = server_process(endpoint)
        for order, workers in track(runs * args.rounds, description="speed"):
            rate, ms = speed(train, urls, dataclasses.replace(cfg.data, order=order, num_workers=workers), args.batches, server)
            every[order, workers].append(rate)
            server_ms[order, workers].append(ms)
        rates = {run: statistics.median(r) for run, r in every.items()}
        books = {}
        for order, world in track([("blocks", 1), ("blocks", 2), ("permutation", 1), ("permutation", 2), ("resampled", 1)],
                                  description="accounting"):
            books[order, world] = accounting(train, urls, keys, dataclasses.replace(cfg.data, order=order), world, endpoint)
        no_workers = capped_runs(train, urls, dataclasses.replace(cfg.data, num_workers=0), args.batches, args.cap_ratio)
        child = subprocess.run([sys.executable, __file__, "--capped-workers-only", "--dataset", root, *sys.argv[1:]],
                               stdout=subprocess.PIPE, text=True, check=True)
        with_workers = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"{len(urls)} train shards, {train.samples} samples, {train.bytes / 1e6:.1f} MB of samples; crops {args.size}px, "
          f"batch {args.batch}; data.merge_gap_bytes {args.merge_gap}; blocks of {cfg.data.block_samples} samples, windows of "
          f"{cfg.data.window_blocks} blocks, {cfg.data.streams} streams asked; local S3 server; {os.cpu_count()} cores")
    print(f"{'order':12} {'workers':>7} {'samples/s (median)':>19} {'vs resampled':>13} {'round by round':>15} "
          f"{'server CPU ms/sample':>21}")
    for order, workers in runs:
        ratio = rates[order, workers] / rates["resampled", workers]
        pairs = [a / b for a, b in zip(every[order, workers], every["resampled", workers])]
        print(f"{order:12} {workers:7d} {rates[order, workers]:19.1f} {ratio:12.2f}x {min(pairs):7.2f}-{max(pairs):.2f}x "
              f"{statistics.median(server_ms[order, workers]):21.2f}")
    print(f"{'order':12} {'ranks':>7} {'bytes read / sample bytes':>26} {'GETs':>6} {'seen once':>10} {'never':>6} {'twice+':>7}")
    for (order, world), b in books.items():
        print(f"{order:12} {world:7d} {b['bytes_per_sample_byte']:26.2f} {b['requests']:6d} "
              f"{b['once']:10d} {b['never']:6d} {b['more_than_once']:7d}")
    print(f"through a proxy capped at {no_workers['cap']:.1f} GET/s ({args.cap_ratio:g}x below the blocks' uncapped samples/s), no loader workers:")
    print(f"{'order':12} {'uncapped samples/s':>19} {'capped samples/s':>17} {'capped/uncapped':>16} {'503s answered':>14}")
    for order, c in no_workers["runs"].items():
        print(f"{order:12} {c['uncapped']:19.1f} {c['capped']:17.1f} {c['ratio']:15.2f}x {c['refused_503']:14d}")
    print(f"the same with {workers_max} loader workers, capped at {with_workers['cap']:.1f} GET/s:")
    for order, c in with_workers["runs"].items():
        print(f"{order:12} {c['uncapped']:19.1f} {c['capped']:17.1f} {c['ratio']:15.2f}x {c['refused_503']:14d}")
    print(json.dumps({"samples": train.samples, "sample_bytes": train.bytes, "shards": len(urls), "capped": no_workers,
                      "capped_with_workers": with_workers,
                      "speed": {f"{o}/{w}": [round(x, 1) for x in r] for (o, w), r in every.items()},
                      "accounting": {f"{o}/{w}": b for (o, w), b in books.items()}}, default=float))


if __name__ == "__main__":
    main()
