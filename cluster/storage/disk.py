"""The ordered key-value disk that durable state is written against.

Production uses RocksDB through rocksdict (`RocksDisk`); the simulator substitutes an in-memory
disk with crash semantics (simulations/disk.py). Both honour the same contract: `write` applies
its puts and range deletes atomically, and with sync=True returns only once they are on stable
storage (one fsync for the whole batch: that is the group commit).
"""
from __future__ import annotations

import bisect
import os
import shutil
import struct
import tempfile
from typing import Iterator, Protocol

from cluster.storage.durable import fsync_directory

_FILE_HEADER = struct.Struct(">HQ")  # name length, file length
_CHECKPOINT_MAGIC = b"CairnCKP1"  # a packed RocksDB checkpoint
_PAIRS_MAGIC = b"CairnKVS1"       # a logical dump: key and value pairs
BLOOM_BITS_PER_KEY = 10
MEMTABLE_BLOOM_RATIO = 0.1  # of the memtable's size


class Disk(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Items with start <= key < end, in key order."""

    def write(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes], sync: bool,
              ranges: list[tuple[bytes, bytes]] = ()) -> None:
        """One atomic batch: the key ranges [start, end) go, then the keys, then the puts land.
        A range is for wholesale removal only: RocksDB keeps every range tombstone in its
        memtables and re-fragments them on each flush and compaction, so a range per write
        would grow without bound."""

    def close(self) -> None: ...


class SnapshotDisk(Disk, Protocol):
    """A disk whose whole content can be shipped: what a Raft snapshot of a state machine is."""

    def export_state(self) -> bytes: ...

    def import_state(self, data: bytes) -> None:
        """Replaces the whole content with an export's."""


class RocksDisk:
    """A RocksDB database in raw-bytes mode."""

    def __init__(self, path: str):
        from rocksdict import BlockBasedOptions, Options, Rdict, WriteOptions

        self.path = path
        options = self._options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Most lookups miss (a new chunk id, an op id not seen before): without a filter each miss
        # searches the memtable and reads an index and a data block in every level; bloom filters
        # (10 bits a key, about 1 % false positives) answer most of them from memory, in the
        # tables and in the memtable. ops/bench/lookup.py measures both against the defaults.
        table = BlockBasedOptions()
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
        options.set_block_based_table_factory(table)
        options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO)
        options.set_memtable_whole_key_filtering(True)
        self._db = Rdict(path, options)
        self._nosync = WriteOptions()

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items(from_key=start):
            if key >= end:
                return
            yield key, value

    def write(self, puts, deletes, sync: bool, ranges=()) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for start, end in ranges:
            batch.delete_range(start, end)
        for key in deletes:
            batch.delete(key)
        for key, value in puts:
            batch.put(key, value)
        self._db.write(batch, self._nosync)
        if sync:
            # Not WriteOptions.sync: rocksdict holds the GIL through a synced write, which stalls
            # every other thread (an event loop that should be sending the entries to followers
            # meanwhile) for the whole fsync. FlushWAL(sync) syncs the same WAL, the directory of
            # a new WAL file included, and releases the GIL while it waits on the disk. The one
            # difference: another thread may read the batch a moment before it is durable.
            # Nothing depends on that, as callers acknowledge a write only once this returns.
            self._db.flush_wal(True)

    def close(self) -> None:
        self._db.close()

    def export_state(self) -> bytes:
        """A RocksDB checkpoint (hard links to the live SST files plus a fresh manifest), packed
        into one byte string: name length, file length, name, bytes, for each file."""
        from rocksdict import Checkpoint

        parent = tempfile.mkdtemp(prefix="checkpoint-", dir=os.path.dirname(os.path.abspath(self.path)))
        try:
            target = os.path.join(parent, "db")
            Checkpoint(self._db).create_checkpoint(target)
            parts = [_CHECKPOINT_MAGIC]
            for name in sorted(os.listdir(target)):
                with open(os.path.join(target, name), "rb") as f:
                    data = f.read()
                encoded = name.encode()
                parts += [_FILE_HEADER.pack(len(encoded), len(data)), encoded, data]
            return b"".join(parts)
        finally:
            shutil.rmtree(parent, ignore_errors=True)

    def import_state(self, data: bytes) -> None:
        """Unpacks a checkpoint (or loads a logical dump) next to the database, syncs it, and
        swaps it in."""
        from rocksdict import Rdict

        staging = self.path + ".incoming"
        shutil.rmtree(staging, ignore_errors=True)
        if data.startswith(_PAIRS_MAGIC):
            loaded = RocksDisk(staging)
            loaded.write(list(_unpack_pairs(data)), [], sync=True)
            loaded.close()
        elif data.startswith(_CHECKPOINT_MAGIC):
            self._unpack_checkpoint(data, staging)
        else:
            raise ValueError("not a disk export: unknown header")
        self._db.close()
        old = self.path + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(self.path, old)
        os.rename(staging, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))
        shutil.rmtree(old, ignore_errors=True)
        self._db = Rdict(self.path, self._options)

    @staticmethod
    def _unpack_checkpoint(data: bytes, staging: str) -> None:
        os.makedirs(staging)
        position = len(_CHECKPOINT_MAGIC)
        while position < len(data):
            name_length, length = _FILE_HEADER.unpack_from(data, position)
            position += _FILE_HEADER.size
            name = data[position:position + name_length].decode()
            position += name_length
            if "/" in name or name in ("", ".", "..") or position + length > len(data):
                raise ValueError(f"malformed checkpoint: file {name!r}")
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data[position:position + length])
                f.flush()
                os.fsync(f.fileno())
            position += length


class MemoryDisk:
    """The Disk contract in memory, keys kept sorted: for tests and a throwaway single node.
    Every write counts as synced (there is no crash to survive)."""

    def __init__(self):
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        position = bisect.bisect_left(self._keys, start)
        while position < len(self._keys):
            key = self._keys[position]
            if key >= end:
                return
            yield key, self._data[key]
            # the list may change while a caller iterates: find our place again
            position = bisect.bisect_right(self._keys, key)

    def write(self, puts, deletes, sync: bool, ranges=()) -> None:
        for start, end in ranges:
            low, high = bisect.bisect_left(self._keys, start), bisect.bisect_left(self._keys, end)
            for key in self._keys[low:high]:
                del self._data[key]
            del self._keys[low:high]
        for key in deletes:
            if self._data.pop(key, None) is not None:
                del self._keys[bisect.bisect_left(self._keys, key)]
        for key, value in puts:
            if key not in self._data:
                bisect.insort(self._keys, key)
            self._data[key] = bytes(value)

    def close(self) -> None:
        pass

    def export_state(self) -> bytes:
        return _PAIRS_MAGIC + b"".join(struct.pack(">II", len(k), len(self._data[k])) + k + self._data[k]
                                       for k in self._keys)

    def import_state(self, data: bytes) -> None:
        if not data.startswith(_PAIRS_MAGIC):
            raise ValueError("a memory disk imports logical dumps only")
        self._data = dict(_unpack_pairs(data))
        self._keys = sorted(self._data)


def _unpack_pairs(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    position = len(_PAIRS_MAGIC)
    while position < len(data):
        key_length, value_length = struct.unpack_from(">II", data, position)
        position += 8
        if position + key_length + value_length > len(data):
            raise ValueError("malformed disk export: truncated pair")
        yield data[position:position + key_length], data[position + key_length:position + key_length + value_length]
        position += key_length + value_length
