"""A Raft key-value node process: the replicated store that Raft's tests and benchmark run on.

    python -m cluster.raft.server --id 1 --data DIR --listen 127.0.0.1:7001 \
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

Clients use the `KV` service on the peers' port; a follower answers with the leader's address.
"""
from __future__ import annotations

import asyncio
import logging

from cluster.proto import raft_pb2 as pb
from cluster.proto import raft_pb2_grpc as pb_grpc
from cluster.raft import kv
from cluster.raft.core import NotLeader, ProposalDropped
from cluster.raft.driver import ProposalOutcomeUnknown
from cluster.raft.node import REQUEST_SECONDS_MAX, RaftNode, node_arguments, run_node
from cluster.raft.rsm import Sessions, envelope
from cluster.rpc.mux import MuxServer

log = logging.getLogger("cairn.raft")


class KvNode(RaftNode):
    def __init__(self, node_id: int, data_dir: str, peers: dict[int, str], tick_seconds: float = 0.05):
        self.kv = kv.KeyValueStore()
        super().__init__(node_id, data_dir, peers, Sessions(self.kv), tick_seconds)


class KVService(pb_grpc.KVServicer):
    """Put and Get as unary calls, and both multiplexed on `Pipeline` streams (see cluster/rpc/mux.py)."""

    def __init__(self, node: "KvNode"):
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


def main(argv: list[str] | None = None) -> None:
    parser = node_arguments("Run one Raft key-value node.")
    args = parser.parse_args(argv)

    def start():
        node = KvNode(args.id, args.data, args.peers, args.tick_seconds)
        return node, (lambda server: pb_grpc.add_KVServicer_to_server(KVService(node), server),)
    run_node(args, start)


if __name__ == "__main__":
    main()
