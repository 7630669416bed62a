"""The leader's fragment audit: finds fragments missing from the nodes their chunks place them on.

The scrubber re-reads the fragments a node holds, and a read notices a missing fragment only if
it asks for it. So a fragment a node should hold and lacks (one disk of several failed on a node
that stays up; a segment lost or deleted) could stay lost, unseen, until a second failure needs
it: parity fragments are read only then. The audit walks the chunk records with its own cursor,
a slice at a time, asks each node whether it holds the fragments those records place on it (the
data node's Has call), and reports each one missing as damage (ReportDamage). The repairer
rebuilds it as any damaged fragment. A budget of fragments per second paces the walk, so a pass
over a large cluster takes hours and costs the nodes an index lookup per fragment.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Callable

import grpc

from cluster.proto import data_pb2, data_pb2_grpc
from cluster.proto import meta_pb2 as pb

log = logging.getLogger("cairn.audit")

FRAGMENTS_PER_SECOND = 2000.0  # fragments asked about per second, cluster-wide
SLICE_CHUNKS = 500             # chunk records per slice (k+m asks each)
ASKS_PER_CALL = 5000           # fragments in one Has call (a data node takes up to 10,000)
CALL_SECONDS = 30.0
AUDITED = frozenset({pb.UP, pb.DRAINING})  # nodes that answer for their fragments
REASON = "missing from its node (audit)"


def expected(records: list[tuple[bytes, pb.Chunk]], states: dict[int, int]) -> dict[int, list[tuple[bytes, int]]]:
    """The fragments each audited node should hold: (chunk id, index) per node, for HOT chunks
    (a chunk being deleted or kept in a cold tier may lawfully lack its fragments)."""
    asks: dict[int, list[tuple[bytes, int]]] = defaultdict(list)
    for chunk_id, chunk in records:
        if chunk.state != pb.HOT:
            continue
        for index, node in enumerate(chunk.nodes):
            if states.get(node) in AUDITED:
                asks[node].append((chunk_id, index))
    return dict(asks)


class Auditor:
    def __init__(self, service, channel_to: Callable[[str], grpc.aio.Channel], clock: Callable[[], float],
                 fragments_per_second: float = FRAGMENTS_PER_SECOND):
        """`channel_to(address)`: a channel to a data node's control API (the repairer's)."""
        if fragments_per_second < 0:
            raise ValueError("the audit's fragments per second must be 0 (off) or more")
        self.service, self._channel_to, self._clock = service, channel_to, clock
        self.fragments_per_second = fragments_per_second
        self._cursor = b""
        self._next_at = 0.0
        self._task: asyncio.Task | None = None
        self.audited = self.missing = self.passes = 0

    def round(self) -> int:
        """Starts the next slice's audit when the budget has room and the last one is done;
        returns how many fragments it asks about."""
        if not self.service.driver.is_leader or self.fragments_per_second == 0:
            self._cursor = b""  # a leader starts its own pass from the beginning
            return 0
        now = self._clock()
        if (self._task is not None and not self._task.done()) or now < self._next_at:
            return 0
        state = self.service.state
        records = state.chunks_after(self._cursor, SLICE_CHUNKS)
        started, self._cursor = self._cursor, records[-1][0] if len(records) == SLICE_CHUNKS else b""
        if not self._cursor and (started or records):  # (an empty cluster makes no passes)
            self.passes += 1
        nodes = {n.id: n for n in state.nodes()}
        asks = expected(records, {n.id: n.state for n in nodes.values()})
        count = sum(len(fragments) for fragments in asks.values())
        self._next_at = now + count / self.fragments_per_second
        if asks:
            self._task = asyncio.ensure_future(self._audit(asks, nodes))
        return count

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _audit(self, asks: dict[int, list[tuple[bytes, int]]], nodes: dict[int, pb.Node]) -> None:
        try:
            await self._audit_slice(asks, nodes)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - leadership lost mid-slice, or a bug: the next pass asks again
            log.warning("audit: a slice failed: %r", error)

    async def _audit_slice(self, asks: dict[int, list[tuple[bytes, int]]], nodes: dict[int, pb.Node]) -> None:
        answers = await asyncio.gather(*(self._absent(nodes[node], fragments) for node, fragments in asks.items()))
        self.audited += sum(len(fragments) for fragments in asks.values())
        damage = [pb.Damage(chunk=chunk_id, index=index, node=node, reason=REASON)
                  for node, absent in zip(asks, answers) for chunk_id, index in absent
                  if self._still_placed(chunk_id, index, node)]
        if not damage:
            return
        self.missing += len(damage)
        log.warning("audit: %d fragments missing from their nodes (first: fragment %d of chunk %s on node %d); "
                    "reported for repair", len(damage), damage[0].index, damage[0].chunk.hex()[:16], damage[0].node)
        # (applied only where the placement still names that node: see MetaState's report_damage)
        result = await self.service.propose(report_damage=pb.ReportDamage(damage=damage))
        if result.code == pb.OK:
            self.service.wake.set()  # the repairer's next round comes now

    async def _absent(self, node: pb.Node, fragments: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        """The fragments the node says it lacks; none when it cannot answer (a node that is
        down is the failure detector's business, and the next pass asks again)."""
        stub = data_pb2_grpc.DataStub(self._channel_to(node.address))
        absent = []
        try:
            for start in range(0, len(fragments), ASKS_PER_CALL):
                part = fragments[start:start + ASKS_PER_CALL]
                reply = await stub.Has(data_pb2.HasRequest(fragments=[data_pb2.FragmentId(chunk=c, index=i)
                                                                      for c, i in part]), timeout=CALL_SECONDS)
                if len(reply.present) != len(part):
                    log.warning("audit: node %d answered %d of %d asks", node.id, len(reply.present), len(part))
                    return absent
                absent += [f for f, present in zip(part, reply.present) if not present]
        except grpc.aio.AioRpcError as error:
            log.info("audit: node %d did not answer: %s", node.id, error.details())
        return absent

    def _still_placed(self, chunk_id: bytes, index: int, node: int) -> bool:
        """Whether the chunk is still HOT with that fragment on that node: one deleted, gone
        cold or repaired elsewhere while the node was asked lacks its fragment lawfully."""
        chunk = self.service.state.chunk(chunk_id)
        return chunk is not None and chunk.state == pb.HOT and index < len(chunk.nodes) and chunk.nodes[index] == node
