"""A data node's disks: one fragment store each, new fragments to the one with the most free
space, reads from whichever holds the fragment, and a disk that fails I/O taken out of service
(reported in `status`) while the others keep serving."""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from cluster.codec.buffers import unzeroed_bytearray
from cluster.data.store import (DiskFailed, DiskFull, FragmentCorrupt, FragmentNotFound, FragmentStore,
                                StripedStore, check_fragment_id)
from cluster.storage.disk import RocksDisk
from cluster.storage.durable import fsync_directory, write_durably
from cluster.storage.files import Files, LocalFiles

log = logging.getLogger("cairn.data")
FREE_SPACE_SECONDS = 1.0
# Fragment stores per new disk. Several let one node flush several segments at once, but each
# adds an fsync to every batch spread over them: full runs of ops/bench/cluster.py put 64 KiB
# objects a fifth faster with one stripe than with four, and large objects no slower.
STRIPES = 1
STRIPES_MAX = 16
STRIPES_FILE = "stripes"  # in a disk directory: the stripe count it was made with


@dataclass
class DiskState:
    path: str
    files: Files
    store: StripedStore | None
    error: str = ""
    free: int = 0
    free_checked: float = -1e9


def open_local_store(path: str, stripes: int) -> StripedStore:
    """A disk directory's stores: per stripe, segment files and a RocksDB index."""
    count = disk_stripes(path, stripes)
    return StripedStore([FragmentStore(LocalFiles(os.path.join(path, f"stripe-{k}", "segments")),
                                       RocksDisk(os.path.join(path, f"stripe-{k}", "index")))
                         for k in range(count)])


def disk_stripes(path: str, asked: int) -> int:
    """The stripe count of the disk directory `path`. A disk keeps the count it was made with,
    whatever is asked now: a fragment's stripe follows from its id and that count, so another
    count would lose sight of fragments. The count is recorded (durably, before any store is
    made) in the disk's STRIPES_FILE; a disk made before that file existed is read from its
    stripe directories, and a new disk takes the count asked. Raises ValueError on a record or
    directories that no Cairn wrote: the disk then stays out of service."""
    record = os.path.join(path, STRIPES_FILE)
    try:
        with open(record, "rb") as f:
            text = f.read(16)
    except FileNotFoundError:
        count = made_stripes(path) or asked
        os.makedirs(path, exist_ok=True)
        write_durably(record, [b"%d\n" % count])
        fsync_directory(os.path.dirname(os.path.abspath(path)))  # a new disk directory's own entry
    else:
        count = int(text) if text.strip().isdigit() and text.isascii() else 0
        if not 1 <= count <= STRIPES_MAX:
            raise ValueError(f"disk {path}: its {STRIPES_FILE} file holds {text[:16]!r}, "
                             f"not a count of 1 to {STRIPES_MAX}")
        if made_stripes(path) > count:  # (fewer is a start cut short: the stores are made on open)
            raise ValueError(f"disk {path} holds more stripe directories than its {STRIPES_FILE} file's {count}")
    if count != asked:  # worth a warning only when someone asked for a count other than the default
        log.log(logging.WARNING if asked != STRIPES else logging.DEBUG,
                "disk %s keeps the %d stripes it was made with (asked for %d)", path, count, asked)
    return count


