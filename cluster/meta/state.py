"""The metadata state machine: buckets, objects, chunks and data nodes, over an ordered disk.

Deterministic: `apply` depends only on the state and the command (time comes in the command, from
the proposing leader, and is made monotonic here), so every replica computes the same state.
An entry carries a MetaEntry: the commands that reached the leader together. Each applied entry
is one atomic disk write that includes the last-applied index, so a restart skips entries
already applied. A command that fails validation changes nothing (its write holds
only the applied index and its remembered result).

Key layout (bytes; bucket names and keys never contain NUL, UTF-8 never contains 0xFF):
    A                          last applied index
    T                          the state's clock: the largest now_ms applied
    S                          the last node id handed out
    K                          chunk count and chunk bytes (two u64), for status and dedup figures
    B<bucket>                  Bucket
    O<bucket>\0<key>           flag byte (1: delete marker) + ObjectHead of the current version
    M<bucket>\0<key>\0<ver>    Manifest of each retained version (ver: 8 bytes big-endian)
    C<chunk id>                Chunk
    G<ms><chunk id>            a chunk without references since ms (the garbage queue)
    N<node id>                 Node
    D<chunk id><index>         Damage: a fragment reported bad or missing by its node
    R<op id>                   MetaResult of an applied command (retries get it back)
    Z<name>                    TierTarget (a cold tier; credentials only by reference)
    Y<name>                    how many COLD chunks the tier target holds (u64)
    W<name>\0<chunk id>         tier garbage: an object in that tier no chunk points to (u64 settle ms, see
                               TierDeleted; u64 not before ms: a re-heated chunk's copy waits for readers)
    U<name>\0<chunk id>         an upload of a hot chunk to that tier was ordered (TierIntent)
    Q<ms><op id>               when that result was stored (results expire after RESULTS_TTL_MS)
"""
from __future__ import annotations

import random
import struct
from collections import Counter
from typing import Iterator

import blake3

from cluster.meta import names
from cluster.meta.placement import NotEnoughNodes, candidate, place, place_many
from cluster.proto import meta_pb2 as pb
from cluster.storage.disk import SnapshotDisk
from cluster.tier.targets import TierConfigError, TierTarget

RESULTS_TTL_MS = 24 * 3600 * 1000
COMMANDS_PER_ENTRY_MAX = 1 << 16  # versions are (index << 16) | position
LIFECYCLE_RULES_MAX = 100
RESULTS_PRUNE_EVERY = 64       # entries between prunings of old results (a scan costs more than a commit)
RESULTS_PRUNED_EACH_TIME = 16_384  # at most this many each time: more than 64 full entries add
CHUNK_BYTES_MAX = 64 << 20
LIST_KEYS_MAX = 10_000
TOUCHES_MAX = 10_000
TIER_SETTLE_MS = 10 * 60 * 1000  # a deleted tier object's entry outlives any late delete order by this
_U64 = struct.Struct(">Q")
_CHUNK_COUNTS = struct.Struct(">QQ")
_GARBAGE = struct.Struct(">QQ")  # W values: settle ms, not before ms
_OBJECT_END = b"\xff"
_LIVE, _MARKER = b"\x00", b"\x01"
PREFIX_TOKEN = "\x00"  # keys never hold NUL: a continuation token that starts with it names a prefix


class Refused(Exception):
    """A command or query that cannot be done as asked; nothing changed."""

    def __init__(self, code: int, message: str, missing: list[bytes] = ()):
        super().__init__(message)
        self.code, self.missing = code, list(missing)


def _u64(value: int) -> bytes:
    return _U64.pack(value)


def bucket_key(bucket: str) -> bytes:
    return b"B" + bucket.encode()


def object_key(bucket: str, key: str) -> bytes:
    return b"O" + bucket.encode() + b"\0" + key.encode()


def manifest_key(bucket: str, key: str, version: int) -> bytes:
    return b"M" + bucket.encode() + b"\0" + key.encode() + b"\0" + _u64(version)


def chunk_key(chunk_id: bytes) -> bytes:
    return b"C" + chunk_id


def tier_garbage_key(target: str, chunk_id: bytes) -> bytes:
    return b"W" + target.encode() + b"\0" + chunk_id


def tier_intent_key(target: str, chunk_id: bytes) -> bytes:
    return b"U" + target.encode() + b"\0" + chunk_id


def tier_garbage_range(target: str = "") -> tuple[bytes, bytes]:
    return _tier_range(b"W", target)


def tier_intent_range(target: str = "") -> tuple[bytes, bytes]:
    return _tier_range(b"U", target)


def _tier_range(kind: bytes, target: str) -> tuple[bytes, bytes]:
    """The keys of one kind (W, U) for one target, or for all."""
    if not target:
        return kind, bytes([kind[0] + 1])
    return kind + target.encode() + b"\0", kind + target.encode() + b"\1"


def _garbage_value(settle_ms: int = 0, not_before_ms: int = 0) -> bytes:
    return _u64(settle_ms) + _u64(not_before_ms)


def node_key(node_id: int) -> bytes:
    return b"N" + _u64(node_id)


