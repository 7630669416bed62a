"""The asyncio driver around the pure Raft core: batching, persistence, transport, apply.

Theory of operation. One consensus task owns the core. It wakes when something arrives (a
message, a proposal, a read, a tick), feeds it all to the core, then works through Ready after
Ready: the leader's replication messages go out at once (handed to the transport before the
disk is touched, so the followers' appends run beside the leader's), the hard state and entries
are saved with one synced write, the remaining messages go out, committed entries are queued
for the apply task, and the core is told to advance. A Ready that only moves the commit index
writes nothing: that index is held and rides on the next synced write, or is written (unsynced)
at the next tick, so a commit on the leader costs no disk write on its way to the client.
Whatever arrived during the fsync is fed in as one batch before the next Ready, so under load
one append, one fsync and one AppendEntries per follower carry many proposals (group commit).
The apply task applies entries in order off that path, resolves each proposal with its result,
releases linearizable reads once their read index is applied, installs received snapshots and
takes local ones every `snapshot_entries` entries, or sooner once the entries applied since the
last one hold more bytes than `snapshot_bytes` and than that snapshot itself. The core keeps the
log since the last snapshot in memory: counting entries alone, a log of batched entries could
grow to gigabytes before a snapshot compacts it. The size rule bounds it at about the state's
own size (or `snapshot_bytes`, if larger), and a snapshot, which copies the whole state, is taken
only once the log it frees is bigger than the copy.

Everything outside the core is injected: the transport, the store (over a Disk), the state
machine, the snapshot files and how snapshot files are written (`run_blocking`: a thread in
production, inline in the simulator), so the deterministic simulator drives this same code on
virtual time.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections import Counter, deque
from typing import Awaitable, Callable, Protocol

from cluster.raft.core import NotLeader, ProposalDropped, Raft, Ready, Role
from cluster.raft.log_store import LogStore
from cluster.raft.messages import Entry, EntryKind, HardState, Membership, Message, MessageType, SnapshotMeta, message_bytes
from cluster.raft.rsm import StateMachine

log = logging.getLogger(__name__)

INBOX_MESSAGES_MAX = 10_000
INBOX_BYTES_MAX = 64 << 20
SNAPSHOT_BYTES = 64 << 20  # a snapshot once the log since the last holds more (and more than it)


class ProposalOutcomeUnknown(Exception):
    """Leadership changed before this proposal's fate was known: it may or may not commit.
    Retry with the same session sequence number; the session table makes that safe."""


class Transport(Protocol):
    def send(self, messages: tuple[Message, ...]) -> None:
        """Queues messages for delivery; never blocks, may drop (Raft retransmits)."""

    async def flush(self) -> None:
        """Returns once the messages sent so far are on their way (best effort: a peer that is
        slow or away may still hold some); the driver calls it before a synced write, so the
        followers' appends run beside the leader's own."""


class SnapshotFiles(Protocol):
    def current(self) -> tuple[SnapshotMeta, bytes] | None: ...

    def save(self, meta: SnapshotMeta, data: bytes) -> None: ...

    def stage(self, offset: int, data: bytes) -> None: ...

    def staged(self) -> bytes: ...


class RaftDriver:
    def __init__(self, raft: Raft, store: LogStore, state_machine: StateMachine, transport: Transport,
                 snapshots: SnapshotFiles, tick_seconds: float = 0.1, snapshot_entries: int = 10_000,
                 snapshot_bytes: int = SNAPSHOT_BYTES,
                 proposal_queue_max: int = 100_000,
                 run_blocking: Callable[[Callable[[], object]], Awaitable[object]] | None = None,
                 on_fatal: Callable[[Exception], None] | None = None,
                 call_later: Callable[..., asyncio.TimerHandle] | None = None):
        self.raft, self.store, self.state_machine = raft, store, state_machine
        self.transport, self.snapshots = transport, snapshots
        if snapshot_entries < 1 or snapshot_bytes < 1:
            raise ValueError("snapshot_entries and snapshot_bytes must be at least 1")
        self.tick_seconds, self.snapshot_entries, self.snapshot_bytes = tick_seconds, snapshot_entries, snapshot_bytes
        self.proposal_queue_max = proposal_queue_max
        self._run_blocking = run_blocking or _inline
        self._on_fatal = on_fatal
        # The node's clock: the event loop's timer by default; the simulator passes one it can
        # freeze, to model a paused process (GC, VM stall, SIGSTOP).
        self._call_later = call_later
        self.fatal: Exception | None = None
        self._wake = asyncio.Event()
        self._inbox: deque[tuple[Message, int]] = deque()  # with each message's size
        self._inbox_bytes = 0
        self._proposals: deque[tuple[bytes, asyncio.Future]] = deque()
        self._pending: dict[int, tuple[int, asyncio.Future]] = {}  # index -> (term, future)
        self._readers: list[asyncio.Future] = []
        self._admin: deque[tuple[str, object, asyncio.Future]] = deque()  # membership, transfer
        self._read_rounds: dict[bytes, list[asyncio.Future]] = {}
        self._read_waits: list[tuple[int, asyncio.Future]] = []  # (index, future) until applied
        self._contexts = itertools.count(1)
        self._ticks = 0
        self._apply_queue: asyncio.Queue = asyncio.Queue()
        self.applied_index = raft.log.snapshot.index
        self._last_snapshot = raft.log.snapshot  # the newest taken or installed: its index and size
        self._applied_bytes = 0  # of the entries applied since the last snapshot
        self._compact_to: SnapshotMeta | None = None
        self._held: HardState | None = None  # a hard state newer on the commit index only, not yet written
        self._tasks: list[asyncio.Task] = []
        self._tick_handle = None
        self._stopped = False
        self.last_role = raft.role
        self.stats = Counter()  # readies, persists, proposals, proposal_batches, applied, reads, read_rounds

    # ---- lifecycle

    async def start(self) -> None:
        current = self.snapshots.current()
        # a durable state machine that is already past the snapshot keeps its own state
        if current is not None and getattr(self.state_machine, "applied", 0) < current[0].index:
            self.state_machine.restore(current[1])
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._consensus_loop()),
                       loop.create_task(self._fail_stop(self._apply_loop()))]
        self._call_later = self._call_later or loop.call_later
        self._tick_handle = self._call_later(self.tick_seconds, self._on_tick)

    async def stop(self) -> None:
        self._stopped = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.fatal is None:
            try:
                self._save_held()  # a clean stop keeps the commit index it knew
            except Exception as error:  # noqa: BLE001 - stopping anyway; the index is learned again
                log.warning("node %d: the commit index was not saved at stop: %r", self.raft.id, error)
        self._fail_pending(ProposalOutcomeUnknown("node stopped"))

    def _on_tick(self) -> None:
        if self._stopped:
            return
        self._ticks += 1
        self._wake.set()
        self._tick_handle = self._call_later(self.tick_seconds, self._on_tick)

    # ---- inputs (called on the loop's thread)

    def receive(self, message: Message) -> None:
        if self._stopped:
            return  # nothing will read it: a stopped node must not pile up its peers' traffic
        size = message_bytes(message)
        if len(self._inbox) >= INBOX_MESSAGES_MAX or self._inbox_bytes + size > INBOX_BYTES_MAX:
            self.stats["inbox_dropped"] += 1  # the peer retransmits; better than unbounded memory
            return
        self._inbox.append((message, size))
        self._inbox_bytes += size
        self._wake.set()

    def _check_accepting(self) -> None:
        if self._stopped:
            raise ProposalDropped("this node has stopped")
        if self.raft.role is not Role.LEADER:
            raise NotLeader(self.raft.lead)

    @property
    def leader(self) -> int:
        return self.raft.lead

    @property
    def is_leader(self) -> bool:
        return self.raft.role is Role.LEADER

    async def propose(self, command: bytes) -> bytes:
        """Replicates and applies one command; returns the state machine's result."""
        return await self.submit(command)

    def submit(self, command: bytes) -> asyncio.Future:
        """`propose` without a coroutine: the future resolves with the result once applied.
        Raises NotLeader or ProposalDropped at once when the proposal cannot be taken."""
        self._check_accepting()
        if len(self._proposals) >= self.proposal_queue_max:
            raise ProposalDropped("proposal queue full; slow down")
        future = asyncio.get_running_loop().create_future()
        self._proposals.append((command, future))
        self._wake.set()
        return future

    async def change_membership(self, new: Membership) -> None:
        """Replicates a membership change (one server at a time: add a learner, promote a
        caught-up learner, remove a node); returns once it is committed and applied."""
        await self._admin_request("membership", new)

    async def transfer_leadership(self, target: int) -> None:
        """Asks the leader to hand over to `target`; returns once the request is under way
        (watch `leader` for the outcome: a transfer not done within an election is abandoned)."""
        await self._admin_request("transfer", target)

    async def _admin_request(self, kind: str, argument) -> None:
        self._check_accepting()
        future = asyncio.get_running_loop().create_future()
        self._admin.append((kind, argument, future))
        self._wake.set()
        await future

    async def read_barrier(self) -> int:
        """Waits until a linearizable read may be served from the local state machine
        (ReadIndex: leadership confirmed by a quorum, and the read index applied)."""
        return await self.read_barrier_future()

    def read_barrier_future(self) -> asyncio.Future:
        """`read_barrier` without a coroutine; one barrier may serve any number of reads that
        arrived before it was asked for."""
        self._check_accepting()
        if len(self._readers) >= self.proposal_queue_max:
            raise ProposalDropped("read queue full; slow down")
        future = asyncio.get_running_loop().create_future()
        self._readers.append(future)
        self._wake.set()
        return future

    # ---- the consensus task

    async def _consensus_loop(self) -> None:
        await self._fail_stop(self._consensus_steps())

    async def _fail_stop(self, work) -> None:
        """Runs a task of the node; if it fails, so does the node (loudly): one that cannot
        persist, or whose state machine cannot apply an entry, must not go on."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001
            log.critical("node %d stops: %r", self.raft.id, error, exc_info=error)
            self.fatal = error
            self._stopped = True
            self._fail_pending(ProposalOutcomeUnknown(f"node {self.raft.id} failed: {error!r}"))
            if self._on_fatal is not None:
                self._on_fatal(error)

    async def _consensus_steps(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._feed()
            while self.raft.has_ready():
                await self._handle(self.raft.ready())
                self._feed()

    def _feed(self) -> None:
        if self._ticks:
            self._save_held()
        for _ in range(self._ticks):
            self.raft.tick()
        self._ticks = 0
        while self._inbox:
            message, size = self._inbox.popleft()
            self._inbox_bytes -= size
            self.raft.step(message)
        self._feed_proposals()
        self._feed_admin()
        self._feed_reads()
        if self._compact_to is not None and self._compact_to.index <= self.raft.log.applied:
            self.raft.compact(self._compact_to)
            self._compact_to = None
        self._notice_role()

    def _feed_proposals(self) -> None:
        if not self._proposals:
            return
        batch = list(self._proposals)
        self._proposals.clear()
        self.stats["proposals"] += len(batch)
        self.stats["proposal_batches"] += 1
        try:
            last = self.raft.propose([command for command, _ in batch])
        except (NotLeader, ProposalDropped) as error:
            for _, future in batch:
                _settle(future, error=error)
            return
        first = last - len(batch) + 1
        for offset, (_, future) in enumerate(batch):
            self._pending[first + offset] = (self.raft.term, future)

    def _feed_admin(self) -> None:
        while self._admin:
            kind, argument, future = self._admin.popleft()
            try:
                if kind == "transfer":
                    self.raft.transfer_leadership(argument)
                    _settle(future)
                else:
                    index = self.raft.propose_membership(argument)
                    self._pending[index] = (self.raft.term, future)  # settled when applied
            except (NotLeader, ProposalDropped, ValueError) as error:
                _settle(future, error=error)

    def _feed_reads(self) -> None:
        # One ReadIndex round at a time: readers that arrive meanwhile share the next round,
        # which starts after they arrived, so its read index is recent enough for all of them.
        if not self._readers or self._read_rounds:
            return
        readers, self._readers = self._readers, []
        self.stats["reads"] += len(readers)
        self.stats["read_rounds"] += 1
        context = next(self._contexts).to_bytes(8, "big")
        try:
            self.raft.read_index(context)
        except (NotLeader, ProposalDropped) as error:
            for future in readers:
                _settle(future, error=error)
            return
        self._read_rounds[context] = readers  # one ReadIndex round serves every waiting reader

    def _notice_role(self) -> None:
        if self.raft.role is not self.last_role:
            if self.last_role is Role.LEADER:
                self._fail_pending(ProposalOutcomeUnknown(f"node {self.raft.id} lost leadership"))
            self.last_role = self.raft.role

    async def _handle(self, ready: Ready) -> None:
        self.stats["readies"] += 1
        if ready.messages_now:
            self.transport.send(self._filled(ready.messages_now))
            if ready.must_sync:
                await self.transport.flush()
        for chunk in ready.snapshot_chunks:
            self.snapshots.stage(chunk.offset, chunk.data or b"")
        if ready.snapshot is not None:
            meta = ready.snapshot
            await self._run_blocking(lambda: self.snapshots.save(meta, self.snapshots.staged()))
            self._apply_queue.put_nowait(("restore", meta))
        if ready.must_sync:
            self.stats["persists"] += 1
            # On the loop's thread, not a worker's: the synced write lets go of the GIL while the
            # disk works, and handing it to a thread and back took longer than the fsync itself
            # once gRPC's poller thread was competing for the GIL too.
            self.store.save(ready.hard_state or self._held, ready.entries, ready.snapshot)
            self._held = None
        elif ready.hard_state is not None:
            self._held = ready.hard_state  # the commit index only: see _save_held
        if ready.messages:
            self.transport.send(self._filled(ready.messages))
        if ready.committed:
            self._apply_queue.put_nowait(("entries", ready.committed))
        for state in ready.read_states:
            for future in self._read_rounds.pop(state.context, []):
                self._read_waits.append((state.index, future))
        self.raft.advance(ready)
        self._release_reads()

    def _filled(self, messages) -> tuple[Message, ...]:
        """SNAPSHOT messages leave the core without data: each gets its chunk of our snapshot.
        A chunk of a snapshot we no longer hold is not sent: a newer one is saved (on the disk
        thread) before the core compacts to it, and that one's bytes under the older one's name
        would install a mix of the two on the follower. The core sends the chunk again on the
        follower's next heartbeat answer, from the newer snapshot by then."""
        filled = []
        for m in messages:
            if m.type is MessageType.SNAPSHOT and m.data is None:
                current = self.snapshots.current()
                if current is None or (current[0].index, current[0].term) != (m.snapshot.index, m.snapshot.term):
                    continue
                m = dataclasses.replace(m, data=current[1][m.offset:m.offset + self.raft.config.snapshot_chunk_bytes])
            filled.append(m)
        return tuple(filled)

    def _save_held(self) -> None:
        """Writes a held commit index, without a sync. Losing it in a crash costs nothing but
        time: a restarted node learns the commit index again from the leader, or as leader
        commits an entry of its new term, as Raft's commit rule asks anyway."""
        if self._held is not None:
            held, self._held = self._held, None
            self.store.save(held, (), sync=False)

    # ---- the apply task

    async def _apply_loop(self) -> None:
        while True:
            kind, item = await self._apply_queue.get()
            if kind == "restore":
                self.state_machine.restore(self.snapshots.current()[1])
                self.applied_index, self._last_snapshot, self._applied_bytes = item.index, item, 0
                self._fail_pending_through(item.index)
            else:
                await self._apply(item)
                await self._maybe_snapshot()
            self._release_reads()

    async def _apply(self, entries: tuple[Entry, ...]) -> None:
        for entry in entries:
            if entry.index <= self.applied_index:
                continue  # covered by a snapshot installed meanwhile
            result = self.state_machine.apply(entry.index, entry.data) if entry.kind == EntryKind.NORMAL else b""
            self.applied_index = entry.index
            self._applied_bytes += len(entry.data)
            pending = self._pending.pop(entry.index, None)
            if pending is not None:
                term, future = pending
                if term == entry.term:
                    _settle(future, result=result)
                else:
                    _settle(future, error=ProposalOutcomeUnknown("overwritten by a new leader's entry"))

    async def _maybe_snapshot(self) -> None:
        if self.applied_index - self._last_snapshot.index < self.snapshot_entries and \
                self._applied_bytes <= max(self.snapshot_bytes, self._last_snapshot.size_bytes):
            return
        index = self.applied_index
        term = self.raft.log.term(index)
        if term is None:
            return
        membership = self.raft.log.membership_at(index)

        def take() -> SnapshotMeta:
            data = self.state_machine.snapshot()
            meta = SnapshotMeta(index, term, membership, len(data))
            self.snapshots.save(meta, data)
            self.store.compact(meta)
            return meta
        # off the loop: a state of many megabytes takes a while to copy and write, and nothing
        # is applied meanwhile (this task waits), so the copy is of exactly `index`
        meta = await self._run_blocking(take)
        self._last_snapshot, self._applied_bytes = meta, 0
        self._compact_to = meta
        self._wake.set()

    # ---- reads and failures

    def _release_reads(self) -> None:
        still = []
        for index, future in self._read_waits:
            if index <= self.applied_index:
                _settle(future, result=index)
            else:
                still.append((index, future))
        self._read_waits = still

    def _fail_pending(self, error: Exception) -> None:
        for _, future in self._pending.values():
            _settle(future, error=error)
        self._pending.clear()
        for futures in self._read_rounds.values():
            for future in futures:
                _settle(future, error=error)
        self._read_rounds.clear()
        for future in self._readers:
            _settle(future, error=error)
        self._readers.clear()
        for _, future in self._read_waits:
            _settle(future, error=error)
        self._read_waits.clear()

    def _fail_pending_through(self, index: int) -> None:
        for pending_index in [i for i in self._pending if i <= index]:
            _settle(self._pending.pop(pending_index)[1], error=ProposalOutcomeUnknown("replaced by a snapshot"))


def _settle(future: asyncio.Future, result=None, error: Exception | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def _inline(work: Callable[[], object]) -> object:
    return work()
