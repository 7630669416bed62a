"""Durable Raft state on a Disk: hard state, snapshot metadata and log entries, checksummed.

Theory of operation. One Ready becomes one atomic, synced write: the hard state, the new entries
(after a range delete that truncates any conflicting suffix), and the metadata of an installed
snapshot. So one fsync covers every proposal batched into that Ready (group commit), and the
node only sends its votes and acknowledgements after `save` returns.

Keys: b"h" hard state, b"s" snapshot metadata, b"e" + 8-byte big-endian index for entries.
Every value starts with a CRC32C of the key and the rest of the value, so a record that was torn,
misplaced or corrupted is caught on recovery. `load` walks the log in order:
- a bad or missing record followed only by bad records is a torn tail: it is cut and reported;
- a bad record followed by a good one is corruption inside the log: `LogCorrupted` is raised and
  the node must not start (it would otherwise vote or lead with a log it cannot trust).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from cluster.codec.crc import crc32c
from cluster.raft.messages import Entry, EntryKind, HardState, Membership, SnapshotMeta
from cluster.storage.disk import Disk

HARD_STATE_KEY = b"h"
SNAPSHOT_KEY = b"s"
ENTRY_PREFIX = b"e"
ENTRY_END = b"f"
_HARD = struct.Struct(">QQQ")
_ENTRY = struct.Struct(">QB")
_SNAPSHOT = struct.Struct(">QQQ")


class LogCorrupted(Exception):
    """The log holds a bad record before good ones: this node must not vote, lead or apply."""


@dataclass(frozen=True)
class Recovered:
    hard_state: HardState
    snapshot: SnapshotMeta
    entries: list[Entry]
    torn_tail_cut: int  # records dropped from the end of the log (0 after a clean shutdown)


def entry_key(index: int) -> bytes:
    return ENTRY_PREFIX + index.to_bytes(8, "big")


def _seal(key: bytes, body: bytes) -> bytes:
    return crc32c(body, crc32c(key)).to_bytes(4, "little") + body


def _open(key: bytes, value: bytes) -> bytes | None:
    """The body of a sealed value, or None if its checksum does not hold."""
    if len(value) < 4 or int.from_bytes(value[:4], "little") != crc32c(value[4:], crc32c(key)):
        return None
    return value[4:]


def encode_entry(entry: Entry) -> bytes:
    return _seal(entry_key(entry.index), _ENTRY.pack(entry.term, entry.kind) + entry.data)


def decode_entry(index: int, value: bytes) -> Entry | None:
    body = _open(entry_key(index), value)
    if body is None or len(body) < _ENTRY.size:
        return None
    term, kind = _ENTRY.unpack_from(body)
    if kind not in EntryKind._value2member_map_:
        return None
    return Entry(term, index, EntryKind(kind), bytes(body[_ENTRY.size:]))


def _encode_snapshot(meta: SnapshotMeta) -> bytes:
    return _seal(SNAPSHOT_KEY, _SNAPSHOT.pack(meta.index, meta.term, meta.size_bytes) + meta.membership.encode())


def _decode_snapshot(value: bytes) -> SnapshotMeta:
    body = _open(SNAPSHOT_KEY, value)
    if body is None:
        raise LogCorrupted("snapshot metadata fails its checksum")
    index, term, size = _SNAPSHOT.unpack_from(body)
    return SnapshotMeta(index, term, Membership.decode(bytes(body[_SNAPSHOT.size:])), size)


# A conflicting suffix longer than this is dropped with one range delete; shorter ones (the usual
# case: none at all) with point deletes. RocksDB keeps every range tombstone in its memtables and
# re-fragments them on each flush and compaction: one per append grew a node to gigabytes.
POINT_DELETES_MAX = 1024


class LogStore:
    def __init__(self, disk: Disk):
        self.disk = disk
        self._last: int | None = None  # the last entry index on disk (None: not looked up yet)

    def save(self, hard_state: HardState | None, entries: tuple[Entry, ...] | list[Entry],
             snapshot: SnapshotMeta | None = None, sync: bool = True) -> None:
        """Persists one Ready atomically, and durably (one fsync) unless sync is False: a write
        that only moves the commit index may be lost in a crash (the index is learned again)."""
        puts, deletes, ranges = [], [], []
        if snapshot is not None:
            # The log restarts after an installed snapshot: everything before it, and any
            # suffix that disagrees with it, goes.
            ranges.append((ENTRY_PREFIX, ENTRY_END))
            puts.append((SNAPSHOT_KEY, _encode_snapshot(snapshot)))
        last = self._stored_last() if snapshot is None else snapshot.index
        if entries:
            # the new entries overwrite their indexes; a longer old suffix beyond them goes
            new_last = entries[-1].index
            if last - new_last > POINT_DELETES_MAX:
                ranges.append((entry_key(new_last + 1), ENTRY_END))
            else:
                deletes.extend(entry_key(i) for i in range(new_last + 1, last + 1))
            puts.extend((entry_key(e.index), encode_entry(e)) for e in entries)
            last = new_last
        if hard_state is not None:
            puts.append((HARD_STATE_KEY, _seal(HARD_STATE_KEY, _HARD.pack(hard_state.term, hard_state.vote, hard_state.commit))))
        if puts or deletes or ranges:
            try:
                self.disk.write(puts, deletes, sync=sync, ranges=ranges)
            except BaseException:
                self._last = None  # the write may have landed in part: look again next time
                raise
        self._last = last

    def _stored_last(self) -> int:
        if self._last is None:
            last = 0
            for key, _ in self.disk.scan(ENTRY_PREFIX, ENTRY_END):
                last = int.from_bytes(key[1:], "big")
            self._last = last
        return self._last

    def compact(self, snapshot: SnapshotMeta) -> None:
        """Records a local snapshot and drops the entries it covers."""
        self.disk.write([(SNAPSHOT_KEY, _encode_snapshot(snapshot))], [], sync=True,
                        ranges=[(ENTRY_PREFIX, entry_key(snapshot.index + 1))])

    def load(self, initial_membership: Membership | None = None) -> Recovered:
        hard_state = self._load_hard_state()
        raw = self.disk.get(SNAPSHOT_KEY)
        snapshot = _decode_snapshot(raw) if raw is not None else SnapshotMeta(membership=initial_membership or Membership(frozenset()))
        entries, bad_from = self._load_entries(snapshot.index)
        torn = 0
        if bad_from is not None:
            torn = sum(1 for _ in self.disk.scan(entry_key(bad_from), ENTRY_END))
            self.disk.write([], [], sync=True, ranges=[(entry_key(bad_from), ENTRY_END)])
        last = entries[-1].index if entries else snapshot.index
        self._last = None if bad_from is not None else last
        if hard_state.commit > last:
            raise LogCorrupted(f"hard state says {hard_state.commit} is committed but the log ends at {last}")
        return Recovered(hard_state, snapshot, entries, torn)

    def _load_hard_state(self) -> HardState:
        raw = self.disk.get(HARD_STATE_KEY)
        if raw is None:
            return HardState()
        body = _open(HARD_STATE_KEY, raw)
        if body is None:
            raise LogCorrupted("hard state (term, vote) fails its checksum: refusing to vote with a lost vote")
        return HardState(*_HARD.unpack(body))

    def _load_entries(self, snapshot_index: int) -> tuple[list[Entry], int | None]:
        """Entries after the snapshot, and where a torn tail starts (None if none)."""
        entries: list[Entry] = []
        bad_from = None
        expected = snapshot_index + 1
        for key, value in self.disk.scan(entry_key(expected), ENTRY_END):
            index = int.from_bytes(key[1:], "big")
            entry = decode_entry(index, value)
            if entry is None:
                bad_from = index if bad_from is None else bad_from
                continue
            if bad_from is not None or index != expected:
                raise LogCorrupted(f"log entry {bad_from or expected} is corrupt or missing but later entries "
                                   f"are intact (first good one after it: {index})")
            entries.append(entry)
            expected += 1
        return entries, bad_from
