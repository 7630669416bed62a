"""A data node's side of repair: a batch of orders from the metadata leader, each rebuilding a
chunk's lost fragments from any k of the others and storing them on their targets.

Every chunk is decoded and checked against its BLAKE3 before a byte is written (Fragments.read
never returns anything else); fragments that land on this node go straight to its disks, the
others over the data plane. A batch is one call so the per-call costs (gRPC, the leader's
bookkeeping) are paid once per batch; inside it a few chunks are rebuilt at once, so fetching,
decoding and writing overlap. Each order succeeds or fails alone: the reply says which, and the
leader records only the placements that really moved.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Awaitable, Callable

from cluster import faultpoints
from cluster.client.errors import CairnError
from cluster.client.fragments import Fragments
from cluster.codec import crc32c
from cluster.data.store import FRAGMENT_BYTES_MAX
from cluster.data.wire import DataError
from cluster.proto import data_pb2 as pb
from cluster.proto import meta_pb2 as meta_pb

log = logging.getLogger("cairn.data")

ORDERS_PER_CALL_MAX = 256
CHUNK_BYTES_PER_CALL_MAX = 256 << 20
CHUNKS_AT_ONCE = 4  # chunks rebuilt concurrently within one batch
NICE = 10           # the repair thread's CPU priority below the threads that serve clients

# (chunk id, index, bytes, crc) items -> one error or None per item, durable when it returns
StoreLocal = Callable[[list], Awaitable[list]]


def check_order(order: pb.RepairOrder) -> None:
    width = order.k + order.m
    if len(order.chunk) != 32:
        raise ValueError("a chunk id is 32 bytes")
    if not (1 <= order.k and 1 <= order.m and width <= 255):
        raise ValueError(f"bad profile {order.k}+{order.m}")
    if not 0 < order.length <= FRAGMENT_BYTES_MAX * order.k:
        raise ValueError(f"bad chunk length {order.length}")
    if len(order.nodes) != width or len(order.data_addresses) != width:
        raise ValueError(f"a {order.k}+{order.m} chunk needs {width} nodes and addresses")
    if not order.lost or len(set(order.lost)) != len(order.lost) or any(i >= width for i in order.lost):
        raise ValueError(f"bad lost indexes {list(order.lost)}")
    if len(order.lost) > order.m:
        raise ValueError(f"{len(order.lost)} lost fragments: at most {order.m} can be rebuilt")
    if len(order.targets) != len(order.lost) or len(order.target_addresses) != len(order.lost):
        raise ValueError("one target node and address per lost index")
    if any(i >= width for i in order.avoid):
        raise ValueError(f"bad indexes to avoid {list(order.avoid)}")


def check_batch(orders, check: Callable, orders_max: int, bytes_max: int) -> None:
    """Refuses a whole batch of orders (each with a `length`) over the limits, or with one bad order."""
    if not 0 < len(orders) <= orders_max:
        raise ValueError(f"{len(orders)} orders in one call; 1 to {orders_max}")
    total = sum(order.length for order in orders)
    if total > bytes_max:
        raise ValueError(f"{total} chunk bytes in one call; at most {bytes_max}")
    for number, order in enumerate(orders):
        try:
            check(order)
        except ValueError as error:
            raise ValueError(f"order {number}: {error}") from None


def check_request(request: pb.RepairRequest) -> None:
    check_batch(request.orders, check_order, ORDERS_PER_CALL_MAX, CHUNK_BYTES_PER_CALL_MAX)


class RepairExecutor:
    """Runs batches of repair orders. `node_id()` names this node (fragments it is the target
    of are stored through `store_local`, not sent to itself)."""

    def __init__(self, fragments: Fragments, node_id: Callable[[], int], store_local: StoreLocal,
                 chunks_at_once: int = CHUNKS_AT_ONCE):
        self.fragments = fragments
        self._node_id = node_id
        self._store_local = store_local
        self._chunks_at_once = chunks_at_once

    async def run(self, request: pb.RepairRequest) -> pb.RepairReply:
        """The batch's outcomes, one per order. `request` must have passed check_request."""
        slots = asyncio.Semaphore(self._chunks_at_once)

        async def one(order):
            async with slots:
                return await self._repair(order)
        return pb.RepairReply(outcomes=await asyncio.gather(*(one(o) for o in request.orders)))

    async def _repair(self, order: pb.RepairOrder) -> pb.RepairOutcome:
        self.fragments.learn(meta_pb.Node(id=n, data_address=a) for n, a in zip(order.nodes, order.data_addresses))
        self.fragments.learn(meta_pb.Node(id=n, data_address=a)
                             for n, a in zip(order.targets, order.target_addresses))
        chunk = meta_pb.Chunk(length=order.length, profile=meta_pb.ErasureProfile(k=order.k, m=order.m),
                              nodes=order.nodes)
        asked: list[int] = []
        try:
            data = await self.fragments.read(order.chunk, order.length, chunk, last=(*order.avoid, *order.lost),
                                             asked=asked)
            codec = self.fragments.codec(order.k, order.m)
            encoded = codec.split(data)  # views: the data fragments cost nothing ...
            if any(i >= order.k for i in order.lost):  # ... parity only when one is lost
                encoded += codec.encode(encoded)
            here = self._node_id()
            local = [(order.chunk, i, encoded[i], crc32c(encoded[i]))
                     for i, target in zip(order.lost, order.targets) if target == here]
            await asyncio.gather(*(self.fragments.send(target, order.chunk, i, encoded[i])
                                   for i, target in zip(order.lost, order.targets) if target != here))
            if local:
                errors = [e for e in await self._store_local(local) if e is not None]
                if errors:
                    raise OSError(f"storing here: {errors[0]}")
            if faultpoints.hit("repair.after_store"):  # stored, but the leader never hears of it
                raise faultpoints.Injected("fault point: repair answer lost")
        except (CairnError, DataError, OSError, asyncio.TimeoutError) as error:
            return pb.RepairOutcome(ok=False, error=f"{order.chunk.hex()[:16]}: {error}", fragments_read=len(asked))
        return pb.RepairOutcome(ok=True, fragments_read=len(asked),
                                bytes_written=sum(len(encoded[i]) for i in order.lost))


