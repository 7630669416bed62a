"""The file operations a fragment store needs, and nothing more, so the simulator can substitute a
disk that loses unsynced writes, tears records and flips bits.

`LocalFiles` is the real one: plain files in a directory, positional reads, appends through a
file descriptor per open file, fsync on request (and of the directory after creating, renaming or
deleting, so a name is as durable as the bytes behind it).
"""
from __future__ import annotations

import os
from typing import Protocol

from cluster.storage.durable import fsync_directory


class Files(Protocol):
    def open(self, name: str) -> int:
        """Opens (creating if missing) a file for appending and reading; returns a handle."""

    def append(self, handle: int, data) -> int:
        """Writes all of `data` at the end; returns the offset it starts at. Raises OSError
        (ENOSPC on a full disk) and then the file may hold a partial tail: truncate it."""

    def read(self, handle: int, offset: int, length: int) -> bytes: ...

    def read_into(self, handle: int, offset: int, buffers: list) -> int:
        """Fills the writable buffers in order from `offset`; returns the bytes read (fewer
        only at the end of the file)."""

    def size(self, handle: int) -> int: ...

    def sync(self, handle: int) -> None: ...

    def truncate(self, handle: int, length: int) -> None: ...

    def close(self, handle: int) -> None: ...

    def rename(self, old: str, new: str) -> None: ...

    def delete(self, name: str) -> None: ...

    def list(self) -> list[str]: ...

    def free_bytes(self) -> int: ...

    def capacity_bytes(self) -> int: ...


class LocalFiles:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._ends: dict[int, int] = {}

    def _path(self, name: str) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad file name {name!r}")
        return os.path.join(self.directory, name)

    def open(self, name: str) -> int:
        path = self._path(name)
        created = not os.path.exists(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._ends[fd] = os.fstat(fd).st_size
        if created:
            self._sync_directory()
        return fd

    def append(self, handle: int, data) -> int:
        start = self._ends[handle]
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                written += os.pwrite(handle, view[written:], start + written)
        finally:
            self._ends[handle] = start + written
        return start

    def read(self, handle: int, offset: int, length: int) -> bytes:
        data = os.pread(handle, length, offset)
        if len(data) != length:
            raise EOFError(f"read {len(data)} of {length} bytes at offset {offset}")
        return data

    def read_into(self, handle: int, offset: int, buffers: list) -> int:
        return os.preadv(handle, buffers, offset)  # (at most IOV_MAX buffers: callers pass two)

    def size(self, handle: int) -> int:
        return self._ends[handle]

    def sync(self, handle: int) -> None:
        os.fdatasync(handle)

    def truncate(self, handle: int, length: int) -> None:
        os.ftruncate(handle, length)
        self._ends[handle] = length
        os.fsync(handle)

    def close(self, handle: int) -> None:
        self._ends.pop(handle, None)
        os.close(handle)

    def rename(self, old: str, new: str) -> None:
        os.rename(self._path(old), self._path(new))
        self._sync_directory()

    def delete(self, name: str) -> None:
        os.unlink(self._path(name))
        self._sync_directory()

    def list(self) -> list[str]:
        return sorted(os.listdir(self.directory))

    def free_bytes(self) -> int:
        stat = os.statvfs(self.directory)
        return stat.f_bavail * stat.f_frsize

    def capacity_bytes(self) -> int:
        stat = os.statvfs(self.directory)
        return stat.f_blocks * stat.f_frsize

    def _sync_directory(self) -> None:
        fsync_directory(self.directory)
