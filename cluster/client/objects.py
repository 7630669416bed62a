"""The asyncio client: buckets and objects of a Cairn cluster.

    client = AsyncClient(["127.0.0.1:7400", ...])      # any meta addresses; the leader is found
    await client.create_bucket("frames", k=4, m=2)
    await client.put("frames", "cam1/0001.jpg", data_or_path_or_stream)
    data = await client.get("frames", "cam1/0001.jpg")
    reader = await client.open("frames", "cam1/0001.jpg")   # seek, read, read_range
    async for page in client.list_pages("frames", prefix="cam1/", delimiter="/"): ...

The write path is cluster/client/writer.py, the fragment work cluster/client/fragments.py, the
seekable reader cluster/client/reader.py. Errors are the typed ones of cluster/client/errors.py.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from cluster.client.errors import (CairnError, CorruptObject, InvalidArgument, NoSuchBucket, Refused,
                                   TierUnavailable, raise_for)
from cluster.client.fragments import Fragments
from cluster.client.meta import MetaClient
from cluster.client.reader import ObjectReader
from cluster.client.writer import BUFFER_BYTES, Progress, Writer
from cluster.data.wire import DataClient
from cluster.proto import meta_pb2 as pb

LIST_PAGE_KEYS = 5000  # keys per listing round trip: 5x S3's pages (the leader scans a page in one go)
CHUNK_IDS_PER_CALL = 10_000
RESTORE_PAGE_KEYS = 100
RESTORE_POLL_SECONDS = 0.5
RESTORE_STALL_SECONDS = 300.0
GET_READ_AHEAD_CHUNKS = 32  # a whole get keeps this many chunks in flight (at most 4 MiB each)


@dataclass
class Page:
    entries: list          # ListEntry: key and head
    prefixes: list[str]    # common prefixes ("directories") when a delimiter was given


@dataclass
class Status:
    leader: str
    nodes: list            # pb.Node
    buckets: list          # pb.Bucket
    chunks: int
    chunk_bytes: int
    repair: object = None  # pb.RepairStats from the leader
    tier: object = None    # pb.TierStats from the leader

    @property
    def logical_bytes(self) -> int:
        return sum(b.bytes for b in self.buckets)

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes of current objects per byte of distinct chunk (inline objects count too)."""
        return self.logical_bytes / self.chunk_bytes if self.chunk_bytes else 1.0


