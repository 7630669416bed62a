"""Small files written whole or not at all, and directory entries made durable: what a node
records outside its stores (its id, a disk's stripe count, a snapshot) and every rename needs."""
from __future__ import annotations

import os
from typing import Iterable


def fsync_directory(path: str) -> None:
    """Makes the entries of directory `path` (files created, renamed or deleted) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str, parts: Iterable[bytes]) -> None:
    """Replaces file `path` with `parts`, written through a temporary file, fsynced, renamed and
    its directory synced: after a crash the file is the old one or the new one, never a mix."""
    temporary = path + ".tmp"
    with open(temporary, "wb") as f:
        for part in parts:
            f.write(part)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))
