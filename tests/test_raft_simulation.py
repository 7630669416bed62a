"""The production Raft driver in the deterministic simulator: random seeds, named scenarios,
replay, and planted bugs that the checkers must catch."""
import asyncio

from cluster.raft import core
from cluster.raft.core import ReadState
from cluster.raft.log import RaftLog
from simulations import linearizability
from simulations.loop import run
from simulations.raft.driver_cluster import Client, DriverCluster
from simulations.raft.run import run_seed
from tests.seed_budget import run_seed_budget

SEEDS_IN_CI = 500




def test_random_seeds_hold_every_invariant():
    run_seed_budget("raft", SEEDS_IN_CI)  # a failing seed's output names its replay command


def test_a_seed_replays_exactly():
    first, second = run_seed(7), run_seed(7)
    assert first.trace == second.trace and first.operations == second.operations
    assert run_seed(8).trace != first.trace


async def _stale_node_returns(seed: int):
    """A follower misses writes while down; then the others crash and come back with it. Only
    the election restriction (paper 5.4.1) keeps the stale node from leading and erasing
    acknowledged writes. Returns the linearizability verdict of the clients' history."""
    cluster = DriverCluster([1, 2, 3], seed=seed)
    await cluster.start()
    history = linearizability.History()
    client = Client(cluster, 1, history)
    assert await client.put(b"k", b"old")
    stale = next(n for n in (1, 2, 3) if n != cluster.leader())
    await cluster.nodes[stale].crash()
    for i in range(5):
        assert await client.put(b"k", b"new-%d" % i)
    for node_id in (1, 2, 3):
        if node_id != stale:
            await cluster.nodes[node_id].crash()
    await cluster.nodes[stale].boot()
    for node_id in (1, 2, 3):
        if node_id != stale:
            await cluster.nodes[node_id].boot()
            break  # a majority: the stale node and one up-to-date node
    await client.get(b"k")
    for node in cluster.nodes.values():
        await node.crash()
    return linearizability.check(history.operations())


def test_scenario_a_stale_node_cannot_lead():
    assert all(run(_stale_node_returns(seed)).ok for seed in range(5))


def test_planted_bug_votes_without_the_log_check_is_caught(monkeypatch):
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, index, term: True)
    assert any(not run(_stale_node_returns(seed)).ok for seed in range(10)), \
        "granting votes to out-of-date candidates went unnoticed"


async def _deposed_leader_reads(**config):
    """Isolates the leader; a client that still talks to it reads after another client's
    acknowledged write on the majority side. Returns the linearizability verdict."""
    cluster = DriverCluster([1, 2, 3], seed=1, **config)
    await cluster.start()
    history = linearizability.History()
    old_client, new_client = Client(cluster, 1, history), Client(cluster, 2, history)
    assert await old_client.put(b"k", b"v1")
    old = cluster.leader()
    cluster.partition([old], [n for n in (1, 2, 3) if n != old])
    await asyncio.sleep(1.0)
    new_client.leader_guess = cluster.leader()
    assert await new_client.put(b"k", b"v2")
    old_client.leader_guess, old_client.attempts_max = old, 1
    await old_client.get(b"k")
    for node in cluster.nodes.values():
        await node.crash()
    return linearizability.check(history.operations())


def test_scenario_deposed_leader_never_serves_a_stale_read():
    assert run(_deposed_leader_reads()).ok
    assert run(_deposed_leader_reads(check_quorum=False)).ok  # ReadIndex alone is enough


def test_planted_bug_reads_without_read_index_are_caught(monkeypatch):
    def answer_at_once(self, context):
        self._read_states.append(ReadState(context, self.log.commit))
    monkeypatch.setattr(core.Raft, "_start_read", answer_at_once)
    result = run(_deposed_leader_reads(check_quorum=False))
    assert not result.ok and result.key == b"k"


async def _leader_loses_its_unsynced_tail():
    """The leader sends entries to followers before its own fsync (allowed by Raft); here that
    fsync never happens because the machine loses power. Committed data must survive anyway."""
    cluster = DriverCluster([1, 2, 3], seed=3)
    await cluster.start()
    history = linearizability.History()
    client = Client(cluster, 1, history)
    for i in range(5):
        assert await client.put(b"k", b"%d" % i)
    leader = cluster.nodes[cluster.leader()]
    leader.disk.crash_during_next_write()
    writer = asyncio.get_running_loop().create_task(client.put(b"k", b"lost-or-kept"))
    await asyncio.sleep(0.05)
    await leader.crash()
    await leader.boot()
    await writer
    assert await client.get(b"k") is not None
    for node in cluster.nodes.values():
        await node.crash()
    return linearizability.check(history.operations())


def test_scenario_leader_loses_its_unsynced_tail():
    assert run(_leader_loses_its_unsynced_tail()).ok


async def _crash_during_snapshot_install():
    cluster = DriverCluster([1, 2, 3], seed=4, snapshot_entries=20, snapshot_chunk_bytes=64)
    await cluster.start()
    history = linearizability.History()
    client = Client(cluster, 1, history)
    assert await client.put(b"k", b"first")
    leader = cluster.leader()
    lagging = next(n for n in (1, 2, 3) if n != leader)
    await cluster.nodes[lagging].crash()
    for i in range(100):
        assert await client.put(b"k%d" % (i % 7), b"value-%d" % i)
    await cluster.nodes[lagging].boot()
    await asyncio.sleep(0.02)  # some chunks arrive...
    await cluster.nodes[lagging].crash()  # ...then it dies mid-install
    await cluster.nodes[lagging].boot()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while cluster.nodes[lagging].driver.applied_index < cluster.nodes[leader].driver.applied_index:
        assert loop.time() < deadline, "the restarted follower never caught up"
        await asyncio.sleep(0.05)
    caught_up = dict(cluster.nodes[lagging].kv.data)
    for node in cluster.nodes.values():
        await node.crash()
    return caught_up, dict(cluster.nodes[leader].kv.data)


