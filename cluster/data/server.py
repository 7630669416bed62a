"""A data node process: fragments on its disks, served on the ZeroMQ data plane (put, get) and
a gRPC control API (has, delete, list, status); it registers with the metadata leader, heartbeats
its disks, and scrubs them.

    python -m cluster.data.server --disks /d1,/d2 --listen 127.0.0.1:7201 --data-listen 127.0.0.1:7301 \
        --meta 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 [--label host=a --label rack=r1]

Store calls block (fsync), so they run on a thread pool; concurrent puts share fsyncs (the
store's group commit). The node's id, given by the leader at the first registration, is kept in
the first disk's `node-id` file.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import threading
import time

import grpc
import zmq

from cluster import faultpoints
from cluster.client.fragments import Fragments
from cluster.client.meta import MetaClient
from cluster.data import tiering, wire
from cluster.data.disks import STRIPES, STRIPES_MAX, DiskSet
from cluster.data.membership import Membership, disk_records
from cluster.data.orphans import DEFAULT_GRACE_SECONDS, BeingCollected, OrphanCollector, placements_from
from cluster.data.repairs import NICE, RepairExecutor, RepairThread, check_request
from cluster.data.scrubber import DEFAULT_BYTES_PER_SECOND, Scrubber
from cluster.data.store import (BadFragment, DiskFailed, DiskFull, FragmentCorrupt,
                                FragmentNotFound)
from cluster.process import run_until_signalled
from cluster.proto import data_pb2 as pb
from cluster.proto import data_pb2_grpc as pb_grpc
from cluster.rpc import endpoints
from cluster.storage.durable import write_durably
from cluster.tier.store import TierError

log = logging.getLogger("cairn.data")

SCRUB_PAUSE_SECONDS = 3600.0
COMPACT_INTERVAL_SECONDS = 300.0
COMPACT_THRESHOLD = 0.5  # a segment less than half live is rewritten
LIST_ENTRIES_MAX = 10_000
IDS_PER_CALL_MAX = 10_000
WORKERS = 16
# A reply frame of at most this is copied into ZeroMQ; a larger one is lent to it, and pyzmq
# then hands each one back through its garbage-collector thread, which took the GIL from the
# workers and cost a data node more CPU per 160 KiB reply (a round of small gets) than the copy.
COPIED_BYTES_MAX = 256 << 10
_scratch = threading.local()  # each worker thread's buffer for the replies ZeroMQ copies
# a recall answers with a whole chunk (up to 64 MiB)
GRPC_OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 72 << 20)]


def _status_of(error: Exception) -> int:
    if isinstance(error, FragmentNotFound):
        return wire.NOT_FOUND
    if isinstance(error, FragmentCorrupt):
        return wire.CORRUPT
    if isinstance(error, (BadFragment, ValueError)):
        return wire.BAD_REQUEST
    if isinstance(error, DiskFull):
        return wire.DISK_FULL
    return wire.UNAVAILABLE


class DataPlane:
    """The ZeroMQ data plane: a ROUTER for clients, fair-queued by zmq's own proxy (C, no GIL)
    to worker threads that each serve one request at a time, blocking: a put returns once the
    store's group commit has made it durable (workers waiting on the same fsync share it), a get
    once its bytes are read and checked. So at most WORKERS requests are in service; the rest
    wait in zmq's bounded queues (high-water marks), which holds fast senders back."""

    BACKEND = "inproc://fragment-workers"

    def __init__(self, disks: DiskSet, listen: str, workers: int = WORKERS, orphans: OrphanCollector | None = None):
        """`orphans`: the node's collector, which puts and touches renew (none: a node alone)."""
        self.disks, self.orphans = disks, orphans
        self.context = zmq.Context()
        self.frontend = self.context.socket(zmq.ROUTER)
        self.frontend.setsockopt(zmq.MAXMSGSIZE, wire.MESSAGE_BYTES_MAX)
        self.frontend.setsockopt(zmq.LINGER, 0)
        self.frontend.bind(f"tcp://{listen}")
        self.backend = self.context.socket(zmq.DEALER)
        self.backend.setsockopt(zmq.LINGER, 0)
        self.backend.bind(self.BACKEND)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._proxy, daemon=True, name="fragment-proxy")]
        self._threads += [threading.Thread(target=self._worker, daemon=True, name=f"fragment-{n}")
                          for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def _proxy(self) -> None:
        try:
            zmq.proxy(self.frontend, self.backend)
        except zmq.ContextTerminated:
            pass
        finally:
            # zmq sockets belong to one thread: the proxy's are closed here, never by close(),
            # which crashed zmq's reaper now and then while the proxy still polled them
            self.frontend.close(0)
            self.backend.close(0)

    def _worker(self) -> None:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.BACKEND)
        socket.copy_threshold = COPIED_BYTES_MAX + 1  # (pyzmq copies frames below its threshold)
        try:
            while not self._stop.is_set():
                if not socket.poll(200):
                    continue
                frames = socket.recv_multipart(copy=False)
                if len(frames) < 4 or len(frames[1]) != 8:
                    continue  # not a request: nothing to answer to
                socket.send_multipart(self._answer(frames), copy=False)
        except zmq.ContextTerminated:
            pass
        finally:
            socket.close(0)

    def _answer(self, frames) -> list:
        identity, request_id, op = frames[0], frames[1], frames[2].bytes
        try:
            return [identity, request_id, bytes([wire.OK]), b"", *self._serve(op, frames[3:])]
        except Exception as error:  # noqa: BLE001 - every failure is an answer
            if not isinstance(error, (FragmentNotFound, BadFragment, ValueError, BeingCollected)):
                log.warning("data plane: %s", error)
            return [identity, request_id, bytes([_status_of(error)]), str(error).encode()[:1024]]

    def _serve(self, op: bytes, frames) -> list:
        """The reply's frames after the status: the payloads of what was asked."""
        if op == wire.OP_PUT:
            if len(frames) != 2:
                raise ValueError("a PUT carries a header and the bytes")
            chunk_id, index, crc = wire.decode_put(frames[0].bytes)
            if not _admitted(self.orphans, [(chunk_id, index)])[0]:
                raise BeingCollected(f"fragment {index} of chunk {chunk_id.hex()[:16]} is being deleted as an orphan")
            self.disks.put(chunk_id, index, frames[1].buffer, crc)
            return []
        if op == wire.OP_PUT_MANY:
            if len(frames) != 3:
                raise ValueError("a PUT_MANY carries a header, its payloads' sizes and the payloads joined")
            items = wire.decode_put_many(frames[0].bytes)
            return self._put_many(items, wire.split_payloads(frames[1].bytes, frames[2].buffer, len(items)))
        if op == wire.OP_GET_MANY:
            if len(frames) != 1:
                raise ValueError("a GET_MANY carries a header only")
            return self._get_many(wire.decode_get_many(frames[0].bytes))
        if op == wire.OP_TOUCH:
            if len(frames) != 1:
                raise ValueError("a TOUCH carries a header only")
            fragments = wire.decode_touch(frames[0].bytes)
            held = self.orphans.touch(fragments, self.disks.has) if self.orphans is not None \
                else [self.disks.has(c, i) for c, i in fragments]
            return [bytes(held)]
        if op == wire.OP_GET:
            if len(frames) != 1:
                raise ValueError("a GET carries a header only")
            chunk_id, index, offset, length = wire.decode_get(frames[0].bytes)
            return [self.disks.get(chunk_id, index, offset, length)]
        raise ValueError(f"unknown operation {op!r}")

    def _get_many(self, items) -> list:
        if any(offset or length is not None for _, _, offset, length in items):
            return self._get_ranges(items)
        # whole fragments (what readers ask for): read straight into the reply's one buffer
        scratch = getattr(_scratch, "buffer", None)
        if scratch is None:
            scratch = _scratch.buffer = bytearray(COPIED_BYTES_MAX)
        outcomes, joined = self.disks.get_many([(c, i) for c, i, _, _ in items], wire.JOINED_BYTES_MAX, scratch)
        results = [(wire.OK, "") if isinstance(o, int) else (_status_of(o), str(o)) for o in outcomes]
        sizes = [o if isinstance(o, int) else 0 for o in outcomes]
        return [wire.encode_statuses(results), wire.encode_sizes(sizes), joined]

    def _get_ranges(self, items) -> list:
        results, payloads, total = [], [], 0
        for chunk_id, index, offset, length in items:
            try:
                payload = self.disks.get(chunk_id, index, offset, length)
                if total + len(payload) > wire.JOINED_BYTES_MAX:  # the joined reply must stay one frame
                    raise ValueError(f"{len(payload)} more bytes would pass a batch reply's "
                                     f"{wire.JOINED_BYTES_MAX}; get this fragment alone")
                payloads.append(payload)
                results.append((wire.OK, ""))
                total += len(payload)
            except Exception as error:  # noqa: BLE001 - this fragment's answer
                payloads.append(b"")
                results.append((_status_of(error), str(error)))
        return [wire.encode_statuses(results), *wire.join_payloads(payloads)]

    def _put_many(self, items, payloads) -> list:
        outcomes = put_admitted(self.disks, self.orphans, [(chunk_id, index, payload, crc) for (chunk_id, index, crc),
                                                           payload in zip(items, payloads)])
        return [wire.encode_statuses([(wire.OK, "") if error is None else (_status_of(error), str(error))
                                      for error in outcomes])]

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads[1:]:
            thread.join(5)
        self.context.term()  # the proxy stops with ETERM and closes its sockets; then term returns
        self._threads[0].join(5)


