"""Benchmark of a data node: fragment write and read throughput against a plain directory.

    python ops/bench/data.py [--quick] [--json PATH] [--stripes N]

One data node process (python -m cluster.data.server, one disk directory, no metadata cluster)
on 127.0.0.1, and this process as its client over the ZeroMQ data plane: 128 KiB and 1 MiB
fragments with 1 and 16 concurrent streams, and 4 KiB fragments (fragments/s) with 16. Every
write is acknowledged only once it is on stable storage (the store's group commit).

The reference, in the same run and on the same disk: this process writing the same bytes as files
in a plain directory with threads (one per stream), an fdatasync of every file and of the
directory per batch of 16, then reading them back: the ceiling a storage node could reach with
no network, no index and no checks. Reads are cold for both: the written files' pages are dropped
from the page cache (fadvise DONTNEED) first, so both read from the disk. Each point alternates between the two; three rounds (one with
--quick); medians. Targets at 16 streams: writes and reads >= 70% of the plain directory.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # first: `cluster` is the package, not ops/bench/cluster.py
from common import bench_parser, in_flight_run, print_table, progress, row, write_json  # noqa: E402

from cluster.dev import free_ports  # noqa: E402

POINTS = [(128 << 10, 1), (128 << 10, 16), (1 << 20, 1), (1 << 20, 16), (4 << 10, 16)]
SYNC_BATCH = 16


class Node:
    def __init__(self, directory: str, stripes: int | None = None):
        self.directory = directory
        self.control, self.data = free_ports(2)
        self.log = open(os.path.join(directory, "node.log"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.data.server", "--disks", os.path.join(directory, "disk"),
             "--listen", f"127.0.0.1:{self.control}", "--data-listen", f"127.0.0.1:{self.data}",
             "--scrub-mb-per-s", "1", *(["--stripes", str(stripes)] if stripes else [])],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def drop_cache(directory: str) -> None:
    """Evicts the (clean, synced) pages of every file under `directory` from the page cache, so
    reads come from the disk, for both systems alike."""
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


async def cairn_point(address: str, directory: str, size: int, streams: int, count: int,
                      tag: int) -> tuple[float, float]:
    from cluster.codec.crc import crc32c
    from cluster.data.wire import DataClient

    client = DataClient(address)
    payload = os.urandom(size)
    crc = crc32c(payload)
    ids = [tag.to_bytes(4, "big") + n.to_bytes(4, "big") * 7 for n in range(count)]
    for _ in range(50):  # the node may still be starting
        try:
            await client.put(b"\0" * 32, 0, b"x", crc32c(b"x"), timeout=1.0)
            break
        except Exception:  # noqa: BLE001
            await asyncio.sleep(0.1)

    async def run(work):
        return await in_flight_run(len(ids), streams, lambda n: work(ids[n]))

    async def check(chunk_id):
        # as the client library reads: small fragments may share a message (GET_MANY)
        if len(await client.get(chunk_id, 0, expect=size)) != size:
            raise RuntimeError("short read")
    write = await run(lambda chunk_id: client.put(chunk_id, 0, payload, crc))
    for stripe in os.listdir(os.path.join(directory, "disk")):
        if stripe.startswith("stripe-"):
            drop_cache(os.path.join(directory, "disk", stripe, "segments"))
    read = await run(check)
    await client.close()
    return write, read


def plain_point(directory: str, size: int, streams: int, count: int) -> tuple[float, float]:
    payload = os.urandom(size)
    os.makedirs(directory, exist_ok=True)
    dir_fd = os.open(directory, os.O_RDONLY)
    shares = [list(range(j, count, streams)) for j in range(streams)]

    def writer(numbers):
        open_fds = []
        for n in numbers:
            fd = os.open(os.path.join(directory, f"f{n}"), os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, payload)
            open_fds.append(fd)
            if len(open_fds) == SYNC_BATCH or n == numbers[-1]:
                for f in open_fds:
                    os.fdatasync(f)
                    os.close(f)
                os.fsync(dir_fd)
                open_fds = []

    def reader(numbers):
        for n in numbers:
            with open(os.path.join(directory, f"f{n}"), "rb") as f:
                if len(f.read()) != size:
                    raise RuntimeError("short read")
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        start = time.perf_counter()
        list(pool.map(writer, shares))
        write = time.perf_counter() - start
        drop_cache(directory)
        start = time.perf_counter()
        list(pool.map(reader, shares))
        read = time.perf_counter() - start
    os.close(dir_fd)
    shutil.rmtree(directory)
    return write, read


def main() -> None:
    parser = bench_parser(__doc__, "working directory")
    parser.add_argument("--stripes", type=int, help="stripes of the data node's disk (default: the data node's)")
    args = parser.parse_args()
    rounds, volume = (1, 128 << 20) if args.quick else (3, 512 << 20)
    work = tempfile.mkdtemp(prefix="cairn-data-bench-", dir=args.dir or os.path.dirname(ROOT))
    node = Node(work, args.stripes)
    samples: dict[tuple, list] = {}
    try:
        tag = 0
        for round_number in range(rounds):
            for size, streams in POINTS:
                count = max(64, min(volume // size, 20_000))
                for system in (["cairn", "plain"] if round_number % 2 == 0 else ["plain", "cairn"]):
                    tag += 1
                    if system == "cairn":
                        write, read = asyncio.run(cairn_point(f"127.0.0.1:{node.data}", work, size, streams, count, tag))
                    else:
                        write, read = plain_point(os.path.join(work, f"plain-{tag}"), size, streams, count)
                    samples.setdefault((system, size, streams), []).append((count * size / write, count * size / read,
                                                                           count / write, count / read))
                progress(f"  round {round_number + 1}/{rounds}: {size >> 10} KiB x{streams} done")
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)
    median = {key: [statistics.median(s[i] for s in runs) for i in range(4)] for key, runs in samples.items()}
    rows = []
    for size, streams in POINTS:
        cairn, plain = median[("cairn", size, streams)], median[("plain", size, streams)]
        label = f"{size >> 10}k_s{streams}"
        if size == 4 << 10:
            rows.append(row(f"data_write_frag_per_s_{label}", cairn[2], "frag/s", "plain dir", plain[2]))
            rows.append(row(f"data_read_frag_per_s_{label}", cairn[3], "frag/s", "plain dir", plain[3]))
        else:
            rows.append(row(f"data_write_mb_per_s_{label}", cairn[0] / 1e6, "MB/s", "plain dir", plain[0] / 1e6))
            rows.append(row(f"data_read_mb_per_s_{label}", cairn[1] / 1e6, "MB/s", "plain dir", plain[1] / 1e6))
    print_table(f"Data node over ZeroMQ vs a plain directory, fsync on ({'quick' if args.quick else 'full'}; "
                "ratio > 1: Cairn faster; target >= 0.7 at 16 streams)", rows)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
