"""Where a node keeps its newest state-machine snapshot and stages one being received.

`FileSnapshots` writes through a temporary file, fsync and rename, so a crash leaves the old
snapshot or the new one, never half of one; `MemorySnapshots` is the simulator's stand-in.
"""
from __future__ import annotations

import os
import struct

from cluster.raft.messages import Membership, SnapshotMeta
from cluster.storage.durable import write_durably

_META = struct.Struct(">QQQI")


def _encode_meta(meta: SnapshotMeta) -> bytes:
    membership = meta.membership.encode()
    return _META.pack(meta.index, meta.term, meta.size_bytes, len(membership)) + membership


def _decode_meta(data: bytes) -> tuple[SnapshotMeta, int]:
    index, term, size, length = _META.unpack_from(data)
    membership = Membership.decode(data[_META.size:_META.size + length])
    return SnapshotMeta(index, term, membership, size), _META.size + length


class MemorySnapshots:
    def __init__(self):
        self._current: tuple[SnapshotMeta, bytes] | None = None
        self._staged = bytearray()

    def current(self):
        return self._current

    def save(self, meta: SnapshotMeta, data: bytes) -> None:
        self._current = (meta, bytes(data))

    def stage(self, offset: int, data: bytes) -> None:
        if offset == 0:
            self._staged = bytearray()
        self._staged += data

    def staged(self) -> bytes:
        return bytes(self._staged)


class FileSnapshots:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._path = os.path.join(directory, "snapshot")
        self._staging = os.path.join(directory, "snapshot.incoming")
        self._cached: tuple[SnapshotMeta, bytes] | None = None

    def current(self):
        if self._cached is None and os.path.exists(self._path):
            with open(self._path, "rb") as source:
                raw = source.read()
            meta, start = _decode_meta(raw)
            if len(raw) - start != meta.size_bytes:
                raise OSError(f"snapshot file {self._path} is {len(raw) - start} bytes, expected {meta.size_bytes}")
            self._cached = (meta, raw[start:])
        return self._cached

    def save(self, meta: SnapshotMeta, data: bytes) -> None:
        write_durably(self._path, [_encode_meta(meta), data])
        self._cached = (meta, bytes(data))

    def stage(self, offset: int, data: bytes) -> None:
        with open(self._staging, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.write(data)
            out.truncate()

    def staged(self) -> bytes:
        with open(self._staging, "rb") as source:
            return source.read()