def put_admitted(disks: DiskSet, orphans: OrphanCollector | None, items: list) -> list[Exception | None]:
    """`disks.put_many(items)`, but each put renews its fragment's orphan grace first, and one
    the collector is deleting right now is refused (its writer puts it elsewhere)."""
    admitted = _admitted(orphans, [(c, i) for c, i, _, _ in items])
    written = iter(disks.put_many([item for item, ok in zip(items, admitted) if ok]))
    return [next(written) if ok else BeingCollected("being deleted as an orphan") for ok in admitted]


def fragment_ids(request) -> list[tuple[bytes, int]]:
    """The (chunk id, index) pairs of a Has or Delete request, within the per-call bound (the
    store checks each id)."""
    if len(request.fragments) > IDS_PER_CALL_MAX:
        raise ValueError(f"at most {IDS_PER_CALL_MAX} fragments per call")
    return [(f.chunk, f.index) for f in request.fragments]


def _admitted(orphans: OrphanCollector | None, fragments: list[tuple[bytes, int]]) -> list[bool]:
    """Puts of these fragments renew their orphan grace; False for one being deleted now."""
    return orphans.renew(fragments) if orphans is not None else [True] * len(fragments)


class ControlService(pb_grpc.DataServicer):
    def __init__(self, node: "DataNode"):
        self.node = node

    async def _run(self, work):
        return await asyncio.get_running_loop().run_in_executor(self.node.pool, work)

    async def _admit(self, request, context, check) -> None:
        """Aborts the call if the request fails `check`, or if this node has no metadata
        cluster (repair and tier work answer to its leader)."""
        try:
            check(request)
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if self.node.meta is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this node runs without a metadata cluster")

    async def Repair(self, request, context):
        """Rebuilds a batch of chunks' lost fragments (cluster/data/repairs.py)."""
        await self._admit(request, context, check_request)
        return await self.node.repairs().run(request)

    async def Tier(self, request, context):
        """Moves a batch of chunks to, from or out of a cold tier (cluster/data/tiering.py)."""
        await self._admit(request, context, tiering.check_request)
        return await self.node.repairs().run_tier(request)

    async def Recall(self, request, context):
        """A cold chunk's bytes from its tier, verified against its BLAKE3."""
        await self._admit(request, context, tiering.check_recall)
        async with self.node.recall_slots:
            try:
                data = await self.node.recalls.recall(request.chunk, request.length, request.target)
            except TierError as error:
                await context.abort(tiering.recall_status(error), str(error))
        return pb.RecallReply(data=data)

    async def Has(self, request, context):
        try:
            ids = fragment_ids(request)
            present = await self._run(lambda: [self.node.disks.has(c, i) for c, i in ids])
        except (BadFragment, ValueError) as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return pb.HasReply(present=present)

    async def Delete(self, request, context):
        try:
            ids = fragment_ids(request)
            deleted = await self._run(lambda: [self.node.disks.delete(c, i) for c, i in ids])
        except (BadFragment, ValueError) as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except DiskFailed as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        return pb.DeleteReply(deleted=deleted)

    async def List(self, request, context):
        limit = min(request.max_entries or LIST_ENTRIES_MAX, LIST_ENTRIES_MAX)
        end = request.end or b"\xff" * 32

        def page():
            out = []
            for chunk, index in self.node.disks.fragments(request.start, end):
                if len(out) == limit:
                    return out, chunk
                out.append(pb.FragmentId(chunk=chunk, index=index))
            return out, b""
        fragments, next_start = await self._run(page)
        return pb.ListReply(fragments=fragments, next=next_start)

    async def Status(self, request, context):
        disks = await self._run(self.node.disks.status)
        count = await self._run(lambda: sum(1 for _ in self.node.disks.fragments(b"", b"\xff" * 32)))
        return pb.StatusReply(node_id=self.node.node_id, disks=[pb.DiskStatus(**d) for d in disks],
                              fragments=count, data_address=self.node.data_address,
                              recalls=self.node.recalls.recalls if self.node.recalls else 0)


