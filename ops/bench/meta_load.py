"""The load generator of ops/bench/meta.py for Cairn: closed-loop clients putting 4-chunk objects
through the Meta API (BeginPut, then CommitPut with the placements it got), as the client library
does for every put; fragment upload is left out, so this measures the metadata path alone.

    python ops/bench/meta_load.py --targets H:P,H:P,H:P --bucket NAME --clients N
        --warmup S --duration S --latencies FILE [--start EPOCH] [--seed N]

Same protocol as raft_load.py (it runs under raft_load.drive): "ready", the start time on stdin,
one JSON line at the end, latencies (s) of the counted puts, begin to commit, in --latencies.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # first: `cluster` is the package, not ops/bench/cluster.py
from cluster.client.meta import MetaClient  # noqa: E402
from cluster.proto import meta_pb2 as pb  # noqa: E402
from raft_load import GiveUp, drive  # noqa: E402

CHUNKS_PER_OBJECT = 4
CHUNK_BYTES = 1 << 20


class MetaLoad:
    def __init__(self, args):
        self.args = args
        self.meta = MetaClient(args.targets.split(","), timeout=30.0)
        self.done: list[tuple[float, float]] = []
        self.in_flight: dict[int, float] = {}

    @property
    def retries(self) -> int:
        return self.meta.retries

    async def connect(self, timeout: float) -> None:
        reply = await self.meta.call(pb.MetaOp(list_buckets=pb.ListBuckets()))
        if reply.code != pb.OK or self.args.bucket not in [b.name for b in reply.list_buckets.buckets]:
            raise GiveUp(f"no bucket {self.args.bucket!r} on {self.args.targets}: {reply.message}")

    async def close(self) -> None:
        await self.meta.close()

    async def put(self, rng: random.Random, key: str) -> None:
        chunks = [pb.ChunkRef(id=rng.randbytes(32), length=CHUNK_BYTES) for _ in range(CHUNKS_PER_OBJECT)]
        seed = rng.randbytes(16)
        begin = await self.meta.call(pb.MetaOp(begin_put=pb.BeginPut(bucket=self.args.bucket, chunks=chunks,
                                                                       seed=seed)))
        if begin.code != pb.OK:
            raise GiveUp(f"BeginPut failed: {pb.Code.Name(begin.code)} {begin.message}")
        manifest = pb.Manifest(head=pb.ObjectHead(size=CHUNK_BYTES * CHUNKS_PER_OBJECT, blake3=seed * 2),
                               chunks=chunks)
        commit = await self.meta.call(pb.MetaOp(command=pb.MetaCommand(op_id=seed, commit_put=pb.CommitPut(
            bucket=self.args.bucket, key=key, manifest=manifest, placements=begin.begin_put.placements))))
        if commit.code != pb.OK:
            raise GiveUp(f"CommitPut failed: {pb.Code.Name(commit.code)} {commit.message}")

    async def client(self, number: int, begin: float, stop: float) -> None:
        rng = random.Random(self.args.seed * 1_000_003 + number)
        delay = begin - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sequence = 0
        while time.perf_counter() < stop:
            sequence += 1
            start = self.in_flight[number] = time.perf_counter()
            await self.put(rng, f"load/{self.args.seed}/{number}/{sequence}")
            end = time.perf_counter()
            del self.in_flight[number]
            self.done.append((end, end - start))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--start", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--latencies", required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    try:  # the default event loop, as raft_load.py has for etcd: the same load generator
        result = asyncio.run(drive(MetaLoad(args), args))
    except GiveUp as error:
        sys.exit(f"meta_load: {error}")
    import json

    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