class RepairThread:
    """Runs repair batches on a thread and event loop of their own, at a lower CPU priority
    (`nice`, Linux threads have their own): when the machine is busy, the data-plane threads that
    serve clients come first, and repair takes what is left; on an idle machine it runs at full
    speed. `make_executor` is called on that thread (its connections belong to its loop)."""

    def __init__(self, make_executor: Callable[[], RepairExecutor], nice: int = NICE,
                 make_tier: Callable[[RepairExecutor], object] | None = None):
        """`make_tier(executor)`, if given, makes the tier executor (cluster/data/tiering.py)
        that shares this thread, its loop and the repair executor's connections."""
        self._loop = asyncio.new_event_loop()
        self._nice = nice
        self._thread = threading.Thread(target=self._run, daemon=True, name="repair")
        self._thread.start()

        async def make():
            executor = make_executor()
            return executor, (make_tier(executor) if make_tier else None)
        self.executor, self.tier = asyncio.run_coroutine_threadsafe(make(), self._loop).result()

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
        except (OSError, AttributeError) as error:  # not Linux, or not allowed: run at normal priority
            log.warning("repair thread keeps the normal CPU priority: %s", error)
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def run(self, request: pb.RepairRequest) -> pb.RepairReply:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.executor.run(request), self._loop))

    async def run_tier(self, request):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.tier.run(request), self._loop))

    async def close(self) -> None:
        async def close():
            await self.executor.fragments.close()
            if self.executor.fragments.meta is not None:
                await self.executor.fragments.meta.close()
            if self.tier is not None:
                await self.tier.stores.meta.close()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close(), self._loop))
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 5)
        self._loop.close()
