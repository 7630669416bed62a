"""A seekable reader of one object version.

It knows where each chunk starts (from the manifest), so a read or a range fetches only the
chunks it covers. Every chunk is verified against its BLAKE3 name before a byte of it is
returned (Fragments.read). A reader moving forward gets the next chunks fetched ahead of it, in
parallel, up to `read_ahead`; chunks it has passed are dropped, so memory stays bounded.
"""
from __future__ import annotations

import asyncio
import bisect
import io
from collections import OrderedDict

import blake3

from cluster.client.errors import CorruptObject, InvalidArgument
from cluster.client.fragments import Fragments
from cluster.codec.buffers import unzeroed_bytearray
from cluster.proto import meta_pb2 as pb

READ_AHEAD_CHUNKS = 8


class ObjectReader:
    def __init__(self, fragments: Fragments, name: str, manifest: pb.Manifest, chunks: dict[bytes, pb.Chunk],
                 read_ahead: int = READ_AHEAD_CHUNKS):
        if read_ahead < 0:
            raise InvalidArgument(f"read_ahead must be >= 0, not {read_ahead}")
        self.fragments = fragments
        self.name = name
        self.manifest = manifest
        self.head = manifest.head
        self.size = manifest.head.size
        self.read_ahead = read_ahead
        self._chunks = chunks
        self._starts: list[int] = []
        offset = 0
        for ref in manifest.chunks:
            self._starts.append(offset)
            offset += ref.length
        if manifest.chunks and offset != self.size:
            raise CorruptObject(f"{name}: its chunks add up to {offset} bytes, its size is {self.size}")
        self._position = 0
        self._ahead_last = len(manifest.chunks) - 1  # read-ahead stops at this chunk
        self._cache: OrderedDict[int, asyncio.Task] = OrderedDict()
        self._whole = blake3.blake3()  # of the bytes read in order from 0, to check a full read
        self._hashed = 0
        self._into: tuple[int, int, memoryview] | None = None  # what _fill writes: (start, end, view)
        self._placed: set[int] = set()  # chunks being decoded straight into it

    def read_ahead_until(self, end: int) -> None:
        """No read-ahead past byte `end`: a range read fetches only the chunks it covers (a
        cold chunk fetched for nothing is a recall from the cloud bucket)."""
        self._ahead_last = bisect.bisect_right(self._starts, max(end, 1) - 1) - 1

    # ---- file-like

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise InvalidArgument(f"whence must be SEEK_SET, SEEK_CUR or SEEK_END, not {whence}")
        if base + offset < 0:
            raise InvalidArgument(f"cannot seek to {base + offset}: before the start")
        self._position = base + offset
        return self._position

    async def read(self, size: int = -1) -> bytearray:
        data = await self.read_range(self._position, self._end(size))
        self._position += len(data)
        return data

    async def readinto(self, buffer) -> int:
        """Fills `buffer` from the current position, chunks wholly inside it decoded straight
        there (no intermediate bytes); returns the bytes filled."""
        view = memoryview(buffer).cast("B")
        start, end = self._clip(self._position, self._end(len(view)))
        await self._fill(start, end, view[:end - start])
        self._position += end - start
        return end - start

    async def read_range(self, start: int, end: int, progress=None) -> bytearray:
        """Bytes [start, end) (clipped to the object) in a new bytearray, fetching only the chunks
        they cover. Chunks wholly inside the range are decoded straight into it: no buffer per
        chunk and no copy after."""
        start, end = self._clip(start, end)
        result = unzeroed_bytearray(end - start)  # _fill writes every byte or raises
        await self._fill(start, end, memoryview(result), progress)
        return result

    async def read_one_chunk(self, progress=None) -> bytearray:
        """The whole of an object of exactly one chunk in a new bytearray: the chunk is decoded
        straight into it, with no task, read-ahead or ordering (most small objects are read
        this way). Verified as any chunk is; `verified_whole` holds after it."""
        if len(self.manifest.chunks) != 1:
            raise InvalidArgument(f"{self.name} has {len(self.manifest.chunks)} chunks, not one")
        ref = self.manifest.chunks[0]
        result = unzeroed_bytearray(ref.length)  # every byte is written, or read() raises
        await self.fragments.read(ref.id, ref.length, self._record(ref), out=memoryview(result))
        self._hashed = 1
        if progress:
            progress(ref.length)
        return result

    async def _fill(self, start: int, end: int, view: memoryview, progress=None) -> None:
        """Writes the verified bytes [start, end) into `view`. On failure it raises, and `view`
        may hold unverified bytes: the caller must not use them."""
        self._into = (start, end, view)
        try:
            filled = 0
            async for index, piece in self._indexed_pieces(start, end, progress):
                if index not in self._placed:
                    view[filled:filled + len(piece)] = piece
                filled += len(piece)
            if filled != len(view):  # never hand over bytes that were not written
                raise CorruptObject(f"{self.name}: its chunks cover {filled} of the {len(view)} bytes asked for")
        finally:
            self._into = None
            for index in self._placed:  # their bytes now belong to the caller: never served again
                task = self._cache.pop(index, None)
                if task is not None:
                    task.cancel()
            self._placed.clear()

    def _end(self, size: int | None) -> int:
        """Where a read of `size` from the position stops (at the position when it is past the
        end, where a read returns nothing)."""
        end = self.size if size is None or size < 0 else min(self.size, self._position + size)
        return max(end, self._position)

    async def pieces(self, start: int, end: int, progress=None):
        """Views of the verified bytes [start, end), chunk by chunk, in order."""
        start, end = self._clip(start, end)
        async for _, piece in self._indexed_pieces(start, end, progress):
            yield piece

    def _clip(self, start: int, end: int) -> tuple[int, int]:
        if start < 0 or end < start:
            raise InvalidArgument(f"bad range [{start}, {end})")
        end = min(end, self.size)
        return min(start, end), end

    async def _indexed_pieces(self, start: int, end: int, progress):
        """(chunk index, view of its verified bytes in [start, end)), in order; index -1 for an
        inline object's bytes."""
        if start >= end:
            return
        if not self.manifest.chunks:
            yield -1, memoryview(self.manifest.inline_data)[start:end]
            return
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_right(self._starts, end - 1) - 1
        for index in range(first, last + 1):
            data = await self._chunk(index)
            self._hash_in_order(index, data)
            lo = max(start - self._starts[index], 0)
            hi = min(end - self._starts[index], len(data))
            if progress:
                progress(hi - lo)
            yield index, memoryview(data)[lo:hi]

    # ---- whole-object check

    def verified_whole(self) -> bool:
        """After the object was read from its start to its end in order: whether it matches its
        BLAKE3. Each chunk is already checked against its name, so this guards the manifest."""
        if not self.manifest.chunks:
            return blake3.blake3(self.manifest.inline_data).digest() == self.head.blake3
        if len(self.manifest.chunks) == 1:  # its one chunk was checked against this very hash
            return self._hashed == 1 and self.manifest.chunks[0].id == self.head.blake3
        return self._hashed == len(self.manifest.chunks) and self._whole.digest() == self.head.blake3

    def _hash_in_order(self, index: int, data: bytearray) -> None:
        if index == self._hashed:
            if len(self.manifest.chunks) > 1:
                self._whole.update(data)
            self._hashed += 1

    # ---- chunks

    async def _chunk(self, index: int) -> bytearray:
        task = self._task(index)
        for old in [i for i in self._cache if i < index]:  # drop what is behind, fetch what is next
            self._cache.pop(old).cancel()
        for following in range(index + 1, min(index + 1 + self.read_ahead, self._ahead_last + 1)):
            self._task(following)
        try:
            return await asyncio.shield(task)
        except BaseException:
            self._cache.pop(index, None)  # a failed chunk is tried afresh next time
            raise

    def _task(self, index: int) -> asyncio.Task:
        task = self._cache.get(index)
        if task is None:
            ref = self.manifest.chunks[index]
            out = self._destination(index, ref.length)
            reading = self.fragments.read(ref.id, ref.length, self._record(ref), out=out)
            task = self._cache[index] = asyncio.get_running_loop().create_task(reading)
            if out is not None:
                self._placed.add(index)
            task.add_done_callback(_quiet)
        return task

    def _record(self, ref: pb.ChunkRef) -> pb.Chunk:
        record = self._chunks.get(ref.id)
        if record is None:
            raise CorruptObject(f"{self.name}: no record of chunk {ref.id.hex()[:16]}")
        return record

    def _destination(self, index: int, length: int) -> memoryview | None:
        """Where in the buffer _fill writes chunk `index` goes, if it lies wholly inside it."""
        if self._into is None:
            return None
        start, end, view = self._into
        first = self._starts[index]
        if first < start or first + length > end:
            return None
        return view[first - start:first - start + length]

    async def close(self) -> None:
        for task in self._cache.values():
            task.cancel()
        self._cache.clear()


def _quiet(task: asyncio.Task) -> None:
    """Marks a read-ahead's failure as seen: it is raised again if that chunk is ever read."""
    if not task.cancelled():
        task.exception()
