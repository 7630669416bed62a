"""The ordered key-value disk that durable state is written against.

Production uses RocksDB through rocksdict (`RocksDisk`); the simulator substitutes an in-memory
disk with crash semantics (simulations/disk.py). Both honour the same contract: `write` applies
its puts and range deletes atomically, and with sync=True returns only once they are on stable
storage (one fsync for the whole batch: that is the group commit).
"""
from __future__ import annotations

from typing import Iterator, Protocol


class Disk(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Items with start <= key < end, in key order."""

    def write(self, puts: list[tuple[bytes, bytes]], delete_ranges: list[tuple[bytes, bytes]], sync: bool) -> None: ...

    def close(self) -> None: ...


class RocksDisk:
    """A RocksDB database in raw-bytes mode."""

    def __init__(self, path: str):
        from rocksdict import Options, Rdict, WriteOptions

        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(path, options)
        self._sync = WriteOptions()
        self._sync.sync = True
        self._nosync = WriteOptions()

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=start):
            if key >= end:
                return
            yield key, value

    def write(self, puts, delete_ranges, sync: bool) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for start, end in delete_ranges:
            batch.delete_range(start, end)
        for key, value in puts:
            batch.put(key, value)
        self._db.write(batch, self._sync if sync else self._nosync)

    def close(self) -> None:
        self._db.close()
