"""Benchmark of Cairn's metadata service: object puts (BeginPut + CommitPut) against etcd's plain
puts, and listing a large bucket. Three nodes each, loopback, fsync on.

    python ops/bench/meta.py [--quick] [--json PATH] [--keys N] [--only puts|listing]

Puts: closed-loop clients at 1, 16 and 64, each putting 4-chunk objects through the Meta API
(ops/bench/meta_load.py: the client library's metadata calls, fragment upload left out); in the
same run the Raft benchmark's etcd reference (ops/bench/raft_load.py, Debian's etcd-server) does
plain 256-byte puts with as many clients. Points alternate between the systems, 3 s and one round
(--quick) or 10 s and three rounds (medians).

Listing: the bucket is filled with --keys empty objects (1,000,000; 100,000 with --quick)
through pipelined commits, then listed whole, page by page (1,000 keys, linearizable), and the
rate is compared with the target of 200,000 keys/s.
"""
from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = ROOT / "ops" / "bench"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))  # first: `cluster` is the package, not ops/bench/cluster.py
import raft  # noqa: E402
from common import PeakResident, bench_parser, in_flight_run, print_table, progress, row, write_json  # noqa: E402
from raft_clusters import CairnMetaCluster, ClusterError, EtcdCluster, ensure_etcd  # noqa: E402

CLIENTS = [1, 16, 64]
LIST_TARGET_KEYS_PER_S = 200_000
FILL_CONCURRENCY = 256


def run_cairn_point(cluster: CairnMetaCluster, clients: int, seconds: float, warmup: float, work: str,
                    seed: int) -> dict:
    latencies = os.path.join(work, f"lat-meta-{clients}-{seed}.npy")
    argv = [sys.executable, str(BENCH / "meta_load.py"), "--targets", ",".join(cluster.endpoints),
            "--bucket", cluster.BUCKET, "--clients", str(clients), "--warmup", str(warmup),
            "--duration", str(seconds), "--latencies", latencies, "--seed", str(seed)]
    return raft.run_loads("cairn", cluster, [(argv, latencies)], seconds, warmup)


def measure_puts(clusters: dict, quick: bool, work: str, stubs: str) -> dict:
    seconds, warmup, rounds = (3.0, 0.5, 1) if quick else (10.0, 1.0, 3)
    samples: dict[tuple[str, int], list[dict]] = {}
    turn, base = 0, 1000
    for round_number in range(rounds):
        for clients in CLIENTS:
            order = ["cairn", "etcd"] if turn % 2 == 0 else ["etcd", "cairn"]
            turn += 1
            for system in order:
                progress(f"  round {round_number + 1}/{rounds}: {system} put x{clients} ({seconds:.0f} s)")
                if system == "cairn":
                    result = run_cairn_point(clusters["cairn"], clients, seconds, warmup, work, base)
                else:
                    result = raft.run_point("etcd", clusters["etcd"], "put", clients, seconds, warmup, 1, work,
                                            stubs, base, "leader")
                base += clients
                samples.setdefault((system, clients), []).append(result)
                progress(f"    {result['per_s']:9.0f} puts/s  p50 {result['p50_ms']:6.2f} ms  "
                         f"p99 {result['p99_ms']:7.2f} ms  cluster {result['cluster_cores']:.2f} cores  "
                         f"loadgen {result['loadgen_cores'][0]:.2f}  retries {result['retries']}")
    return {key: {metric: statistics.median(r[metric] for r in runs) for metric in ("per_s", "p50_ms", "p99_ms")}
            for key, runs in samples.items()}


async def fill(endpoints: list[str], bucket: str, keys: int) -> float:
    """Commits `keys` empty objects, FILL_CONCURRENCY at a time; returns commits per second."""
    import blake3

    from cluster.client.meta import MetaClient
    from cluster.proto import meta_pb2 as pb

    client = MetaClient(endpoints, timeout=60)
    empty = pb.Manifest(head=pb.ObjectHead(size=0, blake3=blake3.blake3(b"").digest()))
    reported = time.perf_counter()

    async def one(number: int) -> None:
        nonlocal reported
        reply = await client.command(commit_put=pb.CommitPut(bucket=bucket, key=f"fill/{number:08d}",
                                                             manifest=empty))
        if reply.code != pb.OK:
            raise RuntimeError(f"filling the bucket failed: {reply.message}")
        if time.perf_counter() - reported > 10:
            reported = time.perf_counter()
            progress(f"    {number:,} of {keys:,} keys")
    try:
        seconds = await in_flight_run(keys, FILL_CONCURRENCY, one)
    finally:
        await client.close()
    return keys / seconds


