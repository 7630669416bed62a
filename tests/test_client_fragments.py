"""The client's fragment plumbing: concurrent callers that find a node unknown share one read of
the node list; a store retries a failed fragment; a read asks for exactly k fragments while they
come, parity at once for one that fails and for the ones late by the hedge delay."""
import asyncio

import blake3
import pytest

from cluster.client.errors import CairnError, NotEnoughFragmentsError
from cluster.client.fragments import Fragments
from cluster.data.wire import NOT_FOUND, DataError
from cluster.proto import meta_pb2 as pb


class CountingMeta:
    def __init__(self, fail_first: bool = False):
        self.calls, self.fail_first = 0, fail_first
        self.reports: list[pb.ReportDamage] = []

    async def command(self, report_damage):
        self.reports.append(report_damage)
        return pb.MetaReply()

    async def call(self, op):
        assert op.WhichOneof("op") == "list_nodes"
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail_first and self.calls == 1:
            return pb.MetaReply(code=pb.UNAVAILABLE, message="no leader")
        nodes = [pb.Node(id=i, data_address=f"127.0.0.1:{7000 + i}", state=pb.UP) for i in range(1, 7)]
        return pb.MetaReply(list_nodes=pb.ListNodesReply(nodes=nodes, nodes_version=TABLE_VERSION))


TABLE_VERSION = 77


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


def test_records_with_a_read_bring_one_background_read_of_the_table_and_then_stop_coming():
    async def run():
        meta = CountingMeta()
        f = fragments(meta)
        assert f.nodes_version == 0  # what GetObject sends: no table yet, records wanted
        records = [pb.Node(id=2, data_address="127.0.0.1:7002")]
        for _ in range(5):  # reads that come back with records while the table is on its way
            f.learn_from_read(records, TABLE_VERSION)
        assert f._nodes[2].data_address == "127.0.0.1:7002"
        await asyncio.sleep(0.05)
        assert meta.calls == 1 and f.nodes_version == TABLE_VERSION and sorted(f._nodes) == [1, 2, 3, 4, 5, 6]
        f.learn_from_read([], TABLE_VERSION)  # current: nothing more to read
        f.learn_from_read(records, 0)  # a leader that keeps no version: reading again would not help
        await asyncio.sleep(0.05)
        assert meta.calls == 1
        f.learn_from_read(records, TABLE_VERSION + 1)  # the table moved on: read it again
        await asyncio.sleep(0.05)
        assert meta.calls == 2
    asyncio.run(run())


def test_records_older_or_newer_than_the_table_make_it_out_of_date_until_a_read_of_it_lands():
    """Records that come with another version than the table's (a reply older than the table
    read, or a table that moved on) leave the client asking for records (version 0) and reading
    the table again, even when that read fails once: it never keeps records its version hides."""
    async def run():
        meta = CountingMeta(fail_first=True)
        f = fragments(meta)
        f.learn_from_read([pb.Node(id=5, data_address="10.0.0.5:1")], TABLE_VERSION)
        await asyncio.sleep(0.05)
        assert meta.calls == 1 and f.nodes_version == 0  # the read failed: still out of date
        f.learn_from_read([pb.Node(id=5, data_address="10.0.0.5:1")], TABLE_VERSION)
        await asyncio.sleep(0.05)
        assert meta.calls == 2 and f.nodes_version == TABLE_VERSION
        assert f._nodes[5].data_address == "127.0.0.1:7005"
        f.learn_from_read([pb.Node(id=5, data_address="10.0.0.5:1")], TABLE_VERSION - 1)  # a late, older reply
        assert f.nodes_version == 0 and f._nodes[5].data_address == "10.0.0.5:1"
        await asyncio.sleep(0.05)
        assert meta.calls == 3 and f.nodes_version == TABLE_VERSION and f._nodes[5].data_address == "127.0.0.1:7005"
    asyncio.run(run())


def test_closing_stops_a_background_read_of_the_table():
    class SlowMeta(CountingMeta):
        async def call(self, op):
            await asyncio.sleep(60)

    async def run():
        f = fragments(SlowMeta())
        f.learn_from_read([pb.Node(id=1)], TABLE_VERSION)
        reading = f._refreshing
        await asyncio.sleep(0.01)
        await asyncio.wait_for(f.close(), 5)
        assert reading.cancelled()
    asyncio.run(run())


