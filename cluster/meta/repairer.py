"""The metadata leader's repair loop: the I/O around cluster/meta/repair.py's planning.

Each round it surveys a slice of the chunk records (a cursor walks the whole keyspace over many
rounds; chunks named by damage reports are looked at every round), sorts what lost fragments
most endangered first, and sends orders to data nodes over their gRPC control API: the first
target node rebuilds the lost fragments from any k others and stores them. Orders are bounded
in flight per node and in all, and by a bandwidth budget, so client traffic keeps flowing. Once
a node confirms, the new placement goes through Raft (UpdatePlacement, applied only if the
placement did not move meanwhile). A repeated or interrupted order does no harm: the same bytes
land on the same targets again, and the placement changes once.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import Callable

import grpc

from cluster.meta import repair
from cluster.meta.state import Refused
from cluster.proto import data_pb2, data_pb2_grpc
from cluster.proto import meta_pb2 as pb

log = logging.getLogger("cairn.repair")

SLICE_CHUNKS = 5000          # chunk records surveyed per round
ORDERS_IN_FLIGHT = 16        # repairs running in the cluster at once
ORDERS_PER_NODE = 4          # ... and on one executing node
ORDERS_WAITING_MAX = 2000    # orders started (waiting for a slot) at most, a memory bound
BYTES_PER_SECOND = 200e6     # chunk bytes rebuilt per second, cluster-wide
ORDER_SECONDS = 60.0
RATE_WINDOW_SECONDS = 30.0
REBALANCE_BAND = 0.10        # nodes within 10% of the mean fragment bytes are left alone


class Repairer:
    def __init__(self, service, bytes_per_second: float = BYTES_PER_SECOND,
                 channel: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
                 clock: Callable[[], float] = time.monotonic, sleep=asyncio.sleep):
        self.service = service
        self.bytes_per_second = bytes_per_second
        self._channel, self._clock, self._sleep = channel, clock, sleep
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._cursor = b""
        self._pass = repair.Survey()
        self._moves: repair.Moves | None = None
        self._balanced_over: frozenset | None = None  # the UP nodes of the last pass that found balance
        self.stats = pb.RepairStats()
        self._recent: deque[tuple[float, int]] = deque()
        self._budget_at = 0.0  # when the bandwidth budget next has room
        self._slots = asyncio.Semaphore(ORDERS_IN_FLIGHT)
        self._per_node: dict[int, asyncio.Semaphore] = {}
        self._running: set[bytes] = set()
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
        found = repair.survey(records, states, damage, self._moves)
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
        started = queue[:max(0, ORDERS_WAITING_MAX - len(self._running))]
        for damaged in started:
            self._running.add(damaged.chunk_id)
            task = asyncio.ensure_future(self._repair(damaged, by_id, states))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(started)

    def _end_pass(self, states: dict, up: frozenset) -> None:
        """Publishes a full pass's counts and plans the next pass's moves for balance."""
        finished, self._pass = self._pass, repair.Survey()
        self.stats.chunks_by_lost.clear()
        self.stats.chunks_by_lost.update(finished.by_lost)
        self.stats.unrepairable, self.stats.draining = finished.unrepairable, finished.draining
        self.stats.passes += 1
        moves = repair.Moves(finished.load, states, REBALANCE_BAND)
        self._moves = moves if moves and not finished.repairs else None
        self.stats.rebalance_bytes = int(sum(moves.excess.values())) if moves else 0
        self._balanced_over = up if not moves and not finished.repairs else None

    async def _repair(self, damaged: repair.Damaged, by_id: dict, states: dict) -> None:
        chunk_id, chunk = damaged.chunk_id, damaged.chunk
        try:
            if damaged.target is not None:  # a rebalancing move: the plan chose the node
                fresh = [damaged.target if i in damaged.lost else n for i, n in enumerate(chunk.nodes)]
            else:
                try:
                    fresh = self.state.replace(list(chunk.nodes), list(damaged.lost), os.urandom(16))
                except Refused:
                    fresh = None
            placement = repair.targets(chunk, damaged.lost, fresh, states)
            targets = [placement[i] for i in damaged.lost]
            executor = by_id[targets[0]]
            request = data_pb2.RepairRequest(
                chunk=chunk_id, length=chunk.length, k=chunk.profile.k, m=chunk.profile.m, nodes=chunk.nodes,
                data_addresses=[by_id[n].data_address if n in by_id else "" for n in chunk.nodes],
                lost=damaged.lost, targets=targets, target_addresses=[by_id[n].data_address for n in targets])
            async with self._slots, self._node_slot(executor.id):
                await self._within_budget(chunk.length)
                stub = data_pb2_grpc.DataStub(self._channel_to(executor.address))
                await stub.Repair(request, timeout=ORDER_SECONDS)
            result = await self.service.propose(update_placement=pb.UpdatePlacement(
                chunk=chunk_id, nodes=placement, expect=chunk.nodes))
            if result.code == pb.OK and damaged.target is not None:
                self.stats.moved += 1
            elif result.code == pb.OK:
                self._count(chunk.length)
        except (repair.NoTarget, grpc.aio.AioRpcError, KeyError) as error:
            log.warning("repair of chunk %s (fragments %s) failed: %s", chunk_id.hex()[:16], list(damaged.lost),
                        error.details() if isinstance(error, grpc.aio.AioRpcError) else error)
        except Exception:  # noqa: BLE001 - the next pass finds the chunk again
            log.exception("repair of chunk %s failed", chunk_id.hex()[:16])
        finally:
            self._running.discard(chunk_id)

    def _node_slot(self, node_id: int) -> asyncio.Semaphore:
        if node_id not in self._per_node:
            self._per_node[node_id] = asyncio.Semaphore(ORDERS_PER_NODE)
        return self._per_node[node_id]

    async def _within_budget(self, size: int) -> None:
        """Paces orders so rebuilt bytes stay under bytes_per_second."""
        now = self._clock()
        start = max(now, self._budget_at)
        self._budget_at = start + size / self.bytes_per_second
        if start > now:
            await self._sleep(start - now)

    def _channel_to(self, address: str) -> grpc.aio.Channel:
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
