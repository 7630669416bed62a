"""RocksDisk's table options: lookups that miss (most of them, for new chunk and op ids) are
answered by a bloom filter, and the filter never hides a key that is there."""
import glob
import os

from cluster.storage.disk import RocksDisk


def test_tables_carry_a_bloom_filter_that_finds_every_key(tmp_path):
    disk = RocksDisk(str(tmp_path / "db"))
    try:
        keys = [b"C" + os.urandom(32) for _ in range(5000)]
        disk.write([(key, b"v") for key in keys], [], sync=True)
        for _ in range(2):  # in the memtable, then in an SST file: each has its own filter
            assert all(disk.get(key) == b"v" for key in keys)
            assert all(disk.get(b"C" + os.urandom(32)) is None for _ in range(1000))
            disk._db.flush()
    finally:
        disk.close()
    options = max(glob.glob(str(tmp_path / "db" / "OPTIONS-*")))
    with open(options) as f:
        text = f.read()
    assert "filter_policy=bloomfilter" in text  # "nullptr" without one
    assert "memtable_whole_key_filtering=true" in text
    assert "memtable_prefix_bloom_size_ratio=0.1" in text


def test_write_durably_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    from cluster.storage.durable import write_durably

    path = tmp_path / "record"
    write_durably(str(path), [b"first"])
    write_durably(str(path), [b"sec", b"ond"])  # parts are written in order, as one file
    assert path.read_bytes() == b"second"
    assert sorted(os.listdir(tmp_path)) == ["record"]
