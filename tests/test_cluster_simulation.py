"""The whole-cluster simulation (simulations/cluster/): a fixed budget of seeds holds every check,
a seed replays exactly, and planted bugs are caught by the checkers."""
import asyncio
import os

import pytest

from cluster.client.fragments import Fragments
from cluster.client.meta import MetaClient
from cluster.client.reader import ObjectReader
from cluster.proto import meta_pb2 as pb
from simulations.cluster import run, world
from simulations.cluster.network import Network
from tests.seed_budget import run_seed_budget

SEEDS = 200  # the CI budget


def test_a_budget_of_seeds_holds_every_check():
    run_seed_budget("cluster", SEEDS)


def test_a_seed_replays_exactly():
    first, second = run.run_seed(7), run.run_seed(7)
    assert first.violation is None, first.violation
    assert (first.trace, first.operations, first.faults, first.simulated_seconds) == \
        (second.trace, second.operations, second.faults, second.simulated_seconds)
    assert run.run_seed(8).trace != first.trace


@pytest.mark.parametrize("scenario", sorted(run.SCENARIOS))
def test_named_scenarios_hold_every_check(scenario):
    for seed in (0, 1):
        report = run.run_seed(seed, scenario=scenario)
        assert report.violation is None, f"{scenario}, seed {seed}: {report.violation}"
        assert report.faults, "the scenario injected nothing"


def test_without_the_audit_fragments_lost_on_up_nodes_stay_lost(monkeypatch):
    """The scenario above heals only through the leader's audit (nothing reads the lost ones)."""
    monkeypatch.setattr(world, "AUDIT_FRAGMENTS_PER_SECOND", 0.0)
    report = run.run_seed(0, scenario="fragments-lost-on-up-nodes")
    assert report.violation and "not healed" in report.violation and "FragmentNotFound" in report.violation, \
        report.violation


def _caught(seeds=range(5)) -> str:
    for seed in seeds:
        report = run.run_seed(seed, safety_seconds=20.0)
        if report.violation:
            return report.violation
    raise AssertionError("the planted bug went unnoticed")


def test_a_put_acknowledged_without_its_commit_is_caught(monkeypatch):
    real_call = MetaClient.call

    async def call(self, op):
        if op.WhichOneof("op") == "command" and op.command.WhichOneof("command") == "commit_put":
            return pb.MetaReply(code=pb.OK, result=pb.MetaResult(head=op.command.commit_put.manifest.head))
        return await real_call(self, op)
    monkeypatch.setattr(MetaClient, "call", call)
    assert "linearizability" in _caught()


def test_a_reader_that_skips_the_hash_checks_is_caught(monkeypatch):
    real_garble = Network.garble

    def garble(self, payload):  # every run garbles replies now and then
        self.faults.corrupt = 0.05
        return real_garble(self, payload)
    monkeypatch.setattr(Network, "garble", garble)
    from cluster.codec import CodecError

    def unchecked(codec, chunk_id, length, fragments, out=None):
        try:
            return codec.decode_chunk(fragments, length, out)
        except CodecError:
            return None
    monkeypatch.setattr(Fragments, "_verified", staticmethod(unchecked))
    monkeypatch.setattr(ObjectReader, "verified_whole", lambda self: True)
    assert "linearizability" in _caught()


@pytest.mark.parametrize("planted", ["references", "replicas"])
def test_the_state_checks_catch_what_they_look_for(planted):
    """The reference count and replica checks, on a world whose state was tampered with."""
    async def scenario():
        world = run.World(3, metas=3, datas=5)
        await world.start()
        client = world.client("c")
        await client.create_bucket("sim", k=2, m=1)
        await client.put("sim", "k", os.urandom(50_000))
        await asyncio.sleep(2)
        leader = world.leader()
        chunk_key, raw = next(iter(leader.state.disk.scan(b"C", b"D")))
        if planted == "references":
            chunk = pb.Chunk.FromString(raw)
            chunk.refs += 1
            leader.state.disk.write([(chunk_key, chunk.SerializeToString())], [], sync=True)
            with pytest.raises(run.Violation, match="references"):
                run.check_references(leader.state)
        else:
            follower = next(n for n in world.meta.nodes.values() if n is not leader)
            follower.state.disk.write([(chunk_key, raw + b"x")], [], sync=True)
            with pytest.raises(run.Violation, match="differ"):
                run.check_replicas_agree(world)
        await client.close()
        await world.stop()
    from simulations.loop import run as run_on_sim_loop
    run_on_sim_loop(scenario())


