"""The loader's S3 client beside two kept libraries, on the block order's reads, side by side in one
run: samples/s (ranges/s and MB/s), CPU per GB in the client's process, and what each does when the
server answers one GET in three with 503 SlowDown, or every GET past a rate (S3's per-prefix cap,
scaled down to this machine: `--cap` GET/s, well below what each client reads uncapped).

- ours      the loader's ranged GETs: presigned URLs over libcurl's multi interface
            (train/data/range_reads.py CurlRangeReads) as the loader's reader makes them
            (train/data/reader.py SampleReader.fetch_raw: blocks that touch merged into one GET,
            retries, jittered back-off on 503)
- obstore   Rust `object_store` (`obstore.get_ranges_async`, one call per object of a batch, all
            at once; it merges ranges less than 1 MB apart; its own retries with back-off)                                   } .venv-peers
- s3tc      AWS's s3torchconnector (CRT client), a range-based reader per range from 32
            threads (its own retries, 10 attempts)                                    }

The reads: shards of random bytes on the local S3 server, read in blocks of `--block-kb` (a block
of the block order: 32 crops of ~32 KB), the blocks of all shards shuffled and taken 32 at a time,
as a loader worker fetches a batch group. Every client reads through the same proxy
(tests/flaky_proxy.py), which answers a ranged GET with 206 as S3 does (rclone answers 200, which
obstore refuses); the proxy and the server share this machine's 2 cores with the client, so MB/s
compares the clients through the same bottleneck, and CPU per GB (the client process's user +
system time, all its threads) is the figure of the client alone. Every range's bytes are checked.

Usage: python bench/s3_clients.py [--shards 8] [--shard-mb 32] [--block-kb 1024] [--batch 32] [--rounds 2] [--cap 30]
(each client also runs alone: --client NAME --plan FILE --endpoint URL, printing one JSON line)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
PEERS_PYTHON = HERE.parent / ".venv-peers" / "bin" / "python"
CLIENTS = {"ours": sys.executable, "obstore": str(PEERS_PYTHON), "s3tc": str(PEERS_PYTHON)}


def cpu_seconds() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def ours(plan: dict, endpoint: str):
    import numpy as np  # noqa: PLC0415

    from train.data.index import TrainSet  # noqa: PLC0415
    from train.data.reader import SampleReader  # noqa: PLC0415

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    # Each block is a "sample" of a train set, read as the loader reads a batch group (fetch_raw:
    # blocks that touch in a shard merged into one GET, failures retried, 503s waited out).
    reads = sorted({(k, a, b) for batch in plan["batches"] for k, a, b in batch})
    keys = sorted({k for k, _, _ in reads})
    counts = [sum(1 for k, _, _ in reads if k == key) for key in keys]
    train = TrainSet([f"s3://{plan['bucket']}/{k}" for k in keys], counts, np.array([a for _, a, _ in reads], dtype=np.int64),
                     np.array([b for _, _, b in reads], dtype=np.int64))
    sample_id = {(k, a): i for i, (k, a, _) in enumerate(reads)}
    reader = SampleReader(train, retries=5)

    def read(batch: list) -> list[bytes]:
        got = reader.fetch_raw(np.array([sample_id[(k, a)] for k, a, _ in batch]))
        return [got[sample_id[(k, a)]] for k, a, _ in batch]

    return read, lambda: {"throttled_waits": reader.throttled}


def obstore_client(plan: dict, endpoint: str):
    import obstore  # noqa: PLC0415
    from obstore.store import S3Store  # noqa: PLC0415

    store = S3Store(plan["bucket"], endpoint=endpoint, region="us-east-1", virtual_hosted_style_request=False,
                    client_options={"allow_http": True}, access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                    secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])

    async def batch_async(batch: list) -> list[bytes]:
        keys = sorted({k for k, _, _ in batch})
        parts = await asyncio.gather(*[obstore.get_ranges_async(store, k, starts=[a for kk, a, _ in batch if kk == k],
                                                                ends=[b for kk, _, b in batch if kk == k]) for k in keys])
        got = {k: iter(p) for k, p in zip(keys, parts)}
        return [bytes(next(got[k])) for k, _, _ in batch]

    return lambda batch: asyncio.run(batch_async(batch)), dict


def s3tc(plan: dict, endpoint: str):
    from s3torchconnector import S3ReaderConstructor  # noqa: PLC0415
    from s3torchconnector._s3client import S3Client, S3ClientConfig  # noqa: PLC0415

    client = S3Client("us-east-1", endpoint=endpoint, s3client_config=S3ClientConfig(force_path_style=True))
    pool = ThreadPoolExecutor(32)

    def one(key: str, start: int, end: int) -> bytes:
        reader = client.get_object(plan["bucket"], key, reader_constructor=S3ReaderConstructor.range_based())
        reader.seek(start)
        return reader.read(end - start)

    return lambda batch: list(pool.map(lambda r: one(*r), batch)), dict


def run_client(name: str, plan: dict, endpoint: str) -> dict:
    """Read the plan's batches with one client; its figures."""
    read, extra = {"ours": ours, "obstore": obstore_client, "s3tc": s3tc}[name](plan, endpoint)
    read(plan["batches"][0][:1])  # connections, signing and the client's set-up, outside the timing
    cpu, start = cpu_seconds(), time.perf_counter()
    wrong = nbytes = done = 0
    error = None
    for batch in plan["batches"]:
        try:
            blobs = read(batch)
        except Exception as e:  # noqa: BLE001  (a client that gives up: named in the table)
            error = f"{type(e).__name__}: {str(e)[:160]}"
            break
        for r, blob in zip(batch, blobs):
            nbytes += len(blob)
            done += 1
            wrong += hashlib.sha1(blob).hexdigest() != plan["digest"][f"{r[0]}:{r[1]}"]
    seconds = time.perf_counter() - start
    return {"client": name, "seconds": seconds, "bytes": nbytes, "cpu_s": cpu_seconds() - cpu, "ranges": done, "wrong": wrong,
            "error": error, **extra()}


