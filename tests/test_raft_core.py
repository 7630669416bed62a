"""The pure Raft core, driven by the in-memory simulated cluster (simulations/raft/cluster.py)."""
import random

import pytest

from cluster.raft.config import ConfigError, RaftConfig
from cluster.raft.core import NotLeader, ProposalDropped, Raft, Role
from cluster.raft.messages import Membership, Message, MessageType
from simulations.raft.cluster import SimCluster


def applied(cluster, node_id):
    return cluster.nodes[node_id].state


def commit_all(cluster, commands, ticks=200):
    leader = cluster.wait_leader()
    for command in commands:
        assert cluster.propose(leader, command) is not None
    cluster.run_until(lambda: all(applied(cluster, n)[-len(commands):] == commands
                                  for n, node in cluster.nodes.items() if node.up), ticks)
    return leader


def test_config_validation_names_the_limit():
    with pytest.raises(ConfigError, match="election_ticks"):
        RaftConfig(node_id=1, election_ticks=2, heartbeat_ticks=1).validate()
    with pytest.raises(ConfigError, match="lease_read needs check_quorum"):
        RaftConfig(node_id=1, lease_read=True, check_quorum=False).validate()
    with pytest.raises(ConfigError, match="node_id"):
        RaftConfig(node_id=0).validate()


def test_single_node_elects_itself_and_commits():
    cluster = SimCluster([1], seed=1)
    commit_all(cluster, [b"a", b"b"])
    assert applied(cluster, 1) == [b"a", b"b"]


def test_three_nodes_agree_on_one_leader_and_replicate():
    """Paper 5.2 (leader election) and 5.3 (log replication); log matching (Figure 3)."""
    cluster = SimCluster([1, 2, 3], seed=2)
    leader = commit_all(cluster, [b"x%d" % i for i in range(50)])
    assert all(applied(cluster, n) == [b"x%d" % i for i in range(50)] for n in (1, 2, 3))
    terms = {cluster.nodes[n].raft.term for n in (1, 2, 3)}
    assert len(terms) == 1 and cluster.nodes[leader].raft.role is Role.LEADER
    cluster.check_log_matching()


def test_follower_rejects_proposals_with_the_leaders_id():
    cluster = SimCluster([1, 2, 3], seed=3)
    leader = cluster.wait_leader()
    cluster.run(3)
    follower = next(n for n in (1, 2, 3) if n != leader)
    with pytest.raises(NotLeader) as error:
        cluster.nodes[follower].raft.propose([b"x"])
    assert error.value.leader == leader


def test_leader_crash_elects_a_new_leader_that_keeps_committed_entries():
    """Paper 5.4.1: the election restriction gives leader completeness."""
    cluster = SimCluster([1, 2, 3], seed=4)
    old = commit_all(cluster, [b"a", b"b", b"c"])
    cluster.crash(old)
    new = cluster.wait_leader()
    assert new != old
    commit_all(cluster, [b"d"])
    cluster.restart(old)
    cluster.run_until(lambda: applied(cluster, old) == [b"a", b"b", b"c", b"d"])


def test_minority_leader_steps_down_with_check_quorum_and_cannot_commit():
    """Dissertation 6.2 (CheckQuorum) and paper 5.3 (commit needs a majority)."""
    cluster = SimCluster([1, 2, 3, 4, 5], seed=5)
    old = commit_all(cluster, [b"a"])
    others = [n for n in sorted(cluster.nodes) if n != old]
    cluster.partition([old, others[0]], others[1:])
    index = cluster.propose(old, b"lost")
    assert index is not None
    cluster.run(40)
    assert cluster.nodes[old].raft.role is not Role.LEADER  # CheckQuorum deposed it
    majority_leader = cluster.leader()
    assert majority_leader in others[1:]
    assert b"lost" not in applied(cluster, old)
    cluster.heal()
    cluster.run_until(lambda: all(applied(cluster, n)[:1] == [b"a"] for n in cluster.nodes))
    assert all(b"lost" not in applied(cluster, n) for n in cluster.nodes)


def test_pre_vote_keeps_an_isolated_node_from_raising_terms():
    """Dissertation 9.6: PreVote keeps a disruptive rejoining node from deposing the leader."""
    cluster = SimCluster([1, 2, 3], seed=6)
    leader = commit_all(cluster, [b"a"])
    isolated = next(n for n in (1, 2, 3) if n != leader)
    term = cluster.nodes[leader].raft.term
    cluster.partition([isolated], [n for n in (1, 2, 3) if n != isolated])
    cluster.run(100)
    assert cluster.nodes[isolated].raft.term == term  # pre-votes failed; no term inflation
    cluster.heal()
    cluster.run(30)
    assert cluster.leader() == leader and cluster.nodes[leader].raft.term == term


