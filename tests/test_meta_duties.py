"""The metadata leader's duties. Failure detection of data nodes: the pure detector, the MarkNode
command, and real processes (a data node killed is SUSPECT then DEAD, back UP when it returns;
a leader change declares nobody dead). Garbage: a deleted object's chunks are forgotten after
the grace period, their fragments deleted from the data nodes and the space reclaimed."""
import asyncio
import glob
import os
import random
import signal
import threading
import time
from collections import Counter

import grpc
import pytest
from hypothesis import given, strategies as st

import cluster
from cluster.client.meta import MetaClient
from cluster.data.membership import HEARTBEAT_SECONDS
from cluster.dev import LocalCluster
from cluster.meta import repair
from cluster.meta.liveness import REPROPOSE_SECONDS, FailureDetector
from cluster.meta.state import MetaState
from cluster.proto import data_pb2, data_pb2_grpc
from cluster.proto import meta_pb2 as pb
from cluster.storage.disk import MemoryDisk


def node(node_id, state=pb.UP):
    return pb.Node(id=node_id, state=state)


def test_silence_makes_a_node_suspect_then_dead():
    detector = FailureDetector(suspect_after=10, dead_after=60)
    assert detector.verdicts([node(1)], 100) == []  # not leading: no verdicts
    detector.lead(100)
    detector.heard(1, 100)
    assert detector.verdicts([node(1), node(2)], 105) == []
    marks = detector.verdicts([node(1), node(2)], 111)
    assert [(m.id, m.state, m.expect) for m in marks] == [(1, pb.SUSPECT, pb.UP), (2, pb.SUSPECT, pb.UP)]
    assert detector.verdicts([node(1), node(2)], 112) == []  # proposed already, not yet applied
    again = detector.verdicts([node(1), node(2)], 111 + REPROPOSE_SECONDS)
    assert [m.id for m in again] == [1, 2]  # lost proposals are repeated
    detector.heard(2, 150)
    marks = detector.verdicts([node(1, pb.SUSPECT), node(2, pb.SUSPECT), node(3, pb.DRAINING)], 161)
    assert [(m.id, m.state, m.expect) for m in marks] == [(1, pb.DEAD, pb.SUSPECT)]
    assert detector.verdicts([node(1, pb.DEAD)], 500) == []  # dead stays dead until it heartbeats


def test_a_new_leader_counts_every_node_as_heard_when_it_took_office():
    detector = FailureDetector(suspect_after=10, dead_after=60)
    detector.lead(0)
    detector.follow()
    detector.lead(1000)  # long after anything was heard
    assert detector.verdicts([node(1), node(2)], 1005) == []
    assert [m.state for m in detector.verdicts([node(1)], 1061)] == [pb.DEAD]


@given(st.lists(st.tuples(st.integers(1, 4), st.floats(0, 5)), max_size=40), st.floats(1, 30))
def test_a_node_heard_recently_is_never_marked(beats, check_gap):
    detector = FailureDetector(suspect_after=10, dead_after=30)
    detector.lead(0.0)
    now, last = 0.0, {}
    for node_id, gap in beats:
        now += gap
        detector.heard(node_id, now)
        last[node_id] = now
        check_at = now + min(check_gap, 9.99)
        for mark in detector.verdicts([node(n) for n in range(1, 5)], check_at):
            assert check_at - last.get(mark.id, 0.0) >= 10


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError):
        FailureDetector(suspect_after=10, dead_after=5)


def test_mark_node_applies_only_from_the_expected_state(tmp_path):
    state = MetaState(MemoryDisk())

    def apply(index, **command):
        entry = pb.MetaEntry(commands=[pb.MetaCommand(op_id=os.urandom(16), now_ms=index, **command)])
        return pb.MetaResults.FromString(state.apply(index, entry.SerializeToString())).results[0]
    node_id = apply(1, register_node=pb.RegisterNode(node=pb.Node(address="a:1", labels={"host": "a"}))).node_id
    assert apply(2, mark_node=pb.MarkNode(id=node_id, state=pb.SUSPECT, expect=pb.UP)).code == pb.OK
    assert state.node(node_id).state == pb.SUSPECT
    unchanged = apply(3, mark_node=pb.MarkNode(id=node_id, state=pb.DEAD, expect=pb.UP))
    assert "unchanged" in unchanged.message and state.node(node_id).state == pb.SUSPECT
    assert apply(4, mark_node=pb.MarkNode(id=99, state=pb.DEAD, expect=pb.UP)).code == pb.UNKNOWN_NODE


