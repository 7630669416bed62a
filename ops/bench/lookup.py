"""Benchmark of RocksDisk's lookups (cluster/storage/disk.py: table and memtable bloom filters)
against the same RocksDB with its default options, through rocksdict, in this process.

    python ops/bench/lookup.py [--quick] [--json PATH]

Both databases get the same keys (33 bytes, like a chunk record's, with 150-byte values), written
in batches of 600 (about what a metadata entry writes). Then, side by side, lookups of keys that
are there and of keys that are not: first while everything is in the memtable, then after a
flush to SST files. Most lookups on a put's path miss (a new chunk id, an op id not seen yet),
which is what the filters are for; they cost a little on every insert, which the batch-write
row shows. Three rounds (one with --quick), medians, microseconds per call (ratio > 1: Cairn's
options faster).
"""
from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # first: `cluster` is the package, not ops/bench/cluster.py
from common import bench_parser, print_table, progress, row, write_json  # noqa: E402

BATCH_KEYS = 600
LOOKUPS = 20_000


class Plain:
    """RocksDB with rocksdict's defaults, behind the same calls as RocksDisk."""

    def __init__(self, path: str):
        from rocksdict import Options, Rdict, WriteOptions

        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db, self._nosync = Rdict(path, options), WriteOptions()

    def get(self, key: bytes):
        return self._db.get(key)

    def write(self, puts, deletes, sync: bool) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in puts:
            batch.put(key, value)
        self._db.write(batch, self._nosync)

    def close(self) -> None:
        self._db.close()


def per_call_us(call, keys: list[bytes]) -> float:
    started = time.perf_counter()
    for key in keys:
        call(key)
    return (time.perf_counter() - started) / len(keys) * 1e6


def one_round(work: str, keys_total: int, seed: int) -> dict[tuple[str, str], float]:
    from cluster.storage.disk import RocksDisk

    rng = random.Random(seed)
    keys = [b"C" + rng.randbytes(32) for _ in range(keys_total)]
    batches = [[(k, rng.randbytes(150)) for k in keys[i:i + BATCH_KEYS]] for i in range(0, keys_total, BATCH_KEYS)]
    present = rng.sample(keys, min(LOOKUPS, keys_total))
    absent = [b"C" + rng.randbytes(32) for _ in range(LOOKUPS)]
    dbs = {"cairn": RocksDisk(os.path.join(work, f"cairn-{seed}")), "plain": Plain(os.path.join(work, f"plain-{seed}"))}
    order = ["cairn", "plain"] if seed % 2 else ["plain", "cairn"]
    out: dict[tuple[str, str], float] = {}
    try:
        for name in order:
            started = time.perf_counter()
            for batch in batches:
                dbs[name].write(batch, [], sync=False)
            out[(name, "write")] = (time.perf_counter() - started) / keys_total * 1e6
        for where in ("memtable", "sst"):
            if where == "sst":
                for db in dbs.values():
                    db._db.flush()
            for name in order + order:  # each twice, alternating: the second pass counts (warm caches for both)
                out[(name, f"miss_{where}")] = per_call_us(dbs[name].get, absent)
                out[(name, f"hit_{where}")] = per_call_us(dbs[name].get, present)
    finally:
        for db in dbs.values():
            db.close()
    return out


def main() -> None:
    args = bench_parser(__doc__, "where the databases live").parse_args()
    rounds, keys_total = (1, 100_000) if args.quick else (3, 300_000)
    work = tempfile.mkdtemp(prefix="cairn-lookup-", dir=args.dir)
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for number in range(rounds):
            progress(f"round {number + 1}/{rounds}: {keys_total:,} keys into each database")
            for key, value in one_round(work, keys_total, number + 1).items():
                samples.setdefault(key, []).append(value)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [row(f"lookup_us_{what}", statistics.median(samples[("cairn", what)]), "us", "rocksdb defaults",
                statistics.median(samples[("plain", what)]), higher_is_better=False)
            for what in ("miss_memtable", "hit_memtable", "miss_sst", "hit_sst", "write")]
    print_table(f"RocksDisk lookups with bloom filters vs RocksDB's defaults, {keys_total:,} keys "
                f"({'quick' if args.quick else 'full'}; us per call; lookup_us_write is per key "
                f"written in batches of {BATCH_KEYS}; ratio > 1: Cairn faster)", rows)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
