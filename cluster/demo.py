"""`cairn demo`: the native core's whole write and read path on one generated file.

Until the cluster exists this is Cairn's main job in miniature: a file is cut into
content-defined chunks, each chunk is named by its BLAKE3 hash (duplicates are stored once),
erasure coded into k + m fragments with a CRC32C each, then m fragments of every chunk are
thrown away and the file is rebuilt from the rest and checked byte for byte.
"""
from __future__ import annotations

import os
import random
import tempfile
import time
from dataclasses import dataclass

import blake3

from cluster.codec.chunker import Chunker
from cluster.codec.crc import crc32c
from cluster.codec.rs import ReedSolomon

READ_BUFFER_BYTES = 8 << 20


@dataclass
class Fragments:
    size: int
    pieces: list
    crcs: list


def generate_file(path: str, size: int, seed: int) -> None:
    """Random "files" of 4-16 MiB, about a quarter of them copies of earlier ones, as when the
    same recordings are uploaded twice."""
    rng = random.Random(seed)
    history: list[bytes] = []
    with open(path, "wb") as out:
        written = 0
        while written < size:
            if history and rng.random() < 0.25:
                data = rng.choice(history)
            else:
                data = rng.randbytes(rng.randint(4, 16) << 20)
                history = (history + [data])[-8:]
            data = data[:size - written]
            out.write(data)
            written += len(data)


def store(path: str, chunker: Chunker, rs: ReedSolomon, stats: dict) -> tuple[list[bytes], dict]:
    """Chunks, names and codes the file: (chunk names in order, name -> fragments)."""
    names, stored = [], {}
    carry = b""  # the start of a chunk that continues into the next read
    with open(path, "rb") as source:
        while True:
            block = source.read(READ_BUFFER_BYTES)
            lengths = chunker.feed(block) if block else chunker.finish()
            data, offset = memoryview(carry + block) if carry else memoryview(block), 0
            for length in lengths:
                names.append(_store_chunk(data[offset:offset + length], rs, stored, stats))
                offset += length
            carry = bytes(data[offset:])
            if not block:
                return names, stored


def _store_chunk(chunk: memoryview, rs: ReedSolomon, stored: dict, stats: dict) -> bytes:
    name = blake3.blake3(chunk).digest()
    stats["chunks"] += 1
    if name not in stored:
        pieces = [bytes(f) for f in rs.encode_chunk(chunk)]
        stored[name] = Fragments(len(chunk), pieces, [crc32c(p) for p in pieces])
        stats["stored_bytes"] += sum(len(p) for p in pieces)
    return name


def rebuild(names: list[bytes], stored: dict, rs: ReedSolomon, out_path: str, seed: int) -> None:
    """Rebuilds the file after losing m random fragments of every chunk, verifying everything."""
    rng = random.Random(seed)
    with open(out_path, "wb") as out:
        for name in names:
            fragments = stored[name]
            keep = sorted(rng.sample(range(rs.k + rs.m), rs.k))
            for index in keep:
                if crc32c(fragments.pieces[index]) != fragments.crcs[index]:
                    raise RuntimeError(f"fragment {index} of chunk {name.hex()} is corrupt")
            chunk = rs.decode_chunk({i: fragments.pieces[i] for i in keep}, fragments.size)
            if blake3.blake3(chunk).digest() != name:
                raise RuntimeError(f"chunk {name.hex()} rebuilt wrongly")
            out.write(chunk)


def same_files(a: str, b: str) -> bool:
    with open(a, "rb") as x, open(b, "rb") as y:
        while True:
            left, right = x.read(READ_BUFFER_BYTES), y.read(READ_BUFFER_BYTES)
            if left != right:
                return False
            if not left:
                return True


def run(size: int, k: int, m: int, seed: int, say=print) -> bool:
    rs, chunker = ReedSolomon(k, m), Chunker()
    stats = {"chunks": 0, "stored_bytes": 0}
    with tempfile.TemporaryDirectory(prefix="cairn-demo-") as workdir:
        source, rebuilt = os.path.join(workdir, "source.bin"), os.path.join(workdir, "rebuilt.bin")
        say(f"generating {size / 2**20:.0f} MiB of sample data (with repeats) in {workdir}")
        generate_file(source, size, seed)
        started = time.perf_counter()
        names, stored = store(source, chunker, rs, stats)
        write_seconds = time.perf_counter() - started
        say(f"write: {stats['chunks']} chunks, {len(stored)} unique (dedup {stats['chunks'] / max(len(stored), 1):.2f}x), "
            f"{rs.k}+{rs.m} coded into {stats['stored_bytes'] / 2**20:.0f} MiB of fragments "
            f"in {write_seconds:.2f} s ({size / write_seconds / 1e9:.2f} GB/s)")
        started = time.perf_counter()
        rebuild(names, stored, rs, rebuilt, seed + 1)
        read_seconds = time.perf_counter() - started
        ok = same_files(source, rebuilt)
        say(f"read:  lost {rs.m} of {rs.k + rs.m} fragments of every chunk, rebuilt and verified in "
            f"{read_seconds:.2f} s ({size / read_seconds / 1e9:.2f} GB/s): {'identical' if ok else 'DIFFERENT'}")
        return ok
