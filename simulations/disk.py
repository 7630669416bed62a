"""An in-memory Disk with the failure modes of RocksDB on a real disk, for the simulator.

It keeps what is durable apart from what was written without a sync. A crash drops the
unsynced writes. A crash *during* a write (`crash_during_next_write`) leaves that batch either
wholly applied or not at all, decided by the seed: RocksDB's write-ahead log checksums every
batch and drops a torn one on recovery, so a batch is never half there. Below that, bits still
rot: `corrupt` flips a bit of a stored value, and `tear` cuts a stored value short, which is what
the log store's own checksums exist for. Setting `full` makes writes fail like a full disk.
"""
from __future__ import annotations

import bisect
import random

from cluster.storage.disk import MemoryDisk


class DiskFull(OSError):
    pass


class Crashed(Exception):
    """The simulated machine lost power in the middle of this write."""


class SimDisk:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self._durable: dict[bytes, bytes] = {}
        self._pending: list[tuple[list, list, list]] = []
        self._current: dict[bytes, bytes] = {}  # what a reader sees: durable plus pending
        self._keys: list[bytes] = []             # the current keys, sorted
        self._crash_next = False
        self.full = False
        self.syncs = 0

    # ---- Disk protocol

    def get(self, key: bytes) -> bytes | None:
        return self._current.get(key)

    def scan(self, start: bytes, end: bytes):
        keys = self._keys
        position = bisect.bisect_left(keys, start)
        while position < len(keys):  # tolerant of writes between steps: re-find after each key
            key = keys[position]
            if key >= end:
                return
            yield key, self._current[key]
            position = bisect.bisect_right(keys, key)

    def write(self, puts, deletes, sync: bool, ranges=()) -> None:
        if self.full:
            raise DiskFull("simulated disk is full")
        batch = (list(puts), list(deletes), list(ranges))
        if self._crash_next:
            self._crash_next = False
            self._crash_mid_write(batch)
            raise Crashed("power lost during write")
        self._pending.append(batch)
        self._apply_current(*batch)
        if sync:
            self.sync()

    def sync(self) -> None:
        self.syncs += 1
        for batch in self._pending:
            self._apply(self._durable, *batch)
        self._pending.clear()

    def close(self) -> None:
        pass

    def export_state(self) -> bytes:
        """A logical dump of what a reader sees (MemoryDisk's format), for snapshots."""
        dump = MemoryDisk()
        dump.write(list(self._current.items()), [], sync=True)
        return dump.export_state()

    def import_state(self, data: bytes) -> None:
        """Replaces the whole contents, durably (a snapshot installed)."""
        dump = MemoryDisk()
        dump.import_state(data)
        self._durable = dict(dump.scan(b"", b"\xff" * 64))
        self._pending.clear()
        self._reload()

    # ---- faults

    def crash(self) -> None:
        """Power loss: what was not synced is gone."""
        self._pending.clear()
        self._reload()

    def crash_during_next_write(self) -> None:
        self._crash_next = True

    def corrupt(self, key: bytes) -> None:
        value = bytearray(self._durable[key])
        value[self.rng.randrange(len(value))] ^= 1 << self.rng.randrange(8)
        self._durable[key] = bytes(value)
        self._reload()

    def tear(self, key: bytes) -> None:
        """Cuts a stored value short."""
        value = self._durable[key]
        self._durable[key] = value[:self.rng.randrange(len(value))]
        self._reload()

    # ---- helpers

    def _reload(self) -> None:
        """The reader's view again from what is durable and what is pending."""
        self._current = dict(self._durable)
        for batch in self._pending:
            self._apply(self._current, *batch)
        self._keys = sorted(self._current)

    def _apply_current(self, puts, deletes, ranges) -> None:
        keys, current = self._keys, self._current
        for start, end in ranges:
            low, high = bisect.bisect_left(keys, start), bisect.bisect_left(keys, end)
            for key in keys[low:high]:
                del current[key]
            del keys[low:high]
        for key in deletes:
            if current.pop(key, None) is not None:
                del keys[bisect.bisect_left(keys, key)]
        for key, value in puts:
            if key not in current:
                bisect.insort(keys, key)
            current[key] = value

    @staticmethod
    def _apply(target: dict, puts, deletes, ranges) -> None:
        for start, end in ranges:
            for key in [k for k in target if start <= k < end]:
                del target[key]
        for key in deletes:
            target.pop(key, None)
        for key, value in puts:
            target[key] = value

    def _crash_mid_write(self, batch) -> None:
        self._pending.clear()
        if self.rng.random() < 0.5:
            self._apply(self._durable, *batch)
        self._reload()
