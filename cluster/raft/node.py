"""One Raft member as a process component: the RocksDB log, the driver, the gRPC transport to
its peers, and the gRPC server that the Raft service and the state machine's own services share.

Peers talk over one long-lived client stream each way (`Raft.Stream`): a sender task per peer
drains that peer's bounded queue into one MessageBatch per write, so a burst of Raft messages
costs one gRPC message. When a peer is down its queue fills and new messages are dropped (Raft
retransmits), and the sender reconnects with backoff. The synced write of each Ready runs on the
loop's thread (see RaftDriver._handle); snapshots, which can be large, on one worker thread.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import random
from typing import Callable

import grpc

from cluster.process import run_until_signalled
from cluster.proto import raft_pb2 as pb
from cluster.proto import raft_pb2_grpc as pb_grpc
from cluster.raft.config import RaftConfig
from cluster.raft.core import Raft
from cluster.raft.driver import SNAPSHOT_BYTES, RaftDriver
from cluster.raft.log_store import LogStore
from cluster.raft.messages import Membership, Message, message_bytes
from cluster.raft.rsm import StateMachine
from cluster.raft.snapshot_files import FileSnapshots
from cluster.raft.wire import MESSAGE_BYTES_MAX, from_proto, to_proto
from cluster.rpc import endpoints
from cluster.storage.disk import RocksDisk

log = logging.getLogger("cairn.raft")

PEER_QUEUE_MESSAGES_MAX = 10_000
PEER_QUEUE_BYTES_MAX = 64 << 20
BATCH_MESSAGES_MAX = 512
RECONNECT_SECONDS = (0.05, 1.0)
REQUEST_SECONDS_MAX = 10.0
GRPC_OPTIONS = [("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
                ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)]


class GrpcTransport:
    def __init__(self, node_id: int, peers: dict[int, str]):
        self.node_id, self.peers = node_id, peers
        self._queues = {p: asyncio.Queue(PEER_QUEUE_MESSAGES_MAX) for p in peers if p != node_id}
        self._queued_bytes = {p: 0 for p in self._queues}
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
            size = message_bytes(m)
            if self._queued_bytes[m.target] + size > PEER_QUEUE_BYTES_MAX:
                self.dropped += 1  # a slow or absent peer: Raft retransmits what it still needs
                continue
            try:
                queue.put_nowait((m, size))
                self._queued_bytes[m.target] += size
            except asyncio.QueueFull:
                self.dropped += 1

    async def flush(self) -> None:
        """Returns once every sender that `send` woke has started writing its batch: a woken
        sender runs in the next loop turn, ahead of this coroutine (asyncio runs callbacks in
        the order they were scheduled). A sender still busy with an earlier write takes the
        new messages with its next one."""
        await asyncio.sleep(0)

    async def _sender(self, peer: int) -> None:
        queue, delay = self._queues[peer], RECONNECT_SECONDS[0]
        while True:
            try:
                async with endpoints.insecure_channel(self.peers[peer], options=GRPC_OPTIONS) as channel:
                    call = pb_grpc.RaftStub(channel).Stream()
                    while True:
                        await call.write(await self._next_batch(peer, queue))
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, OSError) as error:
                log.debug("stream to %s ended: %s", peer, error)
            except Exception as error:  # noqa: BLE001 - a sender that died would cut the peer off for good
                log.warning("stream to %s failed: %r", peer, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_SECONDS[1])

    async def _next_batch(self, peer: int, queue: asyncio.Queue) -> pb.MessageBatch:
        """Everything queued for `peer` by now (up to a bound), as one message."""
        batch = [await queue.get()]
        while not queue.empty() and len(batch) < BATCH_MESSAGES_MAX:
            batch.append(queue.get_nowait())
        self._queued_bytes[peer] -= sum(size for _, size in batch)
        return pb.MessageBatch(messages=[to_proto(m) for m, _ in batch])


class RaftService(pb_grpc.RaftServicer):
    def __init__(self, node: "RaftNode"):
        self.node = node

    async def Stream(self, request_iterator, context):
        async for batch in request_iterator:
            for message in batch.messages:
                try:
                    self.node.driver.receive(from_proto(message))
                except ValueError as error:
                    log.warning("dropping a malformed message: %s", error)
        return pb.Ack()


class RaftNode:
    def __init__(self, node_id: int, data_dir: str, peers: dict[int, str], state_machine: StateMachine,
                 tick_seconds: float = 0.05, snapshot_entries: int = 100_000, snapshot_bytes: int = SNAPSHOT_BYTES):
        self.id, self.peers = node_id, peers
        os.makedirs(data_dir, exist_ok=True)
        self.disk = RocksDisk(os.path.join(data_dir, "raft-log"))
        store = LogStore(self.disk)
        recovered = store.load(Membership(frozenset(peers)))
        if recovered.torn_tail_cut:
            log.warning("cut a torn tail of %d records from the Raft log", recovered.torn_tail_cut)
        config = RaftConfig(node_id=node_id, election_ticks=20, heartbeat_ticks=2)
        raft = Raft(config, random.Random(), recovered.hard_state, recovered.snapshot, recovered.entries)
        self.transport = GrpcTransport(node_id, peers)
        self._disk_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raft-disk")
        self.driver = RaftDriver(raft, store, state_machine, self.transport,
                                 FileSnapshots(os.path.join(data_dir, "snapshots")), tick_seconds=tick_seconds,
                                 snapshot_entries=snapshot_entries, snapshot_bytes=snapshot_bytes,
                                 run_blocking=self._blocking,
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

    async def serve(self, listen: str, stop: asyncio.Event,
                    services: tuple[Callable[[grpc.aio.Server], None], ...] = ()) -> None:
        """Serves the Raft service and `services` (each adds itself to the server) until `stop`."""
        self._stop = stop
        server = endpoints.server(options=GRPC_OPTIONS)
        pb_grpc.add_RaftServicer_to_server(RaftService(self), server)
        for add in services:
            add(server)
        endpoints.listen(server, listen)
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


def node_arguments(description: str) -> argparse.ArgumentParser:
    """The flags every Raft member process takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--data", required=True, help="data directory (created if missing)")
    parser.add_argument("--listen", required=True, help="HOST:PORT for peers and clients")
    parser.add_argument("--peers", type=parse_peers, required=True, help="ID=HOST:PORT,... including this node")
    parser.add_argument("--tick-seconds", type=float, default=0.05)
    return parser


def run_node(args, start: Callable[[], tuple[RaftNode, tuple]]) -> None:
    """Runs the node `start()` builds until SIGINT or SIGTERM."""
    if args.id not in args.peers:
        raise SystemExit(f"--id {args.id} is not among --peers")

    async def serve(stop: asyncio.Event) -> None:
        node, services = start()
        await node.serve(args.listen, stop, services)
        if node.driver.fatal is not None:
            raise SystemExit(f"raft node {args.id} stopped: {node.driver.fatal!r}")
    run_until_signalled(serve)
