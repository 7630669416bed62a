"""The write path for a source of any length, in a fixed memory budget.

The source (bytes, a file path, a readable binary stream, or an iterable or async iterable of
bytes) is read in blocks and cut into content-defined chunks as it arrives. Each chunk is named by
its BLAKE3 and waits in a batch; a batch goes to the leader in one BeginPut (which chunks exist,
where the new ones go), then its new chunks are coded and sent while the next batch is read.
A chunk holds its share of the budget from the moment it is read until its fragments are stored,
so a 50 GiB stream uploads in `buffer_bytes` of chunk data. Nothing is acknowledged before the
commit: one entry with the whole manifest, idempotent under retries. A put that runs longer than
the data nodes keep uncommitted fragments touches them meanwhile (keepalive.py).

An object no bigger than the bucket's inline threshold travels inside its manifest.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import blake3

from cluster import faultpoints
from cluster.client.errors import ClusterUnavailable, InvalidArgument, raise_for
from cluster.client.fragments import Fragments
from cluster.client.keepalive import Keepalive
from cluster.codec import Chunker
from cluster.proto import meta_pb2 as pb

READ_BYTES = 8 << 20          # one read from the source
BUFFER_BYTES = 256 << 20      # chunk data held by one put at most (the budget)
BEGIN_BATCH_CHUNKS = 256      # chunks per BeginPut
FRAGMENTS_IN_FLIGHT = 48      # fragment sends in flight per put
Progress = Callable[[int], None]


class Budget:
    """A byte semaphore: `take` waits until the bytes fit (one oversized take is let through alone)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._freed = asyncio.Condition()

    async def take(self, size: int) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self.used == 0 or self.used + size <= self.limit)
            self.used += size

    async def give(self, size: int) -> None:
        async with self._freed:
            self.used -= size
            self._freed.notify_all()