async def list_all(endpoints: list[str], bucket: str) -> tuple[int, float]:
    """Pages as the client library asks for them (cluster/client/objects.py LIST_PAGE_KEYS)."""
    from cluster.client.meta import MetaClient
    from cluster.client.objects import LIST_PAGE_KEYS
    from cluster.proto import meta_pb2 as pb

    client = MetaClient(endpoints, timeout=60)
    count, token = 0, ""
    try:
        await client.call(pb.MetaOp(list_buckets=pb.ListBuckets()))  # find the leader first
        started = time.perf_counter()
        while True:
            reply = await client.call(pb.MetaOp(list_objects=pb.ListObjects(bucket=bucket, start_after=token,
                                                                            max_keys=LIST_PAGE_KEYS)))
            if reply.code != pb.OK:
                raise RuntimeError(f"listing failed: {reply.message}")
            count += len(reply.list_objects.entries)
            token = reply.list_objects.next
            if not token:
                break
        return count, time.perf_counter() - started
    finally:
        await client.close()


def main() -> None:
    parser = bench_parser(__doc__, "where the clusters keep their data")
    parser.add_argument("--keys", type=int, help="keys in the listed bucket (default 1,000,000; quick 100,000)")
    parser.add_argument("--only", choices=("puts", "listing"), help="run one part (listing: no etcd)")
    args = parser.parse_args()
    keys = args.keys or (100_000 if args.quick else 1_000_000)

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    work = tempfile.mkdtemp(prefix="cairn-meta-bench-", dir=args.dir)
    clusters: dict = {}
    try:
        systems = (("cairn", lambda d: CairnMetaCluster(d)), ("etcd", lambda d: EtcdCluster(d, ensure_etcd())))
        if args.only == "listing":
            systems = systems[:1]
        for system, make in systems:
            directory = os.path.join(work, system)
            os.makedirs(directory)
            progress(f"starting {system} (3 nodes) ...")
            clusters[system] = make(directory)
            clusters[system].start()
        puts, listed = {}, 0
        with PeakResident([p.pid for p in clusters["cairn"].procs]) as memory:
            if args.only != "listing":
                stubs = raft.etcd_stubs(work)
                raft.check_etcd_api(clusters["etcd"], stubs)
                puts = measure_puts(clusters, args.quick, work, stubs)
                clusters.pop("etcd").stop()
            if args.only != "puts":
                listed, seconds, fill_rate = fill_and_list(clusters["cairn"], keys)
    except ClusterError as error:
        sys.exit(f"meta.py: {error}")
    finally:
        for proc in list(raft._children):
            raft._kill(proc)
        for cluster in clusters.values():
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for clients in CLIENTS if puts else ():
        cairn, etcd = puts[("cairn", clients)], puts[("etcd", clients)]
        rows.append(row(f"meta_put_per_s_c{clients}", cairn["per_s"], "op/s", "etcd put", etcd["per_s"]))
        rows.append(row(f"meta_put_p50_ms_c{clients}", cairn["p50_ms"], "ms", "etcd put", etcd["p50_ms"], False))
        rows.append(row(f"meta_put_p99_ms_c{clients}", cairn["p99_ms"], "ms", "etcd put", etcd["p99_ms"], False))
    if listed:
        rows.append(row("meta_list_keys_per_s", listed / seconds, "key/s", "target", LIST_TARGET_KEYS_PER_S))
    print_table(f"Cairn meta, 3 nodes, fsync on: object puts (BeginPut + CommitPut, 4 chunks) vs etcd puts, "
                f"and listing {keys:,} keys ({'quick' if args.quick else 'full'}; ratio > 1: Cairn better)", rows)
    if listed:
        print(f"(filling the bucket ran at {fill_rate:,.0f} commits/s with {FILL_CONCURRENCY} concurrent commits)")
    print(f"(peak resident memory of a Cairn meta node over the run: {memory.peak / 1e6:,.0f} MB)")
    write_json(args.json, rows)


def fill_and_list(cluster: CairnMetaCluster, keys: int) -> tuple[int, float, float]:
    """Fills a fresh bucket with `keys` empty objects, then lists it whole: (listed, seconds, fill rate)."""
    if not _make_bucket(cluster):
        sys.exit("meta.py: could not create the listing bucket")
    progress(f"  filling a bucket with {keys:,} keys ...")
    fill_rate = asyncio.run(fill(cluster.endpoints, "listing", keys))
    progress(f"    {fill_rate:,.0f} commits/s; listing it ...")
    listed, seconds = asyncio.run(list_all(cluster.endpoints, "listing"))
    if listed != keys:
        sys.exit(f"meta.py: listed {listed} keys, filled {keys}")
    return listed, seconds, fill_rate


def _make_bucket(cluster: CairnMetaCluster) -> bool:
    from cluster.client.meta import MetaClient
    from cluster.proto import meta_pb2 as pb

    async def create():
        client = MetaClient(cluster.endpoints)
        try:
            reply = await client.command(create_bucket=pb.CreateBucket(name="listing",
                                                                       profile=pb.ErasureProfile(k=4, m=2)))
            return reply.code == pb.OK
        finally:
            await client.close()
    return asyncio.run(create())


if __name__ == "__main__":
    main()
