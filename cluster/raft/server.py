"""A Raft node process: the driver over RocksDB, a gRPC transport, and the key-value service.

    python -m cluster.raft.server --id 1 --data DIR --listen 127.0.0.1:7001 \
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

Peers talk over one long-lived client stream each way (`Raft.Stream`): a sender task per peer
drains that peer's bounded queue into one MessageBatch per write, so a burst of Raft messages
costs one gRPC message. When a peer is down its queue fills and new messages are dropped (Raft
retransmits), and the sender reconnects with backoff. Clients use the `KV` service on the same
port; a follower answers with the leader's address. Disk work (the synced write of each Ready,
snapshots) runs on one worker thread so the event loop keeps serving while it waits for fsync.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import random
import signal

import grpc

from cluster.proto import raft_pb2 as pb
from cluster.proto import raft_pb2_grpc as pb_grpc
from cluster.raft import kv
from cluster.raft.config import RaftConfig
from cluster.raft.core import NotLeader, ProposalDropped, Raft
from cluster.raft.driver import ProposalOutcomeUnknown, RaftDriver
from cluster.raft.log_store import LogStore
from cluster.raft.messages import Membership, Message
from cluster.raft.rsm import Sessions, envelope
from cluster.raft.snapshot_files import FileSnapshots
from cluster.raft.wire import MESSAGE_BYTES_MAX, from_proto, to_proto
from cluster.rpc.mux import MuxServer
from cluster.storage.disk import RocksDisk

log = logging.getLogger("cairn.raft")

PEER_QUEUE_MESSAGES_MAX = 10_000
BATCH_MESSAGES_MAX = 512
RECONNECT_SECONDS = (0.05, 1.0)
REQUEST_SECONDS_MAX = 10.0
GRPC_OPTIONS = [("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
                ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)]


class GrpcTransport:
    def __init__(self, node_id: int, peers: dict[int, str]):
        self.node_id, self.peers = node_id, peers
        self._queues = {p: asyncio.Queue(PEER_QUEUE_MESSAGES_MAX) for p in peers if p != node_id}
        self._tasks: list[asyncio.Task] = []
        self.dropped = 0

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._sender(peer)) for peer in sorted(self._queues)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def send(self, messages: tuple[Message, ...]) -> None:
        for m in messages:
            queue = self._queues.get(m.target)
            if queue is None:
                continue
            try:
                queue.put_nowait(m)
            except asyncio.QueueFull:
                self.dropped += 1

    async def _sender(self, peer: int) -> None:
        queue, delay = self._queues[peer], RECONNECT_SECONDS[0]
        while True:
            try:
                async with grpc.aio.insecure_channel(self.peers[peer], options=GRPC_OPTIONS) as channel:
                    stub = pb_grpc.RaftStub(channel)
                    await stub.Stream(self._batches(queue))
            except (grpc.aio.AioRpcError, OSError) as error:
                log.debug("stream to %s ended: %s", peer, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_SECONDS[1])

    @staticmethod
    async def _batches(queue: asyncio.Queue):
        while True:
            batch = [await queue.get()]
            await asyncio.sleep(0)  # let the rest of this loop turn's messages join the batch
            while not queue.empty() and len(batch) < BATCH_MESSAGES_MAX:
                batch.append(queue.get_nowait())
            yield pb.MessageBatch(messages=[to_proto(m) for m in batch])


class RaftService(pb_grpc.RaftServicer):
    def __init__(self, node: "Node"):
        self.node = node

    async def Stream(self, request_iterator, context):
        async for batch in request_iterator:
            for message in batch.messages:
                try:
                    self.node.driver.receive(from_proto(message))
                except ValueError as error:
                    log.warning("dropping a malformed message: %s", error)
        return pb.Ack()


class KVService(pb_grpc.KVServicer):
    """Put and Get as unary calls, and both multiplexed on `Pipeline` streams (see cluster/rpc/mux.py)."""

    def __init__(self, node: "Node"):
        self.node = node
        self._mux = MuxServer(pb.KvReplies, "ops", "replies")

    async def Put(self, request, context):
        try:
            future = self._submit_put(request)
            result = await asyncio.wait_for(future, REQUEST_SECONDS_MAX)
        except Exception as error:  # noqa: BLE001 - every outcome becomes an answer
            return self._put_response(None, error)
        return self._put_response(result, None)

    async def Get(self, request, context):
        try:
            if not request.stale:
                await asyncio.wait_for(self.node.driver.read_barrier_future(), REQUEST_SECONDS_MAX)
        except Exception as error:  # noqa: BLE001
            return self._get_response(request, error)
        return self._get_response(request, None)

    async def Pipeline(self, request_iterator, context):
        await self._mux.serve(request_iterator, context, self._start_ops)

    # ---- shared by both forms

    def _submit_put(self, request) -> asyncio.Future:
        command = envelope(request.client_id, request.sequence, kv.encode_put(request.key, request.value))
        return self.node.driver.submit(command)

    def _put_response(self, result, error) -> pb.PutResponse:
        if isinstance(error, NotLeader):
            return pb.PutResponse(ok=False, error="not leader", leader_address=self.node.address_of(error.leader))
        if isinstance(error, (ProposalDropped, ProposalOutcomeUnknown, asyncio.TimeoutError, ValueError)):
            return pb.PutResponse(ok=False, error=f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if result == Sessions.RESULT_EXPIRED:
            return pb.PutResponse(ok=False, error="session expired: the put may or may not have been applied")
        return pb.PutResponse(ok=True)

    def _get_response(self, request, error) -> pb.GetResponse:
        if isinstance(error, NotLeader):
            return pb.GetResponse(error="not leader", leader_address=self.node.address_of(error.leader))
        if isinstance(error, (ProposalDropped, ProposalOutcomeUnknown, asyncio.TimeoutError)):
            return pb.GetResponse(error=f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        value = self.node.kv.get(request.key)
        return pb.GetResponse(found=value is not None, value=value or b"")

    def _start_ops(self, ops, reply) -> None:
        """Starts one Pipeline batch: each put is its own proposal (the driver batches them all
        into one append); the batch's linearizable gets share one ReadIndex barrier."""
        gets = []
        for op in ops:
            kind = op.WhichOneof("op")
            if kind == "put":
                self._start_put(op.tag, op.put, reply)
            elif kind == "get" and not op.get.stale:
                gets.append(op)
            elif kind == "get":
                reply(pb.KvReply(tag=op.tag, get=self._get_response(op.get, None)))
            else:
                reply(pb.KvReply(tag=op.tag, put=pb.PutResponse(ok=False, error="empty operation")))
        if gets:
            try:
                barrier = self.node.driver.read_barrier_future()
            except Exception as error:  # noqa: BLE001
                for op in gets:
                    reply(pb.KvReply(tag=op.tag, get=self._get_response(op.get, error)))
                return
            barrier.add_done_callback(lambda done: self._finish_gets(gets, done, reply))

    def _start_put(self, tag: int, request, reply) -> None:
        try:
            future = self._submit_put(request)
        except Exception as error:  # noqa: BLE001
            reply(pb.KvReply(tag=tag, put=self._put_response(None, error)))
            return

        def finish(done: asyncio.Future) -> None:
            error = done.exception()
            reply(pb.KvReply(tag=tag, put=self._put_response(None if error else done.result(), error)))
        future.add_done_callback(finish)

    def _finish_gets(self, gets: list, barrier: asyncio.Future, reply) -> None:
        error = barrier.exception()
        for op in gets:
            reply(pb.KvReply(tag=op.tag, get=self._get_response(op.get, error)))


