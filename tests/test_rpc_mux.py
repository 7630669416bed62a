"""StreamMux and MuxServer over a real grpc.aio server on 127.0.0.1: replies reach their own
callers in any order, concurrent calls share messages, a broken stream fails what was in
flight and the next call reopens it, and the limits hold."""
import asyncio

import grpc
import pytest

from cluster.proto import raft_pb2 as pb
from cluster.proto import raft_pb2_grpc as pb_grpc
from cluster.rpc.mux import MuxServer, StreamBroken, StreamMux


class EchoKV(pb_grpc.KVServicer):
    """Gets echo their key as the value, replying in reverse order of arrival within a batch;
    a put of key b"hold" is answered only when `release` is set."""

    def __init__(self, in_flight_max=64, batch_ops_max=1024):
        self.mux = MuxServer(pb.KvReplies, "ops", "replies", in_flight_max=in_flight_max,
                             batch_ops_max=batch_ops_max)
        self.batches, self.release, self.held = [], asyncio.Event(), 0
        self.kill_streams = False

    async def Pipeline(self, request_iterator, context):
        await self.mux.serve(request_iterator, context, self.handle)

    def handle(self, ops, reply):
        self.batches.append(len(ops))
        if self.kill_streams:
            raise RuntimeError("server fault")
        for op in reversed(ops):
            if op.WhichOneof("op") == "put" and op.put.key == b"hold":
                self.held += 1
                asyncio.get_running_loop().create_task(self.answer_later(op.tag, reply))
            else:
                reply(pb.KvReply(tag=op.tag, get=pb.GetResponse(found=True, value=op.get.key)))

    async def answer_later(self, tag, reply):
        await self.release.wait()
        reply(pb.KvReply(tag=tag, put=pb.PutResponse(ok=True)))


async def serve(servicer):
    server = grpc.aio.server()
    pb_grpc.add_KVServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    mux = StreamMux(pb_grpc.KVStub(channel).Pipeline, pb.KvOps, "ops", "replies")
    return server, channel, mux


async def shutdown(server, channel, mux):
    await mux.close()
    await channel.close()
    await server.stop(0)


def get(key):
    return pb.KvOp(get=pb.GetRequest(key=key))


def test_every_caller_gets_its_own_reply_and_calls_share_messages():
    async def main():
        servicer = EchoKV(in_flight_max=10_000)
        server, channel, mux = await serve(servicer)
        try:
            keys = [b"k%04d" % i for i in range(2000)]
            replies = await asyncio.gather(*(mux.call(get(k), 5.0) for k in keys))
            assert [r.get.value for r in replies] == keys
            assert sum(servicer.batches) == len(keys)
            assert len(servicer.batches) < len(keys) / 10  # they went out together
        finally:
            await shutdown(server, channel, mux)
    asyncio.run(main())


def test_a_slow_reply_does_not_hold_up_the_others():
    async def main():
        servicer = EchoKV()
        server, channel, mux = await serve(servicer)
        try:
            slow = asyncio.ensure_future(mux.call(pb.KvOp(put=pb.PutRequest(key=b"hold")), 5.0))
            fast = await asyncio.gather(*(mux.call(get(b"x%d" % i), 5.0) for i in range(10)))
            assert all(r.get.value.startswith(b"x") for r in fast) and not slow.done()
            servicer.release.set()
            assert (await slow).put.ok
        finally:
            await shutdown(server, channel, mux)
    asyncio.run(main())


def test_a_call_times_out_and_the_stream_lives_on():
    async def main():
        servicer = EchoKV()
        server, channel, mux = await serve(servicer)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await mux.call(pb.KvOp(put=pb.PutRequest(key=b"hold")), 0.2)
            assert (await mux.call(get(b"after"), 5.0)).get.value == b"after"
        finally:
            servicer.release.set()
            await shutdown(server, channel, mux)
    asyncio.run(main())


def test_a_broken_stream_fails_calls_in_flight_and_the_next_call_reopens_it():
    async def main():
        servicer = EchoKV()
        server, channel, mux = await serve(servicer)
        try:
            held = asyncio.ensure_future(mux.call(pb.KvOp(put=pb.PutRequest(key=b"hold")), 5.0))
            while servicer.held == 0:
                await asyncio.sleep(0.01)
            servicer.kill_streams = True
            with pytest.raises(StreamBroken):
                await mux.call(get(b"boom"), 5.0)
            with pytest.raises(StreamBroken):
                await held
            servicer.kill_streams = False
            assert (await mux.call(get(b"again"), 5.0)).get.value == b"again"
        finally:
            servicer.release.set()
            await shutdown(server, channel, mux)
    asyncio.run(main())


def test_the_server_stops_reading_at_its_in_flight_limit():
    async def main():
        servicer = EchoKV(in_flight_max=4)
        server, channel, mux = await serve(servicer)
        try:
            held = [asyncio.ensure_future(mux.call(pb.KvOp(put=pb.PutRequest(key=b"hold")), 10.0)) for _ in range(4)]
            while servicer.held < 4:
                await asyncio.sleep(0.01)
            late = asyncio.ensure_future(mux.call(get(b"late"), 10.0))
            await asyncio.sleep(0.3)
            assert not late.done() and servicer.held == 4  # not read while four are unanswered
            servicer.release.set()
            assert (await late).get.value == b"late"
            assert all(r.put.ok for r in await asyncio.gather(*held))
        finally:
            await shutdown(server, channel, mux)
    asyncio.run(main())


def test_an_oversized_batch_is_refused():
    async def main():
        servicer = EchoKV(batch_ops_max=8)
        server, channel, mux = await serve(servicer)
        try:
            call = pb_grpc.KVStub(channel).Pipeline()
            await call.write(pb.KvOps(ops=[get(b"k")] * 9))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call.read()
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await shutdown(server, channel, mux)
    asyncio.run(main())


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        StreamMux(None, pb.KvOps, "ops", "replies", batch_ops_max=0)