def made_stripes(path: str) -> int:
    """How many stripes the directories of a disk made before STRIPES_FILE existed hold:
    `stripe-0` to `stripe-(n-1)`, real directories (0: none, a new disk)."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return 0
    numbers = set()
    for entry in entries:
        if not entry.name.startswith("stripe-"):
            continue
        digits = entry.name[len("stripe-"):]
        if not (digits.isascii() and digits.isdigit() and str(int(digits)) == digits) \
                or not entry.is_dir(follow_symlinks=False):
            raise ValueError(f"disk {path}: {entry.name!r} is not a stripe directory Cairn makes")
        numbers.add(int(digits))
    if numbers and numbers != set(range(len(numbers))):
        raise ValueError(f"disk {path}: stripe directories {sorted(numbers)} are not "
                         f"stripe-0 to stripe-{len(numbers) - 1}")
    if len(numbers) > STRIPES_MAX:
        raise ValueError(f"disk {path} holds {len(numbers)} stripe directories; at most {STRIPES_MAX} are made")
    return len(numbers)


class DiskSet:
    """`files(path)` gives a disk's free space and capacity, `open_store(path, stripes)` its
    stores (local directories by default; the simulator passes simulated disks)."""

    def __init__(self, paths: list[str], stripes: int = STRIPES, files=LocalFiles, open_store=open_local_store):
        if not paths:
            raise ValueError("a data node needs at least one disk directory")
        if not 1 <= stripes <= STRIPES_MAX:
            raise ValueError(f"stripes per disk: 1 to {STRIPES_MAX}, not {stripes}")
        self.disks: list[DiskState] = []
        self._lock = threading.Lock()
        self.on_corrupt: Callable[[bytes, int, str], None] = lambda chunk_id, index, reason: None
        for path in paths:
            space = files(path)
            try:
                store = open_store(path, stripes)
                if store.recovered["torn_bytes"] or store.recovered["damaged_segments"]:
                    log.warning("disk %s: recovered %s", path, store.recovered)
                self.disks.append(DiskState(path, space, store))
            except (OSError, Exception) as error:  # noqa: BLE001 - a disk that cannot open is out, not fatal
                log.error("disk %s is out of service: %s", path, error)
                self.disks.append(DiskState(path, space, None, f"{type(error).__name__}: {error}"))
        if not self.healthy():
            raise OSError(f"no usable disk among {paths}")

    def healthy(self) -> list[DiskState]:
        return [d for d in self.disks if d.store is not None and d.store.failed is None]

    def _retire(self, disk: DiskState, error: Exception) -> None:
        with self._lock:
            if not disk.error:
                disk.error = f"{type(error).__name__}: {error}"
                log.error("disk %s is out of service: %s", disk.path, error)

    def put(self, chunk_id: bytes, index: int, data, crc: int | None = None) -> None:
        """Stores a fragment and returns once it is durable."""
        store, ticket = self.submit(chunk_id, index, data, crc)
        store.wait_durable(ticket)

    def put_many(self, fragments) -> list[Exception | None]:
        """Stores (chunk id, index, data, crc) fragments, each appended first and then waited
        for: one group commit per stripe covers them all. Each gets its own outcome."""
        outcomes = self._submit_many(list(fragments))
        last: dict = {}  # store -> the last ticket it must make durable
        for outcome in outcomes:
            if not isinstance(outcome, Exception):
                store, ticket = outcome
                last[store] = max(ticket, last.get(store, 0))
        synced = self._durable(last)
        return [outcome if isinstance(outcome, Exception) else synced[outcome[0]] for outcome in outcomes]

    def _submit_many(self, fragments: list) -> list:
        """Appends each fragment as `submit` would, but those bound for one disk together (one
        write per stripe); each one's (stripe, ticket) or error. A fragment its disk refuses as
        full or failed goes the one-by-one way, which tries the other disks."""
        outcomes: list = [None] * len(fragments)
        by_disk: dict[int, list[int]] = {}
        free_first = None
        for position, (chunk_id, index, _, _) in enumerate(fragments):
            try:
                check_fragment_id(chunk_id, index)
                disk = self.find(chunk_id, index)
                if disk is None:
                    free_first = free_first or self._by_free_space()
                    disk = free_first[0] if free_first else None
            except Exception as error:  # noqa: BLE001 - this fragment's outcome
                outcomes[position] = error
                continue
            if disk is None:
                outcomes[position] = DiskFull("no disk in service")
            else:
                by_disk.setdefault(self.disks.index(disk), []).append(position)
        for number, positions in by_disk.items():
            disk = self.disks[number]
            for position, outcome in zip(positions, disk.store.submit_many([fragments[p] for p in positions])):
                if isinstance(outcome, DiskFailed):
                    self._retire(disk, outcome)
                if isinstance(outcome, (DiskFull, DiskFailed)):
                    try:
                        outcome = self.submit(*fragments[position])
                    except Exception as error:  # noqa: BLE001 - this fragment's outcome
                        outcome = error
                outcomes[position] = outcome
        return outcomes

    @staticmethod
    def _durable(last: dict) -> dict:
        """Waits until each store has made its ticket durable; each store's error or None. The
        first store syncs on this thread, the others on their syncer threads meanwhile (one
        after another, a batch spread over four stripes waited for four fsyncs in a row); with
        one store, as on the simulator's disks, no thread is involved."""
        results: dict = {}
        others = threading.Semaphore(0)

        def record(store):
            def done(error):
                results[store] = error
                others.release()
            return done
        stores = list(last)
        for store in stores[1:]:
            store.when_durable(last[store], record(store))
        for store in stores[:1]:
            try:
                store.wait_durable(last[store])
                results[store] = None
            except Exception as error:  # noqa: BLE001 - that store's fragments hear it
                results[store] = error
        for _ in stores[1:]:
            others.acquire()
        return results

    def submit(self, chunk_id: bytes, index: int, data, crc: int | None = None):
        """Appends a fragment to the disk that holds it already or has the most free space
        (another if that one is full or fails); returns (stripe, ticket) for `when_durable`."""
        check_fragment_id(chunk_id, index)
        existing = self.find(chunk_id, index)
        candidates = [existing] if existing is not None else self._by_free_space()
        last: Exception | None = None
        for disk in candidates:
            try:
                return disk.store.submit(chunk_id, index, data, crc)
            except DiskFull as error:
                last = error
            except DiskFailed as error:
                self._retire(disk, error)
                last = error
        raise last if last is not None else DiskFull("no disk in service")

    def _by_free_space(self) -> list[DiskState]:
        healthy = self.healthy()
        if len(healthy) < 2:
            return healthy
        now = time.monotonic()
        for disk in healthy:  # statvfs once a second per disk, not once per fragment
            if now - disk.free_checked > FREE_SPACE_SECONDS:
                disk.free, disk.free_checked = disk.files.free_bytes(), now
        return sorted(healthy, key=lambda d: d.free, reverse=True)

    def find(self, chunk_id: bytes, index: int) -> DiskState | None:
        for disk in self.healthy():
            if disk.store.location(chunk_id, index) is not None:
                return disk
        return None

    def get(self, chunk_id: bytes, index: int, offset: int = 0, length: int | None = None) -> bytes:
        check_fragment_id(chunk_id, index)
        for disk in self.healthy():  # one index lookup per disk: the store's own
            try:
                return disk.store.get(chunk_id, index, offset, length)
            except FragmentNotFound:
                continue
            except FragmentCorrupt as error:  # whoever read it, the leader hears of it (repair)
                self.on_corrupt(chunk_id, index, str(error))
                raise
            except OSError as error:
                self._retire(disk, error)
                disk.store.failed = error
                raise DiskFailed(f"disk {disk.path} failed reading: {error}") from error
        raise FragmentNotFound(f"no fragment {index} of chunk {chunk_id.hex()[:16]} on this node")

    def get_many(self, fragments: list[tuple[bytes, int]], bytes_max: int, scratch: bytearray | None = None):
        """Whole fragments read straight into one buffer, back to back: ([each one's size or
        error], the buffer). The buffer is the start of `scratch` when they fit in it (the
        caller's to reuse once it is done with the bytes), else a new one. A fragment that
        would take the buffer past `bytes_max` is refused with a ValueError. Errors are `get`'s:
        a fragment that fails the quick path (moved by compaction, or a disk error) is read
        again by `get`, which looks again and retires a failed disk."""
        outcomes, rooms, total = [], [], 0  # rooms: (stripe, location, where its bytes go) or None
        for chunk_id, index in fragments:
            try:
                stripe, location = self._locate(chunk_id, index)
                if total + location.length > bytes_max:
                    raise ValueError(f"{location.length} more bytes would pass a batch reply's {bytes_max}; "
                                     "get this fragment alone")
            except Exception as error:  # noqa: BLE001 - this fragment's answer
                outcomes.append(error)
                rooms.append(None)
                continue
            outcomes.append(location.length)
            rooms.append((stripe, location, total))
            total += location.length
        # (a new buffer of a few hundred KiB costs more in page faults than reading into it)
        joined = memoryview(scratch)[:total] if scratch is not None and total <= len(scratch) \
            else unzeroed_bytearray(total)
        view = memoryview(joined)
        for position, ((chunk_id, index), room) in enumerate(zip(fragments, rooms)):
            if room is not None:
                stripe, location, start = room
                outcomes[position] = self._read_into(chunk_id, index, stripe, location,
                                                     view[start:start + location.length])
        if all(isinstance(o, int) for o in outcomes):
            return outcomes, joined
        # some failed after their room was taken: keep only the bytes of the others
        kept = [view[room[2]:room[2] + outcome] for outcome, room in zip(outcomes, rooms) if isinstance(outcome, int)]
        return outcomes, bytearray(b"".join(kept))

    def _locate(self, chunk_id: bytes, index: int):
        """(the stripe that holds the fragment, its location), from the first healthy disk that has it."""
        check_fragment_id(chunk_id, index)
        for disk in self.healthy():
            found = disk.store.locate(chunk_id, index)
            if found is not None:
                return found
        raise FragmentNotFound(f"no fragment {index} of chunk {chunk_id.hex()[:16]} on this node")

    def _read_into(self, chunk_id: bytes, index: int, stripe, location, out: memoryview) -> int | Exception:
        """One fragment of `get_many` into its room: its size, or the error `get` gives."""
        try:
            stripe.read_into(location, chunk_id, index, out)
            return location.length
        except FragmentCorrupt as error:
            self.on_corrupt(chunk_id, index, str(error))
            return error
        except (OSError, EOFError, KeyError):  # moved by compaction, or the disk failed: `get` tells which
            pass
        try:
            data = self.get(chunk_id, index)
        except Exception as error:  # noqa: BLE001
            return error
        if len(data) != len(out):
            return FragmentCorrupt(f"fragment {index} of chunk {chunk_id.hex()[:16]} changed length while read")
        out[:] = data
        return location.length

    def has(self, chunk_id: bytes, index: int) -> bool:
        check_fragment_id(chunk_id, index)
        return self.find(chunk_id, index) is not None

    def delete(self, chunk_id: bytes, index: int) -> bool:
        check_fragment_id(chunk_id, index)
        disk = self.find(chunk_id, index)
        return disk.store.delete(chunk_id, index) if disk is not None else False

    def fragments(self, start: bytes, end: bytes):
        """(chunk id, index) in [start, end) over every healthy disk, in order."""
        import heapq

        streams = [((c, i) for c, i, _ in d.store.fragments(start, end)) for d in self.healthy()]
        return heapq.merge(*streams)

    def compact(self, threshold: float) -> int:
        """Compacts every healthy disk's store; returns the bytes reclaimed."""
        reclaimed = 0
        for disk in self.healthy():
            try:
                reclaimed += disk.store.compact(threshold)
            except DiskFailed as error:
                self._retire(disk, error)
        return reclaimed

    def status(self) -> list[dict]:
        out = []
        for disk in self.disks:
            healthy = disk.store is not None and disk.store.failed is None and not disk.error
            try:
                capacity, free = disk.files.capacity_bytes(), disk.files.free_bytes()
            except OSError:
                capacity = free = 0
                healthy = False
            used = disk.store.used_bytes() if disk.store is not None else 0
            out.append({"path": disk.path, "capacity_bytes": capacity, "free_bytes": free, "used_bytes": used,
                        "healthy": healthy, "error": disk.error or (str(disk.store.failed) if disk.store and disk.store.failed else "")})
        return out

    def close(self) -> None:
        for disk in self.disks:
            if disk.store is not None:
                disk.store.close()
