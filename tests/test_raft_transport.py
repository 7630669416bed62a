"""The Raft driver's hand-off to its transport and its store, and the gRPC transport between
real servers on 127.0.0.1: entries leave before the leader's own synced write, a commit costs no
write of its own, and a peer's sender outlives errors."""
import asyncio
import logging
import random

from cluster.dev import free_ports
from cluster.proto import raft_pb2_grpc as pb_grpc
from cluster.raft.config import RaftConfig
from cluster.raft.core import Raft, Role
from cluster.raft.driver import RaftDriver
from cluster.raft.kv import KeyValueStore, encode_put
from cluster.raft.log_store import LogStore
from cluster.raft.messages import Entry, EntryKind, Membership, Message, MessageType, SnapshotMeta
from cluster.raft.node import GrpcTransport, RaftService
from cluster.raft.rsm import Sessions, envelope
from cluster.raft.snapshot_files import MemorySnapshots
from cluster.rpc import endpoints
from cluster.storage.disk import MemoryDisk
from tests.test_data_client import until


class RecordingTransport:
    """Keeps what was sent and notes, in `events`, every send, flush and synced write."""

    def __init__(self, events: list):
        self.events, self.sent = events, []

    def send(self, messages) -> None:
        self.sent.extend(messages)
        self.events.append(("send", tuple(m.type for m in messages)))

    async def flush(self) -> None:
        self.events.append(("flush",))


class RecordingStore(LogStore):
    def __init__(self, events: list):
        super().__init__(MemoryDisk())
        self.events = events

    def save(self, hard_state, entries, snapshot=None, sync=True) -> None:
        self.events.append(("save" if sync else "unsynced save", len(entries), hard_state))
        super().save(hard_state, entries, snapshot, sync)


def _leader_of_three(events: list, tick_seconds: float = 0.1) -> tuple[RaftDriver, RecordingTransport]:
    raft = Raft(RaftConfig(node_id=1, pre_vote=False), random.Random(1),
                snapshot=SnapshotMeta(membership=Membership(frozenset({1, 2, 3}))))
    raft.campaign()
    raft.step(Message(MessageType.VOTE_RESPONSE, 2, 1, raft.term))
    assert raft.role is Role.LEADER
    transport = RecordingTransport(events)
    driver = RaftDriver(raft, RecordingStore(events), Sessions(KeyValueStore()), transport, MemorySnapshots(),
                        tick_seconds=tick_seconds)
    return driver, transport


def test_a_leader_hands_new_entries_to_the_transport_before_its_synced_write():
    async def main():
        events: list = []
        driver, transport = _leader_of_three(events)
        await driver.start()
        proposal = driver.submit(b"not decoded before it commits")
        try:
            for _ in range(100):
                await asyncio.sleep(0)
                if any(e[0] == "save" for e in events):
                    break
            appends = [i for i, e in enumerate(events) if e[0] == "send" and MessageType.APPEND in e[1]]
            flushes = [i for i, e in enumerate(events) if e[0] == "flush"]
            saves = [i for i, e in enumerate(events) if e[0] == "save" and e[1] > 0]
            assert appends and flushes and saves, events
            # the followers get the entries, and the transport is given its turn, before the fsync
            assert appends[0] < flushes[0] < saves[0], events
            sent = [m for m in transport.sent if m.type is MessageType.APPEND]
            assert {m.target for m in sent} == {2, 3}
            assert all(m.entries for m in sent)  # (the new leader's no-op: followers are probed first)
        finally:
            await driver.stop()
            assert proposal.done()
            proposal.exception()  # the node stopped before a quorum answered: outcome unknown
    asyncio.run(main())


def test_a_commit_writes_nothing_until_the_next_synced_write_or_tick():
    def put(number: int) -> bytes:
        return envelope(7, number, encode_put(b"key", b"value %d" % number))

    async def main():
        events: list = []
        driver, _ = _leader_of_three(events, tick_seconds=3600.0)  # ticks only when the test says
        store, log = driver.store, driver.raft.log
        await driver.start()
        try:
            first = driver.submit(put(1))
            await until(lambda: log.persisted == log.last_index() > 0)
            committed = log.last_index()
            driver.receive(Message(MessageType.APPEND_RESPONSE, 2, 1, driver.raft.term, index=committed))
            await asyncio.wait_for(first, 5)  # committed, applied and answered ...
            assert not [e for e in events if e[0] == "unsynced save"], events  # ... with no write for it
            assert store._load_hard_state().commit < committed

            driver._on_tick()  # a tick writes the held commit index, unsynced
            await until(lambda: any(e[0] == "unsynced save" for e in events))
            assert store._load_hard_state().commit == committed

            second = driver.submit(put(2))
            await until(lambda: log.persisted == log.last_index() > committed)
            driver.receive(Message(MessageType.APPEND_RESPONSE, 2, 1, driver.raft.term, index=log.last_index()))
            await asyncio.wait_for(second, 5)
            committed = log.commit
            assert store._load_hard_state().commit < committed  # held again ...
            driver.submit(put(3))
            await until(lambda: log.persisted == log.last_index() > committed)
            assert store._load_hard_state().commit == committed  # ... and carried by the next synced write
            assert len([e for e in events if e[0] == "unsynced save"]) == 1, events
        finally:
            await driver.stop()
        assert store._load_hard_state().commit == log.commit  # a clean stop saves what it held
    asyncio.run(main())