class Batch:
    """Writes not yet on disk, with reads that see them. An entry's batch collects its commands'
    writes; each command writes into a child batch first, merged only if the command succeeds."""

    def __init__(self, disk: SnapshotDisk, parent: "Batch | None" = None):
        self.disk, self.parent = disk, parent
        self.puts: dict[bytes, bytes] = {}
        self.deletes: set[bytes] = set()

    def get(self, key: bytes) -> bytes | None:
        layer = self
        while layer is not None:
            value = layer.puts.get(key)
            if value is not None:
                return value
            if key in layer.deletes:
                return None
            layer = layer.parent
        return self.disk.get(key)

    def _layers(self) -> list["Batch"]:
        layers, layer = [], self
        while layer is not None:
            layers.append(layer)
            layer = layer.parent
        return layers[::-1]  # oldest first

    def _pending(self, start: bytes, end: bytes) -> dict[bytes, bytes | None]:
        """Unwritten changes to keys in [start, end): value, or None for a delete."""
        pending: dict[bytes, bytes | None] = {}
        for layer in self._layers():
            for key in layer.deletes:
                if start <= key < end:
                    pending[key] = None
            for key, value in layer.puts.items():
                if start <= key < end:
                    pending[key] = value
        return pending

    def items(self, start: bytes, end: bytes) -> list[tuple[bytes, bytes]]:
        """Every item in [start, end) as it will be: for small ranges (the node registry)."""
        pending = self._pending(start, end)
        merged = {k: v for k, v in self.disk.scan(start, end) if k not in pending}
        merged.update({k: v for k, v in pending.items() if v is not None})
        return sorted(merged.items())

    def any_in(self, start: bytes, end: bytes) -> bool:
        """Whether [start, end) will hold any key; reads the disk only up to the first one."""
        pending = self._pending(start, end)
        if any(v is not None for v in pending.values()):
            return True
        return any(key not in pending for key, _ in self.disk.scan(start, end))

    def put(self, key: bytes, value: bytes) -> None:
        self.deletes.discard(key)
        self.puts[key] = value

    def delete(self, key: bytes) -> None:
        self.puts.pop(key, None)
        self.deletes.add(key)

    def merge(self, child: "Batch") -> None:
        """Takes a child batch's writes as its own (a child's puts and deletes never share a key)."""
        for key in child.deletes:
            self.puts.pop(key, None)
        self.deletes.difference_update(child.puts)
        self.deletes.update(child.deletes)
        self.puts.update(child.puts)

    def commit(self) -> None:
        # One atomic write of distinct keys: their order changes nothing (the puts keep the
        # order the commands made them; the few deletes are sorted, as a set's order is not fixed).
        self.disk.write(self.puts.items(), sorted(self.deletes), sync=False)


