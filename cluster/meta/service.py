"""The meta gRPC service: every operation is a MetaOp, answered by a MetaReply, either one per
call (`Call`) or many multiplexed on a stream (`Pipeline`, see cluster/rpc/mux.py).

Writes are MetaCommands proposed through Raft (the leader stamps its clock into them, so apply
is deterministic). Reads run after a ReadIndex barrier (one per incoming batch) unless they ask
for a stale answer. BeginPut and Replace are answered by the leader from its own state without a barrier: a stale
answer would be safe, because the commit re-checks everything. (Followers could answer them too;
measured, that slowed puts: a follower busy with them acknowledges appends later.) A follower
answers NOT_LEADER with the leader's address.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable


from cluster.meta import audit, names
from cluster.meta.liveness import FailureDetector
from cluster.meta.repairer import BYTES_PER_SECOND, Repairer
from cluster.meta.state import MetaState, Refused
from cluster.meta.tiering import LIFECYCLE_EVERY_SECONDS, READ_RESOLUTION_SECONDS, REHEAT_GRACE_SECONDS, Tiering
from cluster.proto import meta_pb2 as pb
from cluster.proto import meta_pb2_grpc as pb_grpc
from cluster.raft.core import NotLeader, ProposalDropped
from cluster.raft.driver import ProposalOutcomeUnknown, RaftDriver
from cluster.rpc.endpoints import insecure_channel
from cluster.rpc.mux import MuxServer

log = logging.getLogger("cairn.meta")

OP_ID_BYTES_MAX = 64
BEGIN_CHUNKS_MAX = 100_000
CALL_SECONDS_MAX = 10.0
READS = frozenset({"get_object", "list_objects", "list_buckets", "list_nodes", "get_chunks", "get_stats",
                   "list_tier_targets"})
GET_CHUNKS_MAX = 10_000
CAPACITY_REPORT_FRACTION = 0.01  # a heartbeat goes through Raft when free space moved this much
ENTRY_COMMANDS_MAX = 256
ENTRY_BYTES_MAX = 4 << 20
GARBAGE_GRACE_SECONDS = 3600.0  # a chunk without references is forgotten after this long
GARBAGE_PER_ROUND = 1000
WAKING_COMMANDS = frozenset({"set_lifecycle", "mark_node"})  # the leader's duties act on these at once
MARK_APPLIED_SECONDS = 0.2  # a DEAD mark is applied by then, usually: the repair round comes after it


class CommandBatcher:
    """Packs the commands that arrive in one turn of the event loop, from any number of clients,
    into one Raft entry (a MetaEntry): one append, one checksum, one apply write for all of
    them. Each caller gets its own result, or the error that stopped the entry."""

    def __init__(self, driver: RaftDriver):
        self.driver = driver
        self._waiting: list[tuple[pb.MetaCommand, Callable]] = []
        self._scheduled = False

    def submit(self, command: pb.MetaCommand, done: Callable) -> None:
        """done(result, None) once applied, or done(None, error)."""
        self._waiting.append((command, done))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._waiting:
            taken, size = [], 0
            while self._waiting and len(taken) < ENTRY_COMMANDS_MAX:
                size += self._waiting[0][0].ByteSize()
                if taken and size > ENTRY_BYTES_MAX:
                    break
                taken.append(self._waiting.pop(0))
            self._propose(taken)

    def _propose(self, taken: list) -> None:
        entry = pb.MetaEntry(commands=[command for command, _ in taken])
        try:
            future = self.driver.submit(entry.SerializeToString())
        except Exception as error:  # noqa: BLE001 - NotLeader, a full queue: every caller hears it
            for _, done in taken:
                done(None, error)
            return

        def finish(applied: asyncio.Future) -> None:
            error = applied.exception()
            results = None if error else pb.MetaResults.FromString(applied.result()).results
            for position, (_, done) in enumerate(taken):
                if error is not None:
                    done(None, error)
                elif position < len(results):
                    done(results[position], None)
                else:
                    done(None, ProposalOutcomeUnknown("the entry was applied on a node that had already "
                                                      "applied it; retry with the same op id"))
        future.add_done_callback(finish)


class MetaService(pb_grpc.MetaServicer):
    def __init__(self, driver: RaftDriver, state: MetaState, address_of, clock=time.time,
                 detector: FailureDetector | None = None, garbage_grace_seconds: float = GARBAGE_GRACE_SECONDS,
                 repair_bytes_per_second: float = BYTES_PER_SECOND, monotonic=time.monotonic,
                 repair_channel=insecure_channel, lifecycle_every_seconds: float = LIFECYCLE_EVERY_SECONDS,
                 read_resolution_seconds: float = READ_RESOLUTION_SECONDS,
                 reheat_grace_seconds: float = REHEAT_GRACE_SECONDS,
                 audit_fragments_per_second: float = audit.FRAGMENTS_PER_SECOND):
        """`clock` is wall time (commands carry it), `monotonic` paces repairs and the audit,
        `repair_channel` opens a channel to a data node (the simulator passes its own network)."""
        self.driver, self.state = driver, state
        self.address_of = address_of  # Raft node id -> client address
        self.clock = clock
        self.detector = detector or FailureDetector()
        self.garbage_grace_seconds = garbage_grace_seconds
        self.monotonic = monotonic
        self.wake = asyncio.Event()  # set: the leader's duties run now, not at the next round
        self.repairer = Repairer(self, repair_bytes_per_second, channel=repair_channel, clock=monotonic,
                                 on_progress=self.wake.set)
        self.auditor = audit.Auditor(self, self.repairer.channel_to, clock=monotonic,
                                     fragments_per_second=audit_fragments_per_second)
        self.tiering = Tiering(self, self.repairer.channel_to, clock=monotonic, lifecycle_every=lifecycle_every_seconds,
                               read_resolution=read_resolution_seconds, reheat_grace=reheat_grace_seconds)
        self._mux = MuxServer(pb.MetaReplies, "ops", "replies")
        self._batcher = CommandBatcher(driver)

    async def Call(self, op, context):
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._start([op], lambda reply: done.done() or done.set_result(reply))
        try:
            return await asyncio.wait_for(done, CALL_SECONDS_MAX)
        except asyncio.TimeoutError:
            return pb.MetaReply(tag=op.tag, code=pb.UNAVAILABLE, message=f"no answer in {CALL_SECONDS_MAX:.0f} s")

    async def Pipeline(self, request_iterator, context):
        await self._mux.serve(request_iterator, context, self._start)

    # ---- dispatch

    def _start(self, ops, reply) -> None:
        reads = []
        for op in ops:
            kind = op.WhichOneof("op")
            try:
                if kind == "command":
                    self._start_command(op, reply)
                elif kind in READS:
                    stale = kind in ("get_object", "list_objects", "get_chunks") and getattr(op, kind).stale
                    if stale:
                        reply(self._read(op))  # this node's state as it is: no barrier
                    else:
                        reads.append(op)
                elif kind in ("begin_put", "replace", "heartbeat", "restore"):
                    self._check_leader()
                    reply(getattr(self, f"_{kind}")(op))
                else:
                    reply(pb.MetaReply(tag=op.tag, code=pb.INVALID_ARGUMENT, message=f"unknown operation {kind!r}"))
            except Exception as error:  # noqa: BLE001 - every failure becomes an answer
                reply(self._failure(op, error))
        if reads:
            self._start_reads(reads, reply)

    def _start_reads(self, reads, reply) -> None:
        try:
            barrier = self.driver.read_barrier_future()
        except Exception as error:  # noqa: BLE001
            for op in reads:
                reply(self._failure(op, error))
            return

        def finish(done: asyncio.Future) -> None:
            error = done.exception()
            for op in reads:
                reply(self._failure(op, error) if error else self._read(op))
        barrier.add_done_callback(finish)

    def _check_leader(self) -> None:
        if not self.driver.is_leader:
            raise NotLeader(self.driver.leader)

    def _failure(self, op, error: Exception) -> pb.MetaReply:
        if isinstance(error, NotLeader):
            return pb.MetaReply(tag=op.tag, code=pb.NOT_LEADER, message="not the leader",
                                leader_address=self.address_of(error.leader))
        if isinstance(error, Refused):
            return pb.MetaReply(tag=op.tag, code=error.code, message=str(error))
        if isinstance(error, names.InvalidName):
            return pb.MetaReply(tag=op.tag, code=pb.INVALID_ARGUMENT, message=str(error))
        if isinstance(error, (ProposalDropped, ProposalOutcomeUnknown, asyncio.TimeoutError)):
            return pb.MetaReply(tag=op.tag, code=pb.UNAVAILABLE, message=f"{type(error).__name__}: {error}; retry")
        log.exception("meta operation failed", exc_info=error)
        return pb.MetaReply(tag=op.tag, code=pb.UNAVAILABLE, message=f"internal error: {error!r}")

    # ---- writes

    def _start_command(self, op, reply) -> None:
        command = op.command
        if len(command.op_id) > OP_ID_BYTES_MAX:
            raise Refused(pb.INVALID_ARGUMENT, f"an op id is at most {OP_ID_BYTES_MAX} bytes")
        if not command.WhichOneof("command"):
            raise Refused(pb.INVALID_ARGUMENT, "an empty command")
        if not command.op_id:
            command.op_id = os.urandom(16)  # no retry protection asked for; still remembered once
        command.now_ms = int(self.clock() * 1000)
        tag = op.tag

        def finish(result: pb.MetaResult | None, error: Exception | None) -> None:
            if error is not None:
                reply(self._failure(op, error))
            else:
                reply(pb.MetaReply(tag=tag, code=result.code, message=result.message, result=result))
                if result.code == pb.OK and kind == "set_lifecycle":
                    self.tiering.rules_changed()
                if result.code == pb.OK and kind in WAKING_COMMANDS:
                    self.wake.set()
        kind = command.WhichOneof("command")
        self._batcher.submit(command, finish)

    def _heartbeat(self, op) -> pb.MetaReply:
        beat = op.heartbeat
        node = self.state.node(beat.id)
        if node is None:
            raise Refused(pb.UNKNOWN_NODE, f"no data node {beat.id}: register first")
        self.detector.heard(beat.id, self.clock())
        if _moved(node.disks, beat.disks) or node.state in (pb.SUSPECT, pb.DEAD):
            state = pb.UP if node.state in (pb.SUSPECT, pb.DEAD) else node.state
            self.propose_and_forget(node_report=pb.NodeReport(id=beat.id, disks=beat.disks, state=state))
            # (the next beat repeats it if it is lost)
        return pb.MetaReply(tag=op.tag)

    # ---- failure detection

    def check_liveness(self) -> int:
        """On the leader: proposes SUSPECT or DEAD for data nodes not heard for too long (see
        cluster/meta/liveness.py); returns how many marks it proposed."""
        if not self.driver.is_leader:
            self.detector.follow()
            return 0
        now = self.clock()
        self.detector.lead(now)
        marks = self.detector.verdicts(self.state.nodes(), now)
        for mark in marks:
            log.warning("data node %d not heard from: marking it %s", mark.id, pb.NodeState.Name(mark.state))
            self.propose_and_forget(mark_node=mark)  # the detector proposes it again if it is lost
        if any(mark.state == pb.DEAD for mark in marks):  # repair starts once the mark is applied
            asyncio.get_running_loop().call_later(MARK_APPLIED_SECONDS, self.wake.set)
        return len(marks)

    # ---- garbage

    def collect_garbage(self) -> int:
        """On the leader: forgets (through Raft) chunks without references for longer than the
        grace period. Their fragments become orphans, which each data node's collector deletes
        once the leader confirms no chunk places them (cluster/data/orphans.py); compaction then
        reclaims the space. Forgetting first means a fragment is never deleted while a record
        could still send a reader to it. Returns how many chunks it proposed to forget."""
        if not self.driver.is_leader:
            return 0
        before_ms = int((self.clock() - self.garbage_grace_seconds) * 1000)
        chunks = self.state.garbage(max(0, before_ms), GARBAGE_PER_ROUND)
        if chunks:
            self.propose_and_forget(forget_chunks=pb.ForgetChunks(chunks=chunks))  # repeated if lost
        return len(chunks)

    async def propose(self, **command) -> pb.MetaResult:
        """Proposes one of the leader's own commands (a field of MetaCommand); waits for its result."""
        done = asyncio.get_running_loop().create_future()

        def finish(result, error) -> None:
            if not done.done():
                done.set_exception(error) if error is not None else done.set_result(result)
        self._batcher.submit(self._own_command(command), finish)
        return await done

    def propose_and_forget(self, **command) -> None:
        """Proposes one of the leader's own commands for a duty that repeats it if it is lost."""
        self._batcher.submit(self._own_command(command), lambda result, error: None)

    def _own_command(self, fields: dict) -> pb.MetaCommand:
        return pb.MetaCommand(op_id=os.urandom(16), now_ms=int(self.clock() * 1000), **fields)

    async def keep_house(self, every_seconds: float = 1.0, garbage_every_seconds: float = 10.0) -> None:
        """The leader's periodic duties: failure detection, repair, the tier and the audit (paced
        by its own budget) every round, garbage every ten seconds. A round comes early when woken
        (a node declared dead, a repair batch done), so repair neither waits for the clock to
        start nor to go on."""
        garbage_at = self.monotonic() + garbage_every_seconds
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), every_seconds)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            garbage = self.monotonic() >= garbage_at
            if garbage:
                garbage_at = self.monotonic() + garbage_every_seconds
            duties = (self.check_liveness, self.repairer.round, self.tiering.round, self.auditor.round,
                      *((self.collect_garbage,) if garbage else ()))
            for duty in duties:
                try:
                    duty()
                except Exception:  # noqa: BLE001 - the next round tries again
                    log.exception("%s failed", duty.__name__)

    # ---- leader-local answers

    def _begin_put(self, op) -> pb.MetaReply:
        request = op.begin_put
        if len(request.chunks) > BEGIN_CHUNKS_MAX:
            raise Refused(pb.INVALID_ARGUMENT, f"{len(request.chunks)} chunks in one BeginPut; at most "
                                               f"{BEGIN_CHUNKS_MAX} (split the request)")
        exists, placements, bucket = self.state.begin_put(
            request.bucket, [(c.id, c.length) for c in request.chunks], request.seed)
        return pb.MetaReply(tag=op.tag, begin_put=pb.BeginPutReply(
            exists=exists, placements=[pb.Placement(chunk=c, nodes=n) for c, n in placements.items()],
            profile=bucket.profile, inline_max_bytes=bucket.inline_max_bytes))

    def _restore(self, op) -> pb.MetaReply:
        return pb.MetaReply(tag=op.tag, restore=self.tiering.restore(op.restore))

    def _replace(self, op) -> pb.MetaReply:
        request = op.replace
        nodes = self.state.replace(list(request.nodes), list(request.failed), request.seed)
        return pb.MetaReply(tag=op.tag, replace=pb.ReplaceReply(nodes=nodes))

    # ---- reads

    def _read(self, op) -> pb.MetaReply:
        try:
            return getattr(self, f"_read_{op.WhichOneof('op')}")(op)
        except Exception as error:  # noqa: BLE001
            return self._failure(op, error)

    def _read_get_object(self, op) -> pb.MetaReply:
        request = op.get_object
        manifest = self.state.get_object(request.bucket, request.key, request.version)
        reply = pb.GetObjectReply(manifest=manifest)
        if request.with_chunks:
            seen, node_ids = set(), set()
            for ref in manifest.chunks:
                if ref.id in seen:
                    continue
                seen.add(ref.id)
                chunk = self.state.chunk(ref.id)
                if chunk is None:
                    raise Refused(pb.MISSING_CHUNKS, f"chunk {ref.id.hex()[:16]} has no record", [ref.id])
                reply.chunk_ids.append(ref.id)
                reply.chunks.append(chunk)
                node_ids.update(chunk.nodes)
            reply.nodes_version = self.state.nodes_version()
            if request.nodes_version != reply.nodes_version:  # (the client's table is current: it has them)
                for node_id in sorted(node_ids):
                    record = self.state.node_record(node_id)
                    if record is not None:
                        reply.nodes.add().MergeFromString(record)
            if not request.stale and self.driver.is_leader:  # (reads of followers' state are not recorded)
                self.tiering.note_read(request.bucket, request.key, manifest, list(zip(reply.chunk_ids, reply.chunks)))
        return pb.MetaReply(tag=op.tag, get_object=reply)

    def _read_list_objects(self, op) -> pb.MetaReply:
        request = op.list_objects
        entries, prefixes, next_key = self.state.list_objects(
            request.bucket, request.prefix, request.delimiter, request.start_after, request.max_keys)
        reply = pb.ListObjectsReply(common_prefixes=prefixes, next=next_key)
        for key, head in entries:
            entry = reply.entries.add(key=key)
            entry.head.MergeFromString(head)
        return pb.MetaReply(tag=op.tag, list_objects=reply)

    def _read_get_chunks(self, op) -> pb.MetaReply:
        ids = op.get_chunks.ids
        if len(ids) > GET_CHUNKS_MAX:
            raise Refused(pb.INVALID_ARGUMENT, f"{len(ids)} chunk ids in one GetChunks; at most {GET_CHUNKS_MAX}")
        reply = pb.GetChunksReply()
        for chunk_id in ids:
            chunk = self.state.chunk(names.check_chunk_id(chunk_id))
            reply.found.append(chunk is not None)
            reply.chunks.append(chunk or pb.Chunk())
        return pb.MetaReply(tag=op.tag, get_chunks=reply)

    def _read_list_buckets(self, op) -> pb.MetaReply:
        return pb.MetaReply(tag=op.tag, list_buckets=pb.ListBucketsReply(buckets=self.state.buckets()))

    def _read_list_nodes(self, op) -> pb.MetaReply:
        return pb.MetaReply(tag=op.tag, list_nodes=pb.ListNodesReply(nodes=self.state.nodes(),
                                                                     nodes_version=self.state.nodes_version()))

    def _read_list_tier_targets(self, op) -> pb.MetaReply:
        return pb.MetaReply(tag=op.tag, list_tier_targets=pb.ListTierTargetsReply(targets=self.state.tier_targets()))

    def _read_get_stats(self, op) -> pb.MetaReply:
        chunks, size = self.state.chunk_counts()
        repair = pb.RepairStats()
        repair.CopyFrom(self.repairer.stats)
        repair.audited, repair.audit_missing, repair.audit_passes = \
            self.auditor.audited, self.auditor.missing, self.auditor.passes
        return pb.MetaReply(tag=op.tag, stats=pb.StatsReply(chunks=chunks, chunk_bytes=size, leader=self.driver.leader,
                                                            applied=self.state.applied, repair=repair,
                                                            tier=self.tiering.current_stats()))


def _moved(old, new) -> bool:
    """Whether a heartbeat's disks differ enough from the record to be worth a Raft entry."""
    if len(old) != len(new):
        return True
    for a, b in zip(old, new):
        if a.path != b.path or a.healthy != b.healthy or a.capacity_bytes != b.capacity_bytes:
            return True
        if abs(a.free_bytes - b.free_bytes) > CAPACITY_REPORT_FRACTION * max(a.capacity_bytes, 1):
            return True
    return False
