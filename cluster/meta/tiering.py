"""The metadata leader's cold-tier duty: which chunks go cold or come back, and the orders that
move them (the data nodes do the moving, cluster/data/tiering.py).

Each round:
- records the reads it saw (GetObject on the leader) as TouchObjects entries, each object at most
  once per `read_resolution` seconds, so a read costs no Raft entry of its own;
- walks a slice of the objects of buckets with lifecycle rules (a full pass at most every
  `lifecycle_every` seconds): the hot chunks of objects a rule selects are queued for UPLOAD,
  and the pass tallies each bucket's hot and cold bytes for `cairn status`;
- queues DELETE orders for tier garbage, and confirms settled deletions;
- sends the queue to data nodes in batches, bounded in flight, and records what succeeded through
  Raft: TransitionChunk after an upload, ReheatChunk after a re-heat, TierDeleted after a delete.
  Uploads are recorded before they are sent (TierIntent), so an upload whose TransitionChunk
  never comes still leaves tier garbage when its chunk is forgotten: nothing leaks in the bucket.

Re-heats come from reads of cold chunks that a rule with reheat_on_read covers, and from
`cairn restore` (the Restore operation). A failed order waits RETRY_SECONDS and goes again; no
order ever deletes a hot copy (its fragments go only once TransitionChunk is applied).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import grpc

from cluster import faultpoints
from cluster.meta.placement import NotEnoughNodes, place
from cluster.meta.state import Refused, tier_garbage_key
from cluster.proto import data_pb2, data_pb2_grpc
from cluster.proto import meta_pb2 as pb
from cluster.tier import lifecycle

log = logging.getLogger("cairn.tier")

LIFECYCLE_EVERY_SECONDS = 3600.0  # a full lifecycle pass starts at most this often
SCAN_OBJECTS_PER_ROUND = 2000
READ_RESOLUTION_SECONDS = 3600.0  # a read is recorded when the last recorded one is older than this
REHEAT_GRACE_SECONDS = 3600.0     # a re-heated chunk's tier copy stays this long: readers may hold COLD records
READS_PENDING_MAX = 100_000
TOUCHES_PER_COMMAND = 1000
QUEUED_MAX = 10_000               # chunks waiting for an order, a memory bound
BATCH_CHUNKS = 8
BATCH_BYTES = 64 << 20
BATCHES_IN_FLIGHT = 8
BATCH_SECONDS = 300.0
RETRY_SECONDS = 5.0
GARBAGE_SCANNED = 5000            # tier garbage entries looked at per round
DELETE_START_SECONDS = 120.0      # a delete order not started by then is dropped by the data node
RESTORE_KEYS_MAX = 1000
RESTORE_CHUNKS_MAX = 20_000       # chunk records one Restore call reads at most
RETRIES_TRACKED_MAX = 100_000

UPLOAD, REHEAT, DELETE = data_pb2.TierOrder.UPLOAD, data_pb2.TierOrder.REHEAT, data_pb2.TierOrder.DELETE


@dataclass
class _Work:
    kind: int
    chunk_id: bytes
    target: str
    chunk: pb.Chunk | None = None  # UPLOAD, REHEAT: the record, read when the order is planned


class Tiering:
    def __init__(self, service, channel_to: Callable[[str], grpc.aio.Channel], clock: Callable[[], float] = time.monotonic,
                 lifecycle_every: float = LIFECYCLE_EVERY_SECONDS, read_resolution: float = READ_RESOLUTION_SECONDS,
                 reheat_grace: float = REHEAT_GRACE_SECONDS):
        self.service = service
        self._channel_to, self._clock = channel_to, clock
        self.lifecycle_every, self.read_resolution, self.reheat_grace = lifecycle_every, read_resolution, reheat_grace
        self.stats = pb.TierStats()
        self._queue: dict[tuple[int, bytes], _Work] = {}  # in order of arrival
        self._running: set[tuple[int, bytes]] = set()
        self._retry_at: dict[tuple[int, bytes], float] = {}
        self._reads: dict[tuple[str, str], int] = {}  # (bucket, key) -> version read
        self._scan: list | None = None  # [bucket names, index, continuation] of the pass under way
        self._tally: dict[str, pb.BucketTier] = {}
        self._next_pass = float("-inf")
        self._rules_changed = False  # during the pass under way: the next starts at once
        self._garbage_cursor = b""    # tier garbage is looked at a slice at a time, round the keyspace
        self._tasks: set[asyncio.Task] = set()

    @property
    def state(self):
        return self.service.state

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _wall_ms(self) -> int:
        return int(self.service.clock() * 1000)

    # ---- the round

    def round(self) -> None:
        if not self.service.driver.is_leader:
            self._queue.clear()
            self._reads.clear()
            self._scan, self._next_pass = None, float("-inf")
            return
        self._flush_reads()
        self._scan_slice()
        self._collect_garbage()
        self._start()
        kinds = Counter(kind for kind, _ in (*self._queue, *self._running))
        self.stats.transitions_pending, self.stats.reheats_pending, self.stats.garbage = \
            kinds[UPLOAD], kinds[REHEAT], kinds[DELETE]

    def rules_changed(self) -> None:
        """A bucket's rules changed: a pass starts at the next round, or right after the one under way."""
        self._next_pass = float("-inf")
        self._rules_changed = self._scan is not None

    def current_stats(self) -> pb.TierStats:
        self.stats.cold_chunks.clear()
        self.stats.cold_chunks.update(self.state.cold_counts())  # exact, from this node's state
        return self.stats

    # ---- reads

    def note_read(self, bucket: str, key: str, manifest: pb.Manifest, chunks: list[tuple[bytes, pb.Chunk]]) -> None:
        """A GetObject this leader answered: its read time, and its cold chunks' recall."""
        head = manifest.head
        # rules age an object from its last read or its write, whichever is later (lifecycle.rule_matches),
        # so a read within the resolution of either changes no rule's outcome and needs no entry
        last = max(head.read_ms, head.modified_ms)
        stale = self._wall_ms() - last >= self.read_resolution * 1000
        if stale and len(self._reads) < READS_PENDING_MAX:
            self._reads[(bucket, key)] = head.version
        cold = [(chunk_id, chunk) for chunk_id, chunk in chunks if chunk.state == pb.COLD]
        if not cold:
            return
        self.stats.recalls += len(cold)
        rules = self.state.bucket(bucket).lifecycle
        for chunk_id, chunk in cold:
            if lifecycle.reheats(rules, key, chunk.tier):
                self._enqueue(REHEAT, chunk_id, chunk.tier)

    def _flush_reads(self) -> None:
        touches = [pb.Touch(bucket=b, key=k, version=v) for (b, k), v in self._reads.items()]
        self._reads.clear()
        for start in range(0, len(touches), TOUCHES_PER_COMMAND):
            self.service.propose_and_forget(touch_objects=pb.TouchObjects(objects=touches[start:start + TOUCHES_PER_COMMAND]))

    # ---- lifecycle

    def _scan_slice(self) -> None:
        if self._scan is None:
            if self._clock() < self._next_pass:
                return
            self._scan, self._tally = [[b.name for b in self.state.buckets() if b.lifecycle], 0, ""], {}
        names, index, token = self._scan
        budget, now_ms = SCAN_OBJECTS_PER_ROUND, self._wall_ms()
        while budget > 0 and index < len(names):  # the budget counts objects and chunk records read
            try:
                bucket = self.state.bucket(names[index])
                entries, _, following = self.state.list_objects(bucket.name, start_after=token,
                                                                max_keys=min(budget, 1000))
            except Refused:  # deleted meanwhile
                entries, following = [], ""
            budget -= 1
            for number, (key, raw) in enumerate(entries):
                budget -= 1 + self._consider(bucket, key, pb.ObjectHead.FromString(raw), now_ms)
                if budget <= 0 and number + 1 < len(entries):
                    following = key  # the page is not done: go on after this key next round
                    break
            token = following
            if not token:
                index += 1
        self._scan[1:] = [index, token]
        if index >= len(names):
            self.stats.buckets.clear()
            for name, tally in self._tally.items():
                self.stats.buckets[name].CopyFrom(tally)
            self.stats.passes += 1
            self._scan = None
            self._next_pass = float("-inf") if self._rules_changed else self._clock() + self.lifecycle_every
            self._rules_changed = False

    def _consider(self, bucket: pb.Bucket, key: str, head: pb.ObjectHead, now_ms: int) -> int:
        """Tallies an object's bytes and queues its hot chunks if a rule selects it; returns how
        many chunk records it read."""
        tally = self._tally.setdefault(bucket.name, pb.BucketTier())
        target = lifecycle.first_match(bucket.lifecycle, key, head, now_ms)
        try:
            manifest = self.state.get_object(bucket.name, key)
        except Refused:
            return 0
        if not manifest.chunks:
            tally.hot_bytes += head.size
        for ref in manifest.chunks:
            chunk = self.state.chunk(ref.id)
            if chunk is None:
                continue
            if chunk.state == pb.COLD:
                tally.cold_bytes += ref.length
                continue
            tally.hot_bytes += ref.length
            if (target and chunk.state == pb.HOT and len(chunk.nodes) == chunk.profile.k + chunk.profile.m
                    and not self.state.tier_garbage_pending(target, ref.id)):
                self._enqueue(UPLOAD, ref.id, target)
        return len(manifest.chunks)

    def restore(self, request: pb.Restore) -> pb.RestoreReply:
        """Queues re-heats for the cold chunks of one page of objects."""
        max_keys = min(request.max_keys or 100, RESTORE_KEYS_MAX)
        entries, _, token = self.state.list_objects(request.bucket, request.prefix, "", request.start_after, max_keys)
        reply, seen = pb.RestoreReply(next=token), set()
        for number, (key, _) in enumerate(entries):
            if len(seen) >= RESTORE_CHUNKS_MAX and number:  # a page of huge objects: the rest next call
                reply.next = entries[number - 1][0]
                break
            reply.objects += 1
            try:
                manifest = self.state.get_object(request.bucket, key)
            except Refused:
                continue
            if len(self._reads) < READS_PENDING_MAX:  # restored for use: rules by read time leave it hot
                self._reads[(request.bucket, key)] = manifest.head.version
            for ref in manifest.chunks:
                chunk = self.state.chunk(ref.id) if ref.id not in seen else None
                seen.add(ref.id)
                if chunk is None:
                    continue
                reply.chunks += 1
                if chunk.state == pb.COLD:
                    reply.cold += 1
                    reply.cold_bytes += chunk.length
                    self._enqueue(REHEAT, ref.id, chunk.tier)
        if reply.cold:
            self.service.wake.set()  # start them now
        return reply

    # ---- tier garbage

    def _collect_garbage(self) -> None:
        """One slice of the tier garbage (a cursor goes round it, so entries that must wait do
        not hide the others): deletes to order, settled deletions to confirm."""
        now_ms, settled = self._wall_ms(), {}
        entries = self.state.tier_garbage(GARBAGE_SCANNED, after=self._garbage_cursor)
        self._garbage_cursor = tier_garbage_key(*entries[-1][:2]) if len(entries) == GARBAGE_SCANNED else b""
        for target, chunk_id, settle_ms, not_before_ms in entries:
            if settle_ms == 0 and not_before_ms <= now_ms:
                self._enqueue(DELETE, chunk_id, target)
            elif 0 < settle_ms <= now_ms:
                settled.setdefault(target, []).append(chunk_id)
        for target, chunks in settled.items():
            self.service.propose_and_forget(tier_deleted=pb.TierDeleted(target=target, chunks=chunks, final=True))

    # ---- orders

    def _enqueue(self, kind: int, chunk_id: bytes, target: str) -> None:
        key = (kind, chunk_id)
        if key in self._queue or key in self._running or len(self._queue) >= QUEUED_MAX:
            return
        now = self._clock()
        if len(self._retry_at) > RETRIES_TRACKED_MAX:
            self._retry_at = {k: t for k, t in self._retry_at.items() if t > now}
        if self._retry_at.get(key, 0.0) > now:
            return
        self._retry_at.pop(key, None)
        self._queue[key] = _Work(kind, chunk_id, target)

    def _start(self) -> None:
        free = BATCHES_IN_FLIGHT - len(self._tasks)
        if free <= 0 or not self._queue:
            return
        nodes = self.state.nodes()
        by_id = {n.id: n for n in nodes}
        up = [n for n in nodes if n.state == pb.UP]
        if not up:
            return
        batches: dict[int, list] = {}
        for work in list(self._queue.values()):
            planned = self._plan(work, by_id, up)
            if planned is None:
                continue
            executor, order = planned
            batch = batches.setdefault(executor.id, [])
            batch.append((work, order))
            if len(batch) == BATCH_CHUNKS or sum(o.length for _, o in batch) >= BATCH_BYTES:
                self._launch(executor, batches.pop(executor.id))
                free -= 1
                if free == 0:
                    return
        for executor_id, batch in batches.items():
            if free == 0:
                return
            self._launch(by_id[executor_id], batch)
            free -= 1

    def _plan(self, work: _Work, by_id: dict, up: list) -> tuple[pb.Node, data_pb2.TierOrder] | None:
        order = data_pb2.TierOrder(kind=work.kind, chunk=work.chunk_id, target=work.target)
        if work.kind == DELETE:
            order.not_after_ms = self._wall_ms() + int(DELETE_START_SECONDS * 1000)
            return up[int.from_bytes(work.chunk_id[:8], "big") % len(up)], order  # one node per chunk, mostly
        chunk = work.chunk = self.state.chunk(work.chunk_id)  # as it is now, not as queued
        wanted = pb.HOT if work.kind == UPLOAD else pb.COLD
        if chunk is None or chunk.state != wanted:  # moved, forgotten, or done meanwhile
            self._queue.pop((work.kind, work.chunk_id), None)
            return None
        if work.kind == REHEAT:
            work.target = order.target = chunk.tier
        order.length, order.k, order.m = chunk.length, chunk.profile.k, chunk.profile.m
        if work.kind == UPLOAD:
            nodes = list(chunk.nodes)
            executor = next((by_id[n] for n in nodes if n in by_id and by_id[n].state == pb.UP), None)
        else:
            try:
                nodes = place(self.state.usable_nodes(), chunk.profile.k + chunk.profile.m,
                              random.Random(os.urandom(16)))
            except NotEnoughNodes as error:
                log.warning("no re-heat of chunk %s: %s", work.chunk_id.hex()[:16], error)
                self._give_up(work)
                return None
            executor = by_id.get(nodes[0])
        if executor is None or any(n not in by_id for n in nodes):
            self._give_up(work)
            return None
        order.nodes.extend(nodes)
        order.data_addresses.extend(by_id[n].data_address for n in nodes)
        return executor, order

    def _give_up(self, work: _Work) -> None:
        key = (work.kind, work.chunk_id)
        self._queue.pop(key, None)
        self._retry_at[key] = self._clock() + RETRY_SECONDS

    def _launch(self, executor: pb.Node, batch: list) -> None:
        for work, _ in batch:
            key = (work.kind, work.chunk_id)
            self._queue.pop(key, None)
            self._running.add(key)
        task = asyncio.ensure_future(self._run_batch(executor, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, executor: pb.Node, batch: list) -> None:
        try:
            batch = await self._intend_uploads(batch)
            if not batch:
                return
            stub = data_pb2_grpc.DataStub(self._channel_to(executor.address))
            reply = await stub.Tier(data_pb2.TierRequest(orders=[order for _, order in batch]), timeout=BATCH_SECONDS)
            if len(reply.outcomes) != len(batch):
                raise RuntimeError(f"{len(reply.outcomes)} outcomes for {len(batch)} orders")
            done, deleted = [], {}
            for (work, order), outcome in zip(batch, reply.outcomes):
                if not outcome.ok:
                    self._failed(work, f"on node {executor.id}: {outcome.error}")
                elif work.kind == UPLOAD:
                    done.append((work, self._transitioned(work, outcome.sent)))
                elif work.kind == REHEAT:
                    done.append((work, self._reheated(work, order)))
                else:
                    deleted.setdefault(work.target, []).append(work)
            done.extend((works[0], self._deleted(target, works)) for target, works in deleted.items())
            # one Raft entry for them all, mostly (cluster/meta/service.py); each fails alone
            results = await asyncio.gather(*(record for _, record in done), return_exceptions=True)
            for (work, _), result in zip(done, results):
                if isinstance(result, BaseException):
                    self._failed(work, f"not recorded: {result!r}")
        except grpc.aio.AioRpcError as error:
            for work, _ in batch:
                self._failed(work, f"batch on node {executor.id}: {error.code().name} {error.details()}")
        except Exception as error:  # noqa: BLE001 - not leading any more, a lost proposal: try again later
            for work, _ in batch:
                self._failed(work, f"batch on node {executor.id}: {error!r}")
        finally:
            for work, _ in batch:
                self._running.discard((work.kind, work.chunk_id))
            if self._queue:
                self.service.wake.set()  # the next batches start now, not at the next round

    async def _intend_uploads(self, batch: list) -> list:
        """Records the uploads about to be ordered (TierIntent) before any is sent: if one is
        never followed by TransitionChunk, its object still goes once the chunk is forgotten.
        Returns the batch without the uploads of chunks gone meanwhile."""
        by_target: dict[str, list[bytes]] = {}
        for work, _ in batch:
            if work.kind == UPLOAD:
                by_target.setdefault(work.target, []).append(work.chunk_id)
        gone: set[bytes] = set()
        for target, chunks in by_target.items():
            result = await self.service.propose(tier_intent=pb.TierIntent(target=target, chunks=chunks))
            if result.code != pb.OK:
                raise RuntimeError(f"uploads to {target} not recorded: {result.message}")
            gone.update(result.missing)
        kept = []
        for work, order in batch:
            if work.kind == UPLOAD and work.chunk_id in gone:
                self._running.discard((work.kind, work.chunk_id))
            else:
                kept.append((work, order))
        return kept

    async def _transitioned(self, work: _Work, sent: bool) -> None:
        if faultpoints.hit("tier.before_transition"):  # as if the leader died holding the answer
            raise faultpoints.Injected("fault point: transition not recorded")
        result = await self.service.propose(transition_chunk=pb.TransitionChunk(
            chunk=work.chunk_id, target=work.target, expect=work.chunk.nodes))
        if result.code == pb.OK and not result.message:
            self.stats.transitioned += 1
            self.stats.transitioned_bytes += work.chunk.length
            self.stats.uploaded += sent
            faultpoints.hit("tier.after_transition")

    async def _reheated(self, work: _Work, order: data_pb2.TierOrder) -> None:
        result = await self.service.propose(reheat_chunk=pb.ReheatChunk(chunk=work.chunk_id, nodes=order.nodes,
                                                                        grace_ms=int(self.reheat_grace * 1000)))
        self.stats.reheated += result.code == pb.OK and not result.message

    async def _deleted(self, target: str, works: list[_Work]) -> None:
        result = await self.service.propose(tier_deleted=pb.TierDeleted(target=target, chunks=[w.chunk_id for w in works]))
        if result.code == pb.OK:
            self.stats.deleted += len(works)

    def _failed(self, work: _Work, why: str) -> None:
        self.stats.failures += 1
        self._retry_at[(work.kind, work.chunk_id)] = self._clock() + RETRY_SECONDS
        log.warning("tier %s of chunk %s failed %s", data_pb2.TierOrder.Kind.Name(work.kind).lower(),
                    work.chunk_id.hex()[:16], why)
