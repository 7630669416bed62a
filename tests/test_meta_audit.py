"""The leader's fragment audit (cluster/meta/audit.py) against fakes: what it asks, what it
reports, its pacing, and the failures it must ride out. Real processes: tests/test_meta_duties.py;
the simulator: the fragments-lost-on-up-nodes scenario."""
import asyncio

import grpc
import pytest

from cluster.meta import audit
from cluster.proto import data_pb2
from cluster.proto import meta_pb2 as pb


def chunk_id(n: int) -> bytes:
    return n.to_bytes(32, "big")


class FakeState:
    def __init__(self, chunks: dict[bytes, pb.Chunk], nodes: list[pb.Node]):
        self.chunks, self._nodes = chunks, nodes

    def chunks_after(self, after: bytes, limit: int):
        return [(c, self.chunks[c]) for c in sorted(self.chunks) if c > after][:limit]

    def nodes(self):
        return self._nodes

    def chunk(self, chunk: bytes):
        return self.chunks.get(chunk)


class FakeService:
    def __init__(self, state: FakeState):
        self.state, self.proposed, self.leader = state, [], True
        self.wake = asyncio.Event()
        self.driver = self

    @property
    def is_leader(self) -> bool:
        return self.leader

    async def propose(self, **command):
        self.proposed.append(command)
        return pb.MetaResult()


class FakeChannel:
    """A node's control API that holds `held` (or fails every call with UNAVAILABLE)."""

    def __init__(self, held: set | None, asked: list):
        self.held, self.asked = held, asked

    def unary_unary(self, path, request_serializer=None, response_deserializer=None, **options):
        async def call(request, timeout=None, **kwargs):
            assert path.endswith("/Has") and timeout
            if self.held is None:
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
            self.asked.append(len(request.fragments))
            return data_pb2.HasReply(present=[(f.chunk, f.index) in self.held for f in request.fragments])
        return call


def cluster_of(held_by_node: dict[int, set | None], chunks: dict[bytes, pb.Chunk], states=None):
    states = states or {}
    nodes = [pb.Node(id=n, address=f"n{n}", state=states.get(n, pb.UP)) for n in sorted(held_by_node)]
    service = FakeService(FakeState(chunks, nodes))
    asked: list = []
    clock = [0.0]
    auditor = audit.Auditor(service, lambda address: FakeChannel(held_by_node[int(address[1:])], asked),
                            clock=lambda: clock[0], fragments_per_second=100.0)
    return auditor, service, asked, clock


async def settle(auditor: audit.Auditor) -> None:
    if auditor._task is not None:
        await auditor._task


def test_the_audit_asks_up_and_draining_nodes_for_the_fragments_of_hot_chunks():
    hot = pb.Chunk(state=pb.HOT, nodes=[1, 2, 3])
    records = [(b"a" * 32, hot), (b"b" * 32, pb.Chunk(state=pb.DELETING, nodes=[1, 2, 3])),
               (b"c" * 32, pb.Chunk(state=pb.COLD, tier="t")), (b"d" * 32, pb.Chunk(state=pb.HOT, nodes=[3, 1, 4]))]
    states = {1: pb.UP, 2: pb.SUSPECT, 3: pb.DRAINING, 4: pb.DEAD}
    assert audit.expected(records, states) == {1: [(b"a" * 32, 0), (b"d" * 32, 1)], 3: [(b"a" * 32, 2), (b"d" * 32, 0)]}


def test_missing_fragments_of_hot_chunks_are_reported_and_repair_is_woken():
    chunks = {chunk_id(1): pb.Chunk(state=pb.HOT, nodes=[1, 2, 3]),
              chunk_id(2): pb.Chunk(state=pb.HOT, nodes=[2, 3, 1]),
              chunk_id(3): pb.Chunk(state=pb.DELETING, nodes=[1, 2, 3])}  # may lack them: not asked
    held = {1: {(chunk_id(1), 0)},  # lacks fragment 2 of chunk 2
            2: {(chunk_id(1), 1), (chunk_id(2), 0)},
            3: {(chunk_id(1), 2), (chunk_id(2), 1)}}
    auditor, service, asked, _ = cluster_of(held, chunks)

    async def run():
        assert auditor.round() == 6
        await settle(auditor)
    asyncio.run(run())
    assert sorted(asked) == [2, 2, 2]
    (command,) = service.proposed
    assert [(d.chunk, d.index, d.node) for d in command["report_damage"].damage] == [(chunk_id(2), 2, 1)]
    assert service.wake.is_set()
    assert (auditor.audited, auditor.missing, auditor.passes) == (6, 1, 1)


def test_a_fragment_that_moved_while_its_node_was_asked_is_not_reported():
    chunks = {chunk_id(1): pb.Chunk(state=pb.HOT, nodes=[1, 2])}
    auditor, service, _, _ = cluster_of({1: set(), 2: {(chunk_id(1), 1)}}, chunks)

    async def run():
        auditor.round()
        chunks[chunk_id(1)] = pb.Chunk(state=pb.HOT, nodes=[3, 2])  # repaired elsewhere meanwhile
        await settle(auditor)
    asyncio.run(run())
    assert service.proposed == [] and auditor.missing == 0


def test_the_budget_paces_slices_and_a_pass_walks_every_chunk_once(monkeypatch):
    monkeypatch.setattr(audit, "SLICE_CHUNKS", 2)
    chunks = {chunk_id(n): pb.Chunk(state=pb.HOT, nodes=[1]) for n in range(5)}
    auditor, service, asked, clock = cluster_of({1: {(c, 0) for c in chunks}}, chunks)

    async def run():
        counts = []
        for _ in range(4):
            counts.append(auditor.round())
            assert auditor.round() == 0  # the budget (100 fragments/s) has no room yet
            await settle(auditor)
            clock[0] += 1.0
        return counts
    assert asyncio.run(run()) == [2, 2, 1, 2]  # the fourth slice starts the next pass
    assert auditor.passes == 1 and service.proposed == []


def test_an_unreachable_node_and_a_follower_ask_nothing_and_report_nothing():
    chunks = {chunk_id(1): pb.Chunk(state=pb.HOT, nodes=[1, 2, 3])}
    auditor, service, asked, _ = cluster_of({1: None, 2: set(), 3: set()}, chunks, states={3: pb.SUSPECT})

    async def run():
        assert auditor.round() == 2  # node 3 is SUSPECT: the failure detector's business
        await settle(auditor)
        service.leader = False
        assert auditor.round() == 0 and auditor._cursor == b""
    asyncio.run(run())
    assert [(d.node, d.index) for d in service.proposed[0]["report_damage"].damage] == [(2, 1)]


def test_an_empty_cluster_makes_no_passes_and_a_negative_budget_is_refused():
    auditor, _, _, _ = cluster_of({1: set()}, {})
    assert auditor.round() == 0 and auditor.round() == 0 and auditor.passes == 0
    with pytest.raises(ValueError):
        audit.Auditor(None, None, clock=lambda: 0.0, fragments_per_second=-1)