def test_a_node_the_leader_calls_suspect_or_dead_is_read_last_until_a_record_says_it_is_up():
    now = [0.0]
    f = Fragments(CountingMeta(), connect=lambda address: address, clock=lambda: now[0])
    f.learn([pb.Node(id=1, state=pb.DEAD), pb.Node(id=2, state=pb.SUSPECT), pb.Node(id=3, state=pb.UP)])
    f._suspect([1, 3])  # a failed read of each: never shortens the leader's word
    now[0] = 1e6  # records no longer come with every read, so their word must not wear off
    assert [f._read_last(i, now[0]) for i in (1, 2, 3)] == [True, True, False]

    async def landed(node_index):  # a successful fetch from the chunk's node at node_index
        call = asyncio.get_running_loop().create_future()
        call.set_result(b"fragment")
        assert f._file(b"c" * 32, pb.Chunk(nodes=[1, 2, 3]), node_index, call, {}, set()) is None
    f._suspect([3])
    assert f._read_last(3, now[0])
    for index in range(3):
        asyncio.run(landed(index))
    # a good read clears the client's own suspicion (node 3), not the leader's (nodes 1 and 2)
    assert [f._read_last(i, now[0]) for i in (1, 2, 3)] == [True, True, False]
    f.learn([pb.Node(id=1, state=pb.UP)])
    assert not f._read_last(1, now[0]) and f._read_last(2, now[0])


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

    monkeypatch.setattr(module, "SAME_NODES_PAUSE_SECONDS", 0.001)
    nodes = FlakyNodes({"127.0.0.1:7003": 100})
    with pytest.raises(NotEnoughFragmentsError, match=r"fragments \[2\] .* in 4 tries"):
        asyncio.run(store(nodes))
    assert nodes.puts.count(("127.0.0.1:7003", 2)) == 4


class GatedNodes:
    """Data clients whose puts are futures the test settles, as the real client's are."""

    def __init__(self):
        self.calls: list[tuple[str, int, asyncio.Future]] = []

    def connect(self, address):
        nodes = self

        class Client:
            def put(self, chunk_id, index, data, crc, timeout):
                call = asyncio.get_running_loop().create_future()
                nodes.calls.append((address, index, call))
                return call
        return Client()

    def open(self) -> list:
        return [(address, index, call) for address, index, call in self.calls if not call.done()]


def test_a_store_keeps_to_its_slots_counts_what_was_stored_and_raises_what_is_not_a_node_failure():
    async def run():
        nodes = GatedNodes()
        f = Fragments(CountingMeta(), connect=nodes.connect)  # (the first puts look the nodes up)
        slots = asyncio.Semaphore(2)
        storing = asyncio.ensure_future(f.store(b"c" * 32, b"x" * 1000, [1, 2, 3, 4, 5, 6],
                                                pb.ErasureProfile(k=4, m=2), slots))
        for settled in range(3):  # never more than two on their way; each landing lets one more go
            await asyncio.sleep(0.05)
            assert len(nodes.open()) == 2 and len(nodes.calls) == 2 + 2 * settled
            for _, _, call in nodes.open():
                call.set_result(None)
        assert await storing == [1, 2, 3, 4, 5, 6] and f.sent == 6

        broken = asyncio.ensure_future(f.store(b"d" * 32, b"x" * 1000, [1, 2, 3, 4, 5, 6],
                                               pb.ErasureProfile(k=4, m=2), slots))
        await asyncio.sleep(0.05)
        nodes.open()[0][2].set_exception(ValueError("a bug, not a node's failure"))
        for _ in range(10):  # the others go on and land; then the bug is raised
            await asyncio.sleep(0.05)
            for _, _, call in nodes.open():
                call.set_result(None)
        with pytest.raises(ValueError, match="a bug"):
            await broken

        cancelled = asyncio.ensure_future(f.store(b"e" * 32, b"x" * 1000, [1, 2, 3, 4, 5, 6],
                                                  pb.ErasureProfile(k=4, m=2), slots))
        await asyncio.sleep(0.05)
        waiting = nodes.open()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await asyncio.sleep(0)
        assert len(waiting) == 2 and all(call.cancelled() for _, _, call in waiting)  # withdrawn
        assert not slots.locked() and f.sent == 6 + 5
    asyncio.run(run())


class ScriptedNodes:
    """Data clients whose gets answer as scripted per node: "ok" at once, "fail" at once, "lie"
    (wrong bytes that pass as right, as a node's undetected corruption would), or "stall"
    (never, unless cancelled). Gets are futures, as the real client's are, or coroutines
    (the simulator's) with `coroutines`."""

    def __init__(self, codec, chunk_id, data, script: dict[int, str], coroutines: bool = False):
        self.fragments = codec.encode_chunk(data)
        self.script, self.coroutines, self.asked = script, coroutines, []

    def connect(self, address):
        nodes, number = self, int(address.rsplit(":", 1)[1]) - 7000

        class Client:
            def get(self, chunk_id, index, timeout=None, expect=None):
                nodes.asked.append(index)
                future = asyncio.get_running_loop().create_future()
                action = nodes.script.get(number, "ok")
                if action == "ok":
                    future.set_result(bytes(nodes.fragments[index]))
                elif action == "fail":
                    future.set_exception(DataError(NOT_FOUND, "no such fragment"))
                elif action == "lie":
                    future.set_result(bytes(len(nodes.fragments[index])))
                if not nodes.coroutines:
                    return future

                async def answer():
                    return await future
                return answer()

            async def close(self):
                pass
        return Client()


