"""Benchmark of the whole write and read paths on a local cluster against a plain directory.

    python ops/bench/cluster.py [--quick] [--json PATH] [--stripes N]

The cluster (cluster/dev.py: 3 meta and 6 data processes on 127.0.0.1, fsync on, bucket 4+2) and,
in this one client process, the Python client (cluster.connect_async):

- one 1 GiB object put and got (MB/s); 256 objects of 4 MiB, 16 in flight (MB/s);
- 10,000 objects of 64 KiB put and got with 64 in flight (objects/s);
- the same 1 GiB object put again (MB/s of logical data; fragments sent must be 0).

The ceiling, in the same run and on the same disk: this process writing the same bytes to a plain
directory (one file per object, fsync'd; the 64 KiB files by 16 threads) and reading them back.
Reads are cold for both: pages of the cluster's and the directory's files are dropped from the
page cache first. --quick: 256 MiB instead of 1 GiB, 64 × 4 MiB, 2,000 × 64 KiB, one round.
--stripes: the data nodes' stripes per disk (their default when not given).

Targets (the ref column holds each target, so ratio >= 1 means met): 1 GiB put >= 70% of the
directory's write rate × k/(k+m); 1 GiB get >= 70% of its read rate; 64 KiB puts >= 2,000/s and
gets >= 5,000/s. Rounds alternate Cairn and the directory; medians.

Besides the table, it prints where the CPU went during each of Cairn's phases: this client
process, the metadata and the data processes (each group's sum and its busiest member) and the
whole machine, in cores.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import uvloop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # first: `cluster` is the package, not ops/bench/cluster.py
from common import (CpuWindow, bench_parser, drop_cache_tree, in_flight_run, print_table, progress, row,  # noqa: E402
                    write_json)

K, M = 4, 2
SMALL_IN_FLIGHT = 64
MEDIUM_IN_FLIGHT = 16
DIR_THREADS = 16


# ---- the plain directory

def dir_write(directory: str, objects: list[bytes], threads: int) -> float:
    """Seconds to write each object as a file and fsync it (and the directory)."""
    os.makedirs(directory, exist_ok=True)

    def one(number: int) -> None:
        fd = os.open(os.path.join(directory, f"{number:06d}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(objects[number])
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(len(objects))))
    dfd = os.open(directory, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    return time.perf_counter() - started


def dir_read(directory: str, count: int, threads: int) -> float:
    def one(number: int) -> int:
        with open(os.path.join(directory, f"{number:06d}"), "rb") as f:
            return len(f.read())
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    return time.perf_counter() - started


# ---- Cairn

async def cairn_put(client, bucket: str, prefix: str, objects: list[bytes], in_flight: int) -> float:
    async def one(number: int) -> None:
        await client.put(bucket, f"{prefix}/{number:06d}", objects[number])
    return await in_flight_run(len(objects), in_flight, one)


async def cairn_get(client, bucket: str, prefix: str, objects: list[bytes], in_flight: int) -> float:
    wrong = []

    async def one(number: int) -> None:
        data = await client.get(bucket, f"{prefix}/{number:06d}")
        if len(data) != len(objects[number]):
            wrong.append(number)
    seconds = await in_flight_run(len(objects), in_flight, one)
    if wrong:
        raise SystemExit(f"cluster.py: {len(wrong)} objects read back with the wrong size")
    return seconds


def generate(count: int, size: int, seed: int) -> list[bytes]:
    generator = np.random.Generator(np.random.PCG64(seed))
    return [generator.bytes(size) for _ in range(count)]


class Bench:
    def __init__(self, work: str, quick: bool, stripes: int | None = None):
        from cluster.dev import LocalCluster

        self.work, self.quick = work, quick
        self.local = LocalCluster(os.path.join(work, "cluster"), port_base=None,
                                  data_options=["--stripes", str(stripes)] if stripes else [])
        self.dir = os.path.join(work, "plain")
        self.samples: dict[str, list[float]] = {}
        self.round = 0

    def add(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    async def run_round(self, client, sizes) -> None:
        """One round with fresh data (the same bytes again would be deduplicated: nothing sent)."""
        self.round += 1
        progress("generating data ...")
        workloads = [(name, generate(count, size, 10 * self.round + n), in_flight, threads)
                     for n, (name, count, size, in_flight, threads) in enumerate(sizes)]
        for name, objects, in_flight, threads in workloads:
            total = sum(len(o) for o in objects)
            count = len(objects)
            bucket_prefix = f"r{self.round}-{name}"
            progress(f"  round {self.round}: {name} ({count} × {len(objects[0]) >> 10} KiB)")
            # alternate which system goes first, round by round
            for system in (("cairn", "dir") if self.round % 2 else ("dir", "cairn")):
                if system == "cairn":
                    put = await self.watched(f"{name}_put", cairn_put(client, "bench", bucket_prefix, objects,
                                                                       in_flight))
                    await asyncio.to_thread(drop_cache_tree, self.local.directory)
                    get = await self.watched(f"{name}_get", cairn_get(client, "bench", bucket_prefix, objects,
                                                                       in_flight))
                else:
                    target = os.path.join(self.dir, bucket_prefix)
                    put = await asyncio.to_thread(dir_write, target, objects, threads)
                    await asyncio.to_thread(drop_cache_tree, target)
                    get = await asyncio.to_thread(dir_read, target, count, threads)
                    shutil.rmtree(target, ignore_errors=True)
                self.add(f"{system}_{name}_put", (total / put / 1e6) if count < 1000 else count / put)
                self.add(f"{system}_{name}_get", (total / get / 1e6) if count < 1000 else count / get)
                progress(f"    {system}: put {put:.2f} s, get {get:.2f} s")
            if name == "big":  # the same object again: all chunks known, nothing sent
                sent = client.fragments_sent
                again = await cairn_put(client, "bench", bucket_prefix + "-again", objects, in_flight)
                if client.fragments_sent != sent:
                    raise SystemExit(f"cluster.py: re-upload sent {client.fragments_sent - sent} fragments, not 0")
                self.add("cairn_big_reput", total / again / 1e6)

    async def watched(self, phase: str, work):
        """Runs a Cairn phase, noting where the CPU went meanwhile (cores: see print_cpu)."""
        window = CpuWindow({role: [m.pid for m in self.local.members if m.role == role] for role in ("meta", "data")})
        window.start()
        result = await work
        for part, cores in window.stop().items():
            self.add(f"cpu_{phase}_{part}", cores)
        return result

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def print_cpu(self) -> None:
        """Medians, in cores of the machine's: a phase whose machine column is near the core count
        is bound by CPU, one well below it by waiting (disks, round trips, its own batching)."""
        columns = [("client", "self"), ("meta", "meta"), ("busiest", "meta_busiest"), ("data", "data"),
                   ("busiest", "data_busiest"), ("machine", "machine")]  # (heading, CpuWindow's part)
        print(f"\nWhere the CPU went during Cairn's phases (cores, of {os.cpu_count() or 1}; medians over rounds)")
        header = f"{'phase':<12}" + "".join(f"{heading:>9}" for heading, _ in columns)
        print(header)
        print("-" * len(header))
        for phase in (f"{name}_{op}" for name in ("big", "medium", "small") for op in ("put", "get")):
            if f"cpu_{phase}_self" in self.samples:
                print(f"{phase:<12}" + "".join(f"{self.median(f'cpu_{phase}_{part}'):>9.2f}" for _, part in columns))


async def measure(bench: Bench, rounds: int, big: int, medium: int, small: int) -> None:
    import cluster

    sizes = [("big", 1, big, 1, 1), ("medium", medium, 4 << 20, MEDIUM_IN_FLIGHT, MEDIUM_IN_FLIGHT),
             ("small", small, 64 << 10, SMALL_IN_FLIGHT, DIR_THREADS)]
    client = cluster.connect_async(bench.local.meta_addresses)
    try:
        await client.create_bucket("bench", k=K, m=M)
        for _ in range(rounds):
            await bench.run_round(client, sizes)
    finally:
        await client.close()


def main() -> None:
    parser = bench_parser(__doc__, "where the cluster and the directory live")
    parser.add_argument("--stripes", type=int, help="stripes per data-node disk (default: the data node's)")
    args = parser.parse_args()
    rounds, big, medium, small = (1, 256 << 20, 64, 2000) if args.quick else (3, 1 << 30, 256, 10_000)
    work = tempfile.mkdtemp(prefix="cairn-cluster-bench-", dir=args.dir)
    bench = Bench(work, args.quick, args.stripes)
    try:
        progress(f"starting a local cluster (3 meta, 6 data) in {work} ...")
        bench.local.start()
        uvloop.run(measure(bench, rounds, big, medium, small))  # the loop we recommend to users
    finally:
        bench.local.stop()
        shutil.rmtree(work, ignore_errors=True)
    share = K / (K + M)
    write_ceiling, read_ceiling = bench.median("dir_big_put"), bench.median("dir_big_get")
    label = f"{big >> 20} MiB" if big < 1 << 30 else "1 GiB"
    rows = [
        row("cluster_put_mb_per_s_big", bench.median("cairn_big_put"), "MB/s", "0.7×dir×k/(k+m)",
            0.7 * write_ceiling * share),
        row("cluster_get_mb_per_s_big", bench.median("cairn_big_get"), "MB/s", "0.7×dir read", 0.7 * read_ceiling),
        row("cluster_reput_mb_per_s_big", bench.median("cairn_big_reput"), "MB/s", "dir write", write_ceiling),
        row("cluster_put_mb_per_s_4m", bench.median("cairn_medium_put"), "MB/s", "0.7×dir×k/(k+m)",
            0.7 * bench.median("dir_medium_put") * share),
        row("cluster_get_mb_per_s_4m", bench.median("cairn_medium_get"), "MB/s", "0.7×dir read",
            0.7 * bench.median("dir_medium_get")),
        row("cluster_put_per_s_64k", bench.median("cairn_small_put"), "op/s", "target", 2000),
        row("cluster_get_per_s_64k", bench.median("cairn_small_get"), "op/s", "target", 5000),
    ]
    print_table(f"Cairn cluster (3 meta, 6 data, {K}+{M}) from one client vs a plain directory "
                f"({'quick' if args.quick else 'full'}; big = {label}; ratio >= 1: target met)", rows)
    bench.print_cpu()
    print(f"(plain directory, same run: {label} written at {write_ceiling:.0f} MB/s with fsync, read at "
          f"{read_ceiling:.0f} MB/s; 64 KiB files {bench.median('dir_small_put'):.0f}/s written, "
          f"{bench.median('dir_small_get'):.0f}/s read)")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
