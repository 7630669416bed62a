"""The fragment store of one disk: append-only segment files, an index, group commit.

Segments (`seg-00000001` ...) hold records: a 52-byte header (magic, kind, fragment index, chunk
id, length, CRC32C of the bytes, CRC32C of the header), then the bytes. A tombstone is a record of
kind DELETE with no bytes. The index (an ordered Disk: RocksDB in production) maps (chunk id,
fragment index) to (segment, offset, length, crc), and holds `P`, the position in the segments up
to which it is complete.

A put appends its record, then waits until a group commit has made it durable: one thread at a
time syncs the active segment and then writes the index entries of every record appended before
the sync (with the new `P`), and wakes all their writers. So concurrent writers share one fsync,
and an acknowledged fragment is on stable storage with its index entry. The index write itself is
not synced: after a crash, recovery re-reads the segments from `P` on and re-indexes what it finds.
A torn record at the tail of the last segment is cut off; a damaged record elsewhere is reported.
Losing the whole index is the same with `P` at the start.

Reads check the header and the CRC32C of the bytes and raise FragmentCorrupt on a mismatch: a
corrupt byte is never returned. Compaction copies the live records of sparse segments to the
active one and deletes the old file; reads that raced with it retry on the new location.
"""
from __future__ import annotations

import errno
import logging
import struct
import threading
from dataclasses import dataclass
from typing import Iterator

from cluster.codec.crc import crc32c
from cluster.storage.disk import Disk
from cluster.storage.files import Files

log = logging.getLogger("cairn.data")

MAGIC = b"CFG1"
KIND_PUT, KIND_DELETE = 1, 2
_HEADER = struct.Struct(">4sBBH32sII")  # magic, kind, index, reserved, chunk id, length, crc of bytes
HEADER_BYTES = _HEADER.size + 4          # and the header's own CRC32C
_LOCATION = struct.Struct(">IQII")       # segment, offset, length, crc
_POSITION = struct.Struct(">IQ")         # segment, offset
CHUNK_ID_BYTES = 32
FRAGMENT_INDEX_MAX = 254                 # k + m <= 255
FRAGMENT_BYTES_MAX = 64 << 20
SEGMENT_BYTES_MAX = 256 << 20
RESERVE_BYTES_MAX = 64 << 20  # free space new fragments may not take (1% of a small disk) ...
RESERVE_FRACTION = 0.01       # ... so a full disk can still delete (tombstones) and compact
ROOM_MARGIN_BYTES = 256 << 20  # free space is asked of the disk again for every put within this of the reserve ...
ROOM_RECHECK_PUTS = 1000       # ... and every this many puts anyway (other writers share the disk)
ROLL_TO_COMPACT_BYTES = 64 << 10          # a mostly dead active segment this big is closed to be compacted


class StoreError(Exception):
    pass


class FragmentNotFound(StoreError):
    pass


class FragmentCorrupt(StoreError):
    """The bytes on disk do not match their CRC32C (or the record's header is damaged)."""


class BadFragment(StoreError, ValueError):
    """The request is malformed: a wrong id length, an index out of range, a bad CRC, too big."""


class DiskFull(StoreError):
    pass


class DiskFailed(StoreError):
    """The disk returned an I/O error: the store is out of service."""


@dataclass(frozen=True)
class Location:
    segment: int
    offset: int
    length: int
    crc: int

    def encode(self) -> bytes:
        return _LOCATION.pack(self.segment, self.offset, self.length, self.crc)

    @staticmethod
    def decode(raw: bytes) -> "Location":
        return Location(*_LOCATION.unpack(raw))

    @property
    def record_bytes(self) -> int:
        return HEADER_BYTES + self.length


def fragment_key(chunk_id: bytes, index: int) -> bytes:
    return b"F" + chunk_id + bytes([index])


def encode_header(kind: int, chunk_id: bytes, index: int, length: int, crc: int) -> bytes:
    head = _HEADER.pack(MAGIC, kind, index, 0, chunk_id, length, crc)
    return head + struct.pack(">I", crc32c(head))