class Node:
    def __init__(self, node_id: int, data_dir: str, peers: dict[int, str], tick_seconds: float = 0.05,
                 snapshot_entries: int = 100_000):
        self.id, self.peers = node_id, peers
        os.makedirs(data_dir, exist_ok=True)
        self.disk = RocksDisk(os.path.join(data_dir, "raft-log"))
        store = LogStore(self.disk)
        recovered = store.load(Membership(frozenset(peers)))
        if recovered.torn_tail_cut:
            log.warning("cut a torn tail of %d records from the Raft log", recovered.torn_tail_cut)
        config = RaftConfig(node_id=node_id, election_ticks=20, heartbeat_ticks=2)
        raft = Raft(config, random.Random(), recovered.hard_state, recovered.snapshot, recovered.entries)
        self.kv = kv.KeyValueStore()
        self.transport = GrpcTransport(node_id, peers)
        self._disk_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raft-disk")
        self.driver = RaftDriver(raft, store, Sessions(self.kv), self.transport,
                                 FileSnapshots(os.path.join(data_dir, "snapshots")), tick_seconds=tick_seconds,
                                 snapshot_entries=snapshot_entries, run_blocking=self._blocking,
                                 on_fatal=self._fatal)
        self._stop: asyncio.Event | None = None

    def _fatal(self, error: Exception) -> None:
        """The log could not be written: stop serving (a node that cannot persist must not vote)."""
        if self._stop is not None:
            self._stop.set()

    async def _blocking(self, work):
        return await asyncio.get_running_loop().run_in_executor(self._disk_thread, work)

    def address_of(self, node_id: int) -> str:
        return self.peers.get(node_id, "")

    async def serve(self, listen: str, stop: asyncio.Event) -> None:
        self._stop = stop
        server = grpc.aio.server(options=GRPC_OPTIONS)
        pb_grpc.add_RaftServicer_to_server(RaftService(self), server)
        pb_grpc.add_KVServicer_to_server(KVService(self), server)
        if server.add_insecure_port(listen) == 0:
            raise OSError(f"cannot listen on {listen}")
        await server.start()
        self.transport.start()
        await self.driver.start()
        log.info("node %d serving on %s", self.id, listen)
        reporter = asyncio.get_running_loop().create_task(self._report_stats())
        await stop.wait()
        reporter.cancel()
        # Consensus first, so nothing new is written or sent; then the wires.
        await self.driver.stop()
        await self.transport.stop()
        await server.stop(0)
        self._disk_thread.shutdown()
        self.disk.close()


    async def _report_stats(self, every_seconds: float = 5.0) -> None:
        """Logs the driver's counters when they moved: batching at a glance."""
        last = {}
        while True:
            await asyncio.sleep(every_seconds)
            now = dict(self.driver.stats)
            if now != last:
                delta = {k: v - last.get(k, 0) for k, v in sorted(now.items())}
                log.info("last %.0f s: %s; transport dropped %d", every_seconds, delta, self.transport.dropped)
                last = now


def parse_peers(text: str) -> dict[int, str]:
    peers = {}
    for item in text.split(","):
        node, _, address = item.partition("=")
        if not node.strip().isdigit() or not address:
            raise argparse.ArgumentTypeError(f"bad peer {item!r}: expected ID=HOST:PORT")
        peers[int(node)] = address.strip()
    return peers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one Raft key-value node.")
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--data", required=True, help="data directory (created if missing)")
    parser.add_argument("--listen", required=True, help="HOST:PORT for peers and clients")
    parser.add_argument("--peers", type=parse_peers, required=True, help="ID=HOST:PORT,... including this node")
    parser.add_argument("--tick-seconds", type=float, default=0.05)
    args = parser.parse_args(argv)
    if args.id not in args.peers:
        parser.error(f"--id {args.id} is not among --peers")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_run(args))


async def _run(args) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    node = Node(args.id, args.data, args.peers, args.tick_seconds)
    await node.serve(args.listen, stop)
    if node.driver.fatal is not None:
        raise SystemExit(f"raft node {args.id} stopped: {node.driver.fatal!r}")


if __name__ == "__main__":
    main()