class DataNode:
    def __init__(self, disk_paths: list[str], address: str, data_address: str, meta: list[str],
                 labels: dict[str, str], scrub_bytes_per_second: float = DEFAULT_BYTES_PER_SECOND,
                 orphan_grace_seconds: float = DEFAULT_GRACE_SECONDS, orphan_interval_seconds: float = 600.0,
                 scrub_pause_seconds: float = SCRUB_PAUSE_SECONDS,
                 compact_interval_seconds: float = COMPACT_INTERVAL_SECONDS, repair_nice: int = NICE,
                 stripes: int = STRIPES):
        self.disks = DiskSet(disk_paths, stripes)
        self.repair_nice = repair_nice
        self.address, self.data_address, self.labels = address, data_address, labels
        self.meta_addresses = meta
        self.meta = MetaClient(meta) if meta else None
        self._repairs: RepairThread | None = None
        self.recalls = tiering.TierExecutor(None, tiering.TierStores(self.meta)) if meta else None
        self.recall_slots = asyncio.Semaphore(tiering.RECALLS_AT_ONCE)
        self.pool = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="data-io")
        self._id_path = os.path.join(disk_paths[0], "node-id")
        self.membership = Membership(self.meta, address, data_address, labels, self._disk_records_off_loop,
                                     self._load_id(disk_paths[0]), self._save_id,
                                     orphan_grace_seconds=orphan_grace_seconds)
        self.disks.on_corrupt = self._found_damage
        self.scrub_bytes_per_second = scrub_bytes_per_second
        self.scrub_pause_seconds = scrub_pause_seconds
        self.compact_interval_seconds = compact_interval_seconds
        self.orphan_grace_seconds, self.orphan_interval_seconds = orphan_grace_seconds, orphan_interval_seconds
        self._listing: list[tuple[bytes, int]] = []  # the fragments, listed off the loop for each orphan pass
        self.orphans = OrphanCollector(lambda: self.node_id, lambda: self._listing, placements_from(self.meta),
                                       self._delete_orphans, time.monotonic, orphan_grace_seconds) if meta else None

    @staticmethod
    def _load_id(path: str) -> int:
        try:
            with open(os.path.join(path, "node-id")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return 0

    def repairs(self) -> RepairThread:
        """The repair executor, on its own thread (its connections stay open between batches)."""
        if self._repairs is None:
            def make_executor() -> RepairExecutor:
                loop = asyncio.get_running_loop()

                async def store_local(items):
                    return await loop.run_in_executor(self.pool, put_admitted, self.disks, self.orphans, list(items))
                return RepairExecutor(Fragments(MetaClient(self.meta_addresses)), lambda: self.node_id, store_local)

            def make_tier(executor: RepairExecutor) -> tiering.TierExecutor:
                return tiering.TierExecutor(executor.fragments, tiering.TierStores(MetaClient(self.meta_addresses)))
            self._repairs = RepairThread(make_executor, self.repair_nice, make_tier)
        return self._repairs

    async def _disk_records_off_loop(self) -> list:
        return await asyncio.get_running_loop().run_in_executor(self.pool, disk_records, self.disks)

    def _save_id(self, node_id: int) -> None:
        write_durably(self._id_path, [str(node_id).encode()])

    @property
    def node_id(self) -> int:
        return self.membership.node_id

    async def _delete_orphans(self, fragments) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: [self.disks.delete(c, i) for c, i in fragments])
        log.info("deleted %d orphan fragments", len(fragments))

    async def orphan_loop(self) -> None:
        loop = asyncio.get_running_loop()

        async def list_off_loop():
            self._listing = await loop.run_in_executor(self.pool, lambda: list(self.disks.fragments(b"", b"\xff" * 32)))
        await self.orphans.run_forever(self.orphan_interval_seconds, list_off_loop)

    async def compact_loop(self) -> None:
        """Reclaims the space of deleted fragments (garbage, orphans, moved ones) now and then."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.compact_interval_seconds)
            try:
                reclaimed = await loop.run_in_executor(self.pool, self.disks.compact, COMPACT_THRESHOLD)
                if reclaimed:
                    log.info("compaction reclaimed %d bytes", reclaimed)
            except Exception as error:  # noqa: BLE001 - the next round tries again
                log.warning("compaction: %s", error)

    def _found_damage(self, chunk_id: bytes, index: int, reason: str) -> None:
        log.error("fragment %d of chunk %s is bad: %s", index, chunk_id.hex()[:16], reason)
        self.membership.found_damage(chunk_id, index, reason)

    def scrub_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            for disk in self.disks.healthy():
                Scrubber(disk.store, self._found_damage, self.scrub_bytes_per_second,
                         sleep=lambda seconds: stop.wait(seconds)).run_pass(stop.is_set)
            stop.wait(self.scrub_pause_seconds)

    async def serve(self, stop: asyncio.Event) -> None:
        server = endpoints.server(options=GRPC_OPTIONS)
        pb_grpc.add_DataServicer_to_server(ControlService(self), server)
        endpoints.listen(server, self.address)
        plane = DataPlane(self.disks, self.data_address, orphans=self.orphans)
        await server.start()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self.compact_loop())]
        if self.meta is not None:
            tasks.append(loop.create_task(self.membership.run()))
            tasks.append(loop.create_task(self.orphan_loop()))
        scrub_stop = threading.Event()
        scrubber = threading.Thread(target=self.scrub_forever, args=(scrub_stop,), daemon=True, name="scrubber")
        scrubber.start()
        if self.meta is not None:  # the S3 SDK takes a second or two to load: not at the first transition
            threading.Thread(target=tiering.preload, daemon=True, name="tier-preload").start()
        log.info("data node serving control on %s, fragments on %s", self.address, self.data_address)
        await stop.wait()
        scrub_stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop(1)
        plane.close()
        if self._repairs is not None:
            await self._repairs.close()
        if self.meta is not None:
            await self.meta.close()
        scrubber.join(5)
        self.pool.shutdown()
        self.disks.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one Cairn data node.")
    parser.add_argument("--disks", required=True, help="comma-separated disk directories (created if missing)")
    parser.add_argument("--listen", required=True, help="HOST:PORT of the gRPC control API")
    parser.add_argument("--data-listen", required=True, help="HOST:PORT of the ZeroMQ fragment data plane")
    parser.add_argument("--meta", default="", help="comma-separated meta addresses (none: run alone)")
    parser.add_argument("--label", action="append", default=[], help="failure domain, KEY=VALUE (host, rack, zone)")
    parser.add_argument("--scrub-mb-per-s", type=float, default=DEFAULT_BYTES_PER_SECOND / 1e6)
    parser.add_argument("--compact-interval-seconds", type=float, default=COMPACT_INTERVAL_SECONDS,
                        help="how often segments with mostly deleted fragments are rewritten")
    parser.add_argument("--scrub-pause-seconds", type=float, default=SCRUB_PAUSE_SECONDS,
                        help="rest between two scrub passes over every fragment")
    parser.add_argument("--orphan-grace-seconds", type=float, default=DEFAULT_GRACE_SECONDS,
                        help="delete a fragment no committed chunk places here after this long")
    parser.add_argument("--orphan-interval-seconds", type=float, default=600.0)
    parser.add_argument("--repair-nice", type=int, default=NICE, choices=range(0, 20), metavar="0..19",
                        help="CPU priority of repair work below the threads that serve clients")
    parser.add_argument("--stripes", type=int, default=STRIPES, choices=range(1, STRIPES_MAX + 1),
                        metavar=f"1..{STRIPES_MAX}", help="fragment stores per new disk, each with its own "
                        "segments and fsync (a disk keeps the count it was made with)")
    args = parser.parse_args(argv)
    labels = {}
    for item in args.label:
        key, _, value = item.partition("=")
        if not key or not value:
            parser.error(f"bad label {item!r}: KEY=VALUE")
        labels[key] = value

    faultpoints.install_from_environment()

    async def serve(stop: asyncio.Event) -> None:
        node = DataNode(args.disks.split(","), args.listen, args.data_listen,
                        [a for a in args.meta.split(",") if a], labels, args.scrub_mb_per_s * 1e6,
                        args.orphan_grace_seconds, args.orphan_interval_seconds, args.scrub_pause_seconds,
                        args.compact_interval_seconds, args.repair_nice, args.stripes)
        await node.serve(stop)
    run_until_signalled(serve)


if __name__ == "__main__":
    main()