async def blocks(source, read_bytes: int = READ_BYTES) -> AsyncIterator[memoryview]:
    """The source's bytes in order, as flat byte views (any size) that stay valid: chunks may be
    views into them. A block an iterable hands over in a mutable buffer is copied once, since
    the iterable may reuse it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        for start in range(0, len(view), read_bytes):
            yield view[start:start + read_bytes]
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            async for block in blocks(f, read_bytes):
                yield block
    elif hasattr(source, "read"):
        while True:
            block = await asyncio.to_thread(source.read, read_bytes)
            if not block:
                return
            yield _flat(block)
    elif hasattr(source, "__aiter__"):
        async for block in source:
            yield _flat(block if isinstance(block, bytes) else bytes(block))
    elif hasattr(source, "__iter__"):
        for block in source:
            yield _flat(block if isinstance(block, bytes) else bytes(block))
    else:
        raise InvalidArgument(f"cannot read an object from a {type(source).__name__}: give bytes, a path, a "
                              "binary stream or an iterable of bytes")


def _flat(block) -> memoryview:
    view = memoryview(block)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


async def chunks(source, chunker: Chunker) -> AsyncIterator[memoryview]:
    """The source cut into content-defined chunks (the cuts do not depend on the block sizes).
    A chunk inside one block is a view of it, not a copy; only one that spans blocks is joined."""
    carry: list[memoryview] = []  # the start of a chunk that began in earlier blocks
    carried = 0
    async for block in blocks(source):
        start = 0
        for length in chunker.feed(block):
            piece = block[start:start + length - carried]
            yield memoryview(b"".join([*carry, piece])) if carry else piece
            start += len(piece)
            carry, carried = [], 0
        if start < len(block):
            carry.append(block[start:])
            carried += len(block) - start
    if chunker.finish():
        yield memoryview(b"".join(carry)) if len(carry) > 1 else carry[0]


@dataclass
class PutState:
    bucket: str
    key: str
    refs: list = field(default_factory=list)
    placements: dict = field(default_factory=dict)   # new chunk id -> nodes holding its fragments
    known: set = field(default_factory=set)          # chunk ids already handled by this put
    size: int = 0
    profile: pb.ErasureProfile | None = None
    inline_data: bytes | None = None                 # set when the object goes in its manifest
    keepalive: Keepalive | None = None               # its uploaded fragments, touched until the commit


class WholeHash:
    """The object's BLAKE3. An object of one chunk is hashed once: its chunk's name is its hash."""

    def __init__(self):
        self._hasher: blake3.blake3 | None = None
        self._first: tuple[memoryview, bytes] | None = None  # (chunk, its hash) while it is the only one

    def add(self, chunk: memoryview, digest: bytes) -> None:
        if self._hasher is None and self._first is None:
            self._first = (chunk, digest)
            return
        if self._hasher is None:
            self._hasher = blake3.blake3(self._first[0])
            self._first = None
        self._hasher.update(chunk)

    def digest(self) -> bytes:
        if self._hasher is not None:
            return self._hasher.digest()
        return self._first[1] if self._first is not None else blake3.blake3(b"").digest()


class Writer:
    def __init__(self, fragments: Fragments, buffer_bytes: int = BUFFER_BYTES,
                 fragments_in_flight: int = FRAGMENTS_IN_FLIGHT):
        if buffer_bytes < 1 << 20:
            raise InvalidArgument(f"a put needs a buffer of at least 1 MiB, not {buffer_bytes}")
        self.fragments = fragments
        self.meta = fragments.meta
        self.buffer_bytes = buffer_bytes
        self.fragments_in_flight = fragments_in_flight

    async def put(self, bucket: str, key: str, source, content_type: str = "", metadata: dict | None = None,
                  progress: Progress | None = None) -> pb.ObjectHead:
        state = PutState(bucket, key, keepalive=Keepalive(self.fragments, self.fragments.clock))
        budget, slots = Budget(self.buffer_bytes), asyncio.Semaphore(self.fragments_in_flight)
        whole = WholeHash()
        uploads: set[asyncio.Task] = set()
        batch: list[tuple[pb.ChunkRef, memoryview]] = []
        batch_bytes = 0
        try:
            async for chunk in chunks(source, Chunker()):
                await budget.take(len(chunk))
                self._check_uploads(uploads)
                state.keepalive.check()
                state.size += len(chunk)
                ref = pb.ChunkRef(id=blake3.blake3(chunk).digest(), length=len(chunk))
                whole.add(chunk, ref.id)
                state.refs.append(ref)
                batch.append((ref, chunk))
                batch_bytes += len(chunk)
                if len(batch) >= BEGIN_BATCH_CHUNKS or batch_bytes * 4 >= self.buffer_bytes:
                    await self._flush(state, batch, budget, slots, uploads, progress)
                    batch, batch_bytes = [], 0
            await self._flush(state, batch, budget, slots, uploads, progress, last=True)
            await asyncio.gather(*uploads)
            await state.keepalive.renew()  # so the commit names only fragments that are there
        finally:
            state.keepalive.stop()
            for task in uploads:
                task.cancel()
        head = pb.ObjectHead(size=state.size, blake3=whole.digest(), content_type=content_type)
        manifest = pb.Manifest(head=head, metadata=metadata or {})
        if state.inline_data is not None:
            manifest.inline_data = state.inline_data
        else:
            manifest.chunks.extend(state.refs)
        placements = [pb.Placement(chunk=c, nodes=n) for c, n in state.placements.items()]
        if faultpoints.hit("put.before_commit"):  # the client dies with its fragments uploaded
            raise ClusterUnavailable("fault point: the client stopped before its commit")
        reply = await self.meta.call(pb.MetaOp(command=pb.MetaCommand(
            op_id=os.urandom(16), commit_put=pb.CommitPut(bucket=bucket, key=key, manifest=manifest,
                                                          placements=placements))))
        raise_for(reply)
        return reply.result.head

    @staticmethod
    def _check_uploads(uploads: set) -> None:
        """Raises the first failed upload's error now, not after the whole source was read."""
        for task in [t for t in uploads if t.done()]:
            uploads.discard(task)
            task.result()

    async def _flush(self, state: PutState, batch, budget: Budget, slots, uploads: set, progress,
                     last: bool = False) -> None:
        """BeginPut for a batch, then starts the uploads of its new chunks (or keeps the whole
        object for its manifest, when it is all in this last batch and small enough)."""
        if not batch and state.profile is not None:
            return
        fresh = {ref.id: ref for ref, _ in batch if ref.id not in state.known}
        reply = await self.meta.call(pb.MetaOp(begin_put=pb.BeginPut(
            bucket=state.bucket, chunks=list(fresh.values()), seed=os.urandom(16))))
        raise_for(reply)
        first_batch = state.profile is None
        state.profile = reply.begin_put.profile
        if last and first_batch and state.size <= reply.begin_put.inline_max_bytes:
            state.inline_data = b"".join(data for _, data in batch)
            await budget.give(len(state.inline_data))
            return
        placed = {p.chunk: list(p.nodes) for p in reply.begin_put.placements}
        held = 0
        for ref, data in batch:
            if ref.id in placed and ref.id not in state.known:
                uploads.add(asyncio.ensure_future(self._upload(state, ref, data, placed[ref.id], budget, slots,
                                                               progress)))
            else:  # stored already, or earlier in this object
                held += len(data)
                if progress:
                    progress(len(data))
            state.known.add(ref.id)
        await budget.give(held)

    async def _upload(self, state: PutState, ref, data: memoryview, nodes: list[int], budget: Budget, slots,
                      progress) -> None:
        try:
            started = self.fragments.clock()  # (the first fragments may land long before the last)
            state.placements[ref.id] = await self.fragments.store(ref.id, data, nodes, state.profile, slots)
            state.keepalive.stored(ref.id, state.placements[ref.id], started)
        finally:
            await budget.give(len(data))
        if progress:
            progress(len(data))