def test_without_pre_vote_a_rejoining_node_disrupts_the_leader():
    """The negative control for the test above: the same run without PreVote and CheckQuorum."""
    cluster = SimCluster([1, 2, 3], seed=6, pre_vote=False, check_quorum=False)
    leader = commit_all(cluster, [b"a"])
    isolated = next(n for n in (1, 2, 3) if n != leader)
    term = cluster.nodes[leader].raft.term
    cluster.partition([isolated], [n for n in (1, 2, 3) if n != isolated])
    cluster.run(100)
    assert cluster.nodes[isolated].raft.term > term
    cluster.heal()
    cluster.run(30)
    assert cluster.nodes[cluster.wait_leader()].raft.term > term


def test_figure_8_an_old_term_entry_is_not_committed_by_counting_replicas():
    """Raft paper 5.4.2, Figure 8: a leader must not commit an entry of an earlier term just
    because a majority stores it; here that entry is overwritten and no node ever applies it."""
    cluster = SimCluster([1, 2, 3, 4, 5], seed=8)
    s1 = commit_all(cluster, [b"base"])
    others = [n for n in sorted(cluster.nodes) if n != s1]
    s2 = others[0]
    # (a) s1 appends "old" but replicates it only to s2.
    cluster.partition([s1, s2], others[1:])
    cluster.propose(s1, b"old")
    cluster.run(2)
    cluster.crash(s1)
    # (b) s5 leads a term with the other three and appends "other", stored only on itself.
    cluster.heal()
    cluster.partition([s1, s2], others[1:])
    s5 = cluster.wait_leader()
    assert s5 in others[1:]
    cluster.partition([s5], [s2, *[n for n in others[1:] if n != s5]])
    cluster.propose(s5, b"other")
    cluster.run(1)
    cluster.crash(s5)
    # (c) s1 comes back and leads; "old" reaches a majority but is from an earlier term.
    cluster.heal()
    cluster.restart(s1)
    cluster.run_until(lambda: cluster.leader() is not None)
    cluster.run(50)
    cluster.restart(s5)
    cluster.run(200)
    states = {tuple(node.state) for node in cluster.nodes.values()}
    assert len({s[:len(min(states, key=len))] for s in states}) == 1
    cluster.check_log_matching()


def test_read_index_answers_after_a_quorum_confirms_leadership():
    """Dissertation 6.4: ReadIndex needs a heartbeat round acknowledged by a quorum."""
    cluster = SimCluster([1, 2, 3], seed=9)
    leader = commit_all(cluster, [b"a"])
    raft = cluster.nodes[leader].raft
    raft.read_index(b"r1")
    cluster.nodes[leader].handle_ready(cluster.send)
    assert cluster.nodes[leader].read_states == []  # not before the heartbeat round
    cluster.run(2)
    states = cluster.nodes[leader].read_states
    assert [s.context for s in states] == [b"r1"] and states[0].index >= 2


def test_read_index_in_a_minority_never_answers():
    cluster = SimCluster([1, 2, 3], seed=10)
    leader = commit_all(cluster, [b"a"])
    cluster.partition([leader], [n for n in (1, 2, 3) if n != leader])
    cluster.nodes[leader].raft.read_index(b"stale?")
    cluster.run(30)
    assert cluster.nodes[leader].read_states == []


def test_leadership_transfer():
    """Dissertation 3.10: transfer stops proposals, catches the target up, sends TimeoutNow."""
    cluster = SimCluster([1, 2, 3], seed=11)
    leader = commit_all(cluster, [b"a"])
    target = next(n for n in (1, 2, 3) if n != leader)
    cluster.nodes[leader].raft.transfer_leadership(target)
    cluster.nodes[leader].handle_ready(cluster.send)
    with pytest.raises(ProposalDropped):
        cluster.nodes[leader].raft.propose([b"during"])
    cluster.run_until(lambda: cluster.leader() == target, 50)


def test_lagging_follower_catches_up_through_a_chunked_snapshot():
    """Paper 7: InstallSnapshot, here in chunks, once the needed entries are compacted."""
    cluster = SimCluster([1, 2, 3], seed=12, snapshot_chunk_bytes=64)
    leader = commit_all(cluster, [b"a"])
    lagging = next(n for n in (1, 2, 3) if n != leader)
    cluster.crash(lagging)
    commands = [b"cmd-%03d" % i for i in range(100)]
    commit_all(cluster, commands)
    for n in (1, 2, 3):
        if n != lagging:
            cluster.nodes[n].take_snapshot()
    assert cluster.nodes[leader].raft.log.first_index() > 50
    cluster.restart(lagging)
    cluster.run_until(lambda: applied(cluster, lagging) == [b"a", *commands], 300)
    assert cluster.nodes[lagging].disk.snapshot.index > 50