def test_a_chunk_of_a_snapshot_no_longer_held_is_not_sent():
    """Snapshot chunks get their bytes from the snapshot the node holds when they are sent. A
    chunk whose snapshot was replaced by a newer one (saved, the core not yet compacted to it)
    is dropped: the newer one's bytes under the older one's name would install a mix of the two
    on the follower. The core sends it again later, from the newer snapshot."""
    driver, _ = _leader_of_three([])
    members = Membership(frozenset({1, 2, 3}))
    old, new = SnapshotMeta(5, 1, members, 4), SnapshotMeta(9, 1, members, 6)
    chunk = Message(MessageType.SNAPSHOT, 1, 2, 1, snapshot=old, offset=1)
    append = Message(MessageType.APPEND, 1, 3, 1)
    driver.snapshots.save(old, b"abcd")
    assert driver._filled((chunk, append)) == (Message(MessageType.SNAPSHOT, 1, 2, 1, snapshot=old, offset=1,
                                                       data=b"bcd"), append)
    driver.snapshots.save(new, b"ZYXWVU")
    assert driver._filled((chunk, append)) == (append,)
    assert driver._filled((Message(MessageType.SNAPSHOT, 1, 2, 1, snapshot=new),)) == \
        (Message(MessageType.SNAPSHOT, 1, 2, 1, snapshot=new, data=b"ZYXWVU"),)


def test_a_stop_whose_commit_index_cannot_be_written_still_stops():
    class FailingStore(RecordingStore):
        def save(self, hard_state, entries, snapshot=None, sync=True) -> None:
            if not sync:
                raise OSError("planted: the disk refused the write")
            super().save(hard_state, entries, snapshot, sync)

    async def main():
        events: list = []
        driver, _ = _leader_of_three(events, tick_seconds=3600.0)
        driver.store = FailingStore(events)
        log = driver.raft.log
        await driver.start()
        proposal = driver.submit(envelope(7, 1, encode_put(b"key", b"value")))
        await until(lambda: log.persisted == log.last_index() > 0)
        driver.receive(Message(MessageType.APPEND_RESPONSE, 2, 1, driver.raft.term, index=log.last_index()))
        await asyncio.wait_for(proposal, 5)
        await driver.stop()  # the held commit index cannot be written: logged, and the node stops
        assert driver.store._load_hard_state().commit < log.commit

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("cluster.raft.driver")
    logger.addHandler(handler)
    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(handler)
    assert any("commit index was not saved at stop" in w for w in warnings), warnings


class _Inbox:
    """Stands in for a RaftNode behind RaftService: keeps what arrives."""

    def __init__(self):
        self.received: list[Message] = []
        self.driver = self

    def receive(self, message: Message) -> None:
        self.received.append(message)


def test_a_sender_outlives_an_unexpected_error_and_keeps_delivering():
    async def main():
        port = free_ports(1)[0]
        inbox = _Inbox()
        server = endpoints.server()
        pb_grpc.add_RaftServicer_to_server(RaftService(inbox), server)
        endpoints.listen(server, f"127.0.0.1:{port}")
        await server.start()
        transport = GrpcTransport(1, {1: "127.0.0.1:1", 2: f"127.0.0.1:{port}"})
        real_next_batch, failures = transport._next_batch, []

        async def failing_once(peer, queue):
            batch = await real_next_batch(peer, queue)
            if not failures:
                failures.append(batch)
                raise RuntimeError("planted: a batch that cannot be written")
            return batch
        transport._next_batch = failing_once
        transport.start()
        try:
            entry = Entry(1, 1, EntryKind.NORMAL, b"x")
            for index in range(1, 30):
                transport.send((Message(MessageType.APPEND, 1, 2, 1, entries=(entry,), index=index),))
                await transport.flush()
                if inbox.received:
                    break
                await asyncio.sleep(0.2)
            assert failures, "the planted failure never ran"
            assert inbox.received, "nothing arrived after the sender's error: it stopped for good"
        finally:
            await transport.stop()
            await server.stop(0)
    asyncio.run(main())
