"""A data node's side of the cold tier: orders from the metadata leader, and recalls for clients.

- UPLOAD (the first half of a transition): rebuild a hot chunk from any k fragments (checked
  against its BLAKE3 by Fragments.read) and put it in the tier once under its content address
  (ColdStore.put checks the name again; the bucket checks the MD5 of what arrived). Only after the
  node answers does the leader record the chunk COLD (TransitionChunk); its fragments are then
  orphans, deleted by the data nodes' collectors. A crash at any step leaves the hot copy, or the
  hot copy and a verified cold copy, or the cold copy: never neither.
- REHEAT: get a cold chunk from the tier (verified), code it, and store its k+m fragments on the
  nodes the leader chose; the leader then records it HOT there (ReheatChunk).
- DELETE: remove a tier object no chunk record points to, unless the order is too old to start
  (a late delete could otherwise remove a newer upload of the same chunk: see state.TierDeleted).
- Recall: a client's read of a cold chunk; the bytes are verified here and again by the client.

Tier targets are looked up by name through the metadata leader, and the credentials they name
are resolved here, in this process's environment or files: a target never carries keys.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable

from cluster import faultpoints
from cluster.client.errors import CairnError
from cluster.client.fragments import Fragments
from cluster.client.meta import MetaClient
from cluster.data.repairs import check_batch
from cluster.data.wire import DataError
from cluster.proto import data_pb2 as pb
from cluster.proto import meta_pb2 as meta_pb
from cluster.tier.store import CHUNK_BYTES_MAX, ColdStore, CorruptRemote, NotInTier, TierError
from cluster.tier.targets import TierConfigError, TierTarget

ORDERS_PER_CALL_MAX = 64
CHUNK_BYTES_PER_CALL_MAX = 256 << 20
CHUNKS_AT_ONCE = 4          # orders of one batch run concurrently (the tier's latency overlaps)
TARGETS_TTL_SECONDS = 30.0  # tier targets are looked up again after this long
RECALLS_AT_ONCE = 8         # recalls in flight on this node; more wait (each holds up to a chunk)


def check_order(order: pb.TierOrder) -> None:
    if len(order.chunk) != 32:
        raise ValueError("a chunk id is 32 bytes")
    if not order.target:
        raise ValueError("no tier target named")
    if order.kind == pb.TierOrder.DELETE:
        return
    width = order.k + order.m
    if not (1 <= order.k and 1 <= order.m and width <= 255):
        raise ValueError(f"bad profile {order.k}+{order.m}")
    if not 0 < order.length <= CHUNK_BYTES_MAX:
        raise ValueError(f"bad chunk length {order.length}: 1 to {CHUNK_BYTES_MAX}")
    if len(order.nodes) != width or len(order.data_addresses) != width or len(set(order.nodes)) != width:
        raise ValueError(f"a {order.k}+{order.m} chunk needs {width} distinct nodes and their addresses")


def check_request(request: pb.TierRequest) -> None:
    check_batch(request.orders, check_order, ORDERS_PER_CALL_MAX, CHUNK_BYTES_PER_CALL_MAX)


def check_recall(request: pb.RecallRequest) -> None:
    if len(request.chunk) != 32:
        raise ValueError("a chunk id is 32 bytes")
    if not 0 < request.length <= CHUNK_BYTES_MAX:
        raise ValueError(f"bad chunk length {request.length}: 1 to {CHUNK_BYTES_MAX}")
    if not request.target:
        raise ValueError("no tier target named")


def preload() -> None:
    """Loads the S3 SDK (boto3) and its S3 model, which the first tier order would otherwise
    wait for. The client made here is never used (no credentials, no endpoint that answers)."""
    try:
        import boto3
        boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                     aws_access_key_id="none", aws_secret_access_key="none")
    except Exception:  # noqa: BLE001 - not installed, or broken: tier orders will say so
        pass


def recall_status(error: TierError):
    """The gRPC status a failed recall answers with (the client tells them apart)."""
    import grpc

    if isinstance(error, NotInTier):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, CorruptRemote):
        return grpc.StatusCode.DATA_LOSS
    return grpc.StatusCode.UNAVAILABLE


def target_of(record: meta_pb.TierTarget) -> TierTarget:
    return TierTarget(record.name, record.url, record.bucket, record.prefix, record.credentials,
                      record.addressing or "path", record.region or "us-east-1")


class TierStores:
    """A ColdStore per tier target, the targets looked up by name through the metadata leader
    (again after `ttl` seconds, or at once for a name not seen yet)."""

    def __init__(self, meta: MetaClient, make_store: Callable[[TierTarget], ColdStore] = ColdStore,
                 clock: Callable[[], float] = time.monotonic, ttl: float = TARGETS_TTL_SECONDS,
                 offload=asyncio.to_thread):
        self.meta = meta
        self._make_store, self._clock, self._ttl, self._offload = make_store, clock, ttl, offload
        self._stores: dict[str, ColdStore] = {}
        self._unusable: dict[str, str] = {}  # target name -> why this node cannot use it
        self._fetched_at = float("-inf")

    async def get(self, name: str) -> ColdStore:
        if name not in self._stores or self._clock() - self._fetched_at > self._ttl:
            await self._refresh()
        store = self._stores.get(name)
        if store is None:
            raise TierError(self._unusable.get(name, f"no tier target {name!r} in the cluster"))
        return store

    async def _refresh(self) -> None:
        reply = await self.meta.call(meta_pb.MetaOp(list_tier_targets=meta_pb.ListTierTargets()))
        if reply.code != meta_pb.OK:
            raise TierError(f"cannot look up tier targets: {reply.message}")
        fresh, unusable = {}, {}
        for record in reply.list_tier_targets.targets:
            target = target_of(record)
            known = self._stores.get(target.name)
            try:  # a changed target (endpoint, credentials...) gets a new client
                fresh[target.name] = known if known is not None and known.target == target else \
                    await self._offload(self._make_store, target)
            except TierConfigError as error:  # e.g. its credentials are not set on this node: that target only
                unusable[target.name] = f"tier target {target.name!r} is not usable here: {error}"
        self._stores, self._unusable, self._fetched_at = fresh, unusable, self._clock()


class TierExecutor:
    """Runs batches of tier orders (one outcome per order: each succeeds or fails alone), and
    recalls. `wall_clock` is the time DELETE deadlines are read on."""

    def __init__(self, fragments: Fragments, stores: TierStores, wall_clock: Callable[[], float] = time.time,
                 offload=asyncio.to_thread, chunks_at_once: int = CHUNKS_AT_ONCE):
        self.fragments, self.stores = fragments, stores
        self._wall_clock, self._offload = wall_clock, offload
        self._chunks_at_once = chunks_at_once
        self.recalls = 0

    async def run(self, request: pb.TierRequest) -> pb.TierReply:
        """The batch's outcomes. `request` must have passed check_request."""
        slots = asyncio.Semaphore(self._chunks_at_once)

        async def one(order):
            async with slots:
                return await self._one(order)
        return pb.TierReply(outcomes=await asyncio.gather(*(one(o) for o in request.orders)))

    async def recall(self, chunk_id: bytes, length: int, target: str) -> bytes:
        """A cold chunk's verified bytes (raises TierError and its kinds, which say why not)."""
        data = await self._fetch(await self.stores.get(target), chunk_id, length)
        self.recalls += 1
        return data

    async def _fetch(self, store: ColdStore, chunk_id: bytes, length: int) -> bytes:
        data = await self._offload(store.get, chunk_id)  # checked against its BLAKE3 name
        if len(data) != length:  # cannot happen with a matching hash; a record that lies about length
            raise CorruptRemote(f"chunk {chunk_id.hex()[:16]} is {len(data)} bytes in the tier, not {length}")
        return data

    async def _one(self, order: pb.TierOrder) -> pb.TierOutcome:
        try:
            store = await self.stores.get(order.target)
            if order.kind == pb.TierOrder.UPLOAD:
                return pb.TierOutcome(ok=True, sent=await self._upload(order, store))
            if order.kind == pb.TierOrder.REHEAT:
                await self._reheat(order, store)
            else:
                await self._delete(order, store)
            return pb.TierOutcome(ok=True)
        except (TierError, CairnError, DataError, OSError, asyncio.TimeoutError, ValueError) as error:
            return pb.TierOutcome(ok=False, error=f"{order.chunk.hex()[:16]}: {type(error).__name__}: {error}")

    def _record(self, order: pb.TierOrder) -> meta_pb.Chunk:
        self.fragments.learn(meta_pb.Node(id=n, data_address=a) for n, a in zip(order.nodes, order.data_addresses))
        return meta_pb.Chunk(length=order.length, profile=meta_pb.ErasureProfile(k=order.k, m=order.m),
                             nodes=order.nodes, state=meta_pb.HOT)

    async def _upload(self, order: pb.TierOrder, store: ColdStore) -> bool:
        data = await self.fragments.read(order.chunk, order.length, self._record(order))
        if faultpoints.hit("tier.before_upload"):
            raise faultpoints.Injected("fault point: no upload")
        sent = await self._offload(store.put, order.chunk, data, True)  # (Fragments.read checked its BLAKE3)
        if faultpoints.hit("tier.after_upload"):  # uploaded, but the leader never hears of it
            raise faultpoints.Injected("fault point: upload answer lost")
        return sent

    async def _reheat(self, order: pb.TierOrder, store: ColdStore) -> None:
        chunk = self._record(order)
        data = await self._fetch(store, order.chunk, order.length)
        encoded = await self._offload(self.fragments.codec(order.k, order.m).encode_chunk, data)
        await asyncio.gather(*(self.fragments.send(node, order.chunk, index, encoded[index])
                               for index, node in enumerate(chunk.nodes)))

    async def _delete(self, order: pb.TierOrder, store: ColdStore) -> None:
        not_after = order.not_after_ms / 1000
        if order.not_after_ms and self._wall_clock() > not_after:
            raise TierError("the order came too late to start (the leader will order it again)")
        await self._offload(store.delete, order.chunk, not_after or None)
