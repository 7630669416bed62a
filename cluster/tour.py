"""`cairn dev tour`: a short walk through what Cairn does, on the local cluster.

1. write a generated dataset (camera-like frames) into a 4+2 bucket;
2. upload a modified copy of it: only the chunks around the changes travel (dedup);
3. kill a data node and read everything back, checked byte for byte (a degraded read);
4. show the cluster's status; restart the node.
"""
from __future__ import annotations

import random
import signal
import time

import cluster
from cluster.client.errors import BucketExists
from cluster.dev import LocalCluster

FILES = 16
BUCKET = "tour"


def dataset(size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(max(1, size // FILES)) for _ in range(FILES)]


def modified(files: list[bytes], seed: int) -> list[bytes]:
    """The same files with a few bytes changed in every fourth one."""
    rng = random.Random(seed)
    out = []
    for number, data in enumerate(files):
        if number % 4 == 0:
            data = bytearray(data)
            at = rng.randrange(len(data))
            data[at:at + 8] = b"MODIFIED"
            data = bytes(data)
        out.append(data)
    return out


def run(local: LocalCluster, size: int, seed: int = 1) -> int:
    def say(text: str) -> None:
        print(text, flush=True)

    with cluster.connect(local.meta_addresses) as client:
        try:
            client.create_bucket(BUCKET, k=4, m=2)
        except BucketExists:
            pass
        files = dataset(size, seed)
        say(f"1. writing {FILES} files, {size / 2**20:.0f} MiB, into bucket {BUCKET!r} (4+2) ...")
        started, sent = time.monotonic(), client.fragments_sent
        for number, data in enumerate(files):
            client.put(BUCKET, f"run1/frame-{number:03d}.bin", data)
        seconds, first_sent = time.monotonic() - started, client.fragments_sent - sent
        say(f"   {size / 2**20 / seconds:.0f} MiB/s, {first_sent} fragments sent")

        copy = modified(files, seed + 1)
        say("2. uploading a copy with a few bytes changed in every fourth file ...")
        sent = client.fragments_sent
        for number, data in enumerate(copy):
            client.put(BUCKET, f"run2/frame-{number:03d}.bin", data)
        status = client.status()
        say(f"   {client.fragments_sent - sent} fragments sent (the first upload: {first_sent}); "
            f"dedup ratio now {status.dedup_ratio:.2f}")

        victim = 1
        say(f"3. killing data node {victim} and reading everything back ...")
        local.kill("data", victim, signal.SIGKILL)
        started = time.monotonic()
        for run_name, expected in (("run1", files), ("run2", copy)):
            for number, data in enumerate(expected):
                if client.get(BUCKET, f"{run_name}/frame-{number:03d}.bin") != data:
                    say(f"   MISMATCH in {run_name}/frame-{number:03d}.bin")
                    return 1
        say(f"   all {2 * FILES} files read back intact in {time.monotonic() - started:.1f} s "
            f"(hedged fragment reads: {client.aio.fragments.hedged})")

        status = client.status()
        say("4. status:")
        say(f"   leader {status.leader}; {sum(b.objects for b in status.buckets)} objects, "
            f"{status.chunks} distinct chunks, dedup ratio {status.dedup_ratio:.2f}")
        for node in status.nodes:
            say(f"   node {node.id} {node.address} host={node.labels.get('host', '?')} "
                f"disks {sum(d.healthy for d in node.disks)}/{len(node.disks)} healthy")
    local.restart("data", victim)
    say(f"   data node {victim} restarted")
    return 0
