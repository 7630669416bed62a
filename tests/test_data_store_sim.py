"""The fragment store under power loss, from seeds: over a simulated disk that loses what was not
synced (keeping a random prefix of it: torn records) and an index that loses unsynced writes,
every acknowledged put reads back intact (by `get` and by a batch read's `read_into`) and every
acknowledged delete stays deleted."""
import random

import pytest

from cluster.data.store import FragmentNotFound, FragmentStore
from simulations.disk import SimDisk
from simulations.files import SimFiles


def content(n: int) -> bytes:
    return random.Random(n).randbytes(random.Random(n + 1).randrange(0, 3000))


@pytest.mark.parametrize("seed", range(40))
def test_power_loss_keeps_every_acknowledged_write(seed):
    rng = random.Random(seed)
    files, index = SimFiles(random.Random(seed + 1)), SimDisk(random.Random(seed + 2))
    store = FragmentStore(files, index, segment_bytes_max=20_000)
    expected: dict[tuple[bytes, int], int | None] = {}  # acknowledged state: version, or None if deleted
    in_doubt: dict[tuple[bytes, int], set] = {}          # appended, not acknowledged: may or may not be there
    version = 0
    for step in range(300):
        key = (rng.randrange(12).to_bytes(4, "big") * 8, rng.randrange(3))
        roll = rng.random()
        if roll < 0.6:
            version += 1
            if rng.random() < 0.3:
                store.submit(*key, content(version))  # never waited for: not acknowledged
                in_doubt.setdefault(key, set()).add(version)
            else:
                store.put(*key, content(version))
                expected[key] = version
                in_doubt.pop(key, None)
        elif roll < 0.75 and expected.get(key) is not None:
            store.delete(*key)
            expected[key] = None
            in_doubt.pop(key, None)
        elif roll < 0.8:
            store.compact(threshold=0.6)
        elif roll < 0.9:
            files.crash()
            index.crash()
            store = FragmentStore(files, index, segment_bytes_max=20_000)
            for key_, versions in in_doubt.items():  # whatever survived is now the acknowledged truth
                try:
                    data = bytes(store.get(*key_))
                except FragmentNotFound:
                    data = None
                for v in versions:
                    if data == content(v):
                        expected[key_] = v
            in_doubt.clear()
            for key_, v in expected.items():
                if v is None:
                    assert not store.has(*key_), (seed, step, key_)
                else:
                    assert bytes(store.get(*key_)) == content(v), (seed, step, key_)
                    read = bytearray(len(content(v)))  # and as a batch read reads it: into a buffer
                    store.read_into(store.location(*key_), *key_, memoryview(read))
                    assert read == content(v), (seed, step, key_)


def test_a_full_disk_still_deletes_and_compacts_and_then_takes_puts_again():
    """New fragments may not take the disk's last 1%: tombstones and compaction still fit."""
    from cluster.data.store import DiskFull

    files, index = SimFiles(random.Random(7), capacity=2 << 20), SimDisk(random.Random(8))
    store = FragmentStore(files, index, segment_bytes_max=200_000)
    stored = []
    with pytest.raises(DiskFull, match="stay free"):
        for n in range(1000):
            chunk_id = bytes([n % 256, n // 256]) * 16
            store.put(chunk_id, 0, bytes([n % 251]) * 50_000)
            stored.append(chunk_id)
    assert files.free_bytes() >= store.reserve_bytes > 0
    for chunk_id in stored[: len(stored) // 2]:
        assert store.delete(chunk_id, 0)  # room for the tombstones
    assert store.compact(0.9) > 0 and files.free_bytes() > 500_000
    store.put(b"\xee" * 32, 0, b"x" * 50_000)  # room again
    assert store.get(stored[-1], 0) == bytes([(len(stored) - 1) % 251]) * 50_000
