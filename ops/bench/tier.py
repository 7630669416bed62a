"""Benchmark of the cold tier: transition, recall and restore throughput against an S3 server.

    python ops/bench/tier.py [--quick] [--json PATH]

A local cluster (cluster/dev.py: 3 meta, 6 data processes on 127.0.0.1, bucket 4+2) and moto's
S3 server process (the same one the tests use) as the cloud bucket. The benchmark stores 256 MiB
(--quick: 48 MiB) of 8 MiB objects, then sets a lifecycle rule that sends them cold:

- transition: chunk bytes made COLD per second, from the rule to the last chunk recorded cold
  (data nodes rebuild each chunk from k fragments, verify it, upload it once);
- recall: whole-object reads of the cold objects by one client, 4 at a time (data nodes fetch
  and verify each chunk, the client verifies it again);
- range recall: the median latency of a 4 KiB range read of a cold object (one chunk recalled);
- restore: `restore` of the whole bucket (chunks fetched, coded and placed on 6 nodes).

The references, in the same run against the same server: the same chunks put and got with
boto3 directly from this process, 4 threads (what the S3 server itself can take), and one
chunk's GET for the range latency. A small object goes cold and comes back first, so that the
data nodes' one-off start (loading the S3 SDK, ~1 s) is not in the figures. The tier cannot beat the bucket it talks to, so a ratio near
1 means Cairn adds little on top of the S3 endpoint.
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # first: `cluster` is the package, not ops/bench/cluster.py
from common import bench_parser, print_table, progress, row, write_json  # noqa: E402

K, M = 4, 2
OBJECT_BYTES = 8 << 20
THREADS = 4
RANGE_READS = 20
TIMEOUT_SECONDS = 900.0


def wait_for(condition, what: str, timeout: float = TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"tier benchmark: {what} not within {timeout:.0f} s")
        time.sleep(0.1)


def raw_rates(s3_client, chunks: dict[bytes, bytes]) -> tuple[float, float, float]:
    """MB/s of putting and getting `chunks` straight to the bucket, 4 threads; one GET's seconds."""
    items = list(chunks.items())
    total = sum(len(data) for data in chunks.values())

    def put(item):
        s3_client.put_object(Bucket="raw", Key=item[0].hex(), Body=item[1])

    def get(item):
        return s3_client.get_object(Bucket="raw", Key=item[0].hex())["Body"].read()

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        started = time.perf_counter()
        list(pool.map(put, items))
        put_rate = total / (time.perf_counter() - started) / 1e6
        started = time.perf_counter()
        list(pool.map(get, items))
        get_rate = total / (time.perf_counter() - started) / 1e6
    latencies = []
    for item in items[:RANGE_READS]:
        started = time.perf_counter()
        get(item)
        latencies.append(time.perf_counter() - started)
    return put_rate, get_rate, statistics.median(latencies)


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    total = (48 if args.quick else 256) << 20
    import blake3
    import boto3

    import cluster
    from cluster.dev import LocalCluster
    from cluster.proto import meta_pb2 as pb
    from tests.s3_server import S3Server

    work = tempfile.mkdtemp(prefix="cairn-bench-tier-")
    server = S3Server().start()
    os.environ["BENCH_ACCESS_KEY_ID"] = os.environ["BENCH_SECRET_ACCESS_KEY"] = "testing"
    local = LocalCluster(os.path.join(work, "cluster"), metas=3, datas=6, port_base=None,
                         meta_options=["--lifecycle-every-seconds", "0.5"],
                         data_options=["--orphan-grace-seconds", "3600"])
    try:
        s3 = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        s3.create_bucket(Bucket="cold")
        s3.create_bucket(Bucket="raw")
        local.start()
        client = cluster.connect(local.meta_addresses)
        client.set_tier_target("cloud", server.url, "cold", credentials="env:BENCH")
        # a first transition and recall: the data nodes load the S3 SDK and open their clients once
        client.create_bucket("warm-up", k=K, m=M)
        client.put("warm-up", "w", os.urandom(OBJECT_BYTES))
        client.set_lifecycle("warm-up", [pb.LifecycleRule(target="cloud", after_created_seconds=1)])
        wait_for(lambda: client.status().tier.cold_chunks.get("cloud", 0) > 0, "the warm-up object cold")
        client.set_lifecycle("warm-up", [])
        client.restore("warm-up")
        client.create_bucket("frames", k=K, m=M)
        keys = [f"f/{n:05d}" for n in range(total // OBJECT_BYTES)]
        objects = {}
        for number, key in enumerate(keys):
            objects[key] = os.urandom(OBJECT_BYTES)
            client.put("frames", key, objects[key])
            progress(f"stored {number + 1}/{len(keys)} objects")
        chunks = {}
        for key in keys:
            data, offset = objects[key], 0
            for ref in client.manifest("frames", key).chunks:
                chunks[ref.id] = data[offset:offset + ref.length]
                offset += ref.length
        assert all(blake3.blake3(d).digest() == c for c, d in chunks.items())
        chunk_bytes = sum(len(d) for d in chunks.values())

        warm = client.status().tier.cold_chunks.get("cloud", 0)  # whatever of the warm-up is still cold
        started = time.perf_counter()
        client.set_lifecycle("frames", [pb.LifecycleRule(target="cloud", after_created_seconds=1)])
        wait_for(lambda: client.status().tier.cold_chunks.get("cloud", 0) >= len(chunks) + warm, "every chunk cold")
        transition = chunk_bytes / (time.perf_counter() - started) / 1e6  # (every object is older than 1 s)
        client.set_lifecycle("frames", [])
        progress(f"transition {transition:.1f} MB/s")

        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            started = time.perf_counter()
            for key, data in zip(keys, pool.map(lambda k: client.get("frames", k), keys)):
                if data != objects[key]:
                    raise SystemExit(f"tier benchmark: {key} read back wrong")
            recall = total / (time.perf_counter() - started) / 1e6
        progress(f"recall {recall:.1f} MB/s")
        latencies = []
        for key in keys[:RANGE_READS]:
            started = time.perf_counter()
            assert client.get("frames", key, start=OBJECT_BYTES // 2, end=OBJECT_BYTES // 2 + 4096) == \
                objects[key][OBJECT_BYTES // 2:OBJECT_BYTES // 2 + 4096]
            latencies.append(time.perf_counter() - started)
        range_seconds = statistics.median(latencies)

        started = time.perf_counter()
        restored = client.restore("frames")
        restore = restored / (time.perf_counter() - started) / 1e6
        progress(f"restore {restore:.1f} MB/s")
        put_rate, get_rate, get_seconds = raw_rates(s3, chunks)
        client.close()
    finally:
        local.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        row("tier_transition_mb_per_s", transition, "MB/s", "boto3 put", put_rate),
        row("tier_recall_mb_per_s", recall, "MB/s", "boto3 get", get_rate),
        row("tier_range_recall_ms", range_seconds * 1000, "ms", "boto3 get 1", get_seconds * 1000, False),
        row("tier_restore_mb_per_s", restore, "MB/s", "boto3 get", get_rate),
    ]
    print_table(f"Cairn cold tier against moto's S3 server (6 data nodes, {K}+{M}, {total >> 20} MiB, "
                f"{len(chunks)} chunks)", rows)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
