"""CPU time of one ranged GET, by client, side by side in one run: s3fs's `cat_ranges` (botocore
builds, signs and parses every request) beside the loader's presigned URLs over urllib3 and over
libcurl (`train/data/range_reads.py`; `data.range_reads: presigned` and `curl`), on a local rclone S3 server. Ranges of --size bytes at random offsets in
one object, --gets of them per client in calls of 32, after one warm-up call. CPU is this process's
(the server's is not counted); wall time is given too.

Usage: python bench/get_cpu.py [--gets 640] [--size 11000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gets", type=int, default=640)
    ap.add_argument("--size", type=int, default=11000, help="bytes per range (a 128 px crop is about 11 KB)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each client, taken in turn")
    args = ap.parse_args()

    import s3fs  # noqa: PLC0415

    from cluster.local.s3_server import temporary_server  # noqa: PLC0415
    from train.data.range_reads import CurlRangeReads, RangeReads  # noqa: PLC0415

    with temporary_server("getcpu"):
        data = os.urandom(4_000_000)
        s3fs.S3FileSystem().pipe("getcpu/object.tar", data)
        rng = random.Random(0)
        starts = [rng.randrange(0, len(data) - args.size) for _ in range(args.gets)]
        uri = "s3://getcpu/object.tar"
        reads, curl = RangeReads(), CurlRangeReads()

        def via_s3fs(s, e):
            return s3fs.S3FileSystem().cat_ranges(["getcpu/object.tar"] * len(s), s, e)

        def via_presigned(s, e):
            return reads.cat_ranges([uri] * len(s), s, e)

        def via_curl(s, e):
            return curl.cat_ranges([uri] * len(s), s, e)

        clients = {"s3fs cat_ranges": via_s3fs, "presigned + urllib3": via_presigned, "presigned + libcurl": via_curl}
        cpu: dict = {name: [] for name in clients}
        wall: dict = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, fetch in clients.items():
                fetch(starts[:32], [s + args.size for s in starts[:32]])
                c, t = time.process_time(), time.perf_counter()
                for i in range(0, args.gets, 32):
                    part = starts[i:i + 32]
                    got = fetch(part, [s + args.size for s in part])
                    assert all(g == data[s:s + args.size] for g, s in zip(got, part)), name
                cpu[name].append((time.process_time() - c) / args.gets * 1e3)
                wall[name].append((time.perf_counter() - t) / args.gets * 1e3)
    print(f"{args.gets} ranged GETs of {args.size} bytes per run, {args.rounds} runs each, local S3 server, {os.cpu_count()} cores")
    print(f"{'client':22} {'CPU ms/GET (median)':>20} {'runs':>22} {'wall ms/GET':>12}")
    for name in clients:
        runs = ", ".join(f"{x:.2f}" for x in cpu[name])
        print(f"{name:22} {statistics.median(cpu[name]):20.3f} {runs:>22} {statistics.median(wall[name]):12.3f}")


if __name__ == "__main__":
    main()
