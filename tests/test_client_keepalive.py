"""The put's keepalive: uploaded fragments are touched before their nodes' orphan grace runs out,
and a put whose fragments are gone, or cannot be vouched for, fails before its commit."""
import asyncio

import pytest

from cluster.client.errors import PutExpired
from cluster.client.keepalive import Keepalive
from cluster.data.wire import UNAVAILABLE, DataError

A, B = b"a" * 32, b"b" * 32


class Nodes:
    """Fragments' side of the keepalive: nodes that hold fragments, with a grace each."""

    def __init__(self, graces):
        self.graces, self.now = graces, 0.0
        self.held = {node: set() for node in graces}
        self.down: set[int] = set()
        self.touches: list[tuple[int, list]] = []

    async def touch(self, node, ids):
        if node in self.down:
            raise DataError(UNAVAILABLE, "node down")
        self.touches.append((node, list(ids)))
        return [fragment in self.held[node] for fragment in ids]

    def orphan_grace(self, node):
        return self.graces.get(node, 3600.0)

    def store(self, keepalive, chunk_id, nodes):
        for index, node in enumerate(nodes):
            self.held[node].add((chunk_id, index))
        keepalive.stored(chunk_id, nodes, self.now)


def test_only_chunks_older_than_a_quarter_of_their_nodes_shortest_grace_are_touched():
    async def main():
        nodes = Nodes({1: 40.0, 2: 40.0, 3: 400.0, 4: 400.0})
        keepalive = Keepalive(nodes, lambda: nodes.now)
        nodes.store(keepalive, A, [1, 3])  # shortest grace 40: due at 10
        nodes.store(keepalive, B, [3, 4])  # 400: due at 100
        keepalive.stop()  # (the background rounds: driven by hand here)
        nodes.now = 9.0
        await keepalive.renew()
        assert nodes.touches == []
        nodes.now = 10.0
        await keepalive.renew()
        assert sorted(nodes.touches) == [(1, [(A, 0)]), (3, [(A, 1)])]
        nodes.touches.clear()
        nodes.now = 15.0
        await keepalive.renew()
        assert nodes.touches == []  # touched at 10: due again at 20
        assert keepalive.touched == 2
    asyncio.run(main())


def test_a_fragment_its_node_lost_fails_the_put():
    async def main():
        nodes = Nodes({1: 40.0, 2: 40.0})
        keepalive = Keepalive(nodes, lambda: nodes.now)
        nodes.store(keepalive, A, [1, 2])
        keepalive.stop()
        nodes.held[2].clear()  # its collector deleted it
        nodes.now = 30.0
        with pytest.raises(PutExpired, match="fragment 1 of chunk 6161.*node 2.*Nothing was committed"):
            await keepalive.renew()
    asyncio.run(main())


def test_a_silent_node_fails_the_put_only_once_its_fragments_may_be_gone():
    async def main():
        nodes = Nodes({1: 40.0})
        keepalive = Keepalive(nodes, lambda: nodes.now)
        nodes.store(keepalive, A, [1])
        keepalive.stop()
        nodes.down.add(1)
        nodes.now = 15.0
        await keepalive.renew(before_commit=False)  # tried again later
        await keepalive.renew()  # a commit 15 s after the upload: well inside the grace
        nodes.now = 20.0
        with pytest.raises(PutExpired, match="did not answer"):
            await keepalive.renew()
    asyncio.run(main())


def test_the_background_rounds_touch_and_report_a_loss():
    async def main():
        loop = asyncio.get_running_loop()
        nodes = Nodes({1: 0.4})
        keepalive = Keepalive(nodes, loop.time)
        nodes.now = loop.time()
        nodes.store(keepalive, A, [1])  # starts the rounds: every 0.05 s
        await asyncio.sleep(0.5)
        assert keepalive.touched >= 2
        keepalive.check()
        nodes.held[1].clear()
        await asyncio.sleep(0.3)
        with pytest.raises(PutExpired):
            keepalive.check()
        keepalive.stop()
    asyncio.run(main())


def test_a_node_with_a_shorter_grace_brings_the_next_round_forward():
    async def main():
        loop = asyncio.get_running_loop()
        nodes = Nodes({1: 80.0, 2: 0.4})
        keepalive = Keepalive(nodes, loop.time)
        nodes.now = loop.time()
        nodes.store(keepalive, A, [1])  # first round in 10 s
        nodes.store(keepalive, B, [2])  # now in 0.05 s
        await asyncio.sleep(0.3)
        assert (2, [(B, 0)]) in nodes.touches
        keepalive.stop()
    asyncio.run(main())


def test_no_round_runs_after_stop_even_one_that_just_ended():
    """The writer stops the keepalive a few loop steps after a round's last answer: whichever
    step, no timer is armed again (a round whose task had ended before stop() used to re-arm)."""
    class Gated(Nodes):
        gate = None

        async def touch(self, node, ids):
            self.touches.append((node, list(ids)))
            if self.gate is not None:
                await self.gate
            return [True] * len(ids)

    async def trial(steps: int) -> int:
        loop = asyncio.get_running_loop()
        nodes = Gated({1: 0.4})
        nodes.gate = loop.create_future()
        keepalive = Keepalive(nodes, loop.time)
        keepalive.stored(A, [1], loop.time() - 1.0)
        await asyncio.sleep(0.08)  # a round is waiting for its answer
        keepalive._chunks[A] = ((1,), loop.time())  # (nothing due before the commit)

        async def writer():
            await nodes.gate
            for _ in range(steps):
                await asyncio.sleep(0)
            try:
                await keepalive.renew()
            finally:
                keepalive.stop()
        finished = asyncio.ensure_future(writer())
        await asyncio.sleep(0)
        nodes.gate.set_result(None)
        await finished
        before, nodes.gate = len(nodes.touches), None
        await asyncio.sleep(0.6)
        return len(nodes.touches) - before

    async def main():
        return [await trial(steps) for steps in range(6)]
    assert asyncio.run(main()) == [0] * 6
