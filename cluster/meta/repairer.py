"""The metadata leader's repair loop: the I/O around cluster/meta/repair.py's planning.

Each round it surveys a slice of the chunk records (a cursor walks the whole keyspace over many
rounds; chunks named by damage reports are looked at every round), sorts what lost fragments
most endangered first, and sends orders to data nodes over their gRPC control API: the first
target node rebuilds the lost fragments from any k others and stores them. Orders for the same
node travel in batches (one call per batch, cluster/data/repairs.py), cut in queue order so the
most endangered go first. Batches are bounded in flight per node and in all, and by a bandwidth
budget, so client traffic keeps flowing. Once a node confirms a chunk, its new placement goes
through Raft (UpdatePlacement, applied only if the placement did not move meanwhile). A repeated
or interrupted order does no harm: the same bytes land on the same targets again, and the
placement changes once.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import grpc

from cluster import faultpoints
from cluster.meta import repair
from cluster.meta.state import Refused
from cluster.proto import data_pb2, data_pb2_grpc
from cluster.proto import meta_pb2 as pb
from cluster.rpc.endpoints import insecure_channel

log = logging.getLogger("cairn.repair")

SLICE_CHUNKS = 5000          # chunk records surveyed per round
BATCH_CHUNKS = 32            # chunks in one order to a node ...
BATCH_BYTES = 32 << 20       # ... and their bytes at most
BATCHES_IN_FLIGHT = 8        # batches running in the cluster at once
BATCHES_PER_NODE = 2         # ... and on one executing node
ORDERS_WAITING_MAX = 2000    # chunks in started batches (waiting for a slot) at most, a memory bound
BYTES_PER_SECOND = 200e6     # chunk bytes read to rebuild fragments per second, cluster-wide
BATCH_SECONDS = 120.0
RETRY_SECONDS = 5.0          # a chunk whose repair failed waits this long before the next try
RETRIES_TRACKED_MAX = 100_000
RATE_WINDOW_SECONDS = 30.0
REBALANCE_BAND = 0.10        # nodes within 10% of the mean fragment bytes are left alone


@dataclass(frozen=True)
class _Order:
    damaged: repair.Damaged
    placement: list[int]      # the chunk's placement once repaired
    executor: pb.Node         # the node that rebuilds it (the first target)
    request: data_pb2.RepairOrder
    level: int                # its endangerment (cluster/meta/repair.py)


class Repairer:
    def __init__(self, service, bytes_per_second: float = BYTES_PER_SECOND,
                 channel: Callable[[str], grpc.aio.Channel] = insecure_channel,
                 clock: Callable[[], float] = time.monotonic, sleep=asyncio.sleep,
                 on_progress: Callable[[], None] = lambda: None):
        self.service = service
        self._on_progress = on_progress  # called when a batch placed chunks and none is left running
        self.bytes_per_second = bytes_per_second
        self._channel, self._clock, self._sleep = channel, clock, sleep
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._cursor = b""
        self._pass = repair.Survey()
        self._moves: repair.Moves | None = None
        self._balanced_over: frozenset | None = None  # the UP nodes of the last pass that found balance
        self._pass_busy = False  # orders ran or were found during this pass: its loads are not what the nodes will hold
        self.stats = pb.RepairStats()
        self._recent: deque[tuple[float, int]] = deque()
        self._budget_at = 0.0  # when the bandwidth budget next has room
        self._slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        self._per_node: dict[int, asyncio.Semaphore] = {}
        self._running: dict[bytes, int] = {}  # chunk id -> its endangerment when its order started
        self._retry_at: dict[bytes, float] = {}  # chunk id -> when a failed repair may run again
        self._tasks: set[asyncio.Task] = set()

    @property
    def state(self):
        return self.service.state

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()

    def round(self) -> int:
        """One survey slice; starts orders for what it found. Returns how many it started."""
        if not self.service.driver.is_leader:
            self._running.clear()
            return 0
        nodes = self.state.nodes()
        states = {n.id: n.state for n in nodes}
        damage: dict[bytes, set[int]] = {}
        for record in self.state.damage():
            damage.setdefault(record.chunk, set()).add(record.index)
        up = frozenset(n for n, state in states.items() if state == pb.UP)
        if (not damage and pb.DEAD not in states.values() and pb.DRAINING not in states.values()
                and self._balanced_over == up):
            # nothing can have lost a fragment, nothing has to move, no node joined
            self._cursor, self._pass = b"", repair.Survey()
            self.stats.chunks_by_lost.clear()
            self.stats.chunks_by_lost[0] = self.state.chunk_counts()[0]
            self.stats.unrepairable = self.stats.queued = self.stats.draining = self.stats.rebalance_bytes = 0
            return 0
        records = self.state.chunks_after(self._cursor, SLICE_CHUNKS)
        # no rebalancing while a node is in doubt: repairs come first, and a move would read from it
        doubt = pb.SUSPECT in states.values() or pb.DEAD in states.values()
        found = repair.survey(records, states, damage, None if doubt else self._moves)
        self._pass_busy |= bool(self._running) or bool(found.queue)
        self._pass.add(found)
        self._cursor = records[-1][0] if len(records) == SLICE_CHUNKS else b""
        if not self._cursor:
            self._end_pass(states, up)
        seen = {d.chunk_id for d in found.queue}  # damage reports outside this slice count now
        extra = [(c, r) for c, r in ((c, self.state.chunk(c)) for c in damage if c not in seen) if r is not None]
        queue = [d for d in repair.most_endangered_first(found.queue + repair.survey(extra, states, damage).queue,
                                                         states)
                 if d.chunk_id not in self._running]
        self.stats.queued = len(queue)
        by_id = {n.id: n for n in nodes}
        started = 0
        for executor, batch in self._batches(self._startable(queue, states), by_id, states):
            self._running.update((o.damaged.chunk_id, o.level) for o in batch)
            task = asyncio.ensure_future(self._run_batch(executor, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += len(batch)
        return started

    def _startable(self, queue: list[repair.Damaged], states: dict) -> list[repair.Damaged]:
        """The orders to start now: the most endangered level of the queue, and only once no
        more endangered order is still running (so a chunk that lost two fragments is whole
        again before one that lost one is touched); chunks whose repair just failed wait."""
        now = self._clock()
        if len(self._retry_at) > RETRIES_TRACKED_MAX:
            self._retry_at = {c: t for c, t in self._retry_at.items() if t > now}
        queue = [d for d in queue if self._retry_at.get(d.chunk_id, 0.0) <= now]
        if not queue:
            return []
        top = repair.endangerment(queue[0], states)
        if max(self._running.values(), default=0) > top:
            return []
        level = [d for d in queue if repair.endangerment(d, states) == top]
        return level[:max(0, ORDERS_WAITING_MAX - len(self._running))]

    def _end_pass(self, states: dict, up: frozenset) -> None:
        """Publishes a full pass's counts and plans the next pass's moves for balance."""
        finished, self._pass = self._pass, repair.Survey()
        self.stats.chunks_by_lost.clear()
        self.stats.chunks_by_lost.update(finished.by_lost)
        self.stats.unrepairable, self.stats.draining = finished.unrepairable, finished.draining
        self.stats.passes += 1
        busy, self._pass_busy = self._pass_busy, False
        moves = repair.Moves(finished.load, states, REBALANCE_BAND)
        self.stats.rebalance_bytes = int(sum(moves.excess.values())) if moves else 0
        if busy:  # fragments moved while this pass counted them: plan from the next pass
            self._moves, self._balanced_over = None, None
            return
        self._moves = moves if moves and not finished.repairs else None
        self._balanced_over = up if not moves and not finished.repairs else None

    def _batches(self, queue: list[repair.Damaged], by_id: dict, states: dict):
        """(executor node, [_Order]) batches, cut in queue order: a batch leaves when it is full,
        the rest at the end."""
        open_batches: dict[int, list[_Order]] = {}
        for damaged in queue:
            order = self._plan(damaged, by_id, states)
            if order is None:
                continue
            batch = open_batches.setdefault(order.executor.id, [])
            batch.append(order)
            if len(batch) == BATCH_CHUNKS or sum(o.damaged.chunk.length for o in batch) >= BATCH_BYTES:
                yield order.executor, open_batches.pop(order.executor.id)
        for batch in open_batches.values():
            yield batch[0].executor, batch

    def _plan(self, damaged: repair.Damaged, by_id: dict, states: dict) -> "_Order | None":
        """Where the chunk's lost fragments go, and the order that puts them there."""
        chunk_id, chunk = damaged.chunk_id, damaged.chunk
        if damaged.target is not None:  # a rebalancing move: the plan chose the node
            fresh = [damaged.target if i in damaged.lost else n for i, n in enumerate(chunk.nodes)]
        else:
            try:
                fresh = self.state.replace(list(chunk.nodes), list(damaged.lost), os.urandom(16))
            except Refused:
                fresh = None
        try:
            placement = repair.targets(chunk, damaged.lost, fresh, states)
            targets = [placement[i] for i in damaged.lost]
            request = data_pb2.RepairOrder(
                chunk=chunk_id, length=chunk.length, k=chunk.profile.k, m=chunk.profile.m, nodes=chunk.nodes,
                data_addresses=[by_id[n].data_address if n in by_id else "" for n in chunk.nodes],
                lost=damaged.lost, targets=targets, target_addresses=[by_id[n].data_address for n in targets],
                avoid=[i for i, n in enumerate(chunk.nodes) if i not in damaged.lost and states.get(n) != pb.UP])
            return _Order(damaged, placement, by_id[targets[0]], request, repair.endangerment(damaged, states))
        except (repair.NoTarget, KeyError) as error:
            log.warning("no repair for chunk %s (fragments %s): %s", chunk_id.hex()[:16], list(damaged.lost), error)
            self._retry_at[chunk_id] = self._clock() + RETRY_SECONDS
            return None

    async def _run_batch(self, executor: pb.Node, batch: list["_Order"]) -> None:
        progressed = False
        try:
            async with self._slots, self._node_slot(executor.id):
                await self._within_budget(sum(order.damaged.chunk.length for order in batch))
                stub = data_pb2_grpc.DataStub(self.channel_to(executor.address))
                reply = await stub.Repair(data_pb2.RepairRequest(orders=[o.request for o in batch]),
                                          timeout=BATCH_SECONDS)
            if faultpoints.hit("repair.before_placement"):  # as if the leader lost the answers
                return
            done = []
            for order, outcome in zip(batch, reply.outcomes):
                if order.damaged.target is None:  # a repair, not a move
                    self.stats.fragments_read += outcome.fragments_read
                if outcome.ok:
                    done.append(order)
                else:
                    self._retry_at[order.damaged.chunk_id] = self._clock() + RETRY_SECONDS
                    log.warning("repair of chunk %s failed on node %d: %s", order.damaged.chunk_id.hex()[:16],
                                executor.id, outcome.error)
            results = await asyncio.gather(*(self.service.propose(update_placement=pb.UpdatePlacement(
                chunk=o.damaged.chunk_id, nodes=o.placement, expect=o.damaged.chunk.nodes)) for o in done))
            for order, result in zip(done, results):
                if result.code == pb.OK and order.damaged.target is not None:
                    self.stats.moved += 1
                elif result.code == pb.OK:
                    self._count(order.damaged.chunk.length)
            progressed = bool(done)
        except grpc.aio.AioRpcError as error:
            self._retry_later(batch)
            log.warning("repair batch of %d chunks on node %d failed: %s", len(batch), executor.id, error.details())
        except Exception:  # noqa: BLE001 - the next pass finds the chunks again
            self._retry_later(batch)
            log.exception("repair batch of %d chunks on node %d failed", len(batch), executor.id)
        finally:
            for order in batch:
                self._running.pop(order.damaged.chunk_id, None)
            if progressed and not self._running:  # survey again now: what is left, and the counts
                self._on_progress()

    def _retry_later(self, batch: list["_Order"]) -> None:
        until = self._clock() + RETRY_SECONDS
        self._retry_at.update((order.damaged.chunk_id, until) for order in batch)

    def _node_slot(self, node_id: int) -> asyncio.Semaphore:
        if node_id not in self._per_node:
            self._per_node[node_id] = asyncio.Semaphore(BATCHES_PER_NODE)
        return self._per_node[node_id]

    async def _within_budget(self, size: int) -> None:
        """Paces orders so rebuilt bytes stay under bytes_per_second."""
        now = self._clock()
        start = max(now, self._budget_at)
        self._budget_at = start + size / self.bytes_per_second
        if start > now:
            await self._sleep(start - now)

    def channel_to(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = self._channel(address)
        return self._channels[address]

    def _count(self, size: int) -> None:
        now = self._clock()
        self.stats.repaired += 1
        self.stats.repaired_bytes += size
        self._recent.append((now, size))
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_SECONDS:
            self._recent.popleft()
        self.stats.bytes_per_second = sum(s for _, s in self._recent) / RATE_WINDOW_SECONDS
