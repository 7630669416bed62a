"""Benchmark of self-healing: repair throughput and time to full redundancy after a data node
dies, while a client keeps reading.

    python ops/bench/repair.py [--quick] [--json PATH] [--repair-mb-per-s MB]

A local cluster (cluster/dev.py: 3 meta, 7 data processes on 127.0.0.1, bucket 4+2) holds 2 GiB
(--quick: 256 MiB) of 4 MiB objects. A client thread reads random objects without pause; its
throughput is sampled for a while, then one data node is killed (SIGKILL). The leader declares
it dead after 5 s (--dead-after-seconds) and repairs. The benchmark takes the rebuilt bytes from
the leader's repair counters (one fragment, chunk/k bytes, per chunk repaired); the throughput is
over the time from the DEAD mark to the last chunk confirmed, and the time to full redundancy
runs from the DEAD mark to the first full survey pass that finds every chunk at k+m fragments.

The reference, in the same run: what the same data nodes move in the data-node benchmark's way,
1 MiB fragments written by 16 concurrent streams from this process to one node (MB/s). Targets:
repair >= 50% of it, and the client keeps >= 50% of its read throughput during repair.
"""
from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # first: `cluster` is the package, not ops/bench/cluster.py
from common import bench_parser, print_table, progress, row, write_json  # noqa: E402

K, M = 4, 2
OBJECT_BYTES = 4 << 20
SUSPECT_AFTER_SECONDS = 3.0  # data nodes heartbeat every 2 s
DEAD_AFTER_SECONDS = 5.0
BASELINE_SECONDS = 8.0
REPAIR_TIMEOUT_SECONDS = 900.0


def data_plane_rate(address: str, seconds: float) -> float:
    """MB/s of 1 MiB fragments written to one node by 16 concurrent streams."""
    from cluster.codec import crc32c
    from cluster.data.wire import DataClient

    async def run() -> float:
        client = DataClient(address)
        payload = np.random.default_rng(9).bytes(1 << 20)
        crc = crc32c(payload)
        sent, deadline = 0, time.perf_counter() + seconds
        started = time.perf_counter()

        async def stream():
            nonlocal sent
            while time.perf_counter() < deadline:
                await client.put(os.urandom(32), 0, payload, crc)
                sent += len(payload)
        await asyncio.gather(*(stream() for _ in range(16)))
        elapsed = time.perf_counter() - started
        await client.close()
        return sent / elapsed / 1e6
    return asyncio.run(run())


class Reader(threading.Thread):
    """Reads random objects in a loop; `rate(since, until)` gives MB/s in a window."""

    def __init__(self, client, keys: list[str]):
        super().__init__(daemon=True)
        self.client, self.keys = client, keys
        self.done: list[tuple[float, int]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(1)
        while not self.stop.is_set():
            try:
                data = self.client.get("bench", rng.choice(self.keys))
                self.done.append((time.monotonic(), len(data)))
            except Exception:  # noqa: BLE001 - counted; a read must never fail with m nodes up
                self.errors += 1

    def rate(self, since: float, until: float) -> float:
        size = sum(n for t, n in self.done if since <= t < until)
        return size / max(until - since, 1e-9) / 1e6


def main() -> None:
    parser = bench_parser(__doc__, "where the cluster lives")
    parser.add_argument("--repair-mb-per-s", type=float,
                        help="the leader's repair budget (default: the meta server's own, 200)")
    args = parser.parse_args()
    budget = ["--repair-mb-per-s", str(args.repair_mb_per_s)] if args.repair_mb_per_s else []
    stored = (256 << 20) if args.quick else (2 << 30)

    import cluster
    from cluster.dev import LocalCluster
    from cluster.proto import meta_pb2 as pb

    work = tempfile.mkdtemp(prefix="cairn-repair-bench-", dir=args.dir)
    local = LocalCluster(os.path.join(work, "cluster"), metas=3, datas=7, port_base=None,
                         meta_options=["--suspect-after-seconds", str(SUSPECT_AFTER_SECONDS),
                                       "--dead-after-seconds", str(DEAD_AFTER_SECONDS), *budget])
    try:
        progress(f"starting a local cluster (3 meta, 7 data) in {work} ...")
        local.start()
        client = cluster.connect(local.meta_addresses)
        client.create_bucket("bench", k=K, m=M)
        count = stored // OBJECT_BYTES
        progress(f"storing {count} objects of 4 MiB ...")
        generator = np.random.Generator(np.random.PCG64(1))
        keys = []
        for n in range(count):
            key = f"o/{n:05d}"
            client.put("bench", key, generator.bytes(OBJECT_BYTES))
            keys.append(key)
        total = client.status().chunks
        progress("measuring the data plane (16 streams of 1 MiB to one node) ...")
        victim = local.member("data", 7)
        reference = data_plane_rate(local.member("data", 6).addresses[1], 3.0 if args.quick else 6.0)

        reader = Reader(cluster.connect(local.meta_addresses), keys)
        reader.start()
        time.sleep(1.0)
        baseline_start = time.monotonic()
        time.sleep(BASELINE_SECONDS / (2 if args.quick else 1))
        killed = time.monotonic()
        progress("killing data node 7 ...")
        local.kill("data", 7, signal.SIGKILL)
        dead_at = healed_at = last_repair_at = None
        repaired = 0
        while time.monotonic() - killed < REPAIR_TIMEOUT_SECONDS:
            status = client.status()
            if dead_at is None and any(n.address == victim.addresses[0] and n.state == pb.DEAD for n in status.nodes):
                dead_at, passes = time.monotonic(), status.repair.passes
                progress("  declared dead; repairing ...")
            if status.repair.repaired != repaired:
                repaired, last_repair_at = status.repair.repaired, time.monotonic()
            if (dead_at is not None and status.repair.passes > passes  # a pass that saw the node dead
                    and dict(status.repair.chunks_by_lost) == {0: total} and status.repair.queued == 0):
                healed_at = time.monotonic()
                break
            time.sleep(0.1)
        reader.stop.set()
        reader.join(30)
        if healed_at is None:
            sys.exit(f"repair.py: not back to full redundancy in {REPAIR_TIMEOUT_SECONDS:.0f} s: {status.repair}")
        repair = client.status().repair
        rebuilt = repair.repaired_bytes / K
        seconds = healed_at - dead_at
        repairing = max(last_repair_at - dead_at, 1e-9)
        before = reader.rate(baseline_start, killed)
        during = reader.rate(dead_at, healed_at)
        client.close()
        reader.client.close()
    finally:
        local.stop()
        shutil.rmtree(work, ignore_errors=True)
    if reader.errors:
        sys.exit(f"repair.py: {reader.errors} client reads failed during repair")
    rows = [
        row("repair_mb_per_s", rebuilt / repairing / 1e6, "MB/s", "0.5×data plane", 0.5 * reference),
        row("repair_seconds_to_full", seconds, "s", "(time)", seconds, False),
        row("repair_client_read_kept", during / before if before else 0.0, "ratio", "target", 0.5),
    ]
    print_table(f"Cairn repair after a data node dies (7 data nodes, {K}+{M}, {stored >> 20} MiB stored, "
                f"{repair.repaired} chunks repaired; ratio >= 1: target met)", rows)
    print(f"(data plane, same run: {reference:.0f} MB/s; client reads {before:.0f} MB/s before the failure, "
          f"{during:.0f} MB/s during repair; {rebuilt / 1e6:.0f} MB rebuilt in {repairing:.1f} s, "
          f"{repair.fragments_read / max(1, repair.repaired):.2f} fragments read per chunk)")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