def test_membership_add_learner_promote_and_remove():
    """Dissertation 4.1-4.2: one server at a time; learners catch up before they vote."""
    cluster = SimCluster([1, 2, 3], seed=13)
    leader = commit_all(cluster, [b"a"])
    cluster.disks[4] = cluster.disks[1].__class__(snapshot=cluster.nodes[1].disk.snapshot.__class__())
    cluster.nodes[4] = cluster._start(4)  # a new, empty node: it knows no members yet
    raft = cluster.nodes[leader].raft
    with pytest.raises(ProposalDropped, match="caught-up learner"):
        raft.propose_membership(Membership(frozenset({1, 2, 3, 4})))
    raft.propose_membership(Membership(frozenset({1, 2, 3}), frozenset({4})))
    cluster.nodes[leader].handle_ready(cluster.send)
    cluster.run_until(lambda: applied(cluster, 4) == [b"a"], 100)
    cluster.run_until(lambda: cluster.nodes[leader].raft.log.pending_config_index() == 0, 100)
    raft.propose_membership(Membership(frozenset({1, 2, 3, 4})))
    cluster.nodes[leader].handle_ready(cluster.send)
    cluster.run(20)
    assert cluster.nodes[4].raft.voters() == frozenset({1, 2, 3, 4})
    with pytest.raises(ValueError, match="one server at a time"):
        raft.propose_membership(Membership(frozenset({1, 2})))
    removed = next(n for n in (1, 2, 3) if n != leader)
    raft.propose_membership(Membership(frozenset({1, 2, 3, 4}) - {removed}))
    cluster.nodes[leader].handle_ready(cluster.send)
    cluster.crash(removed)
    cluster.run(20)
    commit_all(cluster, [b"after"])
    assert applied(cluster, 4)[-1] == b"after"


def test_lossy_network_with_crashes_keeps_safety_and_makes_progress():
    for seed in range(20):
        cluster = SimCluster([1, 2, 3], seed=seed)
        cluster.network.loss, cluster.network.duplicate, cluster.network.delay_ticks_max = 0.1, 0.1, 3
        rng = random.Random(seed)
        proposed = 0
        for step in range(300):
            cluster.tick()
            leader = cluster.leader()
            if leader is not None and rng.random() < 0.3:
                proposed += cluster.propose(leader, b"%d-%d" % (seed, step)) is not None
            if rng.random() < 0.02:
                victim = rng.choice([1, 2, 3])
                if all(node.up for node in cluster.nodes.values()):
                    cluster.crash(victim)
            if rng.random() < 0.05:
                for n, node in cluster.nodes.items():
                    if not node.up:
                        cluster.restart(n)
        for n, node in cluster.nodes.items():
            if not node.up:
                cluster.restart(n)
        cluster.network.loss = cluster.network.duplicate = 0.0
        leader = cluster.wait_leader()
        commit_all(cluster, [b"final-%d" % seed], ticks=300)
        cluster.check_log_matching()


def test_same_seed_same_trace():
    def run(seed):
        cluster = SimCluster([1, 2, 3], seed=seed)
        cluster.network.loss, cluster.network.delay_ticks_max = 0.2, 3
        cluster.run(200)
        return cluster.trace_hash()
    assert run(42) == run(42)
    assert run(42) != run(43)


def test_stale_messages_from_other_nodes_are_ignored():
    raft = Raft(RaftConfig(node_id=1), random.Random(1))
    raft.step(Message(MessageType.APPEND, 2, 3, 5))  # addressed to someone else
    assert raft.term == 0


def test_membership_change_during_a_partition():
    """Dissertation 4.1: a change proposed by a leader that is cut off from the majority never
    commits; the majority elects a leader and makes its own change; after healing every node
    converges on the majority's log and membership (the stranded change is truncated away)."""
    cluster = SimCluster([1, 2, 3, 4, 5], seed=21)
    old = commit_all(cluster, [b"a"])
    cluster.disks[6] = cluster.disks[1].__class__()
    cluster.nodes[6] = cluster._start(6)
    others = [n for n in (1, 2, 3, 4, 5) if n != old]
    cluster.partition([old, others[0]], others[1:] + [6])
    voters = frozenset({1, 2, 3, 4, 5})
    cluster.nodes[old].raft.propose_membership(Membership(voters, frozenset({6})))
    cluster.nodes[old].handle_ready(cluster.send)
    cluster.run(60)
    new = cluster.leader()
    assert new in others[1:]
    cluster.run_until(lambda: cluster.nodes[new].raft.log.term(cluster.nodes[new].raft.log.commit)
                      == cluster.nodes[new].raft.term, 100)
    cluster.nodes[new].raft.propose_membership(Membership(voters - {others[0]}))
    cluster.nodes[new].handle_ready(cluster.send)
    cluster.run(30)
    cluster.heal()
    cluster.run(100)
    members = {n: cluster.nodes[n].raft.membership() for n in (1, 2, 3, 4, 5) if n != others[0]}
    assert set(members.values()) == {Membership(voters - {others[0]})}
    assert 6 not in cluster.nodes[new].raft.progress  # the stranded learner change never took hold
    cluster.check_log_matching()
