"""Benchmark of the blocking client's ways to read one large object, against a plain file.

    python ops/bench/file_read.py [--quick] [--warm] [--json PATH]

A local cluster (cluster/dev.py: 3 meta, 6 data processes on 127.0.0.1, bucket 4+2) holds one
256 MiB object (--quick: 64 MiB). The blocking client (cluster.connect) reads it whole three
ways: `get`, `open(...).read()` (what a data loader writes), and `open(...)` read in 4 MiB
pieces. The reference, in the same run: the same bytes as a plain file on the same disk, read
with open(path, "rb").read(). Reads are cold for both (pages dropped from the page cache first);
with --warm, both read from the page cache, which leaves what each costs its reader (metric
names end in _warm).
Rounds alternate the order of the systems; three rounds (one with --quick); medians. No target:
the figures show what each way of reading costs next to the file system's own.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # first: `cluster` is the package, not ops/bench/cluster.py
from common import bench_parser, drop_cache_tree, print_table, progress, row, write_json  # noqa: E402

PIECE_BYTES = 4 << 20


def cluster_reads(client, bucket: str, key: str) -> dict:
    def whole_file():
        with client.open(bucket, key) as f:
            return f.read()

    def in_pieces():
        with client.open(bucket, key) as f:
            return b"".join(iter(lambda: f.read(PIECE_BYTES), b""))
    return {"get": lambda: client.get(bucket, key), "open_read": whole_file, "open_read_4m": in_pieces}


def timed(read, size: int) -> float:
    started = time.perf_counter()
    if len(read()) != size:
        raise SystemExit("file_read.py: a read came back short")
    return size / (time.perf_counter() - started) / 1e6


def main() -> None:
    import numpy as np

    import cluster
    from cluster.dev import LocalCluster

    parser = bench_parser(__doc__, "where the cluster and the file live")
    parser.add_argument("--warm", action="store_true", help="read from the page cache (no drops)")
    args = parser.parse_args()
    drop = (lambda directory: None) if args.warm else drop_cache_tree
    rounds, size = (1, 64 << 20) if args.quick else (3, 256 << 20)
    work = tempfile.mkdtemp(prefix="cairn-file-read-", dir=args.dir)
    local = LocalCluster(os.path.join(work, "cluster"), port_base=None)
    samples: dict[str, list[float]] = {}
    try:
        progress(f"starting a local cluster (3 meta, 6 data) in {work} ...")
        local.start()
        data = np.random.Generator(np.random.PCG64(7)).bytes(size)
        path = os.path.join(work, "plain", "object.bin")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        with cluster.connect(local.meta_addresses) as client:
            client.create_bucket("bench", k=4, m=2)
            client.put("bench", "object", data)
            ways = cluster_reads(client, "bench", "object")
            for number in range(rounds):
                order = ["cluster", "plain"] if number % 2 == 0 else ["plain", "cluster"]
                for system in order:
                    if system == "plain":
                        drop(os.path.dirname(path))
                        with open(path, "rb") as f:
                            samples.setdefault("plain", []).append(timed(f.read, size))
                        continue
                    for name, read in ways.items():
                        drop(local.directory)
                        samples.setdefault(name, []).append(timed(read, size))
                progress(f"  round {number + 1}/{rounds} done")
    finally:
        local.stop()
        shutil.rmtree(work, ignore_errors=True)
    plain = statistics.median(samples["plain"])
    suffix = "_warm" if args.warm else ""
    rows = [row(f"file_read_mb_per_s_{name}{suffix}", statistics.median(samples[name]), "MB/s", "plain file read",
                plain) for name in ("get", "open_read", "open_read_4m")]
    print_table(f"One {size >> 20} MiB object read whole by the blocking client vs a plain file "
                f"({'quick' if args.quick else 'full'}; {'warm' if args.warm else 'cold'} reads; "
                f"ratio > 1: Cairn faster)", rows)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