def read(script: dict[int, str], coroutines: bool = False, hedge_seconds: float = 0.05, reports: list | None = None):
    """Reads a 4+2 chunk on nodes 1..6 (fragment i on node i + 1); returns (data ok, asked,
    hedged, damaged). The damage reports sent go into `reports`."""
    async def run():
        data = bytes(range(256)) * 40
        chunk_id = blake3.blake3(data).digest()
        meta = CountingMeta()
        meta.reports = reports if reports is not None else []
        f = Fragments(meta, hedge_seconds=hedge_seconds)
        nodes = ScriptedNodes(f.codec(4, 2), chunk_id, data, script, coroutines)
        f._connect = nodes.connect
        for node in (1, 2, 3, 4, 5, 6):
            await f._client(node)  # connections open: the path without a task per fragment
        chunk = pb.Chunk(profile=pb.ErasureProfile(k=4, m=2), nodes=[1, 2, 3, 4, 5, 6])
        got = await asyncio.wait_for(f.read(chunk_id, len(data), chunk), 5)
        if reports is not None:  # a second read, then the background report: one report
            await asyncio.wait_for(f.read(chunk_id, len(data), chunk), 5)
            await asyncio.sleep(0.01)
        await f.close()
        return bytes(got) == data, nodes.asked, f.hedged, f.damaged
    return asyncio.run(run())


@pytest.mark.parametrize("coroutines", [False, True])
def test_a_read_asks_for_exactly_the_k_data_fragments_when_they_come(coroutines):
    assert read({}, coroutines) == (True, [0, 1, 2, 3], 0, 0)


@pytest.mark.parametrize("coroutines", [False, True])
def test_a_failed_fragment_brings_in_parity_at_once_and_a_missing_one_is_reported(coroutines):
    reports = []
    ok, asked, hedged, _ = read({2: "fail"}, coroutines, hedge_seconds=60, reports=reports)  # (a hedge: timeout)
    assert ok and asked[:5] == [0, 1, 2, 3, 4] and hedged == 0
    assert [[(d.index, d.node, d.reason) for d in r.damage] for r in reports] == \
        [[(1, 2, "missing on its node (client read)")]]  # once, for two reads


@pytest.mark.parametrize("coroutines", [False, True])
def test_late_fragments_are_replaced_by_parity_after_the_hedge_delay(coroutines):
    ok, asked, hedged, _ = read({1: "stall", 3: "stall"}, coroutines)
    assert ok and sorted(asked) == [0, 1, 2, 3, 4, 5] and hedged == 2


def test_too_few_fragments_fail_the_read_and_nothing_is_returned():
    with pytest.raises(NotEnoughFragmentsError, match=r"unreadable: \[0, 1, 2\]"):
        read({1: "fail", 2: "fail", 3: "fail"})


@pytest.mark.parametrize("coroutines", [False, True])
def test_a_fragment_that_lies_is_found_by_leaving_each_out_and_the_chunk_comes_back_right(coroutines):
    ok, asked, hedged, damaged = read({2: "lie"}, coroutines)
    assert ok and sorted(asked) == [0, 1, 2, 3, 4, 5] and hedged == 0 and damaged == 1


def test_a_missing_fragment_whose_report_failed_is_reported_by_a_later_read():
    class FailingOnce(CountingMeta):
        async def command(self, report_damage):
            self.reports.append(report_damage)
            if len(self.reports) == 1:
                raise ConnectionError("no leader")
            return pb.MetaReply()

    async def run():
        meta = FailingOnce()
        f = Fragments(meta)
        f._report_missing(b"c" * 32, 1, 2)
        await asyncio.sleep(0.01)  # the report fails
        f._report_missing(b"c" * 32, 1, 2)  # a later read finds it missing again
        await asyncio.sleep(0.01)
        f._report_missing(b"c" * 32, 1, 2)  # reported now: not again
        await asyncio.sleep(0.01)
        await f.close()
        return [[(d.index, d.node) for d in r.damage] for r in meta.reports]
    assert asyncio.run(run()) == [[(1, 2)], [(1, 2)]]