def make_plan(bucket: str, shards: int, shard_mb: int, block_kb: int, batch: int) -> dict:
    """Random shards written to the server, and the shuffled block reads of them in batches."""
    from dfdc import storage  # noqa: PLC0415

    rng = random.Random(0)
    reads, digest = [], {}
    for s in range(shards):
        key = f"shards/{s:02x}/shard-{s:06d}.tar"
        data = rng.randbytes(shard_mb << 20)
        storage.write_bytes(f"s3://{bucket}/{key}", data)
        for a in range(0, len(data), block_kb << 10):
            b = min(len(data), a + (block_kb << 10))
            reads.append((key, a, b))
            digest[f"{key}:{a}"] = hashlib.sha1(data[a:b]).hexdigest()
    rng.shuffle(reads)
    return {"bucket": bucket, "batches": [reads[i:i + batch] for i in range(0, len(reads), batch)], "digest": digest}


def one_in_three_slow_down():
    """Every third GET of a shard answered 503 SlowDown (S3's answer past a prefix's request rate)."""
    import itertools  # noqa: PLC0415

    counter = itertools.count()
    return lambda method, path: "503" if method == "GET" and path.split("?")[0].endswith(".tar") and next(counter) % 3 == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=int, default=32)
    ap.add_argument("--block-kb", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cap", type=float, default=30, help="GET/s the capped proxy serves (S3's per-prefix cap, scaled down)")
    ap.add_argument("--client", choices=list(CLIENTS))
    ap.add_argument("--plan")
    ap.add_argument("--endpoint")
    args = ap.parse_args()
    if args.client:
        print(json.dumps(run_client(args.client, json.loads(Path(args.plan).read_text()), args.endpoint)))
        return
    if not PEERS_PYTHON.exists():
        sys.exit(f"{PEERS_PYTHON} is missing: `make bench` makes it (uv sync --project bench/peers)")

    from cluster.local.s3_server import temporary_server  # noqa: PLC0415
    from tests.flaky_proxy import FlakyProxy, capped  # noqa: PLC0415

    with temporary_server("bench") as server, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, **server.env(), "AWS_REGION": "us-east-1"}
        os.environ.update(env)
        plan = make_plan("bench", args.shards, args.shard_mb, args.block_kb, args.batch)
        plan_file = Path(tmp, "plan.json")
        plan_file.write_text(json.dumps(plan))
        total = sum(len(b) for b in plan["batches"])
        print(f"{total} block reads of {args.block_kb} KB from {args.shards} shards of {args.shard_mb} MB, "
              f"{args.batch} at a time, through the proxy; {args.rounds} rounds a client")
        rows = []
        scenarios = (("served", lambda *_: None), ("1 in 3 GETs answered 503", one_in_three_slow_down()),
                     (f"capped at {args.cap} GET/s", None))
        for scenario, fail_when in scenarios:
            for rnd in range(args.rounds if scenario == "served" else 1):
                for name, python in CLIENTS.items():
                    if scenario.startswith("capped"):
                        fail_when = capped(args.cap)
                    with FlakyProxy(server.endpoint, fail_when) as proxy:
                        out = subprocess.run([python, __file__, "--client", name, "--plan", str(plan_file), "--endpoint", proxy.endpoint],
                                             env=env, capture_output=True, text=True, timeout=900)
                        injected, forwarded = proxy.injected["503"], proxy.forwarded
                    if out.returncode:
                        got = {"client": name, "error": out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else f"exit {out.returncode}"}
                    else:
                        got = json.loads(out.stdout.strip().splitlines()[-1])
                    rows.append({"scenario": scenario, "round": rnd + 1, "503s": injected, "gets": forwarded + injected, **got})
        print("\n| reads | client | round | ranges right / total | GETs | MB/s | ranges/s | CPU s per GB | 503s answered | gave up |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            ok = r.get("ranges", 0) - r.get("wrong", 0)
            secs = r.get("seconds") or float("nan")
            gb = r.get("bytes", 0) / 1e9
            print(f"| {r['scenario']} | {r['client']} | {r['round']} | {ok} / {total} | {r['gets']} | {r.get('bytes', 0) / 1e6 / secs:.0f} | "
                  f"{r.get('ranges', 0) / secs:.0f} | {r['cpu_s'] / gb if gb else float('nan'):.2f} | {r['503s']} | {r.get('error') or '-'} |")
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
