"""The fragment store: reads, writes, bad input, group commit, torn tails, a lost index,
corruption and the scrubber, a full disk, compaction under load, kill -9 crash safety, and batches
(one write per stripe, each fragment its own outcome, a full disk's share going to another disk;
batch reads into one buffer, each fragment its own outcome)."""
import asyncio
import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from cluster.codec.crc import crc32c
from cluster.data.scrubber import Scrubber
from cluster.data.store import (HEADER_BYTES, BadFragment, DiskFull, FragmentCorrupt, FragmentNotFound,
                                FragmentStore, segment_name)
from cluster.storage.disk import RocksDisk
from cluster.storage.files import LocalFiles


def cid(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


def content(n: int, index: int, size: int = 3000) -> bytes:
    return random.Random(n * 1000 + index).randbytes(size)


def flip_bits(path, offset, mask):
    """Damages one byte of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


def open_store(path, files=None, segment_bytes_max=1 << 20):
    return FragmentStore(files or LocalFiles(str(path / "segments")), RocksDisk(str(path / "index")),
                         segment_bytes_max=segment_bytes_max)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path)
    yield s
    s.close()


def test_put_get_range_overwrite_delete(store):
    store.put(cid(1), 0, b"hello fragment")
    assert store.get(cid(1), 0) == b"hello fragment"
    assert store.get(cid(1), 0, offset=6, length=4) == b"frag"
    store.put(cid(1), 0, b"replaced")
    assert store.get(cid(1), 0) == b"replaced"
    assert store.has(cid(1), 0) and not store.has(cid(1), 1)
    assert store.delete(cid(1), 0) and not store.delete(cid(1), 0)
    with pytest.raises(FragmentNotFound):
        store.get(cid(1), 0)


def test_bad_input_is_refused_and_stores_nothing(store):
    with pytest.raises(BadFragment):
        store.put(b"short", 0, b"x")
    with pytest.raises(BadFragment):
        store.put(cid(1), 255, b"x")
    with pytest.raises(BadFragment, match="CRC32C mismatch"):
        store.put(cid(1), 0, b"data", crc=crc32c(b"other"))
    with pytest.raises(BadFragment):
        store.put(cid(1), 0, b"x" * ((64 << 20) + 1))
    store.put(cid(2), 0, b"abc")
    with pytest.raises(BadFragment):
        store.get(cid(2), 0, offset=10)
    assert list(store.fragments()) == [(cid(2), 0, store.location(cid(2), 0))]


class CountingFiles(LocalFiles):
    syncs = 0

    def sync(self, handle):
        CountingFiles.syncs += 1
        time.sleep(0.002)  # a disk that takes its time, so writers pile up
        super().sync(handle)


def test_concurrent_writers_share_fsyncs(tmp_path):
    s = open_store(tmp_path, CountingFiles(str(tmp_path / "segments")))
    CountingFiles.syncs = 0

    def writer(w):
        for i in range(25):
            s.put(cid(w * 100 + i), 0, content(w, i, 500))
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert CountingFiles.syncs < 16 * 25 / 3
    for w in range(16):
        for i in range(25):
            assert s.get(cid(w * 100 + i), 0) == content(w, i, 500)
    s.close()


def test_a_torn_tail_is_cut_and_the_rest_survives(tmp_path):
    s = open_store(tmp_path)
    for n in range(5):
        s.put(cid(n), 1, content(n, 1))
    s.close()
    path = tmp_path / "segments" / segment_name(1)
    with open(path, "ab") as f:
        f.write(b"CFG1" + b"\x01" * 30)  # half a header: power went out mid-append
    s = open_store(tmp_path)
    assert s.recovered["torn_bytes"] == 34
    assert all(s.get(cid(n), 1) == content(n, 1) for n in range(5))
    s.put(cid(9), 0, b"after")  # appends continue where the good records end
    assert s.get(cid(9), 0) == b"after"
    s.close()


def test_a_lost_index_is_rebuilt_from_the_segments(tmp_path):
    s = open_store(tmp_path, segment_bytes_max=8000)
    for n in range(20):
        s.put(cid(n), 0, content(n, 0))
    for n in range(0, 20, 3):
        s.delete(cid(n), 0)
    s.put(cid(1), 0, b"newer")
    s.close()
    import shutil
    shutil.rmtree(tmp_path / "index")
    s = open_store(tmp_path, segment_bytes_max=8000)
    assert s.get(cid(1), 0) == b"newer"
    for n in range(2, 20):
        if n % 3 == 0:
            assert not s.has(cid(n), 0)  # the tombstones were replayed too
        else:
            assert s.get(cid(n), 0) == content(n, 0)
    s.close()


def test_an_index_behind_the_segments_catches_up(tmp_path):
    s = open_store(tmp_path)
    s.put(cid(1), 0, b"one")
    s.close()
    index = RocksDisk(str(tmp_path / "index"))
    stale = dict(index.scan(b"", b"\xff"))
    index.close()
    s = open_store(tmp_path)
    s.put(cid(2), 0, b"two")
    s.delete(cid(1), 0)
    s.close()
    index = RocksDisk(str(tmp_path / "index"))  # roll the index back: it lost its last writes
    index.write(list(stale.items()), [], sync=True, ranges=[(b"", b"\xff")])
    index.close()
    s = open_store(tmp_path)
    assert s.get(cid(2), 0) == b"two" and not s.has(cid(1), 0)
    s.close()


def test_corruption_is_detected_on_read_and_by_the_scrubber(tmp_path):
    s = open_store(tmp_path, segment_bytes_max=20000)
    for n in range(30):
        s.put(cid(n), 2, content(n, 2))
    s.close()
    rng = random.Random(5)
    damaged = set()
    s = open_store(tmp_path, segment_bytes_max=20000)
    for n in rng.sample(range(30), 8):
        location = s.location(cid(n), 2)
        flip_bits(tmp_path / "segments" / segment_name(location.segment),
                  location.offset + rng.randrange(location.record_bytes), 1 << rng.randrange(8))
        damaged.add(n)
    for n in range(30):
        if n in damaged:
            with pytest.raises(FragmentCorrupt):
                s.get(cid(n), 2)
        else:
            assert s.get(cid(n), 2) == content(n, 2)
    reports = []
    clock = [0.0]
    result = Scrubber(s, lambda c, i, why: reports.append(c), bytes_per_second=30_000,
                      clock=lambda: clock[0], sleep=lambda t: clock.__setitem__(0, clock[0] + t)).run_pass()
    assert {int.from_bytes(c[:4], "big") for c in reports} == damaged
    assert result.fragments == 30
    assert clock[0] >= result.bytes / 30_000 * 0.99  # it kept to its rate
    s.close()


class FullFiles(LocalFiles):
    limit = 1 << 40

    def append(self, handle, data):
        if self.size(handle) + len(data) > self.limit:
            half = bytes(data)[: max(0, (self.limit - self.size(handle)))]
            if half:
                super().append(handle, half)  # the disk took part of it, then ran out
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().append(handle, data)


def test_a_full_disk_refuses_the_write_and_keeps_what_is_stored(tmp_path):
    files = FullFiles(str(tmp_path / "segments"))
    s = open_store(tmp_path, files)
    s.put(cid(1), 0, content(1, 0))
    files.limit = files.size(s._handles[s.active]) + 1000
    with pytest.raises(DiskFull):
        s.put(cid(2), 0, content(2, 0))
    assert not s.has(cid(2), 0) and s.get(cid(1), 0) == content(1, 0)
    files.limit = 1 << 40  # space freed
    s.put(cid(3), 0, content(3, 0))
    s.close()
    s = open_store(tmp_path)
    assert s.recovered["torn_bytes"] == 0  # the partial record was cut at once
    assert s.get(cid(1), 0) == content(1, 0) and s.get(cid(3), 0) == content(3, 0)
    s.close()


def test_compaction_under_concurrent_reads_and_writes(tmp_path):
    s = open_store(tmp_path, segment_bytes_max=30_000)
    for n in range(60):
        s.put(cid(n), 0, content(n, 0))
    for n in range(60):
        if n % 4:
            s.delete(cid(n), 0)
    before = s.used_bytes()
    stop, errors = threading.Event(), []

    def reader():
        while not stop.is_set():
            for n in range(0, 60, 4):
                try:
                    assert s.get(cid(n), 0) == content(n, 0)
                except Exception as error:  # noqa: BLE001
                    errors.append(error)

    def writer():
        for n in range(100, 140):
            s.put(cid(n), 0, content(n, 0))
    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    reclaimed = s.compact(threshold=0.5)
    threads[1].join()
    stop.set()
    threads[0].join()
    assert not errors, errors[:3]
    assert reclaimed > 0 and s.used_bytes() < before + 40 * (HEADER_BYTES + 3000)
    s.close()
    s = open_store(tmp_path, segment_bytes_max=30_000)  # and it all survives a restart
    for n in list(range(0, 60, 4)) + list(range(100, 140)):
        assert s.get(cid(n), 0) == content(n, 0)
    for n in range(60):
        if n % 4:
            assert not s.has(cid(n), 0)  # no deleted fragment came back
    s.close()


WRITER = r"""
import random, sys
sys.path.insert(0, {root!r})
from cluster.data.store import FragmentStore
from cluster.storage.disk import RocksDisk
from cluster.storage.files import LocalFiles
s = FragmentStore(LocalFiles({segments!r}), RocksDisk({index!r}), segment_bytes_max=200_000)
n = {start}
while True:
    data = random.Random(n).randbytes(random.Random(n).randrange(1, 20_000))
    s.put(n.to_bytes(4, "big") * 8, n % 6, data)
    print(n, flush=True)
    n += 1
"""


def test_kill_9_never_loses_an_acknowledged_fragment(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    acknowledged, start, rng = [], 0, random.Random(3)
    for round_number in range(6):
        code = WRITER.format(root=root, segments=str(tmp_path / "segments"), index=str(tmp_path / "index"),
                             start=start)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + rng.uniform(0.3, 1.2) + 2.0  # start-up, then a while of writing
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(int(line))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        acknowledged += lines
        start = (lines[-1] + 1 if lines else start) + 1_000  # skip ids that may be half-written
    s = open_store(tmp_path, segment_bytes_max=200_000)
    assert len(acknowledged) > 100
    for n in acknowledged:
        rng_n = random.Random(n)
        assert s.get(n.to_bytes(4, "big") * 8, n % 6) == rng_n.randbytes(random.Random(n).randrange(1, 20_000))
    for chunk_id, index, _ in s.fragments():  # whatever else is there is whole
        n = int.from_bytes(chunk_id[:4], "big")
        assert s.get(chunk_id, index) == random.Random(n).randbytes(random.Random(n).randrange(1, 20_000))
    s.close()


def test_callbacks_from_the_syncer_cover_many_appends_per_fsync(tmp_path):
    s = open_store(tmp_path, CountingFiles(str(tmp_path / "segments")))
    CountingFiles.syncs = 0
    done, lock = [], threading.Lock()
    finished = threading.Event()

    def callback(error):
        with lock:
            done.append(error)
            if len(done) == 200:
                finished.set()
    for n in range(200):
        s.when_durable(s.submit(cid(n), 0, content(n, 0, 200)), callback)
    assert finished.wait(30) and done == [None] * 200
    assert CountingFiles.syncs < 50
    s.close()
    s = open_store(tmp_path)
    assert all(s.get(cid(n), 0) == content(n, 0, 200) for n in range(200))
    s.close()


def test_a_striped_disk_spreads_fragments_and_lists_them_in_order(tmp_path):
    from cluster.data.store import StripedStore

    stripes = [open_store(tmp_path / f"s{k}") for k in range(3)]
    striped = StripedStore(stripes)
    for n in range(30):
        striped.put(cid(n), n % 4, content(n, n % 4, 100))
    assert all(len(list(s.fragments())) > 0 for s in stripes)
    listed = [(c, i) for c, i, _ in striped.fragments()]
    assert listed == sorted((cid(n), n % 4) for n in range(30))
    assert striped.get(cid(7), 3) == content(7, 3, 100) and striped.delete(cid(7), 3) and not striped.has(cid(7), 3)
    striped.close()


def test_damage_in_the_middle_of_the_last_segment_is_skipped_not_cut(tmp_path):
    s = open_store(tmp_path)
    for n in range(5):
        s.put(cid(n), 0, content(n, 0))
    location = s.location(cid(2), 0)
    s.close()
    import shutil
    shutil.rmtree(tmp_path / "index")  # replay from the start
    flip_bits(tmp_path / "segments" / segment_name(location.segment), location.offset + 10, 0x40)  # its header
    s = open_store(tmp_path)
    assert s.recovered["torn_bytes"] == 0 and s.recovered["damaged_segments"]
    assert not s.has(cid(2), 0)
    assert all(s.get(cid(n), 0) == content(n, 0) for n in (0, 1, 3, 4))  # nothing after it was cut
    s.close()


def test_compaction_never_undoes_a_concurrent_overwrite_or_delete(tmp_path):
    s = open_store(tmp_path, segment_bytes_max=20_000)
    for n in range(40):
        s.put(cid(n), 0, content(n, 0))
    for n in range(40):
        if n % 2:
            s.delete(cid(n), 0)
    s.put(cid(999), 0, b"roll")  # the fragments above sit in closed segments now
    latest = {n: content(n, 0) for n in range(0, 40, 2)}

    def writer():
        for n in range(0, 40, 2):
            if n % 4 == 0:
                latest[n] = content(n, 1)
                s.put(cid(n), 0, latest[n])
            else:
                latest[n] = None
                s.delete(cid(n), 0)
    thread = threading.Thread(target=writer)
    thread.start()
    s.compact(threshold=0.9)
    thread.join()
    for reopen in (False, True):
        if reopen:
            s.close()
            s = open_store(tmp_path, segment_bytes_max=20_000)
        for n, value in latest.items():
            if value is None:
                assert not s.has(cid(n), 0), n
            else:
                assert s.get(cid(n), 0) == value, n
    s.close()


def test_a_mostly_dead_active_segment_is_closed_and_compacted(tmp_path):
    """A quiet store gets the space of its deletes back, even when everything sits in the
    segment it is still appending to."""
    store = open_store(tmp_path, segment_bytes_max=64 << 20)
    blobs = {i: os.urandom(50_000 + i) for i in range(20)}
    chunk = os.urandom(32)
    for i, blob in blobs.items():
        store.put(chunk, i, blob)
    for i in range(15):
        store.delete(chunk, i)
    used = store.used_bytes()
    assert store.compact(0.5) > 0
    assert store.used_bytes() < used / 2
    for i in range(15, 20):
        assert bytes(store.get(chunk, i)) == blobs[i]
    store.close()
    reopened = open_store(tmp_path)
    assert all(not reopened.has(chunk, i) for i in range(15))
    assert all(bytes(reopened.get(chunk, i)) == blobs[i] for i in range(15, 20))
    reopened.close()


class SlowSyncFiles(LocalFiles):
    """A disk whose syncs take their time (and record when they ran), or fail."""

    def __init__(self, path, ran: list, fail: bool = False):
        super().__init__(path)
        self.ran, self.fail = ran, fail

    def sync(self, handle):
        start = time.monotonic()
        time.sleep(0.5)  # long enough that syncs started together overlap even on a loaded machine
        if self.fail:
            raise OSError(errno.EIO, "I/O error")
        super().sync(handle)
        self.ran.append((start, time.monotonic()))


def test_a_batch_over_several_stripes_waits_for_their_syncs_side_by_side(tmp_path):
    from cluster.data.disks import DiskSet
    from cluster.data.store import FragmentStore, StripedStore

    ran: list = []
    stripes: list = []

    def open_stripes(path, count):
        stripes.extend(FragmentStore(SlowSyncFiles(os.path.join(path, f"s{k}"), ran, fail=(k == 2)),
                                     RocksDisk(os.path.join(path, f"i{k}"))) for k in range(count))
        return StripedStore(stripes)
    disks = DiskSet([str(tmp_path)], stripes=4, open_store=open_stripes)
    items = [(random.Random(n).randbytes(32), 0, content(n, 0, 500), None) for n in range(40)]
    outcomes = disks.put_many(items)
    striped = disks.disks[0].store
    on_failed = [striped._stripe(c, i) is stripes[2] for c, i, _, _ in items]
    assert 0 < sum(on_failed) < len(items)
    for outcome, failed in zip(outcomes, on_failed):
        assert (outcome is not None) == failed  # each fragment hears its own stripe's outcome
    assert all(outcome.__class__.__name__ == "DiskFailed" for outcome, f in zip(outcomes, on_failed) if f)
    assert len(ran) == 3 and max(start for start, _ in ran) < min(end for _, end in ran)  # they overlapped
    for (chunk_id, index, data, _), failed in zip(items, on_failed):
        if not failed:
            assert striped.get(chunk_id, index) == data


class AppendCountingFiles(LocalFiles):
    def __init__(self, directory):
        super().__init__(directory)
        self.appends = 0

    def append(self, handle, data):
        self.appends += 1
        return super().append(handle, data)


def test_a_batch_is_one_write_per_stripe_and_each_fragment_hears_its_own_outcome(tmp_path):
    from cluster.data.disks import DiskSet
    from cluster.data.store import StripedStore

    files: list = []

    def open_stripes(path, count):
        files.extend(AppendCountingFiles(os.path.join(path, f"s{k}")) for k in range(count))
        return StripedStore([FragmentStore(f, RocksDisk(os.path.join(path, f"i{k}"))) for k, f in enumerate(files)])
    disks = DiskSet([str(tmp_path)], stripes=3, open_store=open_stripes)
    good = [(cid(n), n % 3, content(n, 0, 700), None) for n in range(30)]
    big = (cid(99), 0, content(99, 0, 100_000), None)  # written as it is, not joined
    bad = [(b"short", 0, b"x", None), (cid(1), 0, b"data", crc32c(b"other")),
           (cid(2), 0, b"x" * ((64 << 20) + 1), None)]
    again = (cid(0), 0, content(0, 1, 700), None)  # the same fragment later in the batch: it wins
    items = good[:10] + [bad[0]] + good[10:20] + [bad[1], big] + good[20:] + [bad[2], again]
    before = sum(f.appends for f in files)
    outcomes = disks.put_many(items)
    assert [type(o).__name__ for o in outcomes if o is not None] == ["BadFragment"] * 3
    assert all((outcome is None) == (item not in bad) for item, outcome in zip(items, outcomes))
    # one write per stripe, but a big fragment goes as it is: its stripe's small records before
    # it (its header among them) are one write, those after it another
    assert 3 < sum(f.appends for f in files) - before <= 3 + 2
    for chunk_id, index, data, _ in good[1:] + [big, again]:
        assert disks.get(chunk_id, index) == data
    assert not disks.disks[0].store.has(cid(1), 0) and not disks.disks[0].store.has(cid(2), 0)


def test_a_batch_a_full_disk_refuses_goes_to_the_other_disk_and_leaves_no_partial_record(tmp_path):
    from cluster.data.disks import DiskSet
    from cluster.data.store import StripedStore

    stores: dict = {}

    def open_one(path, count):
        files = FullFiles(os.path.join(path, "segments"))
        stores[path] = FragmentStore(files, RocksDisk(os.path.join(path, "index")))
        return StripedStore([stores[path]])
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    disks = DiskSet(paths, stripes=1, open_store=open_one)
    disks.disks[1].free = -1  # the first disk looks emptier: the batch goes there first
    disks.disks[0].free = 1 << 40
    disks.disks[0].free_checked = disks.disks[1].free_checked = time.monotonic()
    first = stores[paths[0]]
    first.files.limit = first.files.size(first._handles[first.active]) + 5000  # room for one record, not ten
    items = [(cid(n), 0, content(n, 0, 1000), None) for n in range(10)]
    assert disks.put_many(items) == [None] * 10
    on_first = [first.has(chunk_id, index) for chunk_id, index, _, _ in items]
    assert sum(on_first) < 5  # the batch did not fit; one by one, the others went to the other disk
    for (chunk_id, index, data, _), here in zip(items, on_first):
        assert disks.get(chunk_id, index) == data and stores[paths[1]].has(chunk_id, index) != here
    first.close()
    reopened = FragmentStore(LocalFiles(os.path.join(paths[0], "segments")), RocksDisk(os.path.join(paths[0], "index")))
    assert reopened.recovered["torn_bytes"] == 0  # the failed batch write was cut at once
    assert len(list(reopened.fragments())) == sum(on_first)
    reopened.close()


def test_a_disk_keeps_the_stripe_count_it_was_made_with(tmp_path):
    """A fragment's stripe follows from its id and the count: reopening a disk made with three
    stripes under another count still finds every fragment; a new disk takes the count asked
    and records it before it makes a store."""
    from cluster.data.disks import STRIPES_FILE, DiskSet

    made = DiskSet([str(tmp_path / "made")], stripes=3)
    items = [(random.Random(n).randbytes(32), n % 6, content(n, n % 6, 700), None) for n in range(60)]
    assert made.put_many(items) == [None] * len(items)
    made.close()
    assert (tmp_path / "made" / STRIPES_FILE).read_text() == "3\n"
    reopened = DiskSet([str(tmp_path / "made")], stripes=1)
    try:
        assert len(reopened.disks[0].store.stores) == 3
        for chunk_id, index, data, _ in items:
            assert reopened.get(chunk_id, index) == data
    finally:
        reopened.close()


def test_a_disk_made_before_the_count_was_recorded_is_read_from_its_stripe_directories(tmp_path):
    from cluster.data.disks import STRIPES_FILE, DiskSet

    old = DiskSet([str(tmp_path / "old")], stripes=4)
    items = [(random.Random(n).randbytes(32), 0, content(n, 0, 500), None) for n in range(40)]
    assert old.put_many(items) == [None] * len(items)
    old.close()
    os.remove(tmp_path / "old" / STRIPES_FILE)  # as an older Cairn left it
    again = DiskSet([str(tmp_path / "old")])
    try:
        assert len(again.disks[0].store.stores) == 4
        assert all(again.get(chunk_id, index) == data for chunk_id, index, data, _ in items)
        assert (tmp_path / "old" / STRIPES_FILE).read_text() == "4\n"  # recorded from now on
    finally:
        again.close()


@pytest.mark.parametrize("stray", ["file", "symlink", "leading-zero", "gap", "not-a-number", "too-many",
                                   "bad-record", "record-too-small"])
def test_a_disk_whose_stripes_no_cairn_made_stays_out_of_service(tmp_path, stray):
    """Whatever would make the count a guess leaves the disk out of service (and the node
    without a usable disk fails to start) rather than looking fragments up in the wrong place."""
    from cluster.data.disks import STRIPES_FILE, DiskSet

    disk = tmp_path / "disk"
    os.makedirs(disk / "stripe-0")
    if stray == "file":
        (disk / "stripe-1").write_bytes(b"")
    elif stray == "symlink":
        os.symlink(disk / "stripe-0", disk / "stripe-1")
    elif stray == "leading-zero":
        os.makedirs(disk / "stripe-01")
    elif stray == "gap":
        os.makedirs(disk / "stripe-2")
    elif stray == "not-a-number":
        os.makedirs(disk / "stripe-x")
    elif stray == "too-many":
        for k in range(1, 17):
            os.makedirs(disk / f"stripe-{k}")
    elif stray == "bad-record":
        (disk / STRIPES_FILE).write_bytes(b"four\n")
    else:
        os.makedirs(disk / "stripe-1")
        (disk / STRIPES_FILE).write_bytes(b"1\n")
    with pytest.raises(OSError, match="no usable disk"):
        DiskSet([str(disk)])


@pytest.mark.parametrize("stripes", [0, -1, 17])
def test_a_stripe_count_out_of_range_is_refused(tmp_path, stripes):
    from cluster.data.disks import DiskSet

    with pytest.raises(ValueError, match="stripes per disk"):
        DiskSet([str(tmp_path)], stripes=stripes)
    assert os.listdir(tmp_path) == []  # refused before anything was made on the disk


def test_the_data_node_command_takes_a_stripe_count(monkeypatch, capsys):
    from cluster.data import server

    with pytest.raises(SystemExit):
        server.main(["--disks", "/nonexistent", "--listen", "127.0.0.1:1", "--data-listen", "127.0.0.1:2",
                     "--stripes", "0"])
    assert "--stripes: invalid choice" in capsys.readouterr().err

    given = []

    class Node:
        def __init__(self, *args):
            given.append(args)

        async def serve(self, stop):
            pass
    monkeypatch.setattr(server, "DataNode", Node)
    monkeypatch.setattr(server, "run_until_signalled", lambda serve: asyncio.run(serve(asyncio.Event())))
    server.main(["--disks", "/d", "--listen", "127.0.0.1:1", "--data-listen", "127.0.0.1:2", "--stripes", "4"])
    assert given[0][-1] == 4
    server.main(["--disks", "/d", "--listen", "127.0.0.1:1", "--data-listen", "127.0.0.1:2"])
    assert given[1][-1] == 1  # the default: one stripe a new disk


def test_a_batch_read_fills_one_buffer_and_each_fragment_has_its_own_outcome(tmp_path):
    """DiskSet.get_many (a GET_MANY of whole fragments): the bytes of the ones that read back
    to back in one buffer, in order; missing, damaged and over-the-cap ones answered alone,
    the damaged one reported; the caller's scratch used when they fit, a new buffer when not."""
    from cluster.data.disks import DiskSet

    disks = DiskSet([str(tmp_path / "d")], stripes=1)
    reports = []
    disks.on_corrupt = lambda chunk_id, index, reason: reports.append((chunk_id, index))
    sizes = {n: 1000 + 37 * n for n in range(8)}
    assert disks.put_many([(cid(n), 1, content(n, 1, sizes[n]), None) for n in range(8)]) == [None] * 8
    _, location = disks.disks[0].store.locate(cid(3), 1)
    flip_bits(tmp_path / "d" / "stripe-0" / "segments" / segment_name(location.segment),
              location.offset + HEADER_BYTES + 5, 4)
    wanted = [(cid(0), 1), (cid(99), 1), (cid(3), 1), (cid(5), 1), (cid(6), 1), (cid(7), 1)]
    cap = sizes[0] + sizes[5] + sizes[6] + sizes[3]  # 3 is damaged, but its room counts; 7 is past the cap
    scratch = bytearray(1 << 16)
    outcomes, joined = disks.get_many(wanted, cap, scratch)
    assert [o if isinstance(o, int) else type(o) for o in outcomes] == \
        [sizes[0], FragmentNotFound, FragmentCorrupt, sizes[5], sizes[6], ValueError]
    assert bytes(joined) == content(0, 1, sizes[0]) + content(5, 1, sizes[5]) + content(6, 1, sizes[6])
    assert reports == [(cid(3), 1)]
    outcomes, joined = disks.get_many([(cid(n), 1) for n in (2, 4)], 1 << 20, scratch)
    assert outcomes == [sizes[2], sizes[4]] and isinstance(joined, memoryview) and joined.obj is scratch
    assert bytes(joined) == content(2, 1, sizes[2]) + content(4, 1, sizes[4])
    outcomes, joined = disks.get_many([(cid(n), 1) for n in (2, 4)], 1 << 20, bytearray(100))
    assert outcomes == [sizes[2], sizes[4]] and bytes(joined) == content(2, 1, sizes[2]) + content(4, 1, sizes[4])
    disks.close()


def test_a_batch_read_that_loses_a_race_with_compaction_reads_the_fragment_again(tmp_path):
    """A fragment moved between its lookup and its read (the segment gone) is read again by
    `get`, which looks it up afresh; its bytes land in its own place in the buffer."""
    from cluster.data.disks import DiskSet

    disks = DiskSet([str(tmp_path / "d")], stripes=1)
    disks.put_many([(cid(n), 0, content(n, 0), None) for n in range(3)])
    stripe = disks.disks[0].store.stores[0]
    real = stripe.read_into
    raced = []

    def moved_once(location, chunk_id, index, out):
        if chunk_id == cid(1) and not raced:
            raced.append(chunk_id)
            raise KeyError(location.segment)  # as when compaction deleted the segment meanwhile
        return real(location, chunk_id, index, out)
    stripe.read_into = moved_once
    outcomes, joined = disks.get_many([(cid(n), 0) for n in range(3)], 1 << 20)
    assert raced and outcomes == [3000] * 3
    assert bytes(joined) == b"".join(content(n, 0) for n in range(3))
    disks.close()
