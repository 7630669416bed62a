"""The durable Raft log: group-committed saves, truncation, compaction, and recovery from
torn tails, bit rot and crashes, on real RocksDB and on the simulator's disk."""
import random

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cluster.raft.log_store import LogCorrupted, LogStore, entry_key
from cluster.raft.messages import Entry, EntryKind, HardState, Membership, SnapshotMeta
from cluster.storage.disk import RocksDisk
from simulations.disk import Crashed, SimDisk


def entries(first, last, term=1):
    return [Entry(term, i, EntryKind.NORMAL, b"cmd-%d" % i) for i in range(first, last + 1)]


@pytest.fixture(params=["rocksdb", "sim"])
def disk(request, tmp_path):
    if request.param == "rocksdb":
        disk = RocksDisk(str(tmp_path / "raft"))
        yield disk
        disk.close()
    else:
        yield SimDisk(random.Random(1))


def test_save_and_load_round_trip(disk):
    store = LogStore(disk)
    store.save(HardState(3, 2, 5), entries(1, 10))
    recovered = LogStore(disk).load()
    assert recovered.hard_state == HardState(3, 2, 5)
    assert recovered.entries == entries(1, 10)
    assert recovered.torn_tail_cut == 0


def test_appends_write_no_range_tombstones():
    """RocksDB keeps every range tombstone and re-fragments them on each flush: one per append
    grew meta nodes to gigabytes. Appends and short truncations use point deletes only."""
    disk = SimDisk(random.Random(1))
    written_ranges = []
    write = disk.write

    def recording(puts, deletes, sync, ranges=()):
        written_ranges.extend(ranges)
        write(puts, deletes, sync, ranges)
    disk.write = recording
    store = LogStore(disk)
    for index in range(1, 201):
        store.save(HardState(1, 1, 0), entries(index, index))
    store.save(HardState(2, 1, 0), entries(150, 151, term=2))  # a conflicting suffix of 49 goes
    assert written_ranges == []
    assert LogStore(disk).load().entries == entries(1, 149) + entries(150, 151, term=2)
    store.save(HardState(2, 1, 0), entries(152, 3000, term=2))
    store.save(HardState(3, 1, 0), entries(10, 10, term=3))  # a long suffix: one range delete
    assert written_ranges == [(entry_key(11), b"f")]
    assert LogStore(disk).load().entries == entries(1, 9) + entries(10, 10, term=3)


def test_a_conflicting_suffix_is_truncated(disk):
    store = LogStore(disk)
    store.save(HardState(1, 1, 0), entries(1, 10))
    store.save(HardState(2, 0, 0), entries(6, 7, term=2))
    assert LogStore(disk).load().entries == entries(1, 5) + entries(6, 7, term=2)


def test_compaction_and_snapshot_install(disk):
    store = LogStore(disk)
    store.save(HardState(1, 1, 10), entries(1, 10))
    membership = Membership(frozenset({1, 2, 3}))
    store.compact(SnapshotMeta(6, 1, membership, 100))
    recovered = LogStore(disk).load()
    assert recovered.snapshot == SnapshotMeta(6, 1, membership, 100)
    assert recovered.entries == entries(7, 10)
    store.save(HardState(2, 0, 20), [], SnapshotMeta(20, 2, membership, 5))
    recovered = LogStore(disk).load()
    assert recovered.snapshot.index == 20 and recovered.entries == []


def test_a_torn_tail_is_cut_on_recovery():
    disk = SimDisk(random.Random(2))
    LogStore(disk).save(HardState(1, 1, 5), entries(1, 10))
    disk.tear(entry_key(10))
    disk.corrupt(entry_key(9))
    recovered = LogStore(disk).load()
    assert recovered.entries == entries(1, 8) and recovered.torn_tail_cut == 2
    assert LogStore(disk).load().torn_tail_cut == 0  # the cut is durable


def test_corruption_inside_the_log_refuses_to_start():
    disk = SimDisk(random.Random(3))
    LogStore(disk).save(HardState(1, 1, 5), entries(1, 10))
    disk.corrupt(entry_key(4))
    with pytest.raises(LogCorrupted, match="entry 4"):
        LogStore(disk).load()


def test_a_corrupt_vote_refuses_to_start():
    disk = SimDisk(random.Random(4))
    LogStore(disk).save(HardState(7, 3, 0), [])
    disk.corrupt(b"h")
    with pytest.raises(LogCorrupted, match="vote"):
        LogStore(disk).load()


def test_commit_past_the_end_of_the_log_is_corruption():
    disk = SimDisk(random.Random(5))
    LogStore(disk).save(HardState(1, 1, 10), entries(1, 10))
    disk.tear(entry_key(10))
    with pytest.raises(LogCorrupted, match="committed"):
        LogStore(disk).load()


def test_every_save_is_one_sync():
    disk = SimDisk(random.Random(6))
    store = LogStore(disk)
    store.save(HardState(1, 1, 0), entries(1, 500))
    assert disk.syncs == 1


class LogStoreMachine(RuleBasedStateMachine):
    """The store against a list model, through saves, truncations, compactions, crashes
    (including crashes in the middle of a write) and restarts."""

    def __init__(self):
        super().__init__()
        self.disk = SimDisk(random.Random(0))
        self.store = LogStore(self.disk)
        self.model: list[Entry] = []
        self.snapshot_index = 0
        self.term = 1
        self.uncertain: tuple[list[Entry], list[Entry]] | None = None

    @rule(count=st.integers(1, 5), back=st.integers(0, 4), new_term=st.booleans(), crash=st.booleans())
    def save(self, count, back, new_term, crash):
        first = max(self.snapshot_index + 1, len(self.model) + self.snapshot_index + 1 - back)
        self.term += new_term
        new = entries(first, first + count - 1, self.term)
        after = [e for e in self.model if e.index < first] + new
        if crash:
            self.disk.crash_during_next_write()
            with pytest.raises(Crashed):
                self.store.save(HardState(self.term, 1, 0), new)
            self.uncertain = (self.model, after)  # either is right after a crash mid-write
            self.restart()
            return
        self.store.save(HardState(self.term, 1, 0), new)
        self.model = after

    @precondition(lambda self: len(self.model) > 2)
    @rule(data=st.data())
    def compact(self, data):
        index = data.draw(st.integers(self.model[0].index, self.model[-1].index))
        term = next(e.term for e in self.model if e.index == index)
        self.store.compact(SnapshotMeta(index, term, Membership(frozenset({1})), 0))
        self.model = [e for e in self.model if e.index > index]
        self.snapshot_index = index

    @rule()
    def restart(self):
        self.disk.crash()
        self.store = LogStore(self.disk)  # a new process
        recovered = self.store.load()
        if self.uncertain is not None:
            assert recovered.entries in self.uncertain
            self.model, self.uncertain = recovered.entries, None
        assert recovered.entries == self.model
        assert recovered.snapshot.index == self.snapshot_index

    @invariant()
    def readable(self):
        if self.uncertain is None:
            assert LogStore(self.disk).load().entries == self.model


TestLogStoreMachine = LogStoreMachine.TestCase
TestLogStoreMachine.settings = settings(max_examples=60, stateful_step_count=20, deadline=None)