def _slow_put():
    """A put whose source stalls for the data nodes' orphan grace between its four blocks,
    on a simulated cluster: what it returns, and the fragments its object's chunks are missing."""
    from simulations.cluster.world import ORPHAN_GRACE_SECONDS

    async def scenario():
        world = run.World(5, metas=3, datas=5)
        await world.start()
        client = world.client("c")
        client.writer.buffer_bytes = 1 << 20  # every chunk goes as soon as it is cut
        await client.create_bucket("sim", k=2, m=1)
        data = os.urandom(4 << 20)
        try:
            outcome = await client.put("sim", "slow", run.stalling(data, ORPHAN_GRACE_SECONDS, 1 << 20))
        except Exception as error:  # noqa: BLE001 - the outcome looked at
            outcome = error
        await asyncio.sleep(2 * ORPHAN_GRACE_SECONDS)  # any deletion under way has happened
        state = world.leader().state
        by_id = {d.membership.node_id: d for d in world.datas.values()}
        missing = [(chunk_id, index) for chunk_id, chunk in run._chunks(state).items()
                   for index, node_id in enumerate(chunk.nodes) if not by_id[node_id].disks.has(chunk_id, index)]
        read = await client.get("sim", "slow") if isinstance(outcome, pb.ObjectHead) else None
        await client.close()
        await world.stop()
        return outcome, missing, read == data
    from simulations.loop import run as run_on_sim_loop
    return run_on_sim_loop(scenario())


def test_a_put_slower_than_the_orphan_grace_keeps_its_fragments():
    """Its client touches the fragments it uploaded, so the data nodes' collectors leave them."""
    outcome, missing, read_back = _slow_put()
    assert isinstance(outcome, pb.ObjectHead) and outcome.size == 4 << 20
    assert missing == [] and read_back


def test_a_put_whose_fragments_were_collected_fails_before_its_commit(monkeypatch):
    """Without the touches while it runs, the collectors delete its first fragments; the look
    before the commit finds them gone, and nothing is committed."""
    from cluster.client.errors import PutExpired
    from cluster.client.keepalive import Keepalive
    monkeypatch.setattr(Keepalive, "_begin_round", lambda self: None)  # only the look before the commit
    outcome, missing, _ = _slow_put()
    assert isinstance(outcome, PutExpired), outcome
    assert "Nothing was committed" in str(outcome) and missing == []  # (no chunk of it is in the metadata)


def test_a_fragment_missing_from_an_up_node_is_reported_by_a_read_and_repaired():
    """Nothing else sees a fragment gone from a node that is up (the scrubber checks what is
    there): the read that finds it missing reports it, and repair puts it back."""
    async def scenario():
        world = run.World(7, metas=3, datas=5)
        await world.start()
        client = world.client("c")
        await client.create_bucket("sim", k=2, m=1)
        data = os.urandom(100_000)
        await client.put("sim", "k", data)
        state = world.leader().state
        (chunk_id, chunk), = run._chunks(state).items()
        by_id = {d.membership.node_id: d for d in world.datas.values()}
        by_id[chunk.nodes[0]].disks.delete(chunk_id, 0)  # lost behind the store's back
        assert await client.get("sim", "k") == data  # from parity
        for _ in range(60):
            await asyncio.sleep(1)
            if run.healing_left(world) is None:
                break
        healed = run.healing_left(world)
        await client.close()
        await world.stop()
        return healed
    from simulations.loop import run as run_on_sim_loop
    assert run_on_sim_loop(scenario()) is None