def test_scenario_crash_during_snapshot_installation():
    follower, leader = run(_crash_during_snapshot_install())
    assert follower == leader and follower[b"k"] == b"first"


async def _snapshots_by_size():
    """Entries far fewer than snapshot_entries but many bytes: snapshots come by size, each once
    the log since the last one outgrew both the byte bound and that snapshot; a follower that
    was down meanwhile catches up from one. Returns the leader's snapshots as (bytes applied
    since the previous one when taken, the previous one's size), the follower's and the
    leader's data, and the linearizability verdict."""
    bound = 4096
    cluster = DriverCluster([1, 2, 3], seed=6, snapshot_entries=1_000_000, snapshot_bytes=bound,
                            snapshot_chunk_bytes=1024)
    await cluster.start()
    history = linearizability.History()
    client = Client(cluster, 1, history)
    assert await client.put(b"k", b"first")
    leader = cluster.leader()
    driver = cluster.nodes[leader].driver
    taken, save = [], driver.snapshots.save

    def saved(meta, data):  # (the counters are reset only once the save is done)
        taken.append((driver._applied_bytes, driver._last_snapshot.size_bytes))
        save(meta, data)
    driver.snapshots.save = saved
    lagging = next(n for n in (1, 2, 3) if n != leader)
    await cluster.nodes[lagging].crash()
    for i in range(120):  # 40 distinct keys: the state, and so each snapshot, grows to about 12 KiB
        assert await client.put(b"key-%d" % (i % 40), bytes([i]) * 300)
    await cluster.nodes[lagging].boot()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while cluster.nodes[lagging].driver.applied_index < driver.applied_index:
        assert loop.time() < deadline, "the restarted follower never caught up"
        await asyncio.sleep(0.05)
    compacted = {n: node.driver.raft.log.first_index() for n, node in cluster.nodes.items()}
    data = dict(cluster.nodes[lagging].kv.data), dict(cluster.nodes[leader].kv.data)
    for node in cluster.nodes.values():
        await node.crash()
    return taken, compacted, data, linearizability.check(history.operations()), bound


def test_scenario_snapshots_by_size():
    taken, compacted, (follower, leader), verdict, bound = run(_snapshots_by_size())
    assert verdict.ok and follower == leader and len(leader) == 41
    assert len(taken) >= 3, taken  # about 40 KiB of entries over snapshots of up to 12 KiB
    assert all(applied > max(bound, previous) for applied, previous in taken)
    assert any(previous > bound for _, previous in taken)  # the snapshot's own size set the pace
    assert all(first > 1 for first in compacted.values())  # every log was compacted


async def _grow_and_shrink():
    """A new node joins as a learner, catches up, is promoted; an old one is removed; the group
    keeps committing throughout and the newcomer holds every acknowledged write."""
    from cluster.raft.messages import Membership
    from simulations.raft.driver_cluster import SimNode

    cluster = DriverCluster([1, 2, 3], seed=5)
    await cluster.start()
    history = linearizability.History()
    client = Client(cluster, 1, history)
    for i in range(20):
        assert await client.put(b"k%d" % i, b"v%d" % i)
    cluster.nodes[4] = SimNode(4, cluster)
    await cluster.nodes[4].boot()
    leader = cluster.nodes[cluster.leader()].driver
    await leader.change_membership(Membership(frozenset({1, 2, 3}), frozenset({4})))
    assert await client.put(b"during", b"learning")
    await asyncio.sleep(0.5)
    leader = cluster.nodes[cluster.leader()].driver
    await leader.change_membership(Membership(frozenset({1, 2, 3, 4})))
    old = next(n for n in (1, 2, 3) if n != cluster.leader())
    await leader.change_membership(Membership(frozenset({1, 2, 3, 4}) - {old}))
    await cluster.nodes[old].crash()
    assert await client.put(b"after", b"shrinking")
    await asyncio.sleep(0.5)
    newcomer = dict(cluster.nodes[4].kv.data)
    voters = cluster.nodes[4].driver.raft.voters()
    for node in cluster.nodes.values():
        await node.crash()
    return newcomer, voters, linearizability.check(history.operations())


def test_scenario_membership_grows_and_shrinks_through_the_driver():
    newcomer, voters, verdict = run(_grow_and_shrink())
    assert verdict.ok
    assert 4 in voters and len(voters) == 3
    assert newcomer[b"k7"] == b"v7" and newcomer[b"after"] == b"shrinking"


async def _transfer():
    cluster = DriverCluster([1, 2, 3], seed=6)
    await cluster.start()
    client = Client(cluster, 1, linearizability.History())
    assert await client.put(b"a", b"1")
    leader = cluster.leader()
    target = next(n for n in (1, 2, 3) if n != leader)
    await cluster.nodes[leader].driver.transfer_leadership(target)
    await asyncio.sleep(0.3)
    moved = cluster.leader()
    for node in cluster.nodes.values():
        await node.crash()
    return target, moved


def test_leadership_transfer_through_the_driver():
    target, moved = run(_transfer())
    assert moved == target
