"""Reed-Solomon erasure coding over GF(2^8): k data fragments + m parity fragments.

Theory of operation. The code is systematic: the k data fragments are the chunk itself, cut in
k equal pieces (the last one zero-padded), and the m parity fragments are linear combinations
of them given by a Cauchy matrix (native/rs.c). Any k of the k + m fragments rebuild the rest:
the rows of the k survivors are inverted once per erasure pattern and the inverse is kept in a
small LRU cache, so repeated repairs of the same pattern cost no inversion. Encoding and decoding
both end in one native call that multiplies a matrix by byte streams, with the GIL released;
outputs are written into caller-provided buffers when given (zero-copy), or into one fresh
bytearray per call.

A ReedSolomon object is immutable apart from its cache (guarded by a lock), so threads may share
it and code in parallel.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable, Mapping, Sequence

from cluster._load import ffi, lib
from cluster.codec import buffers, kernels

FRAGMENTS_MAX = 255
DECODE_CACHE_ENTRIES = 256


class CodecError(ValueError):
    """Input that the erasure code cannot work with (sizes, counts, indexes)."""


class NotEnoughFragments(CodecError):
    """Fewer than k distinct fragments are available: the chunk cannot be rebuilt from them."""


def _check_status(status: int, what: str) -> None:
    # Python validates first, so a C error here means the two disagree: a bug, never user input.
    if status != 0:
        raise RuntimeError(f"native {what} failed with status {status}")


class ReedSolomon:
    """Systematic Reed-Solomon code with k data and m parity fragments (k + m <= 255)."""

    def __init__(self, k: int, m: int, kernel: str | None = None):
        if not isinstance(k, int) or not isinstance(m, int) or isinstance(k, bool) or isinstance(m, bool):
            raise TypeError("k and m must be integers")
        if k < 1 or m < 1 or k + m > FRAGMENTS_MAX:
            raise CodecError(f"need k >= 1, m >= 1 and k + m <= {FRAGMENTS_MAX}; got k={k}, m={m}")
        self.k, self.m = k, m
        self._kernel = kernels.rs_kernel(kernel)
        generator = ffi.new("uint8_t[]", (k + m) * k)
        _check_status(lib.cairn_rs_generator(k, m, generator), "generator")
        self._generator = bytes(ffi.buffer(generator))
        self._encode_tables = self._prepare(self._generator[k * k:])
        self._decode_cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ReedSolomon(k={self.k}, m={self.m}, kernel={kernels.rs_kernel_name(self._kernel)!r})"

    @property
    def kernel(self) -> str:
        return kernels.rs_kernel_name(self._kernel)

    @property
    def generator(self) -> bytes:
        """The (k + m) x k generator matrix, row-major."""
        return self._generator

    def fragment_size(self, chunk_size: int) -> int:
        """Bytes per fragment for a chunk of chunk_size bytes."""
        if chunk_size < 0:
            raise CodecError(f"chunk size must be >= 0, got {chunk_size}")
        return -(-chunk_size // self.k)

    # ---- whole chunks

    def split(self, chunk) -> list[memoryview]:
        """The k data fragments of a chunk: views into it, except a zero-padded copy of the tail."""
        view = buffers.byte_view(chunk, "chunk")
        size = self.fragment_size(view.nbytes)
        pieces = []
        for index in range(self.k):
            piece = view[index * size:(index + 1) * size]
            if len(piece) < size:
                piece, tail = memoryview(bytearray(size)), piece
                piece[:len(tail)] = tail  # a memoryview's slice takes the bytes as they are: one copy
            pieces.append(piece)
        return pieces

    def encode_chunk(self, chunk) -> list[memoryview]:
        """All k + m fragments of a chunk, in index order."""
        data = self.split(chunk)
        return data + self.encode(data)

    def decode_chunk(self, fragments: Mapping[int, object], chunk_size: int, out=None):
        """Rebuilds a chunk of chunk_size bytes from any k of its fragments: into a new bytearray,
        or into `out` (a writable buffer of exactly chunk_size bytes), which it returns; a reader
        passes where the chunk belongs (no buffer per chunk, no copy after)."""
        result = bytearray(chunk_size) if out is None else out
        view = buffers.byte_view(result, "chunk output")
        if view.readonly:
            raise TypeError(f"the chunk output must be writable, not read-only {type(out).__name__}")
        if view.nbytes != chunk_size:
            raise CodecError(f"the chunk output holds {view.nbytes} bytes, the chunk {chunk_size}")
        self._assemble(fragments, view, self.fragment_size(chunk_size))
        return result

    def _assemble(self, fragments: Mapping[int, object], view: memoryview, size: int) -> None:
        """Copies the present data fragments into place and decodes the missing ones there.
        `view` holds the chunk without its padding: a fragment it cuts short is copied, or
        decoded aside, only as far as it reaches."""
        targets = [view[index * size:(index + 1) * size] for index in range(self.k)]
        missing = [index for index in range(self.k) if index not in fragments]
        for index in range(self.k):
            if index in fragments:
                piece = buffers.byte_view(fragments[index], f"fragment {index}")
                if piece.nbytes != size:
                    raise CodecError(f"fragment {index} has {piece.nbytes} bytes, expected {size}")
                targets[index][:] = piece[:len(targets[index])]
        if missing:
            aside = {index: bytearray(size) for index in missing if len(targets[index]) < size}
            self.decode(fragments, missing, out={index: aside.get(index, targets[index]) for index in missing})
            for index, whole in aside.items():
                targets[index][:] = memoryview(whole)[:len(targets[index])]
        for target in targets:
            target.release()
        view.release()

    # ---- fragments

    def encode(self, data: Sequence[object], parity: Sequence[object] | None = None) -> list[memoryview]:
        """Computes the m parity fragments of k equal-length data fragments.

        Writes into `parity` (m writable buffers of the same length) when given, else into one
        new bytearray; returns views of the parity fragments in index order."""
        if len(data) != self.k:
            raise CodecError(f"encode needs exactly k={self.k} data fragments, got {len(data)}")
        inputs, pinned_in, size = self._inputs(data, "data fragment")
        outputs, pinned_out, views = self._outputs(parity, self.m, size)
        _check_status(lib.cairn_gf_matmul(self._kernel, self.k, self.m, self._encode_tables,
                                          inputs, outputs, size), "encode")
        del pinned_in, pinned_out  # the buffers had to outlive the call
        return views

    def decode(self, fragments: Mapping[int, object], wanted: Iterable[int] | None = None,
               out: Mapping[int, object] | None = None) -> dict[int, memoryview]:
        """Rebuilds fragments `wanted` (default: the missing data fragments) from any k of
        `fragments` (index -> buffer). Writes into `out` (index -> writable buffer) when given."""
        present = self._choose_present(fragments)
        wanted = self._wanted(fragments, wanted)
        if not wanted:
            return {}
        inputs, pinned_in, size = self._inputs([fragments[index] for index in present], "fragment")
        order = [out[index] for index in wanted] if out is not None else None
        outputs, pinned_out, views = self._outputs(order, len(wanted), size)
        tables = self._decode_tables(present, wanted)
        _check_status(lib.cairn_gf_matmul(self._kernel, self.k, len(wanted), tables, inputs, outputs, size), "decode")
        del pinned_in, pinned_out  # the buffers had to outlive the call
        return dict(zip(wanted, views))

    def clear_cache(self) -> None:
        """Forgets the cached decode matrices (benchmarks use it to time the inversion)."""
        with self._lock:
            self._decode_cache.clear()

    # ---- helpers

    def _prepare(self, coefficients: bytes):
        tables = ffi.new("uint8_t[]", len(coefficients) * lib.CAIRN_GF_TABLE_BYTES)
        lib.cairn_gf_prepare(coefficients, len(coefficients), tables)
        return tables

    def _choose_present(self, fragments: Mapping[int, object]) -> tuple[int, ...]:
        for index in fragments:
            self._check_index(index)
        if len(fragments) < self.k:
            raise NotEnoughFragments(f"need {self.k} distinct fragments to decode, got {len(fragments)}: "
                                     f"indexes {sorted(fragments)}")
        # Lowest indexes first: data fragments when they are there, which keeps the matrices
        # (and the cache keys) few and deterministic.
        return tuple(sorted(fragments)[:self.k])

    def _wanted(self, fragments: Mapping[int, object], wanted: Iterable[int] | None) -> tuple[int, ...]:
        if wanted is None:
            return tuple(index for index in range(self.k) if index not in fragments)
        wanted = tuple(wanted)
        for index in wanted:
            self._check_index(index)
        if len(set(wanted)) != len(wanted):
            raise CodecError(f"wanted fragment indexes repeat: {list(wanted)}")
        return wanted

    def _check_index(self, index) -> None:
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"fragment indexes are integers, got {type(index).__name__}")
        if not 0 <= index < self.k + self.m:
            raise IndexError(f"fragment index {index} out of range 0..{self.k + self.m - 1}")

    def _decode_tables(self, present: tuple[int, ...], wanted: tuple[int, ...]):
        key = (present, wanted)
        with self._lock:
            tables = self._decode_cache.get(key)
            if tables is not None:
                self._decode_cache.move_to_end(key)
                return tables
        rows = ffi.new("uint8_t[]", len(wanted) * self.k)
        _check_status(lib.cairn_rs_decode_matrix(self.k, self.m, bytes(present), bytes(wanted),
                                                 len(wanted), rows), "decode matrix")
        tables = self._prepare(bytes(ffi.buffer(rows)))
        with self._lock:
            self._decode_cache[key] = tables
            while len(self._decode_cache) > DECODE_CACHE_ENTRIES:
                self._decode_cache.popitem(last=False)
        return tables

    @staticmethod
    def _inputs(fragments: Sequence[object], what: str):
        pointers = ffi.new("uint8_t *[]", len(fragments))
        keep, size = [], None
        for index, fragment in enumerate(fragments):
            pointer, length = buffers.readable(fragment, what)
            if size is None:
                size = length
            elif length != size:
                raise CodecError(f"fragments must have equal lengths: {what} {index} has {length} bytes, "
                                 f"the first has {size}")
            pointers[index] = pointer
            keep.append(pointer)
        return pointers, keep, size

    @staticmethod
    def _outputs(targets: Sequence[object] | None, count: int, size: int):
        pointers = ffi.new("uint8_t *[]", count)
        if targets is None:
            block = memoryview(bytearray(count * size))
            targets = [block[index * size:(index + 1) * size] for index in range(count)]
        elif len(targets) != count:
            raise CodecError(f"expected {count} output buffers, got {len(targets)}")
        keep, views = [], []
        for index, target in enumerate(targets):
            pointer, length = buffers.writable(target, "output fragment")
            if length != size:
                raise CodecError(f"output buffer {index} has {length} bytes, fragments have {size}")
            pointers[index] = pointer
            keep.append(pointer)
            views.append(buffers.byte_view(target, "output fragment"))
        return pointers, keep, views

