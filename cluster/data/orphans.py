"""Deletes fragments no committed chunk places on this node, once a grace period has passed.

A fragment is referenced when its chunk exists in the metadata and the chunk's placement names
this node for its index. Anything else is an orphan: written for a put that never committed, or
left behind when a placement moved. A put in flight looks like an orphan too, until its commit;
so an orphan is only deleted once it has been seen unreferenced for `grace_seconds` and the
leader confirms it again, linearizably, just before the delete.

A put that runs longer than the grace keeps its fragments: its client touches them now and then
(the data plane's TOUCH), and a touch, like a new PUT of the same fragment, starts the grace
afresh. Touches and puts come from the data plane's threads while the collector works on the
event loop, so one lock makes each fragment's fate a single decision: either the touch or put
comes first, and the collector leaves the fragment for another grace period; or the collector's
claim does, and the touch answers "not held" (the put fails before its commit) or the put is
refused (its client sends the fragment to a replacement node). A put never commits a fragment
that the collector deletes, as long as its commit lands within the grace of its last touch. (A
pass cancelled while it deletes, as the node stops, keeps its claims: the delete may still be
running in a thread, and a put of those fragments must not be acknowledged meanwhile.)

The collector is logic over injected callables (list the node's fragments, ask the metadata,
delete, the clock), so tests and the simulator drive the same code.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from cluster import faultpoints
from cluster.proto import meta_pb2 as pb

log = logging.getLogger("cairn.data")

DEFAULT_GRACE_SECONDS = 3600.0
QUERY_BATCH = 1000
CANDIDATES_MAX = 1_000_000  # memory bound: past it, new candidates wait for the next pass


class BeingCollected(Exception):
    """A put of a fragment the collector is deleting right now: the client puts it elsewhere."""


@dataclass
class PassResult:
    fragments: int = 0
    unreferenced: int = 0
    deleted: int = 0


class OrphanCollector:
    def __init__(self, node_id: Callable[[], int],
                 list_fragments: Callable[[], Iterable[tuple[bytes, int]]],
                 placements: Callable[[list[bytes]], Awaitable[dict[bytes, list[int] | None]]],
                 delete: Callable[[list[tuple[bytes, int]]], Awaitable[None]],
                 clock: Callable[[], float], grace_seconds: float = DEFAULT_GRACE_SECONDS):
        """`placements(ids)` answers, per chunk id, the node of each fragment index, or None
        for a chunk the metadata does not know."""
        if grace_seconds <= 0:
            raise ValueError("the orphan grace period must be positive")
        self.node_id, self.list_fragments, self.placements = node_id, list_fragments, placements
        self.delete, self.clock, self.grace_seconds = delete, clock, grace_seconds
        self.first_seen: dict[tuple[bytes, int], float] = {}  # unreferenced since (or touched at)
        self._claimed: set[tuple[bytes, int]] = set()  # being deleted
        self._lock = threading.Lock()

    def renew(self, fragments) -> list[bool]:
        """A put or a touch of these fragments (from any thread): each one the collector watches
        starts its grace again. False for one it is deleting now (claimed): not held."""
        with self._lock:
            now = self.clock()
            kept = []
            for fragment in fragments:
                if fragment in self.first_seen:
                    self.first_seen[fragment] = now
                kept.append(fragment not in self._claimed)
            return kept

    def touch(self, fragments, has: Callable[[bytes, int], bool]) -> list[bool]:
        """A client's TOUCH: renews the fragments; whether each is held (on disk, not being deleted)."""
        return [kept and has(chunk_id, index) for (chunk_id, index), kept in zip(fragments, self.renew(fragments))]

    async def run_pass(self) -> PassResult:
        result, now, me = PassResult(), self.clock(), self.node_id()
        if not me:
            return result  # not registered yet: nothing can be judged
        seen_now: set[tuple[bytes, int]] = set()
        batch: list[tuple[bytes, int]] = []
        for fragment in self.list_fragments():
            result.fragments += 1
            batch.append(fragment)
            if len(batch) == QUERY_BATCH:
                await self._judge(batch, me, seen_now, result)
                batch = []
        if batch:
            await self._judge(batch, me, seen_now, result)
        # One referenced now (or gone) starts its grace afresh if it turns up again. Only this
        # thread adds or removes candidates (renew only restamps them), so they are read without
        # the lock; it is taken for each slice of removals, not for the whole pass.
        stale = [f for f in self.first_seen if f not in seen_now]
        for start in range(0, len(stale), QUERY_BATCH):
            with self._lock:
                for fragment in stale[start:start + QUERY_BATCH]:
                    del self.first_seen[fragment]
        due = [f for f, t in list(self.first_seen.items()) if now - t >= self.grace_seconds]  # (_claim rechecks)
        if due and faultpoints.hit("orphans.before_delete"):
            return result  # the node stopped before deleting: the next pass does it
        if due:
            confirmed = self._claim(await self._unreferenced(due, me))  # once more, just before deleting
            if confirmed:
                try:
                    await self.delete(confirmed)
                except asyncio.CancelledError:
                    raise  # the node is stopping, its delete may still run in a thread: the claims stay
                except BaseException:
                    self._release(confirmed, deleted=False)
                    raise
                self._release(confirmed, deleted=True)
                result.deleted = len(confirmed)
        return result

    def _release(self, fragments: list[tuple[bytes, int]], deleted: bool) -> None:
        with self._lock:
            self._claimed.difference_update(fragments)
            if deleted:
                for fragment in fragments:
                    self.first_seen.pop(fragment, None)

    def _claim(self, fragments: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        """The fragments still due (no put or touch renewed them while the leader was asked),
        marked as being deleted: from here on a touch or put of one is refused."""
        with self._lock:
            now = self.clock()
            claimed = [f for f in fragments if now - self.first_seen.get(f, now) >= self.grace_seconds]
            self._claimed.update(claimed)
            return claimed

    async def run_forever(self, interval_seconds: float, prepare=None, sleep=asyncio.sleep) -> None:
        """A pass every interval, `prepare()` (e.g. listing the fragments off the loop) first. A
        pass that fails (a full disk, no leader) is logged; the next one tries again."""
        while True:
            await sleep(interval_seconds)
            try:
                if prepare is not None:
                    await prepare()
                await self.run_pass()
            except Exception as error:  # noqa: BLE001
                log.warning("orphan pass: %s", error)

    async def _judge(self, batch, me: int, seen_now: set, result: PassResult) -> None:
        unreferenced = await self._unreferenced(batch, me)
        with self._lock:
            now = self.clock()  # (after the leader's answer: a touch meanwhile is not lost)
            for fragment in unreferenced:
                result.unreferenced += 1
                seen_now.add(fragment)
                if fragment not in self.first_seen and len(self.first_seen) < CANDIDATES_MAX:
                    self.first_seen[fragment] = now

    async def _unreferenced(self, fragments: list[tuple[bytes, int]], me: int) -> list[tuple[bytes, int]]:
        out = []
        for start in range(0, len(fragments), QUERY_BATCH):
            part = fragments[start:start + QUERY_BATCH]
            placements = await self.placements(sorted({chunk for chunk, _ in part}))
            for chunk, index in part:
                nodes = placements.get(chunk)
                if nodes is None or index >= len(nodes) or nodes[index] != me:
                    out.append((chunk, index))
        return out


def placements_from(meta) -> Callable[[list[bytes]], Awaitable[dict[bytes, list[int] | None]]]:
    """The collector's `placements`, asked of the metadata leader through a MetaClient."""
    async def placements(ids: list[bytes]) -> dict[bytes, list[int] | None]:
        reply = await meta.call(pb.MetaOp(get_chunks=pb.GetChunks(ids=ids)))
        if reply.code != pb.OK:
            raise RuntimeError(f"GetChunks: {reply.message}")
        return {i: (list(c.nodes) if found else None)
                for i, found, c in zip(ids, reply.get_chunks.found, reply.get_chunks.chunks)}
    return placements