def decode_header(raw: bytes) -> tuple[int, bytes, int, int, int] | None:
    """(kind, chunk id, index, length, crc), or None if this is not an intact header."""
    if len(raw) < HEADER_BYTES:
        return None
    magic, kind, index, _, chunk_id, length, crc = _HEADER.unpack_from(raw)
    (header_crc,) = struct.unpack_from(">I", raw, _HEADER.size)
    if magic != MAGIC or header_crc != crc32c(raw[:_HEADER.size]) or kind not in (KIND_PUT, KIND_DELETE):
        return None
    return kind, chunk_id, index, length, crc


def check_fragment_id(chunk_id: bytes, index: int) -> None:
    if not isinstance(chunk_id, (bytes, bytearray)) or len(chunk_id) != CHUNK_ID_BYTES:
        raise BadFragment(f"a chunk id is {CHUNK_ID_BYTES} bytes")
    if not isinstance(index, int) or not 0 <= index <= FRAGMENT_INDEX_MAX:
        raise BadFragment(f"fragment index {index!r} outside 0..{FRAGMENT_INDEX_MAX}")


def segment_name(number: int) -> str:
    return f"seg-{number:08d}"


class FragmentStore:
    def __init__(self, files: Files, index: Disk, segment_bytes_max: int = SEGMENT_BYTES_MAX):
        self.files, self.index = files, index
        self.segment_bytes_max = segment_bytes_max
        self.reserve_bytes = min(RESERVE_BYTES_MAX, int(files.capacity_bytes() * RESERVE_FRACTION))
        self._room, self._puts_since_room = 0, 0  # free bytes at the last look, less what was put since
        self.failed: Exception | None = None
        self._lock = threading.RLock()          # appends, the active segment, the pending list
        self._synced = threading.Condition()     # group commit
        self._syncing = False
        self._appended = 0                       # records appended (a ticket per record)
        self._durable = 0                        # records whose sync and index write are done
        self._pending: list[tuple[bytes, bytes | None]] = []  # index writes waiting for the sync
        self._callbacks: list[tuple[int, object]] = []  # when_durable callers: (ticket, callback)
        self._indexing: list[tuple[bytes, bytes | None]] = []  # the batch a sync is writing now
        self._syncer: threading.Thread | None = None
        self._stopping = False
        self._handles: dict[int, int] = {}
        self._live: dict[int, int] = {}          # segment -> bytes of records still referenced
        self.recovered = {"records": 0, "torn_bytes": 0, "damaged_segments": []}
        self._open()

    # ---- start-up

    def _open(self) -> None:
        numbers = sorted(int(n[4:]) for n in self.files.list() if n.startswith("seg-") and n[4:].isdigit())
        for number in numbers:
            self._handles[number] = self.files.open(segment_name(number))
        if not numbers:
            numbers = [1]
            self._handles[1] = self.files.open(segment_name(1))
        self.active = numbers[-1]
        raw = self.index.get(b"P")
        segment, offset = _POSITION.unpack(raw) if raw else (numbers[0], 0)
        for number in numbers:
            if number >= segment:
                self._replay(number, offset if number == segment else 0, last=number == self.active)
        dangling = []
        for key, value in self.index.scan(b"F", b"G"):
            location = Location.decode(value)
            if location.segment not in self._handles:
                dangling.append(key)  # cannot happen unless the index was damaged
                continue
            self._live[location.segment] = self._live.get(location.segment, 0) + location.record_bytes
        if dangling:
            self.recovered["dangling_entries"] = len(dangling)
            self.index.write([], dangling, sync=False)
        self._write_position()

    def _replay(self, number: int, offset: int, last: bool) -> None:
        """Re-indexes the records of a segment from `offset` (checking each one's bytes too).
        A bad record with no good one after it in the last segment is a write cut short by a
        crash, and is cut off; one with good records after it is damage: it is skipped (not
        indexed), the segment is reported, and replay carries on from the next good record."""
        handle, end = self._handles[number], self.files.size(self._handles[number])
        changes: dict[bytes, bytes | None] = {}  # the last word on each key: a location or a delete
        while offset < end:
            record = self._record_at(handle, offset, end)
            if record is None:
                following = self._next_record(handle, offset + 1, end)
                if following is None:
                    if last:
                        self.recovered["torn_bytes"] += end - offset
                        self.files.truncate(handle, offset)
                    else:
                        self.recovered["damaged_segments"].append(number)
                    break
                self.recovered["damaged_segments"].append(number)  # the scrubber reports what is lost
                offset = following
                continue
            kind, chunk_id, index, length, crc = record
            key = fragment_key(chunk_id, index)
            changes[key] = Location(number, offset, length, crc).encode() if kind == KIND_PUT else None
            offset += HEADER_BYTES + length
            self.recovered["records"] += 1
        self.index.write([(k, v) for k, v in changes.items() if v is not None],
                         [k for k, v in changes.items() if v is None], sync=False)

    def _record_at(self, handle: int, offset: int, end: int):
        """The header of an intact record (header and bytes check out) at `offset`, else None."""
        header = decode_header(self.files.read(handle, offset, min(HEADER_BYTES, end - offset)))
        if header is None or offset + HEADER_BYTES + header[3] > end:
            return None
        if header[0] == KIND_PUT and crc32c(self.files.read(handle, offset + HEADER_BYTES, header[3])) != header[4]:
            return None
        return header

    def _next_record(self, handle: int, offset: int, end: int) -> int | None:
        """Where the next intact record starts after damage, searching for the magic."""
        window = 1 << 20
        while offset < end:
            data = self.files.read(handle, offset, min(window + len(MAGIC), end - offset))
            position = data.find(MAGIC)
            while position >= 0:
                if self._record_at(handle, offset + position, end) is not None:
                    return offset + position
                position = data.find(MAGIC, position + 1)
            offset += window
        return None

    def _write_position(self) -> None:
        end = self.files.size(self._handles[self.active])
        self.index.write([(b"P", _POSITION.pack(self.active, end))], [], sync=True)

    def close(self) -> None:
        with self._synced:
            self._stopping = True
            self._synced.notify_all()
        if self._syncer is not None:
            self._syncer.join(10)
        with self._lock:
            for handle in self._handles.values():
                self.files.close(handle)
            self._handles.clear()
        self.index.close()

    # ---- writes

    def put(self, chunk_id: bytes, index: int, data, crc: int | None = None) -> None:
        """Stores a fragment (replacing one with the same id) and returns once it is durable."""
        self.wait_durable(self.submit(chunk_id, index, data, crc))

    def submit(self, chunk_id: bytes, index: int, data, crc: int | None = None) -> int:
        """Appends a fragment and returns its ticket at once: it is durable (and may be
        acknowledged) only after `when_durable` calls back, or `put` returns."""
        return self._append(KIND_PUT, [(chunk_id, index, data, self._accept(chunk_id, index, data, crc))])

    def submit_many(self, fragments) -> list:
        """`submit` for (chunk id, index, data, crc) fragments: each one's ticket, or the error
        that refused it. The accepted ones go to the segment in one write: a batch costs one
        system call, not one per fragment (each of which let the other threads at the GIL)."""
        outcomes: list = []
        accepted: list[tuple[int, tuple]] = []
        for chunk_id, index, data, crc in fragments:
            try:
                accepted.append((len(outcomes), (chunk_id, index, data, self._accept(chunk_id, index, data, crc))))
                outcomes.append(None)
            except Exception as error:  # noqa: BLE001 - this fragment's outcome
                outcomes.append(error)
        if accepted:
            try:
                last = self._append(KIND_PUT, [record for _, record in accepted])
            except Exception as error:  # noqa: BLE001 - the write failed for all of them
                for position, _ in accepted:
                    outcomes[position] = error
            else:
                for number, (position, _) in enumerate(accepted):
                    outcomes[position] = last - len(accepted) + 1 + number
        return outcomes

    def _accept(self, chunk_id: bytes, index: int, data, crc: int | None) -> int:
        """Checks a fragment to be put and takes its room; its CRC32C."""
        check_fragment_id(chunk_id, index)
        if len(data) > FRAGMENT_BYTES_MAX:
            raise BadFragment(f"a fragment of {len(data)} bytes; at most {FRAGMENT_BYTES_MAX}")
        actual = crc32c(data)
        if crc is not None and crc != actual:
            raise BadFragment(f"CRC32C mismatch: the bytes have {actual:#010x}, the request says {crc:#010x}")
        self._take_room(HEADER_BYTES + len(data))
        return actual

    def _take_room(self, size: int) -> None:
        """Refuses a put that would eat into the reserve. Free space is read from the disk only
        near the reserve or every ROOM_RECHECK_PUTS puts, not for every fragment."""
        with self._lock:
            self._puts_since_room += 1
            if self._room - size < self.reserve_bytes + ROOM_MARGIN_BYTES or self._puts_since_room >= ROOM_RECHECK_PUTS:
                self._room, self._puts_since_room = self.files.free_bytes(), 0
            if self._room - size < self.reserve_bytes:
                raise DiskFull(f"the disk is full: its last {self.reserve_bytes:,} bytes stay free for deletes "
                               "and compaction")
            self._room -= size

    def when_durable(self, ticket: int, callback) -> None:
        """Calls callback(None) once record `ticket` is durable, or callback(error) if the disk
        failed first; from the store's syncer thread (or at once)."""
        with self._synced:
            if self.failed is None and self._durable < ticket:
                self._callbacks.append((ticket, callback))
                self._synced.notify_all()
                self._start_syncer()
                return
        callback(DiskFailed(f"disk failed: {self.failed}") if self.failed is not None else None)

    def _start_syncer(self) -> None:
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_forever, daemon=True, name="fragment-sync")
            self._syncer.start()

    def _sync_forever(self) -> None:
        """Group commit for `when_durable` callers: syncs whenever something waits, and calls
        back everyone it covered."""
        while True:
            with self._synced:
                while not self._stopping and (not self._callbacks or self._syncing):
                    self._synced.wait()
                if self._stopping:
                    return
                covered = all(ticket <= self._durable for ticket, _ in self._callbacks)
                self._syncing = not covered  # another thread's sync may have covered them all
            error = None
            try:
                if not covered:
                    self._sync_once()
            except Exception as failure:  # noqa: BLE001 - _sync_once marks the store failed
                error = failure
            with self._synced:
                done = [(t, c) for t, c in self._callbacks if error is not None or t <= self._durable]
                self._callbacks = [(t, c) for t, c in self._callbacks if error is None and t > self._durable]
            for _, callback in done:
                try:
                    callback(error)
                except Exception:  # noqa: BLE001 - one caller's bug must not stop the group commit
                    log.exception("a when_durable callback failed")

    def delete(self, chunk_id: bytes, index: int) -> bool:
        """Removes a fragment (a tombstone record, durable on return); False if it was absent."""
        check_fragment_id(chunk_id, index)
        if self.index.get(fragment_key(chunk_id, index)) is None:
            return False
        self.wait_durable(self._append(KIND_DELETE, [(chunk_id, index, b"", 0)]))
        return True

    def _append(self, kind: int, records: list, expect: Location | None = None):
        """Appends (chunk id, index, data, crc) records of one kind, one after another; the last
        one's ticket. `expect` (compaction, one record): append only if the index still points there."""
        with self._lock:
            if self.failed is not None:
                raise DiskFailed(f"disk out of service: {self.failed}")
            keys = [fragment_key(chunk_id, index) for chunk_id, index, _, _ in records]
            if expect is not None and (self.index.get(keys[0]) != expect.encode() or self._unindexed(keys[0])):
                return None  # compaction: the record was replaced or deleted meanwhile
            if self.files.size(self._handles[self.active]) >= self.segment_bytes_max:
                self._roll()
            handle = self._handles[self.active]
            start = self.files.size(handle)
            parts, locations, offset = [], [], start
            for chunk_id, index, data, crc in records:
                parts += [encode_header(kind, chunk_id, index, len(data), crc), data]
                locations.append(Location(self.active, offset, len(data), crc))
                offset += HEADER_BYTES + len(data)
            try:
                self._write(handle, parts)
            except OSError as error:
                self._undo(handle, start, error)
            for key, location in zip(keys, locations):
                old = self.index.get(key)
                if old is not None:
                    self._forget(Location.decode(old))
                if kind == KIND_PUT:
                    self._live[self.active] = self._live.get(self.active, 0) + location.record_bytes
                    self._pending.append((key, location.encode()))
                else:
                    self._pending.append((key, None))
            self._appended += len(records)
            return self._appended

    def _write(self, handle: int, parts: list) -> None:
        """Appends the parts in order: small ones joined into one write, large ones (64 KiB and
        up) written as they are, so no big fragment is copied just to be joined."""
        small: list = []
        for part in parts:
            if len(part) < 65536:
                small.append(part)
                continue
            if small:
                self.files.append(handle, b"".join(small))
                small = []
            self.files.append(handle, part)
        if small:
            self.files.append(handle, b"".join(small))

    def _unindexed(self, key: bytes) -> bool:
        """Whether a write of `key` is appended but not yet in the index (call under _lock)."""
        return any(k == key for k, _ in self._pending) or any(k == key for k, _ in self._indexing)

    def _undo(self, handle: int, start: int, error: OSError) -> None:
        try:
            self.files.truncate(handle, start)  # no partial record stays behind
        except OSError as second:
            self.failed = second
            raise DiskFailed(f"disk failed: {second}") from error
        if error.errno == errno.ENOSPC:
            raise DiskFull("the disk is full") from error
        self.failed = error
        raise DiskFailed(f"disk failed: {error}") from error

    def _forget(self, location: Location) -> None:
        self._live[location.segment] = self._live.get(location.segment, 0) - location.record_bytes

    def _roll(self) -> None:
        self.files.sync(self._handles[self.active])
        handle = self.files.open(segment_name(self.active + 1))  # may fail: then nothing changed
        self._handles[self.active + 1] = handle
        self.active += 1

    def wait_durable(self, ticket: int | None) -> None:
        """Returns once record `ticket` is durable: syncs itself or waits for the thread that does."""
        if ticket is None:
            return
        while True:
            with self._synced:
                while self._durable < ticket and self._syncing:
                    self._synced.wait()
                if self.failed is not None:  # never acknowledge across a failed sync
                    raise DiskFailed(f"disk failed: {self.failed}")
                if self._durable >= ticket:
                    return
                self._syncing = True
            self._sync_once()

    def _sync_once(self) -> None:
        error, upto = None, self._durable
        try:
            with self._lock:
                batch, self._pending = self._pending, []
                self._indexing = batch  # neither pending nor indexed yet: compaction looks here too
                upto, active = self._appended, self.active
                handle, end = self._handles[active], self.files.size(self._handles[active])
            self.files.sync(handle)
            last = dict(batch)  # in order: the last word on each key wins
            puts = [(k, v) for k, v in last.items() if v is not None] + [(b"P", _POSITION.pack(active, end))]
            self.index.write(puts, [k for k, v in last.items() if v is None], sync=False)
        except Exception as failure:  # noqa: BLE001 - whatever it was, nothing it covered is durable
            error = failure
            self.failed = failure
        finally:
            with self._lock:
                self._indexing = []
            with self._synced:
                self._syncing = False
                self._durable = max(self._durable, upto)
                self._synced.notify_all()
        if error is not None:
            raise DiskFailed(f"disk failed while syncing: {error}") from error

    # ---- reads

    def location(self, chunk_id: bytes, index: int) -> Location | None:
        raw = self.index.get(fragment_key(chunk_id, index))
        return Location.decode(raw) if raw is not None else None

    def has(self, chunk_id: bytes, index: int) -> bool:
        check_fragment_id(chunk_id, index)
        return self.location(chunk_id, index) is not None

    def get(self, chunk_id: bytes, index: int, offset: int = 0, length: int | None = None) -> memoryview:
        """The fragment's bytes (or a range of them), checked against its CRC32C."""
        check_fragment_id(chunk_id, index)
        for attempt in range(2):
            location = self.location(chunk_id, index)
            if location is None:
                raise FragmentNotFound(f"no fragment {index} of chunk {chunk_id.hex()[:16]}")
            try:
                data = self._read_record(location, chunk_id, index)
                break
            except (OSError, EOFError, KeyError):
                if attempt:  # compaction moved it between the lookup and the read, twice: a real failure
                    raise
        if offset < 0 or (length is not None and length < 0) or offset > len(data):
            raise BadFragment(f"range {offset}+{length} outside a fragment of {len(data)} bytes")
        return data[offset:] if length is None else data[offset:offset + length]

    def _read_record(self, location: Location, chunk_id: bytes, index: int) -> memoryview:
        raw = self.files.read(self._handles[location.segment], location.offset, location.record_bytes)
        data = memoryview(raw)[HEADER_BYTES:]  # no copy of the bytes
        self._check_record(raw[:HEADER_BYTES], data, location, chunk_id, index)
        return data

    def read_into(self, location: Location, chunk_id: bytes, index: int, out: memoryview) -> None:
        """The fragment at `location` (from `location()`) read straight into `out`, a writable
        buffer of its length, and checked as `get` checks it. Raises EOFError or KeyError if
        compaction moved it meanwhile (look it up again), FragmentCorrupt if it is damaged."""
        header = bytearray(HEADER_BYTES)
        read = self.files.read_into(self._handles[location.segment], location.offset, [header, out])
        if read != location.record_bytes:
            raise EOFError(f"read {read} of {location.record_bytes} bytes at offset {location.offset}")
        self._check_record(bytes(header), out, location, chunk_id, index)

    @staticmethod
    def _check_record(head: bytes, data, location: Location, chunk_id: bytes, index: int) -> None:
        header = decode_header(head)
        if header is None or header[0] != KIND_PUT or header[1] != chunk_id or header[2] != index \
                or header[3] != location.length:
            raise FragmentCorrupt(f"fragment {index} of chunk {chunk_id.hex()[:16]}: damaged record header "
                                  f"in segment {location.segment} at {location.offset}")
        if crc32c(data) != header[4]:
            raise FragmentCorrupt(f"fragment {index} of chunk {chunk_id.hex()[:16]}: CRC32C mismatch in "
                                  f"segment {location.segment} at {location.offset}")

    def fragments(self, start: bytes = b"", end: bytes = b"\xff" * CHUNK_ID_BYTES) -> Iterator[tuple[bytes, int, Location]]:
        """Every (chunk id, index, location) with start <= chunk id < end, in order."""
        for key, value in self.index.scan(b"F" + start, b"F" + end):
            yield key[1:1 + CHUNK_ID_BYTES], key[1 + CHUNK_ID_BYTES], Location.decode(value)

    # ---- space

    def used_bytes(self) -> int:
        with self._lock:
            return sum(self.files.size(h) for h in self._handles.values())

    def live_fraction(self, segment: int) -> float:
        size = self.files.size(self._handles[segment])
        return self._live.get(segment, 0) / size if size else 1.0

    def compact(self, threshold: float = 0.5) -> int:
        """Rewrites every closed segment whose live fraction is below `threshold` (oldest first)
        and deletes it; returns the bytes reclaimed. Reads and writes go on meanwhile. An active
        segment that is mostly dead is closed first, so a quiet store gets its space back too."""
        with self._lock:
            if (self.files.size(self._handles[self.active]) >= ROLL_TO_COMPACT_BYTES
                    and self.live_fraction(self.active) < threshold):
                self._roll()
        reclaimed = 0
        for number in sorted(list(self._handles)):
            if number != self.active and self.live_fraction(number) < threshold:
                reclaimed += self._compact_segment(number, oldest=number == min(self._handles))
        return reclaimed

    def _compact_segment(self, number: int, oldest: bool) -> int:
        # everything appended so far (some of it may sit in this segment) gets its index entry
        # first, so the index tells which of this segment's records are live
        self.wait_durable(self._appended or None)
        handle, end, offset, last = self._handles[number], self.files.size(self._handles[number]), 0, 0
        while offset < end:
            raw = self.files.read(handle, offset, min(HEADER_BYTES, end - offset))
            header = decode_header(raw)
            if header is None:
                raise FragmentCorrupt(f"segment {number}: damaged record at {offset}; not compacting it")
            kind, chunk_id, index, length, crc = header
            if kind == KIND_PUT:
                here = Location(number, offset, length, crc)
                if self.index.get(fragment_key(chunk_id, index)) == here.encode():
                    data = self._read_record(here, chunk_id, index)
                    last = self._append(KIND_PUT, [(chunk_id, index, data, crc)], expect=here) or last
            elif not oldest and self.index.get(fragment_key(chunk_id, index)) is None:
                # an older segment may still hold the put this deletes: keep the tombstone
                # (unless a newer put is on its way: expect=None checks nothing, so look here)
                with self._lock:
                    newer = self._unindexed(fragment_key(chunk_id, index))
                if not newer:
                    last = self._append(KIND_DELETE, [(chunk_id, index, b"", 0)]) or last
            offset += HEADER_BYTES + length
        self.wait_durable(last or None)
        # the index must not outlive the segment it may still point into: make its writes so far
        # (the moves, and deletes) durable before the old file goes, or a crash could bring back
        # a deleted fragment, or an entry pointing at a file that is gone
        self.index.write([], [], sync=True)
        with self._lock:
            self.files.close(self._handles.pop(number))
            self._live.pop(number, None)
        self.files.delete(segment_name(number))
        return end