class MetaState:
    """The replicated metadata. `apply` is the Raft state machine's; the rest are queries."""

    def __init__(self, disk: SnapshotDisk):
        self.disk = disk
        self._load()

    def _load(self) -> None:
        """In-memory caches of what the disk holds (rebuilt at start and after a restore)."""
        self.applied = self._load_u64(b"A")
        self._clock = self._load_u64(b"T")
        # (placement candidates, {node id: record bytes}, the table's version)
        self._nodes_cache: tuple[list, dict, int] | None = None

    def _load_u64(self, key: bytes) -> int:
        raw = self.disk.get(key)
        return _U64.unpack(raw)[0] if raw else 0

    # ---- the state machine interface

    def apply(self, index: int, data: bytes) -> bytes:
        """Applies a MetaEntry (commands in order, one disk write for all of them); returns
        the encoded MetaResults."""
        if index <= self.applied:
            return b""  # applied before a restart; nobody waits for this result
        batch = Batch(self.disk)
        results = pb.MetaResults()
        try:
            entry = pb.MetaEntry.FromString(data)
        except Exception:  # noqa: BLE001 - a garbled entry is refused, like any bad command
            entry = None
            results.results.add(code=pb.INVALID_ARGUMENT, message="undecodable entry")
        if entry is not None and len(entry.commands) > COMMANDS_PER_ENTRY_MAX:
            entry = None
            results.results.add(code=pb.INVALID_ARGUMENT, message="too many commands in one entry")
        nodes_changed = False
        for position, command in enumerate(entry.commands if entry is not None else ()):
            result = self._apply_once(batch, (index << 16) | position, command)
            results.results.append(result)
            nodes_changed |= command.WhichOneof("command") in ("register_node", "node_report", "mark_node")
        if index % RESULTS_PRUNE_EVERY == 0:  # by log index: every replica prunes at the same entries
            self._prune_results(batch)
        batch.put(b"T", _u64(self._clock))
        batch.put(b"A", _u64(index))
        batch.commit()
        self.applied = index
        if nodes_changed:
            self._nodes_cache = None
        return results.SerializeToString()

    def snapshot(self) -> bytes:
        return self.disk.export_state()

    def restore(self, data: bytes) -> None:
        self.disk.import_state(data)
        self._load()

    # ---- commands

    def _apply_once(self, batch: Batch, version: int, command: pb.MetaCommand) -> pb.MetaResult:
        """A command retried under its op id gets its first result back and changes nothing."""
        if command.op_id:
            known = batch.get(b"R" + command.op_id)
            if known is not None:
                return pb.MetaResult.FromString(known)
        result = self._apply_command(batch, version, command)
        if command.op_id:
            self._remember(batch, command.op_id, result.SerializeToString())
        return result

    def _apply_command(self, batch: Batch, version: int, command: pb.MetaCommand) -> pb.MetaResult:
        now = self._clock = max(self._clock, command.now_ms)  # stored once per entry, by apply
        kind = command.WhichOneof("command")
        handler = getattr(self, f"_do_{kind}", None) if kind else None
        if handler is None:
            return pb.MetaResult(code=pb.INVALID_ARGUMENT, message=f"unknown command {kind!r}")
        scratch = Batch(self.disk, batch)  # the command's own writes, kept only if it succeeds
        try:
            result = handler(scratch, version, now, getattr(command, kind))
        except Refused as refused:
            return pb.MetaResult(code=refused.code, message=str(refused), missing=refused.missing)
        except names.InvalidName as error:
            return pb.MetaResult(code=pb.INVALID_ARGUMENT, message=str(error))
        batch.merge(scratch)
        return result

    def _remember(self, batch: Batch, op_id: bytes, result: bytes) -> None:
        if len(op_id) > 64:
            return  # refused as INVALID_ARGUMENT by the service; never stored
        batch.put(b"R" + op_id, result)
        batch.put(b"Q" + _u64(self._clock) + op_id, b"")

    def _prune_results(self, batch: Batch) -> None:
        """Forgets results older than RESULTS_TTL_MS, a bounded number at a time."""
        expired = _u64(max(0, self._clock - RESULTS_TTL_MS))
        for key, _ in _take(self.disk.scan(b"Q", b"Q" + expired), RESULTS_PRUNED_EACH_TIME):
            batch.delete(key)
            batch.delete(b"R" + key[9:])

    def _do_create_bucket(self, batch: Batch, version: int, now: int, c: pb.CreateBucket) -> pb.MetaResult:
        names.check_bucket(c.name)
        k, m = names.check_profile(c.profile.k, c.profile.m)
        if batch.get(bucket_key(c.name)) is not None:
            raise Refused(pb.BUCKET_EXISTS, f"bucket {c.name!r} exists")
        bucket = pb.Bucket(name=c.name, profile=pb.ErasureProfile(k=k, m=m), inline_max_bytes=c.inline_max_bytes,
                           versioning=c.versioning, quota_bytes=c.quota_bytes, quota_objects=c.quota_objects,
                           created_ms=now)
        batch.put(bucket_key(c.name), bucket.SerializeToString())
        return pb.MetaResult()

    def _do_delete_bucket(self, batch: Batch, version: int, now: int, c: pb.DeleteBucket) -> pb.MetaResult:
        self._bucket(batch, c.name)
        prefix = b"M" + c.name.encode() + b"\0"
        if batch.any_in(prefix, prefix + _OBJECT_END):
            raise Refused(pb.BUCKET_NOT_EMPTY, f"bucket {c.name!r} still holds objects or versions")
        batch.delete(bucket_key(c.name))
        return pb.MetaResult()

    def _do_commit_put(self, batch: Batch, version: int, now: int, c: pb.CommitPut) -> pb.MetaResult:
        bucket = self._bucket(batch, c.bucket)
        names.check_key(c.key)
        manifest = c.manifest  # the command is this apply's own copy, decoded from the entry
        self._check_manifest(bucket, manifest)
        self._add_references(batch, now, manifest, c.placements, bucket.profile)
        manifest.head.version, manifest.head.modified_ms, manifest.head.delete_marker = version, now, False
        manifest.head.read_ms = 0  # only the leader records reads (a client's value would stop read-age rules)
        manifest.profile.CopyFrom(bucket.profile)
        self._install(batch, bucket, c.bucket, c.key, manifest, now)
        return pb.MetaResult(head=manifest.head)

    def _do_delete_object(self, batch: Batch, version: int, now: int, c: pb.DeleteObject) -> pb.MetaResult:
        bucket = self._bucket(batch, c.bucket)
        names.check_key(c.key)
        current = self._head(batch, c.bucket, c.key)
        if current is None or current.delete_marker:
            raise Refused(pb.NO_SUCH_KEY, f"no object {c.key!r} in bucket {c.bucket!r}")
        if bucket.versioning:
            marker = pb.Manifest(head=pb.ObjectHead(version=version, modified_ms=now, delete_marker=True))
            self._install(batch, bucket, c.bucket, c.key, marker, now)
            return pb.MetaResult(head=marker.head)
        self._drop_version(batch, now, c.bucket, c.key, current.version)
        batch.delete(object_key(c.bucket, c.key))
        self._count(batch, bucket, -1, -current.size)
        return pb.MetaResult()

    def _do_copy_object(self, batch: Batch, version: int, now: int, c: pb.CopyObject) -> pb.MetaResult:
        bucket = self._bucket(batch, c.bucket)
        names.check_key(c.key)
        source = self.get_object(c.source_bucket, c.source_key, 0, batch=batch)
        manifest = pb.Manifest()  # its chunks keep the profile they were coded with
        manifest.CopyFrom(source)
        for chunk_id, count in Counter(ref.id for ref in manifest.chunks).items():
            self._reference(batch, chunk_id, count)
        manifest.head.version, manifest.head.modified_ms = version, now
        self._install(batch, bucket, c.bucket, c.key, manifest, now)
        return pb.MetaResult(head=manifest.head)

    def _do_register_node(self, batch: Batch, version: int, now: int, c: pb.RegisterNode) -> pb.MetaResult:
        node = pb.Node()
        node.CopyFrom(c.node)
        if not node.address:
            raise Refused(pb.INVALID_ARGUMENT, "a data node registers with its address")
        if node.id == 0:
            # A node without an id has no id file: new disks. Whatever an earlier node at this
            # address held is gone, so that node is DEAD now (its fragments get repaired), and
            # this one is a new node.
            for key, value in batch.items(b"N", b"O"):
                earlier = pb.Node.FromString(value)
                if earlier.address == node.address and earlier.state != pb.DEAD:
                    earlier.state = pb.DEAD
                    batch.put(key, earlier.SerializeToString())
            node.id = _U64.unpack(batch.get(b"S") or _u64(0))[0] + 1
        if node.id > _U64.unpack(batch.get(b"S") or _u64(0))[0]:
            batch.put(b"S", _u64(node.id))  # never hand out an id a node already uses
        raw = batch.get(node_key(node.id))
        old = pb.Node.FromString(raw) if raw else None
        node.registered_ms = old.registered_ms if old else now
        node.heartbeat_ms = now
        node.state = pb.DRAINING if old is not None and old.state == pb.DRAINING else pb.UP
        batch.put(node_key(node.id), node.SerializeToString())
        return pb.MetaResult(node_id=node.id)

    def _do_node_report(self, batch: Batch, version: int, now: int, c: pb.NodeReport) -> pb.MetaResult:
        raw = batch.get(node_key(c.id))
        if raw is None:
            raise Refused(pb.UNKNOWN_NODE, f"no data node {c.id}")
        node = pb.Node.FromString(raw)
        del node.disks[:]
        node.disks.extend(c.disks)
        node.state, node.heartbeat_ms = c.state, now
        batch.put(node_key(c.id), node.SerializeToString())
        return pb.MetaResult(node_id=c.id)

    def _do_mark_node(self, batch: Batch, version: int, now: int, c: pb.MarkNode) -> pb.MetaResult:
        raw = batch.get(node_key(c.id))
        if raw is None:
            raise Refused(pb.UNKNOWN_NODE, f"no data node {c.id}")
        node = pb.Node.FromString(raw)
        if node.state != c.expect:
            return pb.MetaResult(node_id=c.id, message=f"node {c.id} is {pb.NodeState.Name(node.state)} now; unchanged")
        node.state = c.state
        batch.put(node_key(c.id), node.SerializeToString())
        return pb.MetaResult(node_id=c.id)

    def _do_update_placement(self, batch: Batch, version: int, now: int, c: pb.UpdatePlacement) -> pb.MetaResult:
        raw = batch.get(chunk_key(names.check_chunk_id(c.chunk)))
        if raw is None:
            return pb.MetaResult(message="the chunk is gone; nothing to update")
        chunk = pb.Chunk.FromString(raw)
        if list(chunk.nodes) != list(c.expect):
            return pb.MetaResult(message="the placement moved meanwhile; unchanged")
        self._check_placement(c.chunk, list(c.nodes), chunk.profile, self._nodes()[1])
        del chunk.nodes[:]
        chunk.nodes.extend(c.nodes)
        batch.put(chunk_key(c.chunk), chunk.SerializeToString())
        for key, _ in batch.items(b"D" + c.chunk, b"D" + c.chunk + b"\xff"):
            batch.delete(key)
        return pb.MetaResult()

    def _do_set_tier_target(self, batch: Batch, version: int, now: int, c: pb.SetTierTarget) -> pb.MetaResult:
        target = c.target
        if c.remove:
            if batch.get(b"Z" + target.name.encode()) is None:
                raise Refused(pb.INVALID_ARGUMENT, f"no tier target {target.name!r}")
            users = [b.name for b in (pb.Bucket.FromString(raw) for _, raw in batch.items(b"B", b"C"))
                     if any(rule.target == target.name for rule in b.lifecycle)]
            if users:
                raise Refused(pb.INVALID_ARGUMENT, f"tier target {target.name!r} is in the lifecycle of {users}")
            if self._tier_holds(batch, target.name):
                raise Refused(pb.INVALID_ARGUMENT, f"tier target {target.name!r} still holds cold chunks "
                                                   "(or objects waiting to be deleted)")
            batch.delete(b"Z" + target.name.encode())
            return pb.MetaResult()
        try:
            TierTarget(target.name, target.url, target.bucket, target.prefix, target.credentials,
                       target.addressing or "path", target.region or "us-east-1").validate()
        except TierConfigError as error:
            raise Refused(pb.INVALID_ARGUMENT, str(error)) from None
        known = batch.get(b"Z" + target.name.encode())
        if known is not None:
            old = pb.TierTarget.FromString(known)
            if (old.bucket, old.prefix) != (target.bucket, target.prefix) and self._tier_holds(batch, target.name):
                raise Refused(pb.INVALID_ARGUMENT, f"tier target {target.name!r} holds objects under "
                                                   f"{old.bucket}/{old.prefix}: its bucket and prefix cannot change "
                                                   "(its endpoint and credentials can)")
        stored = pb.TierTarget()
        stored.CopyFrom(target)
        stored.addressing, stored.region = target.addressing or "path", target.region or "us-east-1"
        batch.put(b"Z" + target.name.encode(), stored.SerializeToString())
        return pb.MetaResult()

    def _do_set_lifecycle(self, batch: Batch, version: int, now: int, c: pb.SetLifecycle) -> pb.MetaResult:
        bucket = self._bucket(batch, c.bucket)
        if len(c.rules) > LIFECYCLE_RULES_MAX:
            raise Refused(pb.INVALID_ARGUMENT, f"{len(c.rules)} lifecycle rules; at most {LIFECYCLE_RULES_MAX}")
        for rule in c.rules:
            if batch.get(b"Z" + rule.target.encode()) is None:
                raise Refused(pb.INVALID_ARGUMENT, f"no tier target {rule.target!r} (add it first)")
            if rule.prefix:
                names.check_key(rule.prefix)
            if not (rule.after_created_seconds or rule.after_read_seconds):
                raise Refused(pb.INVALID_ARGUMENT, "a rule needs after_created_seconds or after_read_seconds")
        del bucket.lifecycle[:]
        bucket.lifecycle.extend(c.rules)
        batch.put(bucket_key(c.bucket), bucket.SerializeToString())
        return pb.MetaResult()

    def _do_transition_chunk(self, batch: Batch, version: int, now: int, c: pb.TransitionChunk) -> pb.MetaResult:
        raw = batch.get(chunk_key(names.check_chunk_id(c.chunk)))
        if batch.get(b"Z" + c.target.encode()) is None:
            raise Refused(pb.INVALID_ARGUMENT, f"no tier target {c.target!r}")
        if batch.get(tier_garbage_key(c.target, c.chunk)) is not None:
            # an earlier copy there is being deleted: a late delete could remove this upload
            return pb.MetaResult(message="the chunk's tier object is being deleted; unchanged")
        if raw is None:  # forgotten while it was uploaded: the upload is tier garbage
            batch.put(tier_garbage_key(c.target, c.chunk), _garbage_value())
            batch.delete(tier_intent_key(c.target, c.chunk))
            return pb.MetaResult(message="the chunk is gone; its upload goes as tier garbage")
        chunk = pb.Chunk.FromString(raw)
        if chunk.state != pb.HOT or list(chunk.nodes) != list(c.expect):
            return pb.MetaResult(message="the chunk is not hot where expected; unchanged")
        chunk.state, chunk.tier = pb.COLD, c.target
        batch.delete(tier_intent_key(c.target, c.chunk))
        del chunk.nodes[:]  # its fragments become orphans: the data nodes delete them
        batch.put(chunk_key(c.chunk), chunk.SerializeToString())
        for key, _ in batch.items(b"D" + c.chunk, b"D" + c.chunk + b"\xff"):
            batch.delete(key)
        batch.put(b"Y" + c.target.encode(), _u64(self._cold_count(batch, c.target) + 1))
        return pb.MetaResult()

    def _leave_tier(self, batch: Batch, chunk_id: bytes, target: str, not_before_ms: int = 0) -> None:
        batch.put(b"Y" + target.encode(), _u64(max(0, self._cold_count(batch, target) - 1)))
        batch.put(tier_garbage_key(target, chunk_id), _garbage_value(not_before_ms=not_before_ms))

    def _do_reheat_chunk(self, batch: Batch, version: int, now: int, c: pb.ReheatChunk) -> pb.MetaResult:
        raw = batch.get(chunk_key(names.check_chunk_id(c.chunk)))
        if raw is None:
            return pb.MetaResult(message="the chunk is gone; its fragments are orphans")
        chunk = pb.Chunk.FromString(raw)
        if chunk.state != pb.COLD:
            return pb.MetaResult(message="the chunk is not cold; unchanged")
        self._check_placement(c.chunk, list(c.nodes), chunk.profile, self._nodes()[1])
        self._leave_tier(batch, c.chunk, chunk.tier, now + c.grace_ms)
        chunk.state, chunk.tier = pb.HOT, ""
        chunk.nodes.extend(c.nodes)
        batch.put(chunk_key(c.chunk), chunk.SerializeToString())
        return pb.MetaResult()

    def _do_tier_intent(self, batch: Batch, version: int, now: int, c: pb.TierIntent) -> pb.MetaResult:
        if batch.get(b"Z" + c.target.encode()) is None:
            raise Refused(pb.INVALID_ARGUMENT, f"no tier target {c.target!r}")
        missing = []
        for chunk_id in c.chunks:
            if batch.get(chunk_key(names.check_chunk_id(chunk_id))) is None:
                missing.append(chunk_id)  # gone: its upload must not be sent (nothing would delete it)
            else:
                batch.put(tier_intent_key(c.target, chunk_id), b"")
        return pb.MetaResult(missing=missing)

    def _do_tier_deleted(self, batch: Batch, version: int, now: int, c: pb.TierDeleted) -> pb.MetaResult:
        for chunk_id in c.chunks:
            key = tier_garbage_key(c.target, names.check_chunk_id(chunk_id))
            raw = batch.get(key)
            if raw is None:
                continue
            settle, not_before = _GARBAGE.unpack(raw)
            if not c.final and settle == 0:
                batch.put(key, _garbage_value(now + TIER_SETTLE_MS, not_before))
            elif c.final and 0 < settle <= now:
                batch.delete(key)
        return pb.MetaResult()

    def _do_touch_objects(self, batch: Batch, version: int, now: int, c: pb.TouchObjects) -> pb.MetaResult:
        if len(c.objects) > TOUCHES_MAX:
            raise Refused(pb.INVALID_ARGUMENT, f"{len(c.objects)} objects in one TouchObjects; at most {TOUCHES_MAX}")
        for touch in c.objects:
            raw = batch.get(object_key(touch.bucket, touch.key))
            if raw is None or raw[:1] == _MARKER:
                continue
            head = pb.ObjectHead.FromString(raw[1:])
            if head.version == touch.version and head.read_ms < now:
                head.read_ms = now
                batch.put(object_key(touch.bucket, touch.key), _LIVE + head.SerializeToString())
        return pb.MetaResult()

    def _tier_holds(self, batch: Batch, target: str) -> bool:
        """Whether objects in the target may be ours: cold chunks, uploads, or garbage to delete."""
        return bool(self._cold_count(batch, target) or batch.any_in(*tier_garbage_range(target))
                    or batch.any_in(*tier_intent_range(target)))

    def _cold_count(self, batch: Batch, target: str) -> int:
        raw = batch.get(b"Y" + target.encode())
        return _U64.unpack(raw)[0] if raw else 0

    def _do_forget_chunks(self, batch: Batch, version: int, now: int, c: pb.ForgetChunks) -> pb.MetaResult:
        targets = [key[1:].decode() for key, _ in batch.items(b"Z", b"Z\xff")]
        for chunk_id in c.chunks:
            raw = batch.get(chunk_key(chunk_id))
            if raw is None:
                continue
            chunk = pb.Chunk.FromString(raw)
            if chunk.refs == 0:  # a commit may have brought it back meanwhile
                batch.delete(chunk_key(chunk_id))
                batch.delete(b"G" + _u64(chunk.unreferenced_ms) + chunk_id)
                for index in range(len(chunk.nodes)):  # its damage reports go with it
                    batch.delete(b"D" + chunk_id + bytes([index]))
                if chunk.tier:  # its copy in the tier goes too
                    self._leave_tier(batch, chunk_id, chunk.tier)
                for target in targets:  # and uploads that never became COLD
                    intent = tier_intent_key(target, chunk_id)
                    if batch.get(intent) is not None:
                        batch.delete(intent)
                        batch.put(tier_garbage_key(target, chunk_id), _garbage_value())
                self._count_chunks(batch, -1, -chunk.length)
        return pb.MetaResult()

    def _do_report_damage(self, batch: Batch, version: int, now: int, c: pb.ReportDamage) -> pb.MetaResult:
        """Records damaged or missing fragments that the chunk's placement puts on the reporting
        node (other reports are stale: the fragment has moved). Repair reads them."""
        for damage in c.damage:
            names.check_chunk_id(damage.chunk)
            raw = batch.get(chunk_key(damage.chunk))
            if raw is None:
                continue
            chunk = pb.Chunk.FromString(raw)
            if damage.index < len(chunk.nodes) and chunk.nodes[damage.index] == damage.node:
                record = pb.Damage(chunk=damage.chunk, index=damage.index, node=damage.node, reason=damage.reason[:256])
                batch.put(b"D" + damage.chunk + bytes([damage.index]), record.SerializeToString())
        return pb.MetaResult()

    # ---- pieces of commands

    def _bucket(self, batch: Batch, name: str) -> pb.Bucket:
        raw = batch.get(bucket_key(name)) if isinstance(name, str) and name else None
        if raw is None:
            raise Refused(pb.NO_SUCH_BUCKET, f"no bucket {name!r}")
        return pb.Bucket.FromString(raw)

    def _head(self, batch: Batch, bucket: str, key: str) -> pb.ObjectHead | None:
        raw = batch.get(object_key(bucket, key))
        return pb.ObjectHead.FromString(raw[1:]) if raw is not None else None

    @staticmethod
    def _check_manifest(bucket: pb.Bucket, manifest: pb.Manifest) -> None:
        if manifest.metadata:
            names.check_metadata(dict(manifest.metadata))
        size = manifest.head.size
        if manifest.inline_data or (size == 0 and not manifest.chunks):
            if manifest.chunks:
                raise Refused(pb.INVALID_ARGUMENT, "an inline object has no chunks")
            if len(manifest.inline_data) != size or size > max(bucket.inline_max_bytes, 0):
                raise Refused(pb.INVALID_ARGUMENT, f"inline data of {len(manifest.inline_data)} bytes for a size of "
                                                   f"{size}; the bucket inlines up to {bucket.inline_max_bytes} bytes")
            if blake3.blake3(manifest.inline_data).digest() != manifest.head.blake3:
                raise Refused(pb.INVALID_ARGUMENT, "the inline data does not match the object's BLAKE3")
            return
        total = 0
        for ref in manifest.chunks:
            names.check_chunk_id(ref.id)
            if not 0 < ref.length <= CHUNK_BYTES_MAX:
                raise Refused(pb.INVALID_ARGUMENT, f"a chunk of {ref.length} bytes: 1 to {CHUNK_BYTES_MAX}")
            total += ref.length
        if total != size:
            raise Refused(pb.INVALID_ARGUMENT, f"the chunks add up to {total} bytes, the object has {size}")
        if len(manifest.head.blake3) != 32:
            raise Refused(pb.INVALID_ARGUMENT, "the object's BLAKE3 is 32 bytes")

    def _add_references(self, batch: Batch, now: int, manifest: pb.Manifest, placements, profile) -> None:
        counts, lengths = {}, {}
        for ref in manifest.chunks:
            counts[ref.id] = counts.get(ref.id, 0) + 1
            lengths[ref.id] = ref.length
        placed = {}
        for p in placements:
            if p.chunk not in counts:
                raise Refused(pb.BAD_PLACEMENT, f"a placement for chunk {p.chunk.hex()[:16]} the manifest lacks")
            placed[p.chunk] = list(p.nodes)
        missing, new_chunks, new_bytes = [], 0, 0
        known = self._nodes()[1]
        for chunk_id, count in counts.items():
            raw = batch.get(chunk_key(chunk_id))
            if raw is not None:
                if pb.Chunk.FromString(raw).length != lengths[chunk_id]:
                    raise Refused(pb.CHUNK_MISMATCH, f"chunk {chunk_id.hex()[:16]} is known with another length")
                self._reference(batch, chunk_id, count)
                continue
            nodes = placed.get(chunk_id)
            if nodes is None:
                missing.append(chunk_id)
                continue
            self._check_placement(chunk_id, nodes, profile, known)
            chunk = pb.Chunk(length=lengths[chunk_id], refs=count, state=pb.HOT, profile=profile, nodes=nodes)
            batch.put(chunk_key(chunk_id), chunk.SerializeToString())
            new_chunks, new_bytes = new_chunks + 1, new_bytes + chunk.length
        if new_chunks:
            self._count_chunks(batch, new_chunks, new_bytes)
        if missing:
            raise Refused(pb.MISSING_CHUNKS, f"{len(missing)} chunks are neither stored nor placed by this commit; "
                                             "upload them and commit again", missing)

    @staticmethod
    def _check_placement(chunk_id: bytes, nodes: list[int], profile, known) -> None:
        width = profile.k + profile.m
        if len(nodes) != width or len(set(nodes)) != width:
            raise Refused(pb.BAD_PLACEMENT, f"chunk {chunk_id.hex()[:16]}: {width} distinct nodes needed, "
                                            f"got {nodes}")
        unknown = [n for n in nodes if n not in known]
        if unknown:
            raise Refused(pb.BAD_PLACEMENT, f"chunk {chunk_id.hex()[:16]}: unknown nodes {unknown}")

    def _reference(self, batch: Batch, chunk_id: bytes, count: int) -> None:
        raw = batch.get(chunk_key(chunk_id))
        if raw is None:
            raise Refused(pb.MISSING_CHUNKS, f"chunk {chunk_id.hex()[:16]} is gone", [chunk_id])
        chunk = pb.Chunk.FromString(raw)
        if chunk.refs == 0:  # back from the garbage queue (a cold one stays in its tier)
            batch.delete(b"G" + _u64(chunk.unreferenced_ms) + chunk_id)
            chunk.state, chunk.unreferenced_ms = (pb.COLD if chunk.tier else pb.HOT), 0
        chunk.refs += count
        batch.put(chunk_key(chunk_id), chunk.SerializeToString())

    def _unreference(self, batch: Batch, now: int, chunk_id: bytes, count: int) -> None:
        raw = batch.get(chunk_key(chunk_id))
        if raw is None:
            return
        chunk = pb.Chunk.FromString(raw)
        chunk.refs = max(0, chunk.refs - count)
        if chunk.refs == 0:
            chunk.state, chunk.unreferenced_ms = pb.DELETING, now
            batch.put(b"G" + _u64(now) + chunk_id, b"")
        batch.put(chunk_key(chunk_id), chunk.SerializeToString())

    def _install(self, batch: Batch, bucket: pb.Bucket, name: str, key: str, manifest: pb.Manifest, now: int) -> None:
        """Makes `manifest` the current version, dropping or keeping the one it replaces."""
        current = self._head(batch, name, key)
        objects, size = (0 if manifest.head.delete_marker else 1), manifest.head.size
        if current is not None:
            if not bucket.versioning:
                self._drop_version(batch, now, name, key, current.version)
            if not current.delete_marker:
                objects, size = objects - 1, size - current.size
        self._count(batch, bucket, objects, size)
        # a flag byte ahead of the head lets a listing skip delete markers without decoding
        flag = _MARKER if manifest.head.delete_marker else _LIVE
        batch.put(object_key(name, key), flag + manifest.head.SerializeToString())
        batch.put(manifest_key(name, key, manifest.head.version), manifest.SerializeToString())

    def _drop_version(self, batch: Batch, now: int, name: str, key: str, version: int) -> None:
        raw = batch.get(manifest_key(name, key, version))
        if raw is None:
            return
        for chunk_id, count in Counter(ref.id for ref in pb.Manifest.FromString(raw).chunks).items():
            self._unreference(batch, now, chunk_id, count)
        batch.delete(manifest_key(name, key, version))

    def _count(self, batch: Batch, bucket: pb.Bucket, objects: int, size: int) -> None:
        bucket.objects = max(0, bucket.objects + objects)
        bucket.bytes = max(0, bucket.bytes + size)
        if (objects > 0 and bucket.quota_objects and bucket.objects > bucket.quota_objects) or \
                (size > 0 and bucket.quota_bytes and bucket.bytes > bucket.quota_bytes):
            raise Refused(pb.QUOTA_EXCEEDED, f"bucket {bucket.name!r} would hold {bucket.objects} objects, "
                                             f"{bucket.bytes} bytes: over its quota "
                                             f"({bucket.quota_objects or '-'} objects, {bucket.quota_bytes or '-'} bytes)")
        batch.put(bucket_key(bucket.name), bucket.SerializeToString())

    @staticmethod
    def _count_chunks(batch: Batch, chunks: int, size: int) -> None:
        raw = batch.get(b"K")
        count, total = _CHUNK_COUNTS.unpack(raw) if raw else (0, 0)
        batch.put(b"K", _CHUNK_COUNTS.pack(max(0, count + chunks), max(0, total + size)))

    # ---- queries

    def tier_targets(self) -> list[pb.TierTarget]:
        return [pb.TierTarget.FromString(raw) for _, raw in self.disk.scan(b"Z", b"Z\xff")]

    def cold_counts(self) -> dict[str, int]:
        return {key[1:].decode(): _U64.unpack(raw)[0] for key, raw in self.disk.scan(b"Y", b"Y\xff")}

    def tier_garbage(self, limit: int = 1000, after: bytes = b"") -> list[tuple[str, bytes, int, int]]:
        """(target, chunk id, settle ms, not before ms) entries, from just after the key `after`
        (a cursor; b"": the first). Settle 0: the object is not deleted yet, and may be from
        `not before` on."""
        start = max(after + b"\0", tier_garbage_range()[0]) if after else tier_garbage_range()[0]
        out = []
        for key, raw in _take(self.disk.scan(start, tier_garbage_range()[1]), limit):
            out.append((key[1:-33].decode(), key[-32:], *_GARBAGE.unpack(raw)))
        return out

    def tier_garbage_pending(self, target: str, chunk_id: bytes) -> bool:
        return self.disk.get(tier_garbage_key(target, chunk_id)) is not None

    def chunk_counts(self) -> tuple[int, int]:
        """(distinct chunks, their bytes)."""
        raw = self.disk.get(b"K")
        return _CHUNK_COUNTS.unpack(raw) if raw else (0, 0)

    def bucket(self, name: str) -> pb.Bucket:
        return self._bucket(Batch(self.disk), name)

    def buckets(self) -> list[pb.Bucket]:
        return [pb.Bucket.FromString(v) for _, v in self.disk.scan(b"B", b"C")]

    def get_object(self, bucket: str, key: str, version: int = 0, batch: Batch | None = None) -> pb.Manifest:
        batch = batch or Batch(self.disk)
        self._bucket(batch, bucket)
        names.check_key(key)
        read_ms = 0
        if version == 0:
            head = self._head(batch, bucket, key)
            if head is None or head.delete_marker:
                raise Refused(pb.NO_SUCH_KEY, f"no object {key!r} in bucket {bucket!r}")
            version, read_ms = head.version, head.read_ms
        raw = batch.get(manifest_key(bucket, key, version))
        if raw is None:
            raise Refused(pb.NO_SUCH_KEY, f"no version {version} of {key!r} in bucket {bucket!r}")
        manifest = pb.Manifest.FromString(raw)
        manifest.head.read_ms = read_ms  # recorded on the current version's head only
        if manifest.head.delete_marker:
            raise Refused(pb.NO_SUCH_KEY, f"version {version} of {key!r} is a delete marker")
        return manifest

    def chunk(self, chunk_id: bytes) -> pb.Chunk | None:
        raw = self.disk.get(chunk_key(chunk_id))
        return pb.Chunk.FromString(raw) if raw is not None else None

    def chunks_after(self, after: bytes, limit: int) -> list[tuple[bytes, pb.Chunk]]:
        """Up to `limit` chunk records with ids above `after`, in id order (a scan cursor)."""
        start = chunk_key(after) + b"\0" if after else b"C"
        return [(key[1:], pb.Chunk.FromString(value)) for key, value in _take(self.disk.scan(start, b"D"), limit)]

    def damage(self, limit: int = 10_000) -> list[pb.Damage]:
        return [pb.Damage.FromString(v) for _, v in _take(self.disk.scan(b"D", b"E"), limit)]

    def node(self, node_id: int) -> pb.Node | None:
        raw = self.disk.get(node_key(node_id))
        return pb.Node.FromString(raw) if raw is not None else None

    def nodes(self) -> list[pb.Node]:
        return [pb.Node.FromString(raw) for raw in self._nodes()[1].values()]  # (in id order, as stored)

    def list_objects(self, bucket: str, prefix: str = "", delimiter: str = "", start_after: str = "",
                     max_keys: int = 1000) -> tuple[list[tuple[str, bytes]], list[str], str]:
        """One page: (key, ObjectHead bytes) entries, common prefixes, and the token to continue
        after ("" at the end: a key, or a NUL and a common prefix). Delete markers are skipped;
        a common prefix counts as one key."""
        self.bucket(bucket)
        max_keys = min(max(1, max_keys or 1000), LIST_KEYS_MAX)
        base = b"O" + bucket.encode() + b"\0"
        low = base + prefix.encode()
        if start_after.startswith(PREFIX_TOKEN):  # a page ended on a common prefix: past all under it
            low = max(low, base + start_after[1:].encode() + _OBJECT_END)
        elif start_after:
            low = max(low, base + start_after.encode() + b"\0")  # just after that key
        high = base + prefix.encode() + _OBJECT_END
        entries, prefixes, last = [], [], ""
        delimiter_bytes, skip = delimiter.encode(), len(base) + len(prefix.encode())
        while len(entries) + len(prefixes) < max_keys:
            advanced = False
            for raw_key, value in self.disk.scan(low, high):
                advanced = True
                if delimiter_bytes:
                    cut = raw_key.find(delimiter_bytes, skip)
                    if cut >= 0:
                        common = raw_key[len(base):cut + len(delimiter_bytes)].decode()
                        prefixes.append(common)
                        last = PREFIX_TOKEN + common
                        low = base + common.encode() + _OBJECT_END  # past everything under it
                        break
                if value[:1] == _MARKER:
                    low = raw_key + b"\0"
                    continue
                last = raw_key[len(base):].decode()
                entries.append((last, value[1:]))
                low = raw_key + b"\0"
                if len(entries) + len(prefixes) >= max_keys:
                    break
            else:
                return entries, prefixes, ""
            if not advanced:
                return entries, prefixes, ""
        more = next(iter(self.disk.scan(low, high)), None) is not None
        return entries, prefixes, last if more else ""

    def begin_put(self, bucket: str, chunks: list[tuple[bytes, int]], seed: bytes) -> tuple[list[bool], dict[bytes, list[int]], pb.Bucket]:
        """Which chunks exist already, and placements for the others (deterministic in the seed)."""
        info = self.bucket(bucket)
        exists, wanted = [], {}  # (a dict: in order, and a request of many chunks is not quadratic)
        for chunk_id, length in chunks:
            names.check_chunk_id(chunk_id)
            known = self.chunk(chunk_id)
            if known is not None and known.length != length:
                raise Refused(pb.CHUNK_MISMATCH, f"chunk {chunk_id.hex()[:16]} is known with another length")
            exists.append(known is not None)
            if known is None:
                wanted[chunk_id] = None
        placements = {}
        if wanted:
            usable = self.usable_nodes()
            rng = random.Random(blake3.blake3(seed).digest())
            width = info.profile.k + info.profile.m
            try:
                placements = dict(zip(wanted, place_many(usable, width, len(wanted), rng)))
            except NotEnoughNodes as error:
                raise Refused(pb.NOT_ENOUGH_NODES, f"{error} (bucket profile {info.profile.k}+{info.profile.m})") from None
        return exists, placements, info

    def replace(self, nodes: list[int], failed: list[int], seed: bytes) -> list[int]:
        """A new placement keeping the fragments that did not fail."""
        if any(not 0 <= i < len(nodes) for i in failed):
            raise Refused(pb.INVALID_ARGUMENT, f"fragment indexes {failed} outside 0..{len(nodes) - 1}")
        usable = self.usable_nodes()
        by_id = {c.id: c for c in usable}
        failed_set = set(failed)
        kept = [by_id[n] for i, n in enumerate(nodes) if i not in failed_set and n in by_id]
        avoid = {n for n in nodes}
        rng = random.Random(blake3.blake3(seed).digest())
        try:
            fresh = iter(place([c for c in usable if c.id not in avoid], len(failed_set), rng, kept))
        except NotEnoughNodes as error:
            raise Refused(pb.NOT_ENOUGH_NODES, str(error)) from None
        return [next(fresh) if i in failed_set else n for i, n in enumerate(nodes)]

    def usable_nodes(self):
        """Placement candidates: nodes up, with a healthy disk that has room."""
        return self._nodes()[0]

    def node_record(self, node_id: int) -> bytes | None:
        """A node's record as stored (an encoded Node), from memory: every get's reply carries
        the records of the nodes that hold its chunks."""
        return self._nodes()[1].get(node_id)

    def nodes_version(self) -> int:
        """The node table's version: a digest of what a client routes and touches by (each
        node's id, addresses, state and orphan grace), the same on every replica. A client
        that holds the table of this version gets no node records with its reads; a heartbeat
        that only updates capacity keeps it."""
        return self._nodes()[2]

    def _nodes(self) -> tuple[list, dict, int]:
        if self._nodes_cache is None:  # dropped whenever an entry changes a node, and on restore
            usable, records, routing = [], {}, blake3.blake3()
            for _, raw in self.disk.scan(b"N", b"O"):
                node = pb.Node.FromString(raw)
                records[node.id] = raw
                routing.update(b"%d\0%s\0%s\0%d\0%r\n" % (node.id, node.address.encode(), node.data_address.encode(),
                                                           node.state, node.orphan_grace_seconds))
                if node.state != pb.UP:
                    continue
                free = sum(d.free_bytes for d in node.disks if d.healthy)
                if any(d.healthy for d in node.disks) or not node.disks:
                    usable.append(candidate(node.id, dict(node.labels), free))
            version = int.from_bytes(routing.digest()[:8], "big") or 1  # (0: the client has no table)
            self._nodes_cache = (usable, records, version)
        return self._nodes_cache

    def garbage(self, before_ms: int, limit: int = 1000) -> list[bytes]:
        """Chunks without references since before `before_ms` (the grace period is the caller's)."""
        return [key[9:] for key, _ in _take(self.disk.scan(b"G", b"G" + _u64(before_ms)), limit)]


def _take(items: Iterator, limit: int) -> list:
    taken = []
    for item in items:
        if len(taken) >= limit:
            break
        taken.append(item)
    return taken
