"""The client's node list: concurrent callers that find a node unknown share one read of it."""
import asyncio

import pytest

from cluster.client.errors import CairnError
from cluster.client.fragments import Fragments
from cluster.proto import meta_pb2 as pb


class CountingMeta:
    def __init__(self, fail_first: bool = False):
        self.calls, self.fail_first = 0, fail_first

    async def call(self, op):
        assert op.WhichOneof("op") == "list_nodes"
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail_first and self.calls == 1:
            return pb.MetaReply(code=pb.UNAVAILABLE, message="no leader")
        nodes = [pb.Node(id=i, data_address=f"127.0.0.1:{7000 + i}", state=pb.UP) for i in range(1, 7)]
        return pb.MetaReply(list_nodes=pb.ListNodesReply(nodes=nodes))


def fragments(meta) -> Fragments:
    return Fragments(meta, connect=lambda address: address)  # a "client" that is its address


def test_concurrent_lookups_of_unknown_nodes_share_one_read():
    async def run():
        meta = CountingMeta()
        f = fragments(meta)
        clients = await asyncio.gather(*(f._client(1 + n % 6) for n in range(64 * 6)))
        assert clients[:6] == [f"127.0.0.1:{7000 + i}" for i in range(1, 7)]
        assert meta.calls == 1
        await f.refresh()  # a later refresh reads the list again
        assert meta.calls == 2
    asyncio.run(run())


def test_a_failed_read_reaches_every_waiter_and_the_next_one_reads_again():
    async def run():
        meta = CountingMeta(fail_first=True)
        f = fragments(meta)
        outcomes = await asyncio.gather(*(f.refresh() for _ in range(5)), return_exceptions=True)
        assert meta.calls == 1 and all(isinstance(o, CairnError) and "no leader" in str(o) for o in outcomes)
        assert await f._client(3) == "127.0.0.1:7003"
        assert meta.calls == 2
    asyncio.run(run())


def test_a_cancelled_waiter_does_not_cancel_the_others():
    async def run():
        meta = CountingMeta()
        f = fragments(meta)
        first = asyncio.ensure_future(f.refresh())
        second = asyncio.ensure_future(f._client(2))
        await asyncio.sleep(0)
        first.cancel()
        assert await second == "127.0.0.1:7002"
        with pytest.raises(asyncio.CancelledError):
            await first
        assert meta.calls == 1
    asyncio.run(run())


class FlakyNodes:
    """Data clients that fail the first `failures[node]` puts sent to each node."""

    def __init__(self, failures: dict[str, int]):
        self.failures, self.puts = dict(failures), []

    def connect(self, address):
        nodes = self

        class Client:
            async def put(self, chunk_id, index, data, crc, timeout):
                nodes.puts.append((address, index))
                if nodes.failures.get(address, 0) > 0:
                    nodes.failures[address] -= 1
                    raise asyncio.TimeoutError()
        return Client()


class NoSpareMeta(CountingMeta):
    async def call(self, op):
        if op.WhichOneof("op") == "replace":
            return pb.MetaReply(code=pb.NOT_ENOUGH_NODES, message="0 are available")
        return await super().call(op)


def store(nodes: FlakyNodes):
    f = Fragments(NoSpareMeta(), connect=nodes.connect)
    return f.store(b"c" * 32, b"x" * 1000, [1, 2, 3, 4, 5, 6], pb.ErasureProfile(k=4, m=2), asyncio.Semaphore(8))


def test_without_a_spare_node_a_failed_fragment_goes_to_the_same_node_again(monkeypatch):
    from cluster.client import fragments as module

    monkeypatch.setattr(module, "SAME_NODES_PAUSE_SECONDS", 0.001)
    nodes = FlakyNodes({"127.0.0.1:7003": 2})  # times out twice, then takes it
    assert asyncio.run(store(nodes)) == [1, 2, 3, 4, 5, 6]
    assert nodes.puts.count(("127.0.0.1:7003", 2)) == 3 and len(nodes.puts) == 8


def test_without_a_spare_node_a_node_that_keeps_failing_fails_the_store(monkeypatch):
    from cluster.client import fragments as module
    from cluster.client.errors import NotEnoughFragmentsError

    monkeypatch.setattr(module, "SAME_NODES_PAUSE_SECONDS", 0.001)
    nodes = FlakyNodes({"127.0.0.1:7003": 100})
    with pytest.raises(NotEnoughFragmentsError, match=r"fragments \[2\] .* in 4 tries"):
        asyncio.run(store(nodes))
    assert nodes.puts.count(("127.0.0.1:7003", 2)) == 4
