"""ObjectReader over in-memory chunks: ranges decoded straight into the result are right, never
served again once handed over, and a failed read returns nothing; and a whole get of a one-chunk
object, which skips the read-ahead and ordering, with the same checks."""
import asyncio

import blake3
import pytest
from hypothesis import given, settings, strategies as st

from cluster.client.errors import CorruptObject, InvalidArgument
from cluster.client.reader import ObjectReader
from cluster.proto import meta_pb2 as pb


class MemoryFragments:
    """Fragments.read's contract over a dict of chunks: verified bytes, into `out` when given."""

    def __init__(self, chunks: dict[bytes, bytes]):
        self.chunks = chunks
        self.into = 0      # reads that wrote into a caller's buffer
        self.failing: set[bytes] = set()

    async def read(self, chunk_id, length, record, out=None):
        await asyncio.sleep(0)
        data = self.chunks[chunk_id]
        if out is not None:
            self.into += 1
            memoryview(out)[:] = bytes(len(data)) if chunk_id in self.failing else data
        if chunk_id in self.failing:  # as a failed hash check: raised, whatever `out` holds
            raise OSError("chunk does not match its name")
        return data if out is None else out


def object_of(sizes: list[int], seed: int = 0):
    data = bytes((seed + i * 7) % 251 for i in range(sum(sizes)))
    refs, chunks, offset = [], {}, 0
    for n, size in enumerate(sizes):
        piece = data[offset:offset + size]
        chunk_id = blake3.blake3(piece + bytes([n])).digest()  # distinct even when equal
        chunks[chunk_id] = piece
        refs.append(pb.ChunkRef(id=chunk_id, length=size))
        offset += size
    manifest = pb.Manifest(head=pb.ObjectHead(size=len(data), blake3=blake3.blake3(data).digest()), chunks=refs)
    return data, manifest, chunks


def reader_of(sizes, read_ahead=2):
    data, manifest, chunks = object_of(sizes)
    fragments = MemoryFragments(chunks)
    reader = ObjectReader(fragments, "b/k", manifest, {i: pb.Chunk() for i in chunks}, read_ahead=read_ahead)
    return data, reader, fragments


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8), data=st.data())
def test_ranges_read_back_exactly(sizes, data):
    source, reader, fragments = reader_of(sizes)
    total = len(source)
    start = data.draw(st.integers(0, total + 5))
    end = data.draw(st.integers(start, total + 10))

    async def main():
        got = await reader.read_range(start, end)
        assert isinstance(got, bytearray) and got == source[start:end]
        whole_inside = sum(1 for i, s in enumerate(reader._starts) if s >= start and s + sizes[i] <= min(end, total))
        assert fragments.into == whole_inside  # those went straight into the result
    asyncio.run(main())


def test_a_result_handed_over_is_never_served_again():
    source, reader, _ = reader_of([100, 100, 100], read_ahead=0)

    async def main():
        first = await reader.read_range(0, 300)
        first[:] = bytes(300)  # the caller owns it now
        assert await reader.read_range(100, 200) == source[100:200]
        assert await reader.read_range(0, 300) == source
    asyncio.run(main())


def test_a_failed_chunk_fails_the_read_and_a_later_read_succeeds():
    source, reader, fragments = reader_of([100, 100, 100])
    bad = reader.manifest.chunks[1].id
    fragments.failing.add(bad)

    async def main():
        with pytest.raises(OSError, match="does not match"):
            await reader.read_range(0, 300)
        fragments.failing.clear()
        assert await reader.read_range(0, 300) == source
    asyncio.run(main())


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8), data=st.data())
def test_readinto_fills_any_buffer_exactly(sizes, data):
    source, reader, _ = reader_of(sizes)
    position = data.draw(st.integers(0, len(source) + 3))
    length = data.draw(st.integers(0, len(source) + 10))

    async def main():
        reader.seek(position)
        buffer = bytearray(b"\x55" * (length + 4))
        filled = await reader.readinto(memoryview(buffer)[:length])
        expected = source[position:position + length]
        assert filled == len(expected) and reader.tell() == position + filled
        assert buffer == expected + b"\x55" * (length + 4 - filled)  # nothing past what was filled
        buffer[:] = bytes(len(buffer))  # the caller's to change: a later read is unaffected
        reader.seek(0)
        assert await reader.read_range(0, len(source)) == source
    asyncio.run(main())


def test_read_and_pieces_still_serve_chunks_of_their_own():
    source, reader, fragments = reader_of([50, 60, 70])

    async def main():
        reader.seek(10)
        assert await reader.read(100) == source[10:110]
        assert b"".join([bytes(p) async for p in reader.pieces(0, 180)]) == source
        with pytest.raises(Exception, match="bad range"):
            await reader.read_range(5, 4)
        reader.seek(500)  # past the end: reads return nothing and leave the position
        assert await reader.read() == b"" and await reader.readinto(bytearray(10)) == 0
        assert reader.tell() == 500
    asyncio.run(main())


def test_a_chunk_that_comes_back_short_fails_the_read():
    """The result buffer is not zero-filled: a read that would leave bytes unwritten raises."""
    data, manifest, chunks = object_of([100, 100])
    short = MemoryFragments({i: c[:90] for i, c in chunks.items()})  # (Fragments.read never does this)
    reader = ObjectReader(short, "b/k", manifest, {i: pb.Chunk() for i in chunks})

    async def main():
        with pytest.raises(CorruptObject, match="cover 130 of the 140 bytes"):
            await reader.read_range(10, 150)  # no chunk wholly inside: both are copied in
    asyncio.run(main())