def fill(client, bucket: str, count: int, size: int) -> dict[str, bytes]:
    """A new 4+2 bucket with `count` objects of `size` + n random bytes; returns them to read back."""
    client.create_bucket(bucket, k=4, m=2)
    objects = {f"o{n}": os.urandom(size + n) for n in range(count)}
    for key, data in objects.items():
        client.put(bucket, key, data)
    return objects


def data_status(member) -> data_pb2.StatusReply:
    """A data node's own account: its id, disks and fragment count."""
    with grpc.insecure_channel(member.addresses[0]) as channel:
        return data_pb2_grpc.DataStub(channel).Status(data_pb2.StatusRequest(), timeout=5)


async def states(client):
    reply = await client.call(pb.MetaOp(list_nodes=pb.ListNodes()))
    return {n.address: n.state for n in reply.list_nodes.nodes}


async def wait_for(client, address, state, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (await states(client)).get(address) == state:
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{address} did not become {pb.NodeState.Name(state)}: {await states(client)}")


def test_a_killed_data_node_is_suspect_then_dead_and_up_again_when_back(tmp_path):
    local = LocalCluster(str(tmp_path), metas=3, datas=2, port_base=None,
                         meta_options=["--tick-seconds", "0.02", "--suspect-after-seconds", "3",
                                       "--dead-after-seconds", "6"])  # data nodes beat every 2 s
    local.start()
    try:
        async def main():
            client = MetaClient(local.meta_addresses)
            try:
                victim, other = (local.member("data", n).addresses[0] for n in (1, 2))
                assert set((await states(client)).values()) == {pb.UP}
                local.kill("data", 1, signal.SIGKILL)
                killed = time.monotonic()
                suspect = await wait_for(client, victim, pb.SUSPECT, 10)
                dead = await wait_for(client, victim, pb.DEAD, 15)
                # silent since its last beat, which came up to one beat before the kill
                # (it once went SUSPECT 1.4 s after the kill: a bound of 2 s assumed otherwise)
                assert suspect - killed > 3 - HEARTBEAT_SECONDS - 0.2 and dead - killed > 6 - HEARTBEAT_SECONDS - 0.2
                assert (await states(client))[other] == pb.UP
                local.restart("data", 1)
                await wait_for(client, victim, pb.UP, 30)

                # a leader change: the new leader gives every node a fresh grace period
                leader = local.meta_addresses.index(client.leader) + 1
                local.kill("meta", leader, signal.SIGKILL)
                changed = time.monotonic()
                while time.monotonic() - changed < 5.0:
                    assert set((await states(client)).values()) == {pb.UP}
                    await asyncio.sleep(0.2)
            finally:
                await client.close()
        asyncio.run(main())
    finally:
        local.stop()


def test_garbage_is_forgotten_and_its_fragments_deleted(tmp_path):
    local = LocalCluster(str(tmp_path), metas=3, datas=6, port_base=None,
                         meta_options=["--tick-seconds", "0.02", "--garbage-grace-seconds", "1"],
                         data_options=["--orphan-grace-seconds", "1", "--orphan-interval-seconds", "1",
                                       "--compact-interval-seconds", "1"])
    local.start()

    def used_on_nodes():
        return sum(d.used_bytes for n in range(1, 7) for d in data_status(local.member("data", n)).disks)

    def fragments_on_nodes():
        return sum(data_status(local.member("data", n)).fragments for n in range(1, 7))
    try:
        with cluster.connect(local.meta_addresses) as client:
            client.create_bucket("garbage", k=4, m=2)
            # a stripe's segment is compacted once under half live: keep is small next to drop, so that on
            # every node and stripe the dropped fragments are most of the bytes, whatever the placement
            keep, drop = os.urandom(1 << 20), os.urandom(7 << 20)
            client.put("garbage", "keep", keep)
            client.put("garbage", "drop", drop)
            before = client.status()
            stored, used = fragments_on_nodes(), used_on_nodes()
            client.delete("garbage", "drop")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if client.status().chunks < before.chunks and fragments_on_nodes() < stored:
                    break
                time.sleep(0.5)
            after = client.status()
            assert after.chunks < before.chunks and after.chunk_bytes == before.chunk_bytes - len(drop)
            while time.monotonic() < deadline and fragments_on_nodes() > after.chunks * 6:
                time.sleep(0.5)
            assert fragments_on_nodes() == after.chunks * 6
            while time.monotonic() < deadline and used_on_nodes() > used - len(drop):
                time.sleep(0.5)
            assert used_on_nodes() <= used - len(drop), "the deleted fragments' space was not reclaimed"
            assert client.get("garbage", "keep") == keep
    finally:
        local.stop()


def test_survey_orders_most_endangered_first():
    profile = pb.ErasureProfile(k=2, m=2)
    states = {1: pb.UP, 2: pb.DEAD, 3: pb.UP, 4: pb.DEAD, 5: pb.UP, 6: pb.SUSPECT}
    chunks = [(b"a" * 32, pb.Chunk(profile=profile, nodes=[1, 3, 5, 6])),        # intact (suspect is not lost)
              (b"b" * 32, pb.Chunk(profile=profile, nodes=[1, 2, 3, 5])),        # -1
              (b"c" * 32, pb.Chunk(profile=profile, nodes=[2, 4, 1, 3])),        # -2
              (b"d" * 32, pb.Chunk(profile=profile, nodes=[2, 4, 7, 1])),        # -3 (7 unknown): beyond repair
              (b"e" * 32, pb.Chunk(profile=profile, nodes=[1, 3, 5, 6])),        # damaged in place
              (b"f" * 32, pb.Chunk(profile=profile, nodes=[2, 4, 1, 3], state=pb.COLD))]
    found = repair.survey(chunks, states, {b"e" * 32: {0}})
    assert found.scanned == 6 and found.unrepairable == 1
    assert dict(found.by_lost) == {0: 1, 1: 2, 2: 1, 3: 1}
    assert found.repairs == 3  # the beyond-repair chunk is counted apart
    order = repair.most_endangered_first(found.queue)
    assert [(d.chunk_id[:1], d.lost) for d in order] == [(b"c", (0, 1)), (b"b", (1,)), (b"e", (0,))]
    # a fragment on a SUSPECT node is not lost, but it ranks the chunk as more endangered
    order = repair.most_endangered_first(found.queue, states)
    assert [(d.chunk_id[:1], repair.endangerment(d, states)) for d in order] == [(b"c", 2), (b"e", 2), (b"b", 1)]
    # no replacement node: a damaged fragment on a live node is rewritten in place; a dead one cannot be
    assert repair.targets(chunks[4][1], (0,), None, states) == [1, 3, 5, 6]
    with pytest.raises(repair.NoTarget):
        repair.targets(chunks[1][1], (1,), None, states)
    assert repair.targets(chunks[1][1], (1,), [1, 9, 3, 5], states) == [1, 9, 3, 5]


def test_update_placement_applies_only_over_the_expected_placement():
    state = MetaState(MemoryDisk())
    index = iter(range(1, 100))

    def apply(**command):
        entry = pb.MetaEntry(commands=[pb.MetaCommand(op_id=os.urandom(16), now_ms=1, **command)])
        return pb.MetaResults.FromString(state.apply(next(index), entry.SerializeToString())).results[0]
    assert apply(create_bucket=pb.CreateBucket(name="bkt", profile=pb.ErasureProfile(k=2, m=1))).code == pb.OK
    ids = [apply(register_node=pb.RegisterNode(node=pb.Node(address=f"n{n}:1", labels={"host": f"h{n}"}))).node_id
           for n in range(4)]
    chunk = b"\x01" * 32
    manifest = pb.Manifest(head=pb.ObjectHead(size=10, blake3=b"\x02" * 32), chunks=[pb.ChunkRef(id=chunk, length=10)])
    assert apply(commit_put=pb.CommitPut(bucket="bkt", key="k", manifest=manifest,
                                         placements=[pb.Placement(chunk=chunk, nodes=ids[:3])])).code == pb.OK
    apply(report_damage=pb.ReportDamage(damage=[pb.Damage(chunk=chunk, index=1, node=ids[1], reason="test")]))
    assert len(state.damage()) == 1
    moved = [ids[0], ids[3], ids[2]]
    stale = apply(update_placement=pb.UpdatePlacement(chunk=chunk, nodes=moved, expect=[ids[2], ids[1], ids[0]]))
    assert "moved meanwhile" in stale.message and list(state.chunk(chunk).nodes) == ids[:3]
    bad = apply(update_placement=pb.UpdatePlacement(chunk=chunk, nodes=[ids[0], ids[0], ids[2]], expect=ids[:3]))
    assert bad.code == pb.BAD_PLACEMENT
    assert apply(update_placement=pb.UpdatePlacement(chunk=chunk, nodes=moved, expect=ids[:3])).code == pb.OK
    assert list(state.chunk(chunk).nodes) == moved and state.damage() == []


def test_a_dead_node_and_a_damaged_fragment_are_repaired(tmp_path):
    local = LocalCluster(str(tmp_path), metas=3, datas=7, port_base=None,
                         meta_options=["--tick-seconds", "0.02", "--suspect-after-seconds", "3",
                                       "--dead-after-seconds", "4"])
    local.start()
    try:
        with cluster.connect(local.meta_addresses) as client:
            objects = fill(client, "heal", 6, 2 << 20)
            total = client.status().chunks

            def healed(repaired_at_least):
                repair = client.status().repair
                return (dict(repair.chunks_by_lost) == {0: total} and repair.queued == 0
                        and repair.repaired >= repaired_at_least)

            def wait(condition, seconds=60):
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    if condition():
                        return
                    time.sleep(0.3)
                raise AssertionError(f"not healed: {client.status().repair}")

            # a data node dies: every chunk with a fragment on it is rebuilt elsewhere
            local.kill("data", 1, signal.SIGKILL)
            wait(lambda: healed(1))
            repair_stats = client.status().repair
            repaired = repair_stats.repaired
            assert repair_stats.fragments_read <= 4 * repaired  # no more than k fragments per rebuilt chunk

            # a damage report (as the scrubber or a client's hash check sends) is repaired too
            async def report():
                meta = MetaClient(local.meta_addresses)
                try:
                    manifest = (await meta.call(pb.MetaOp(get_object=pb.GetObject(
                        bucket="heal", key="o0", with_chunks=True)))).get_object
                    chunk_id, chunk = manifest.chunk_ids[0], manifest.chunks[0]
                    await meta.command(report_damage=pb.ReportDamage(damage=[pb.Damage(
                        chunk=chunk_id, index=2, node=chunk.nodes[2], reason="test")]))
                    return chunk_id, list(chunk.nodes)
                finally:
                    await meta.close()
            chunk_id, before = asyncio.run(report())
            wait(lambda: client.status().repair.repaired > repaired)

            # all six fragments of every chunk are on live nodes: two more can go
            local.kill("data", 2, signal.SIGKILL)
            local.kill("data", 3, signal.SIGKILL)
            for key, data in objects.items():
                assert client.get("heal", key) == data
    finally:
        local.stop()


def test_draining_moves_fragments_without_counting_them_lost():
    profile = pb.ErasureProfile(k=2, m=1)
    states = {1: pb.UP, 2: pb.DRAINING, 3: pb.UP, 4: pb.DEAD}
    chunks = [(b"a" * 32, pb.Chunk(profile=profile, nodes=[1, 2, 3])),
              (b"b" * 32, pb.Chunk(profile=profile, nodes=[2, 4, 1]))]  # lost one, draining one: m=1 at a time
    found = repair.survey(chunks, states, {})
    assert dict(found.by_lost) == {0: 1, 1: 1} and found.draining == 2 and found.unrepairable == 0
    assert found.repairs == 3  # one chunk lost a fragment, two fragments must move
    order = repair.most_endangered_first(found.queue, states)
    assert [(d.chunk_id[:1], d.lost) for d in order] == [(b"b", (1,)), (b"a", (1,))]


def test_a_drained_node_ends_up_empty_under_a_write_load(tmp_path):
    local = LocalCluster(str(tmp_path), metas=3, datas=7, port_base=None,
                         meta_options=["--tick-seconds", "0.02"],
                         data_options=["--orphan-grace-seconds", "2", "--orphan-interval-seconds", "1"])
    local.start()

    def fragments_on(number):
        return data_status(local.member("data", number))
    try:
        with cluster.connect(local.meta_addresses) as client:
            client.create_bucket("drain", k=4, m=2)
            objects = {f"before/{n}": os.urandom((1 << 20) + n) for n in range(12)}
            for key, data in objects.items():
                client.put("drain", key, data)
            victim = fragments_on(1)
            assert victim.fragments > 0
            stop, written, errors = threading.Event(), {}, []

            def load():
                n = 0
                while not stop.is_set() and n < 200:
                    data = os.urandom(300_000 + n)
                    try:
                        client.put("drain", f"during/{n}", data)
                        written[f"during/{n}"] = data
                    except Exception as error:  # noqa: BLE001
                        errors.append(error)
                    n += 1
            writer = threading.Thread(target=load)
            writer.start()
            client.drain_node(victim.node_id)
            deadline = time.monotonic() + 90
            try:
                while time.monotonic() < deadline:
                    status = client.status()
                    if status.repair.passes and status.repair.draining == 0 and fragments_on(1).fragments == 0:
                        break
                    time.sleep(0.5)
            finally:
                stop.set()
                writer.join()
            assert not errors
            assert fragments_on(1).fragments == 0, client.status().repair
            objects.update(written)
            for key, data in objects.items():
                assert client.get("drain", key) == data
    finally:
        local.stop()


def test_repair_finishes_under_a_new_leader_and_a_quick_restart_needs_none(tmp_path):
    local = LocalCluster(str(tmp_path), metas=3, datas=7, port_base=None,
                         meta_options=["--tick-seconds", "0.02", "--suspect-after-seconds", "3",
                                       "--dead-after-seconds", "5", "--repair-mb-per-s", "4"])
    local.start()
    try:
        with cluster.connect(local.meta_addresses) as client:
            objects = fill(client, "lead", 8, 4 << 20)
            total = client.status().chunks

            # back before it is declared dead: nothing to repair
            local.kill("data", 1, signal.SIGKILL)
            time.sleep(1.0)
            local.restart("data", 1)
            time.sleep(6.0)
            status = client.status()
            assert status.repair.repaired == 0 and {n.state for n in status.nodes} == {pb.UP}

            # dead for good; the leader dies while the (slowed) repair runs
            local.kill("data", 2, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while client.status().repair.repaired == 0:
                assert time.monotonic() < deadline, "repair did not start"
                time.sleep(0.2)
            assert client.status().repair.queued > 0, "repair finished before the leader could be killed"
            leader = local.meta_addresses.index(client.status().leader) + 1
            local.kill("meta", leader, signal.SIGKILL)
            while True:
                assert time.monotonic() < deadline + 60, f"not healed: {client.status().repair}"
                repair = client.status().repair
                if repair.passes and dict(repair.chunks_by_lost) == {0: total} and repair.queued == 0:
                    break
                time.sleep(0.3)

            async def placements():
                meta = MetaClient(local.meta_addresses)
                try:
                    out = []
                    for key in objects:
                        got = (await meta.call(pb.MetaOp(get_object=pb.GetObject(
                            bucket="lead", key=key, with_chunks=True)))).get_object
                        out += [list(c.nodes) for c in got.chunks]
                    nodes = (await meta.call(pb.MetaOp(list_nodes=pb.ListNodes()))).list_nodes.nodes
                    return out, {n.id for n in nodes if n.state == pb.DEAD}
                finally:
                    await meta.close()
            chunks, dead = asyncio.run(placements())
            assert len(dead) == 1
            for nodes in chunks:
                assert len(set(nodes)) == 6 and not set(nodes) & dead  # no double placement, none on the dead
            local.kill("data", 3, signal.SIGKILL)
            local.kill("data", 4, signal.SIGKILL)
            for key, data in objects.items():
                assert client.get("lead", key) == data
    finally:
        local.stop()


def test_corrupt_fragments_are_found_by_the_scrubber_and_repaired(tmp_path):
    # six nodes for 4+2: every chunk on every node, so no rebalancing moves fragments away from
    # the flipped bytes, and a damaged fragment is rewritten in place
    local = LocalCluster(str(tmp_path), metas=3, datas=6, port_base=None,
                         meta_options=["--tick-seconds", "0.02"],
                         data_options=["--scrub-mb-per-s", "200", "--scrub-pause-seconds", "1"])
    local.start()
    try:
        with cluster.connect(local.meta_addresses) as client:
            objects = fill(client, "rot", 6, 2 << 20)
            total = client.status().chunks
            rng = random.Random(3)
            damaged = 0
            for number in (1, 2):  # flip a byte deep inside payloads of two nodes' segment files
                for path in sorted(glob.glob(str(tmp_path / f"data{number}" / "stripe-*" / "segments" / "seg-*"))):
                    size = os.path.getsize(path)
                    if size < 200_000:
                        continue
                    for offset in rng.sample(range(100_000, size - 100), 2):
                        with open(path, "r+b") as f:
                            f.seek(offset)
                            byte = f.read(1)
                            f.seek(offset)
                            f.write(bytes([byte[0] ^ 0x40]))
                        damaged += 1
            assert damaged > 0
            for key, data in objects.items():  # meanwhile, reads never see a corrupt byte
                assert client.get("rot", key) == data
            # scrubbers report with their heartbeats (every 2 s): healed means nothing new for a
            # while longer than a scrub pass, a pause and a heartbeat
            deadline, healed_since = time.monotonic() + 90, None
            while True:
                assert time.monotonic() < deadline, f"not repaired: {client.status().repair}"
                repair = client.status().repair
                if repair.repaired > 0 and dict(repair.chunks_by_lost) == {0: total} and repair.queued == 0:
                    healed_since = healed_since or (time.monotonic(), repair.repaired)
                    if repair.repaired != healed_since[1]:
                        healed_since = (time.monotonic(), repair.repaired)
                    if time.monotonic() - healed_since[0] > 6:
                        break
                else:
                    healed_since = None
                time.sleep(0.3)
            local.kill("data", 3, signal.SIGKILL)
            local.kill("data", 4, signal.SIGKILL)  # m more gone: every fragment left must be good
            for key, data in objects.items():
                assert client.get("rot", key) == data
    finally:
        local.stop()


class FixedPlacement:
    """A stand-in for the state in the repairer's planning: lost fragments go to node 9, or to 4
    when 9 holds one already."""

    def replace(self, nodes, lost, seed):
        return [(4 if 9 in nodes else 9) if i in lost else n for i, n in enumerate(nodes)]


def damaged_chunk(name: bytes, nodes, lost) -> repair.Damaged:
    return repair.Damaged(name * 32, pb.Chunk(length=4 << 20, profile=pb.ErasureProfile(k=2, m=2), nodes=nodes),
                          tuple(lost))


def test_the_repairer_starts_the_most_endangered_level_only_when_no_worse_one_runs():
    from cluster.meta import repairer as repairer_module
    now = [100.0]
    repairer = repairer_module.Repairer(service=None, clock=lambda: now[0])
    states = {1: pb.UP, 2: pb.DEAD, 3: pb.SUSPECT, 4: pb.UP}
    two = damaged_chunk(b"a", [1, 2, 3, 4], [1])  # one lost, one on a suspect node
    one = damaged_chunk(b"b", [1, 2, 4, 5], [1])
    queue = repair.most_endangered_first([one, two], states)
    assert repairer._startable(queue, states) == [two]
    repairer._running[two.chunk_id] = 2
    assert repairer._startable([one], states) == []  # waits for the worse one
    del repairer._running[two.chunk_id]
    assert repairer._startable([one], states) == [one]
    repairer._retry_at[one.chunk_id] = now[0] + 1  # failed just now: waits
    assert repairer._startable([one], states) == []
    now[0] += 2
    assert repairer._startable([one], states) == [one]


def test_the_repairer_batches_orders_per_executing_node_in_queue_order(monkeypatch):
    from cluster.meta import repairer as repairer_module
    monkeypatch.setattr(repairer_module, "BATCH_CHUNKS", 3)
    service = type("Service", (), {"state": FixedPlacement()})()
    repairer = repairer_module.Repairer(service)
    states = {n: pb.UP for n in (1, 4, 5, 9)} | {2: pb.DEAD, 3: pb.SUSPECT}
    by_id = {n: pb.Node(id=n, address=f"a{n}", data_address=f"d{n}") for n in states}
    queue = [damaged_chunk(bytes([n]), [1, 2, 5, 4], [1]) for n in range(7)]
    queue.insert(3, damaged_chunk(b"x", [2, 3, 5, 9], [0]))  # rebuilt on node 4; its node 3 is in doubt
    batches = list(repairer._batches(queue, by_id, states))
    assert [(executor.id, [o.damaged.chunk_id[:1] for o in batch]) for executor, batch in batches] == [
        (9, [b"\x00", b"\x01", b"\x02"]), (9, [b"\x03", b"\x04", b"\x05"]), (4, [b"x"]), (9, [b"\x06"])]
    first = batches[0][1][0]
    assert list(first.request.targets) == [9] and list(first.request.target_addresses) == ["d9"]
    assert first.placement == [1, 9, 5, 4] and list(first.request.avoid) == []
    assert list(batches[2][1][0].request.avoid) == [1]  # read from the suspect node only if need be


def test_no_rebalancing_plan_comes_from_a_pass_that_counted_while_fragments_moved():
    """A pass that overlapped running orders counted loads the moves were changing: planning
    from it moved the same bytes again and again, back and forth (found by the simulation)."""
    from cluster.meta import repairer as repairer_module
    repairer = repairer_module.Repairer(service=None)
    states = {1: pb.UP, 2: pb.UP, 3: pb.UP}
    for busy, planned in ((True, False), (False, True)):
        repairer._pass = repair.Survey(load=Counter({1: 900, 2: 100, 3: 500}))
        repairer._pass_busy = busy
        repairer._end_pass(states, frozenset(states))
        assert (repairer._moves is not None) == planned
        assert repairer._pass_busy is False


def test_rebalancing_plan_moves_bytes_from_full_nodes_to_empty_ones():
    states = {n: pb.UP for n in range(1, 5)}
    moves = repair.Moves(Counter({1: 1000, 2: 1000, 3: 1000, 4: 0}), states, 0.10)
    assert moves and moves.excess == {1: 250, 2: 250, 3: 250} and moves.room == {4: 750}
    chunk = pb.Chunk(length=400, profile=pb.ErasureProfile(k=2, m=1), nodes=[1, 2, 3])
    assert moves.take(chunk) == (0, 4)   # 200 bytes off node 1 onto node 4
    assert moves.take(chunk) == (1, 4)   # node 1 has only 50 left to give: node 2's turn
    assert not repair.Moves(Counter({1: 1000, 2: 1050, 3: 980}), {1: pb.UP, 2: pb.UP, 3: pb.UP}, 0.10)
    found = repair.survey([(b"z" * 32, chunk)], states, {}, repair.Moves(Counter({1: 1000, 2: 1000, 3: 1000}),
                                                                        states, 0.10))
    assert [(d.lost, d.target) for d in found.queue] == [((0,), 4)] and found.load == Counter({1: 200, 2: 200, 3: 200})


def test_a_new_node_takes_a_share_of_the_fragments(tmp_path):
    local = LocalCluster(str(tmp_path), metas=3, datas=6, port_base=None, meta_options=["--tick-seconds", "0.02"])
    local.start()
    try:
        with cluster.connect(local.meta_addresses) as client:
            objects = fill(client, "spread", 10, 2 << 20)
            total = client.status().chunks
            new = local.add_data()
            local.wait_ready()
            deadline = time.monotonic() + 120  # (5 s alone; it once missed 60 s in a loaded full run)

            def fragments_on_new():
                return data_status(new).fragments
            while True:  # every node within the band of the mean: the new one got its ~1/7 share
                assert time.monotonic() < deadline, f"not rebalanced: {client.status().repair}"
                repair = client.status().repair
                if repair.passes and repair.rebalance_bytes == 0 and fragments_on_new() >= total * 6 // 7 * 0.85:
                    break
                time.sleep(0.3)
            assert dict(client.status().repair.chunks_by_lost) == {0: total}
            for key, data in objects.items():
                assert client.get("spread", key) == data
    finally:
        local.stop()


def test_a_node_back_after_it_was_declared_dead_is_reconciled(tmp_path):
    """Its fragments were rebuilt elsewhere: once back, it keeps exactly what placements still
    name it for (its orphan collector deletes the rest), and everything reads back."""
    local = LocalCluster(str(tmp_path), metas=3, datas=7, port_base=None,
                         meta_options=["--tick-seconds", "0.02", "--suspect-after-seconds", "3",
                                       "--dead-after-seconds", "4"],
                         data_options=["--orphan-grace-seconds", "2", "--orphan-interval-seconds", "1"])
    local.start()
    try:
        with cluster.connect(local.meta_addresses) as client:
            objects = fill(client, "back", 6, 2 << 20)
            victim = local.member("data", 1)
            victim_id = data_status(victim).node_id
            assert data_status(victim).fragments > 0
            local.kill("data", 1, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while client.status().repair.repaired == 0 or client.status().repair.queued:
                assert time.monotonic() < deadline, f"not repaired: {client.status().repair}"
                time.sleep(0.3)
            local.restart("data", 1)

            async def placed_on_victim():
                meta = MetaClient(local.meta_addresses)
                try:
                    count = 0
                    for key in objects:
                        got = (await meta.call(pb.MetaOp(get_object=pb.GetObject(
                            bucket="back", key=key, with_chunks=True)))).get_object
                        count += sum(list(c.nodes).count(victim_id) for c in got.chunks)
                    return count
                finally:
                    await meta.close()
            stale_seen = False
            while True:
                assert time.monotonic() < deadline + 60, "the returning node was not reconciled"
                try:
                    held = data_status(victim).fragments
                except grpc.RpcError:
                    time.sleep(0.2)  # still starting
                    continue
                placed = asyncio.run(placed_on_victim())
                stale_seen |= held > placed  # it came back holding fragments rebuilt elsewhere
                if stale_seen and held == placed:  # (rebalancing may give it a share again)
                    break
                time.sleep(0.3)
            assert {n.state for n in client.status().nodes} == {pb.UP}
            for key, data in objects.items():
                assert client.get("back", key) == data
    finally:
        local.stop()


def wait_until_balanced(client, seconds: float = 60.0) -> None:
    """Until the leader's passes find the nodes balanced and no rebalancing move is running."""
    deadline, moved = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        repair_stats = client.status().repair
        if repair_stats.passes and repair_stats.rebalance_bytes == 0 and repair_stats.moved == moved:
            return
        moved = repair_stats.moved
        time.sleep(1.5)
    raise AssertionError(f"not balanced: {client.status().repair}")


def test_two_nodes_lost_at_once_lose_nothing_and_the_chunks_on_both_are_repaired_first(tmp_path):
    """m = 2 nodes die together: nothing is lost, every chunk is whole again, and the chunks that
    had a fragment on both are repaired before any chunk that had one on only one of them.
    (Detection declares the two DEAD up to a heartbeat apart; with suspect-after at least a
    heartbeat shorter than dead-after, the other is SUSPECT by then, which ranks the shared
    chunks first.)"""
    local = LocalCluster(str(tmp_path), metas=3, datas=8, port_base=None,
                         meta_options=["--tick-seconds", "0.02", "--suspect-after-seconds", "2.5",
                                       "--dead-after-seconds", "5"])
    local.start()
    try:
        with cluster.connect(local.meta_addresses) as client:
            objects = fill(client, "order", 24, (1 << 20) - 4096)  # one chunk each
            victims = {data_status(local.member("data", n)).node_id for n in (1, 2)}
            wait_until_balanced(client)  # no rebalancing move in the way

            async def chunk_ids():
                meta = MetaClient(local.meta_addresses)
                try:
                    return [c for key in objects for c in (await meta.call(pb.MetaOp(
                        get_object=pb.GetObject(bucket="order", key=key, with_chunks=True)))).get_object.chunk_ids]
                finally:
                    await meta.close()
            ids = asyncio.run(chunk_ids())

            async def placements():  # every chunk's placement in one read, so one moment
                meta = MetaClient(local.meta_addresses)
                try:
                    reply = (await meta.call(pb.MetaOp(get_chunks=pb.GetChunks(ids=ids)))).get_chunks
                    return {c: list(chunk.nodes) for c, chunk in zip(ids, reply.chunks)}
                finally:
                    await meta.close()
            before = asyncio.run(placements())
            lost = {c: len(set(nodes) & victims) for c, nodes in before.items()}
            assert 2 in lost.values() and 1 in lost.values(), lost
            local.kill("data", 1, signal.SIGKILL)
            local.kill("data", 2, signal.SIGKILL)
            first_repaired: dict[bytes, float] = {}  # when a fragment on a victim was first rebuilt elsewhere
            deadline = time.monotonic() + 120
            while True:
                now, seen_at = asyncio.run(placements()), time.monotonic()
                for chunk_id, nodes in now.items():
                    if len(set(nodes) & victims) < lost[chunk_id]:
                        first_repaired.setdefault(chunk_id, seen_at)
                if all(not set(nodes) & victims for nodes in now.values()):
                    break
                assert time.monotonic() < deadline, f"not healed: {client.status().repair}"
                time.sleep(0.05)
            for chunk_id, nodes in now.items():
                assert len(set(nodes)) == 6
            both = [first_repaired[c] for c, n in lost.items() if n == 2]
            one = [first_repaired[c] for c, n in lost.items() if n == 1]
            assert max(both) <= min(one), (sorted(both), sorted(one))
            for key, data in objects.items():
                assert client.get("order", key) == data
            repair_stats = client.status().repair
            assert repair_stats.fragments_read <= 4 * repair_stats.repaired  # k per rebuilt chunk
    finally:
        local.stop()


def test_fragments_lost_from_a_node_that_stays_up_are_found_by_the_audit_and_rebuilt(tmp_path):
    # six nodes for 4+2: every chunk has a fragment on every node, and a lost one is rebuilt in place
    local = LocalCluster(str(tmp_path), metas=3, datas=6, port_base=None, meta_options=["--tick-seconds", "0.02"])
    local.start()
    try:
        with cluster.connect(local.meta_addresses) as client:
            objects = fill(client, "audit", 3, 1 << 20)
            parity = {}  # data member number -> the parity fragments it holds (no read asks for them)
            for number in range(1, 7):
                with grpc.insecure_channel(local.member("data", number).addresses[0]) as channel:
                    held = data_pb2_grpc.DataStub(channel).List(data_pb2.ListRequest(), timeout=10).fragments
                    parity[number] = [f for f in held if f.index >= 4]
            victim = max(parity, key=lambda number: len(parity[number]))
            lost = parity[victim][:4]
            assert lost, parity
            with grpc.insecure_channel(local.member("data", victim).addresses[0]) as channel:
                stub = data_pb2_grpc.DataStub(channel)
                assert all(stub.Delete(data_pb2.DeleteRequest(fragments=lost), timeout=10).deleted)
                deadline = time.monotonic() + 60
                while not all(stub.Has(data_pb2.HasRequest(fragments=lost), timeout=10).present):
                    assert time.monotonic() < deadline, f"not rebuilt: {client.status().repair}"
                    time.sleep(0.3)
            repair = client.status().repair
            assert repair.audit_missing >= len(lost) and repair.audited >= repair.audit_missing, repair
            for number in [n for n in parity if n != victim][:2]:  # m others gone: the rebuilt parity is needed
                local.kill("data", number, signal.SIGKILL)
            for key, data in objects.items():
                assert client.get("audit", key) == data
    finally:
        local.stop()