class StripedStore:
    """Several fragment stores on one disk, a fragment's stripe fixed by its id. One file's
    fsyncs run one after another; stripes let a disk flush several segments at once, at the
    cost of an fsync per stripe for a batch spread over them (one stripe is the default: see
    disks.STRIPES). Each stripe keeps its own segments, index and group commit."""

    def __init__(self, stores: list[FragmentStore]):
        if not stores:
            raise ValueError("at least one stripe")
        self.stores = stores

    def _stripe(self, chunk_id: bytes, index: int) -> FragmentStore:
        check_fragment_id(chunk_id, index)
        return self.stores[crc32c(bytes(chunk_id) + bytes([index])) % len(self.stores)]

    @property
    def failed(self) -> Exception | None:
        return next((s.failed for s in self.stores if s.failed is not None), None)

    @failed.setter
    def failed(self, error: Exception) -> None:
        for store in self.stores:
            store.failed = error

    @property
    def recovered(self) -> dict:
        return {"records": sum(s.recovered["records"] for s in self.stores),
                "torn_bytes": sum(s.recovered["torn_bytes"] for s in self.stores),
                "damaged_segments": [d for s in self.stores for d in s.recovered["damaged_segments"]]}

    def put(self, chunk_id: bytes, index: int, data, crc: int | None = None) -> None:
        self._stripe(chunk_id, index).put(chunk_id, index, data, crc)

    def submit(self, chunk_id: bytes, index: int, data, crc: int | None = None) -> tuple[FragmentStore, int]:
        stripe = self._stripe(chunk_id, index)
        return stripe, stripe.submit(chunk_id, index, data, crc)

    def submit_many(self, fragments: list) -> list:
        """`submit` for several fragments, one write per stripe: each one's (stripe, ticket) or error."""
        outcomes: list = [None] * len(fragments)
        by_stripe: dict[FragmentStore, list[int]] = {}
        for position, (chunk_id, index, _, _) in enumerate(fragments):
            try:
                by_stripe.setdefault(self._stripe(chunk_id, index), []).append(position)
            except BadFragment as error:
                outcomes[position] = error
        for stripe, positions in by_stripe.items():
            for position, outcome in zip(positions, stripe.submit_many([fragments[p] for p in positions])):
                outcomes[position] = outcome if isinstance(outcome, Exception) else (stripe, outcome)
        return outcomes

    def get(self, chunk_id: bytes, index: int, offset: int = 0, length: int | None = None) -> bytes:
        return self._stripe(chunk_id, index).get(chunk_id, index, offset, length)

    def locate(self, chunk_id: bytes, index: int) -> tuple[FragmentStore, Location] | None:
        """The stripe that holds the fragment and where (for its `read_into`), or None."""
        stripe = self._stripe(chunk_id, index)
        location = stripe.location(chunk_id, index)
        return None if location is None else (stripe, location)

    def delete(self, chunk_id: bytes, index: int) -> bool:
        return self._stripe(chunk_id, index).delete(chunk_id, index)

    def has(self, chunk_id: bytes, index: int) -> bool:
        return self._stripe(chunk_id, index).has(chunk_id, index)

    def location(self, chunk_id: bytes, index: int) -> Location | None:
        return self._stripe(chunk_id, index).location(chunk_id, index)

    def fragments(self, start: bytes = b"", end: bytes = b"\xff" * CHUNK_ID_BYTES):
        import heapq

        return heapq.merge(*(s.fragments(start, end) for s in self.stores), key=lambda f: (f[0], f[1]))

    def used_bytes(self) -> int:
        return sum(s.used_bytes() for s in self.stores)

    def compact(self, threshold: float = 0.5) -> int:
        return sum(s.compact(threshold) for s in self.stores)

    def close(self) -> None:
        for store in self.stores:
            store.close()