@pytest.mark.parametrize("size", [0, 1, (4 << 20) - 1, 4 << 20, (8 << 20) + 3])
def test_unzeroed_bytearrays_have_the_size_asked_and_are_writable(size):
    from cluster.codec.buffers import unzeroed_bytearray

    buffer = unzeroed_bytearray(size)
    assert type(buffer) is bytearray and len(buffer) == size
    buffer[:] = b"\x5a" * size
    assert buffer.count(0x5a) == size
    buffer.extend(b"12")  # an ordinary bytearray: it still grows
    assert len(buffer) == size + 2 and buffer[-2:] == b"12"


def test_a_whole_read_is_checked_against_the_objects_blake3():
    chunk_bytes = 1000

    async def main():
        source, reader, _ = reader_of([chunk_bytes] * 5, read_ahead=2)
        assert await reader.read_range(0, len(source)) == source
        assert reader.verified_whole()
        await reader.close()
        _, manifest, chunks = object_of([chunk_bytes] * 5)
        manifest.head.blake3 = blake3.blake3(b"another object").digest()  # a wrong manifest
        reader = ObjectReader(MemoryFragments(chunks), "b/k", manifest, {i: pb.Chunk() for i in chunks})
        await reader.read_range(0, manifest.head.size)
        assert not reader.verified_whole()
        await reader.close()
    asyncio.run(main())


def test_a_read_that_skipped_a_chunk_is_not_whole():
    async def main():
        source, reader, _ = reader_of([1000] * 3, read_ahead=0)
        await reader.read_range(1000, len(source))  # from the second chunk on
        assert not reader.verified_whole()
    asyncio.run(main())


class WholeGetFragments(MemoryFragments):
    """What AsyncClient.get uses of Fragments, reads as MemoryFragments."""
    meta = None

    def learn_from_read(self, nodes, version) -> None:
        pass


def client_serving(manifest: pb.Manifest, chunks: dict[bytes, bytes], records: bool = True):
    from cluster.client.objects import AsyncClient

    fragments = WholeGetFragments(chunks)
    client = AsyncClient(["127.0.0.1:1"], meta=object(), fragments=fragments)  # nothing is dialled

    async def manifest_of(bucket, key, version, with_chunks):
        got = pb.GetObjectReply(manifest=manifest)
        if records:
            got.chunk_ids.extend(chunks)
            got.chunks.extend(pb.Chunk() for _ in chunks)
        return got
    client._manifest = manifest_of
    return client, fragments


def one_chunk_object(size: int = 5000):
    data = bytes(i % 253 for i in range(size))
    chunk_id = blake3.blake3(data).digest()  # one chunk: its name is the object's BLAKE3
    manifest = pb.Manifest(head=pb.ObjectHead(size=size, blake3=chunk_id), chunks=[pb.ChunkRef(id=chunk_id, length=size)])
    return data, manifest, {chunk_id: data}


def test_a_whole_get_of_one_chunk_decodes_into_its_result_and_keeps_the_checks(monkeypatch):
    tasks = []
    real_task = ObjectReader._task
    monkeypatch.setattr(ObjectReader, "_task", lambda reader, index: tasks.append(index) or real_task(reader, index))

    async def main():
        data, manifest, chunks = one_chunk_object()
        client, fragments = client_serving(manifest, chunks)
        seen = []
        assert await client.get("b", "k", progress=seen.append) == data
        assert fragments.into == 1 and seen == [len(data)] and tasks == []  # no chunk task: read_one_chunk
        assert await client.get("b", "k", start=10) == data[10:]  # a range: the general path, a task
        assert tasks == [0]

        wrong_name = pb.Manifest()
        wrong_name.CopyFrom(manifest)
        wrong_name.head.blake3 = blake3.blake3(b"another object").digest()
        with pytest.raises(CorruptObject, match="does not match its BLAKE3"):
            await client_serving(wrong_name, chunks)[0].get("b", "k")
        wrong_size = pb.Manifest()
        wrong_size.CopyFrom(manifest)
        wrong_size.head.size += 1
        with pytest.raises(CorruptObject, match="its chunks add up to 5000 bytes, its size is 5001"):
            await client_serving(wrong_size, chunks)[0].get("b", "k")
        with pytest.raises(CorruptObject, match="no record of chunk"):
            await client_serving(manifest, chunks, records=False)[0].get("b", "k")
        failing, fragments = client_serving(manifest, chunks)
        fragments.failing.add(manifest.chunks[0].id)
        with pytest.raises(OSError, match="does not match its name"):
            await failing.get("b", "k")
        _, two_chunks, _ = reader_of([100, 100])
        with pytest.raises(InvalidArgument, match="has 2 chunks, not one"):
            await two_chunks.read_one_chunk()
    asyncio.run(main())


def test_a_manifest_read_sends_the_version_of_the_clients_node_table():
    from cluster.client.objects import AsyncClient

    fragments = WholeGetFragments({})
    fragments.nodes_version = 42
    client = AsyncClient(["127.0.0.1:1"], meta=object(), fragments=fragments)  # nothing is dialled
    asked = []

    async def call(**op):
        asked.append(op["get_object"])
        return pb.MetaReply(get_object=pb.GetObjectReply())
    client._call = call
    asyncio.run(client._manifest("b", "k", 0, with_chunks=True))
    assert asked[0].nodes_version == 42 and asked[0].with_chunks
