"""Hypothesis drives the pure core through random interleavings of ticks, deliveries, proposals,
crashes, restarts and partitions; Raft's invariants hold after every step, and once the faults
stop the cluster commits again."""
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from simulations.raft.cluster import SimCluster

NODES = [1, 2, 3, 4, 5]


class RaftCoreMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.1, 0.3]),
                delay=st.integers(0, 3))
    def start(self, seed, loss, delay):
        self.cluster = SimCluster(NODES, seed=seed)
        self.cluster.network.loss, self.cluster.network.delay_ticks_max = loss, delay
        self.proposed = 0

    @rule(ticks=st.integers(1, 60))
    def run(self, ticks):
        self.cluster.run(ticks)

    @rule(count=st.integers(1, 5))
    def propose(self, count):
        leader = self.cluster.leader()
        for _ in range(count if leader is not None else 0):
            self.proposed += self.cluster.propose(leader, b"c%d" % self.proposed) is not None

    @rule(node=st.sampled_from(NODES))
    def crash(self, node):
        if sum(n.up for n in self.cluster.nodes.values()) > 3:  # keep a majority able to recover
            self.cluster.crash(node)

    @rule(node=st.sampled_from(NODES))
    def restart(self, node):
        if not self.cluster.nodes[node].up:
            self.cluster.restart(node)

    @rule(split=st.integers(1, 4), order=st.permutations(NODES))
    def partition(self, split, order):
        self.cluster.partition(list(order[:split]), list(order[split:]))

    @rule()
    def heal(self):
        self.cluster.heal()

    @invariant()
    def safe(self):
        if hasattr(self, "cluster"):
            self.cluster.check_invariants()
            self.cluster.check_log_matching()

    def teardown(self):
        if not hasattr(self, "cluster"):
            return
        cluster = self.cluster
        cluster.heal()
        cluster.network.loss, cluster.network.delay_ticks_max = 0.0, 1
        for node_id, node in cluster.nodes.items():
            if not node.up:
                cluster.restart(node_id)
        marker = b"liveness"

        def everywhere():
            return all(marker in node.state for node in cluster.nodes.values())
        # A leader cut off alone may still think it leads until CheckQuorum deposes it, and what
        # it accepted is then lost (Raft allows that): a client proposes again, and so does this.
        for _ in range(5):
            cluster.propose(cluster.wait_leader(500), marker)
            try:
                cluster.run_until(everywhere, 300)
                return
            except AssertionError:
                continue
        raise AssertionError(f"the healed cluster committed no proposal in 5 tries (seed {cluster.seed})")


TestRaftCore = RaftCoreMachine.TestCase
TestRaftCore.settings = settings(max_examples=150, stateful_step_count=80, deadline=None)