class AsyncClient:
    def __init__(self, meta_addresses: list[str], timeout: float = 30.0, buffer_bytes: int = BUFFER_BYTES,
                 connect: Callable[[str], DataClient] = DataClient, meta: MetaClient | None = None,
                 fragments: Fragments | None = None):
        self.meta = meta or MetaClient(meta_addresses, timeout=timeout)
        self.fragments = fragments or Fragments(self.meta, connect)
        self.writer = Writer(self.fragments, buffer_bytes)

    async def close(self) -> None:
        await self.meta.close()
        await self.fragments.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---- buckets

    async def create_bucket(self, name: str, k: int = 4, m: int = 2, inline_max_bytes: int = 4096,
                            versioning: bool = False, quota_bytes: int = 0, quota_objects: int = 0) -> None:
        await self._command(create_bucket=pb.CreateBucket(
            name=name, profile=pb.ErasureProfile(k=k, m=m), inline_max_bytes=inline_max_bytes,
            versioning=versioning, quota_bytes=quota_bytes, quota_objects=quota_objects))

    async def delete_bucket(self, name: str) -> None:
        await self._command(delete_bucket=pb.DeleteBucket(name=name))

    async def buckets(self) -> list:
        return list((await self._call(list_buckets=pb.ListBuckets())).list_buckets.buckets)

    # ---- objects

    async def put(self, bucket: str, key: str, source, content_type: str = "", metadata: dict | None = None,
                  progress: Progress | None = None) -> pb.ObjectHead:
        """Stores bytes, a file path, a binary stream or an (async) iterable of bytes; returns the
        new version's head once it is committed."""
        rereadable = isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike))
        try:
            return await self.writer.put(bucket, key, source, content_type, metadata, progress)
        except Refused as error:
            if error.code != pb.MISSING_CHUNKS or not rereadable:
                raise
        # a chunk this put found stored (and did not send) was garbage-collected before the
        # commit; the source can be read again, so the put runs again and sends it this time
        return await self.writer.put(bucket, key, source, content_type, metadata, progress)

    async def head(self, bucket: str, key: str, version: int = 0) -> pb.ObjectHead:
        return (await self.manifest(bucket, key, version)).head

    async def manifest(self, bucket: str, key: str, version: int = 0) -> pb.Manifest:
        """The version's manifest: head, chunk list (or inline bytes), user metadata."""
        return (await self._manifest(bucket, key, version, with_chunks=False)).manifest

    async def open(self, bucket: str, key: str, version: int = 0, read_ahead: int | None = None) -> ObjectReader:
        got = await self._manifest(bucket, key, version, with_chunks=True)
        self.fragments.learn_from_read(got.nodes, got.nodes_version)
        reader = ObjectReader(self.fragments, f"{bucket}/{key}", got.manifest, dict(zip(got.chunk_ids, got.chunks)))
        if read_ahead is not None:
            reader.read_ahead = read_ahead
        return reader

    async def get(self, bucket: str, key: str, out=None, start: int = 0, end: int | None = None,
                  progress: Progress | None = None):
        """The object's bytes, or with `out` (a path or a writable binary stream) its bytes
        written there (returns the size). `start`/`end` read a byte range. A whole read is
        checked against the object's BLAKE3 as well as each chunk against its name."""
        reader = await self.open(bucket, key, read_ahead=GET_READ_AHEAD_CHUNKS)
        try:
            end = reader.size if end is None else min(end, reader.size)
            reader.read_ahead_until(end)
            whole = start == 0 and end == reader.size
            if out is None and whole and len(reader.manifest.chunks) == 1:
                data = await reader.read_one_chunk(progress)
            elif out is None:
                data = await self._read_span(reader, start, end, progress, sink=None)
            elif isinstance(out, (str, os.PathLike)):
                with open(out, "wb") as f:
                    data = await self._read_span(reader, start, end, progress, sink=f)
            else:
                data = await self._read_span(reader, start, end, progress, sink=out)
            if whole and not reader.verified_whole():
                raise CorruptObject(f"{bucket}/{key}: the object does not match its BLAKE3 (its manifest is "
                                    "wrong); not returned")
            return data
        finally:
            await reader.close()

    @staticmethod
    async def _read_span(reader: ObjectReader, start: int, end: int, progress, sink):
        if sink is None:  # one join of verified chunks: a single copy into the result
            return await reader.read_range(start, end, progress)
        written = 0
        async for piece in reader.pieces(start, end, progress):  # each chunk straight to the sink
            await asyncio.to_thread(sink.write, piece)
            written += len(piece)
        return written

    async def chunks(self, ids: list[bytes]) -> list:
        """The chunk records (pb.Chunk: state, tier, placement) of chunk ids; None where unknown."""
        out = []
        for start in range(0, len(ids), CHUNK_IDS_PER_CALL):
            got = (await self._call(get_chunks=pb.GetChunks(ids=ids[start:start + CHUNK_IDS_PER_CALL]))).get_chunks
            out.extend(chunk if found else None for found, chunk in zip(got.found, got.chunks))
        return out

    async def delete(self, bucket: str, key: str) -> pb.MetaResult:
        return await self._command(delete_object=pb.DeleteObject(bucket=bucket, key=key))

    async def copy(self, source_bucket: str, source_key: str, bucket: str, key: str) -> pb.ObjectHead:
        """A new object that shares the source's chunks: no data moves."""
        result = await self._command(copy_object=pb.CopyObject(bucket=bucket, key=key, source_bucket=source_bucket,
                                                               source_key=source_key))
        return result.head

    async def list_pages(self, bucket: str, prefix: str = "", delimiter: str = "", start_after: str = "",
                         page_keys: int = LIST_PAGE_KEYS) -> AsyncIterator[Page]:
        token = start_after
        while True:
            got = (await self._call(list_objects=pb.ListObjects(
                bucket=bucket, prefix=prefix, delimiter=delimiter, start_after=token, max_keys=page_keys))).list_objects
            yield Page(list(got.entries), list(got.common_prefixes))
            token = got.next
            if not token:
                return

    async def list(self, bucket: str, prefix: str = "", delimiter: str = "") -> AsyncIterator:
        """Every entry (ListEntry) under the prefix, then nothing else; prefixes via list_pages."""
        async for page in self.list_pages(bucket, prefix, delimiter):
            for entry in page.entries:
                yield entry

    # ---- the cluster

    async def status(self) -> Status:
        stats = (await self._call(get_stats=pb.GetStats())).stats
        nodes = (await self._call(list_nodes=pb.ListNodes())).list_nodes.nodes
        return Status(self.meta.leader, list(nodes), await self.buckets(), stats.chunks, stats.chunk_bytes, stats.repair,
                      stats.tier)

    # ---- the cold tier

    async def set_tier_target(self, name: str, url: str, bucket: str, prefix: str = "", credentials: str = "",
                              addressing: str = "path", region: str = "us-east-1") -> None:
        """Adds (or changes) a cold tier: an S3 endpoint and bucket. `credentials` is a reference,
        env:NAME (NAME_ACCESS_KEY_ID and NAME_SECRET_ACCESS_KEY in the data nodes' environment)
        or file:PATH (JSON on the data nodes, mode 600); keys themselves are refused."""
        await self._command(set_tier_target=pb.SetTierTarget(target=pb.TierTarget(
            name=name, url=url, bucket=bucket, prefix=prefix, credentials=credentials, addressing=addressing,
            region=region)))

    async def remove_tier_target(self, name: str) -> None:
        await self._command(set_tier_target=pb.SetTierTarget(target=pb.TierTarget(name=name), remove=True))

    async def tier_targets(self) -> list:
        return list((await self._call(list_tier_targets=pb.ListTierTargets())).list_tier_targets.targets)

    async def set_lifecycle(self, bucket: str, rules: list) -> None:
        """Replaces a bucket's lifecycle rules (pb.LifecycleRule, or dicts of its fields); [] clears them."""
        rules = [r if isinstance(r, pb.LifecycleRule) else pb.LifecycleRule(**r) for r in rules]
        await self._command(set_lifecycle=pb.SetLifecycle(bucket=bucket, rules=rules))

    async def lifecycle(self, bucket: str) -> list:
        for record in await self.buckets():
            if record.name == bucket:
                return list(record.lifecycle)
        raise NoSuchBucket(f"no bucket {bucket!r}")

    async def restore(self, bucket: str, prefix: str = "", progress: Callable[[int], None] | None = None,
                      poll_seconds: float = RESTORE_POLL_SECONDS, stall_seconds: float = RESTORE_STALL_SECONDS) -> int:
        """Brings every cold chunk of the objects under `prefix` back to the data nodes, a page at
        a time; `progress(bytes)` hears of each chunk made hot. Returns the bytes brought back.
        Raises TierUnavailable if a page makes no progress for `stall_seconds`."""
        token, restored = "", 0
        while True:
            request = pb.Restore(bucket=bucket, prefix=prefix, start_after=token, max_keys=RESTORE_PAGE_KEYS)
            reply = (await self._call(restore=request)).restore
            left, stalled_at = reply.cold_bytes, asyncio.get_running_loop().time() + stall_seconds
            while reply.cold:
                await asyncio.sleep(poll_seconds)
                reply = (await self._call(restore=request)).restore  # queues again what failed meanwhile
                if reply.cold_bytes < left:
                    if progress:
                        progress(left - reply.cold_bytes)
                    restored += left - reply.cold_bytes
                    left, stalled_at = reply.cold_bytes, asyncio.get_running_loop().time() + stall_seconds
                elif asyncio.get_running_loop().time() > stalled_at:
                    raise TierUnavailable(f"restore of {bucket}/{prefix}: {reply.cold} chunks still cold after "
                                          f"{stall_seconds:.0f} s without progress (cairn status shows the tier's "
                                          "failures; check its endpoint)")
            token = reply.next
            if not token:
                return restored

    async def drain_node(self, node_id: int, drain: bool = True) -> None:
        """Marks a data node DRAINING: the leader moves every fragment off it (bandwidth-limited,
        progress in status().repair.draining); drain=False puts it back in service (UP)."""
        nodes = {n.id: n for n in (await self._call(list_nodes=pb.ListNodes())).list_nodes.nodes}
        if node_id not in nodes:
            raise InvalidArgument(f"no data node {node_id} (cairn status lists them)")
        current = nodes[node_id].state
        wanted = pb.DRAINING if drain else pb.UP
        if current == wanted:
            return
        if drain and current == pb.DEAD:
            raise InvalidArgument(f"data node {node_id} is DEAD: its fragments are being repaired, not drained")
        result = await self._command(mark_node=pb.MarkNode(id=node_id, state=wanted, expect=current))
        if result.message:
            raise CairnError(f"data node {node_id} changed state meanwhile: {result.message}; try again")

    @property
    def fragments_sent(self) -> int:
        return self.fragments.sent

    # ---- plumbing

    async def _call(self, **op) -> pb.MetaReply:
        reply = await self.meta.call(pb.MetaOp(**op))
        raise_for(reply)
        return reply

    async def _command(self, **command) -> pb.MetaResult:
        reply = await self.meta.command(**command)
        raise_for(reply)
        return reply.result

    async def _manifest(self, bucket: str, key: str, version: int, with_chunks: bool) -> pb.GetObjectReply:
        return (await self._call(get_object=pb.GetObject(
            bucket=bucket, key=key, version=version, with_chunks=with_chunks,
            nodes_version=self.fragments.nodes_version))).get_object
