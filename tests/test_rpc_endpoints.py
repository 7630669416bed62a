"""Cairn's gRPC endpoints (cluster/rpc/endpoints.py): a new channel to a server that has just come
up reaches it, even where an earlier channel of the same process was refused a moment before;
a server refuses a port another server holds, instead of sharing it."""
import asyncio

import grpc
import pytest

from cluster.dev import free_ports
from cluster.proto import raft_pb2 as pb
from cluster.proto import raft_pb2_grpc as pb_grpc
from cluster.rpc.endpoints import insecure_channel, listen, server


async def _put(channel) -> grpc.StatusCode:
    try:
        await pb_grpc.KVStub(channel).Put(pb.PutRequest(key=b"k"), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _after_a_refusal(open_channel) -> grpc.StatusCode:
    """What a new channel gets from a server started just after a refused attempt."""
    async def main():
        address = f"127.0.0.1:{free_ports(1)[0]}"
        refused = open_channel(address)
        assert await _put(refused) == grpc.StatusCode.UNAVAILABLE  # nobody listens yet
        running = server()  # serves no method: a call that reaches it is UNIMPLEMENTED
        listen(running, address)
        await running.start()
        fresh = open_channel(address)
        try:
            return await _put(fresh)
        finally:
            await refused.close()
            await fresh.close()
            await running.stop(0)
    return asyncio.run(main())


def test_a_new_channel_reaches_a_server_that_refused_an_earlier_one():
    assert _after_a_refusal(insecure_channel) == grpc.StatusCode.UNIMPLEMENTED
    # (with grpc.aio.insecure_channel, the same steps give UNAVAILABLE: the refused connection's
    # backoff is shared, which is what broke a test that asked a follower directly)


def test_a_second_server_cannot_take_a_port_in_use():
    async def main():
        address = f"127.0.0.1:{free_ports(1)[0]}"
        first = server()
        listen(first, address)
        await first.start()
        try:
            with pytest.raises(OSError, match=f"cannot listen on {address}"):
                listen(server(), address)
        finally:
            await first.stop(0)
    asyncio.run(main())
