"""Objects in and out of a Cairn cluster: the write path and the read path of the architecture.

Put: cut the bytes into content-defined chunks, name each by its BLAKE3, ask the leader which
exist (BeginPut, in batches) and where the new ones go, code each new chunk into k+m fragments
and send them to their nodes in parallel (a bounded number at a time), ask for a replacement
node for a fragment whose node fails and send it there, then commit the manifest: one entry,
idempotent under retries. Nothing is acknowledged before the commit. Objects up to the bucket's
inline threshold travel inside the manifest.

Get: read the manifest with its chunks' placements, fetch the k data fragments of each chunk
(the code is systematic: no decoding when they all come), fall back to parity fragments for
the ones that fail, decode, and check the chunk's BLAKE3, and the object's at the end. A chunk
that does not match its name is never returned: its fragments are fetched again from other
nodes and decoded, and if no k of them agree, the read fails.

This is the core of issue 6's client (no streaming reader, hedging or read-ahead yet).
"""
from __future__ import annotations

import asyncio
import os

import blake3

from cluster.client.meta import MetaClient
from cluster.codec import CodecError, ReedSolomon, chunk_lengths, crc32c
from cluster.data.wire import DataClient, DataError
from cluster.proto import meta_pb2 as pb

BEGIN_BATCH = 1000
UPLOADS_IN_FLIGHT = 32
REPLACE_ATTEMPTS = 3
# a fragment call slower than this is treated as a failed node (ZeroMQ queues for a dead peer
# instead of failing): a base, plus the time its bytes take at a slow link's rate
FRAGMENT_SECONDS_BASE = 2.0
FRAGMENT_BYTES_PER_SECOND_MIN = 10e6


def fragment_timeout(size: int) -> float:
    return FRAGMENT_SECONDS_BASE + size / FRAGMENT_BYTES_PER_SECOND_MIN


class CairnError(Exception):
    pass


class NoSuchKey(CairnError):
    pass


class NoSuchBucket(CairnError):
    pass


class NotEnoughFragmentsError(CairnError):
    """Fewer than k fragments of a chunk could be read intact: the data is unavailable or lost."""


class Refused(CairnError):
    def __init__(self, code: int, message: str):
        super().__init__(f"{pb.Code.Name(code)}: {message}")
        self.code = code


def _raise_for(reply: pb.MetaReply) -> None:
    if reply.code == pb.OK:
        return
    if reply.code == pb.NO_SUCH_KEY:
        raise NoSuchKey(reply.message)
    if reply.code == pb.NO_SUCH_BUCKET:
        raise NoSuchBucket(reply.message)
    raise Refused(reply.code, reply.message)


