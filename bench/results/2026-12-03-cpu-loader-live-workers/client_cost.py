import os, resource, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
from cluster.local.s3_server import temporary_server
from dfdc import storage
if __name__ == "__main__":
    with temporary_server("cost") as server:
        storage.write_bytes("s3://cost/x.bin", b"0" * 300_000)
        c0 = cpu(); t0 = time.perf_counter()
        from train.data.range_reads import range_reads
        c1 = cpu()
        r = range_reads("curl")
        out = r.cat_ranges(["s3://cost/x.bin"], [0], [250_000])
        c2 = cpu()
        for _ in range(20):
            r.cat_ranges(["s3://cost/x.bin"], [0], [250_000])
        c3 = cpu()
        print(f"import {c1-c0:.2f} s CPU, first GET (client set-up) {c2-c1:.2f} s CPU, each later 250 kB GET {(c3-c2)/20*1000:.1f} ms CPU")
