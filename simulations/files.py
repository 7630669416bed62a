"""An in-memory `Files` (cluster/storage/files.py) with the failure modes of a real disk, for the
simulator: what was not synced is lost on a crash, except for a prefix of it that may survive
(a torn write), and stored bytes can rot (`flip`). Creating, truncating, renaming and deleting
are durable at once, as LocalFiles makes them (it syncs the directory and truncations).
"""
from __future__ import annotations

import errno
import random


class SimFiles:
    def __init__(self, rng: random.Random, capacity: int = 1 << 40):
        self.rng, self.capacity = rng, capacity
        self._data: dict[str, bytearray] = {}    # what a reader sees now
        self._synced: dict[str, int] = {}        # bytes of each file known to be on the platter
        self._names: dict[int, str] = {}
        self._next = 1
        self.syncs = 0

    # ---- Files

    def open(self, name: str) -> int:
        if "/" in name or not name:
            raise ValueError(f"bad file name {name!r}")
        self._data.setdefault(name, bytearray())
        self._synced.setdefault(name, 0)
        handle, self._next = self._next, self._next + 1
        self._names[handle] = name
        return handle

    def append(self, handle: int, data) -> int:
        buffer = self._data[self._names[handle]]
        start = len(buffer)
        room = self.capacity - self.used()
        if len(data) > room:
            buffer += bytes(data)[:max(0, room)]
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        buffer += bytes(data)
        return start

    def read(self, handle: int, offset: int, length: int) -> bytes:
        buffer = self._data[self._names[handle]]
        if offset + length > len(buffer):
            raise EOFError(f"read past the end ({offset}+{length} of {len(buffer)})")
        return bytes(buffer[offset:offset + length])

    def read_into(self, handle: int, offset: int, buffers: list) -> int:
        buffer, done = self._data[self._names[handle]], 0
        for target in buffers:
            view = memoryview(target).cast("B")
            piece = buffer[offset + done:offset + done + len(view)]
            view[:len(piece)] = piece
            done += len(piece)
        return done

    def size(self, handle: int) -> int:
        return len(self._data[self._names[handle]])

    def sync(self, handle: int) -> None:
        name = self._names[handle]
        self._synced[name] = len(self._data[name])
        self.syncs += 1

    def truncate(self, handle: int, length: int) -> None:
        name = self._names[handle]
        del self._data[name][length:]
        self._synced[name] = min(self._synced[name], length)

    def close(self, handle: int) -> None:
        self._names.pop(handle, None)

    def rename(self, old: str, new: str) -> None:
        self._data[new], self._synced[new] = self._data.pop(old), self._synced.pop(old)

    def delete(self, name: str) -> None:
        del self._data[name], self._synced[name]

    def list(self) -> list[str]:
        return sorted(self._data)

    def size_of(self, name: str) -> int:
        return len(self._data[name])

    def used(self) -> int:
        return sum(len(b) for b in self._data.values())

    def free_bytes(self) -> int:
        return max(0, self.capacity - self.used())

    def capacity_bytes(self) -> int:
        return self.capacity

    # ---- faults

    def crash(self) -> None:
        """Power loss: each file keeps what was synced plus, maybe, a prefix of the rest."""
        for name, buffer in self._data.items():
            synced = self._synced[name]
            keep = synced + (self.rng.randrange(len(buffer) - synced + 1) if len(buffer) > synced else 0)
            del buffer[keep:]
            self._synced[name] = len(buffer)
        self._names.clear()

    def flip(self, name: str, offset: int) -> None:
        self._data[name][offset] ^= 1 << self.rng.randrange(8)