class ObjectClient:
    def __init__(self, meta_addresses: list[str]):
        self.meta = MetaClient(meta_addresses)
        self._data: dict[str, DataClient] = {}
        self._nodes: dict[int, pb.Node] = {}
        self._codecs: dict[tuple[int, int], ReedSolomon] = {}

    async def close(self) -> None:
        await self.meta.close()
        for client in self._data.values():
            await client.close()

    # ---- buckets

    async def create_bucket(self, name: str, k: int = 4, m: int = 2, inline_max_bytes: int = 4096,
                            versioning: bool = False) -> None:
        _raise_for(await self.meta.command(create_bucket=pb.CreateBucket(
            name=name, profile=pb.ErasureProfile(k=k, m=m), inline_max_bytes=inline_max_bytes,
            versioning=versioning)))

    # ---- put

    async def put(self, bucket: str, key: str, data: bytes) -> pb.ObjectHead:
        data = memoryview(data)
        digest = blake3.blake3(data).digest()
        refs, chunks = [], []
        offset = 0
        for length in chunk_lengths(data):
            piece = data[offset:offset + length]
            refs.append(pb.ChunkRef(id=blake3.blake3(piece).digest(), length=length))
            chunks.append(piece)
            offset += length
        head = pb.ObjectHead(size=len(data), blake3=digest)
        placements, profile, inline_max = await self._begin(bucket, refs)
        if len(data) <= inline_max:
            manifest = pb.Manifest(head=head, inline_data=bytes(data))
            return await self._commit(bucket, key, manifest, [])
        await self._upload(placements, {r.id: c for r, c in zip(refs, chunks)}, profile)
        manifest = pb.Manifest(head=head, chunks=refs)
        return await self._commit(bucket, key, manifest,
                                  [pb.Placement(chunk=c, nodes=n) for c, n in placements.items()])

    async def _begin(self, bucket: str, refs: list) -> tuple[dict[bytes, list[int]], pb.ErasureProfile, int]:
        placements: dict[bytes, list[int]] = {}
        profile, inline_max = pb.ErasureProfile(k=1), 0
        for start in range(0, max(1, len(refs)), BEGIN_BATCH):
            reply = await self.meta.call(pb.MetaOp(begin_put=pb.BeginPut(
                bucket=bucket, chunks=refs[start:start + BEGIN_BATCH], seed=os.urandom(16))))
            _raise_for(reply)
            for p in reply.begin_put.placements:
                placements[p.chunk] = list(p.nodes)
            profile, inline_max = reply.begin_put.profile, reply.begin_put.inline_max_bytes
        return placements, profile, inline_max

    async def _upload(self, placements: dict[bytes, list[int]], chunks: dict[bytes, memoryview], profile) -> None:
        codec = self._codec(profile.k, profile.m)
        slots = asyncio.Semaphore(UPLOADS_IN_FLIGHT)

        async def one_chunk(chunk_id: bytes) -> None:
            fragments = codec.encode_chunk(chunks[chunk_id])
            nodes = placements[chunk_id]
            pending = list(range(len(nodes)))
            for attempt in range(REPLACE_ATTEMPTS + 1):
                failed: list[int] = []

                async def send(index: int) -> None:
                    async with slots:
                        try:
                            client = await self._data_client(nodes[index])
                            await client.put(chunk_id, index, fragments[index], crc32c(fragments[index]),
                                             timeout=fragment_timeout(len(fragments[index])))
                        except (DataError, OSError, asyncio.TimeoutError, KeyError):
                            failed.append(index)
                await asyncio.gather(*(send(i) for i in pending))
                if not failed:
                    placements[chunk_id] = nodes
                    return
                if attempt == REPLACE_ATTEMPTS:
                    raise CairnError(f"could not store fragments {sorted(failed)} of chunk {chunk_id.hex()[:16]} "
                                     f"after {REPLACE_ATTEMPTS} replacements")
                # the fragments that went through stay; the failed ones go to other nodes
                reply = await self.meta.call(pb.MetaOp(replace=pb.Replace(
                    chunk=chunk_id, profile=profile, nodes=nodes, failed=sorted(failed), seed=os.urandom(16))))
                _raise_for(reply)
                nodes, pending = list(reply.replace.nodes), sorted(failed)
                await self._refresh_nodes()
        await asyncio.gather(*(one_chunk(c) for c in placements))

    async def _commit(self, bucket: str, key: str, manifest: pb.Manifest, placements: list) -> pb.ObjectHead:
        reply = await self.meta.call(pb.MetaOp(command=pb.MetaCommand(
            op_id=os.urandom(16), commit_put=pb.CommitPut(bucket=bucket, key=key, manifest=manifest,
                                                          placements=placements))))
        _raise_for(reply)
        return reply.result.head

    # ---- get

    async def get(self, bucket: str, key: str) -> bytes:
        reply = await self.meta.call(pb.MetaOp(get_object=pb.GetObject(bucket=bucket, key=key, with_chunks=True)))
        _raise_for(reply)
        got = reply.get_object
        manifest = got.manifest
        if manifest.inline_data or not manifest.chunks:
            data = bytes(manifest.inline_data)
        else:
            for node in got.nodes:
                self._nodes[node.id] = node
            records = dict(zip(got.chunk_ids, got.chunks))
            pieces = await asyncio.gather(*(self._read_chunk(ref, records[ref.id]) for ref in manifest.chunks))
            data = b"".join(pieces)
        if blake3.blake3(data).digest() != manifest.head.blake3:
            raise CairnError(f"{bucket}/{key}: the object does not match its BLAKE3; not returned")
        return data

    async def _read_chunk(self, ref: pb.ChunkRef, chunk: pb.Chunk) -> bytes:
        k, m = chunk.profile.k, chunk.profile.m
        codec = self._codec(k, m)
        have: dict[int, object] = {}
        bad: set[int] = set()

        async def fetch(indexes) -> None:
            async def one(index: int) -> None:
                try:
                    client = await self._data_client(chunk.nodes[index])
                    have[index] = await client.get(ref.id, index,
                                                   timeout=fragment_timeout(ref.length // max(1, k)))
                except (DataError, OSError, asyncio.TimeoutError, KeyError):
                    bad.add(index)  # down, missing, or corrupt (the node checks its CRC32C)
            await asyncio.gather(*(one(i) for i in indexes))

        def verified(fragments) -> bytes | None:
            try:
                data = bytes(codec.decode_chunk(fragments, ref.length))
            except CodecError:  # too few, or a fragment of the wrong size
                return None
            return data if blake3.blake3(data).digest() == ref.id else None

        await fetch(range(k))  # the data fragments: no decoding when they all come
        untried = [i for i in range(k, k + m)]
        while len(have) < k and untried:  # parity for each one that failed
            wanted, untried = untried[:k - len(have)], untried[k - len(have):]
            await fetch(wanted)
        data = verified(have) if len(have) >= k else None
        if data is not None:
            return data
        if len(have) >= k:
            # decoded, but not to the chunk's name: one fragment is wrong in a way its CRC could
            # not show. Read them all and leave each out in turn.
            await fetch(untried)
            for left_out in sorted(have):
                data = verified({i: f for i, f in have.items() if i != left_out})
                if data is not None:
                    return data
        raise NotEnoughFragmentsError(f"chunk {ref.id.hex()[:16]}: fewer than {k} of its {k + m} fragments "
                                      f"could be read intact (unreadable: {sorted(bad)})")

    # ---- plumbing

    def _codec(self, k: int, m: int) -> ReedSolomon:
        codec = self._codecs.get((k, m))
        if codec is None:
            codec = self._codecs[(k, m)] = ReedSolomon(k, m)
        return codec

    async def _refresh_nodes(self) -> None:
        reply = await self.meta.call(pb.MetaOp(list_nodes=pb.ListNodes()))
        _raise_for(reply)
        self._nodes = {n.id: n for n in reply.list_nodes.nodes}

    async def _data_client(self, node_id: int) -> DataClient:
        if node_id not in self._nodes:
            await self._refresh_nodes()
        address = self._nodes[node_id].data_address
        client = self._data.get(address)
        if client is None:
            client = self._data[address] = DataClient(address)
        return client
