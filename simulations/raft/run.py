"""One simulated run of the Raft cluster from a seed: a safety phase with faults, then a
liveness phase without, then the checks.

The seed decides everything: cluster size (3 or 5), fault rates, which faults hit when, the
clients' operations, every network delay. Safety checks run on every tick (election safety,
state machine safety, leader completeness); at the end the clients' history must be
linearizable, and once faults stop a leader must be elected and a fresh client's write and read
must complete within the liveness bound.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

from cluster.raft.driver import SNAPSHOT_BYTES
from simulations import linearizability
from simulations.loop import SimLoop, WallClockExceeded, cancel_all, wall_clock_limit
from simulations.raft.driver_cluster import TICK_SECONDS, Client, DriverCluster

KEYS = [b"k%d" % i for i in range(3)]
LIVENESS_SECONDS = 10.0


class Violation(AssertionError):
    pass


@dataclass
class SeedReport:
    seed: int
    nodes: int
    simulated_seconds: float
    operations: int
    faults: Counter = field(default_factory=Counter)
    violation: str | None = None
    trace: str = ""


class SafetyChecker:
    """Raft's invariants over every node's in-memory state, checked on every tick."""

    def __init__(self, cluster: DriverCluster):
        self.cluster = cluster
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, int] = {}  # index -> term of the entry committed there
        self.committed_by: dict[int, int] = {}  # index -> a term by which it was known committed
        self.applied: dict[int, bytes] = {}  # index -> digest of what was applied there
        self.trace = hashlib.blake2b(digest_size=16)

    def check(self) -> None:
        if self.cluster.livelock:
            raise Violation("livelock: over 10,000 messages delivered without simulated time passing")
        for node_id, node in sorted(self.cluster.nodes.items()):
            if not node.up:
                continue
            raft = node.driver.raft
            self.trace.update(b"%d:%d:%d:%d;" % (node_id, raft.term, raft.log.commit, raft.log.last_index()))
            if raft.role.value == "leader":
                other = self.leaders.setdefault(raft.term, node_id)
                if other != node_id:
                    raise Violation(f"election safety: term {raft.term} has two leaders, {other} and {node_id}")
            self._record_committed(raft)
        for node_id, node in sorted(self.cluster.nodes.items()):
            if node.up and node.driver.raft.role.value == "leader":
                self._leader_complete(node_id, node.driver.raft)

    def _record_committed(self, raft) -> None:
        for index in range(max(raft.log.first_index(), raft.log.commit - 64), raft.log.commit + 1):
            term = raft.log.term(index)
            if term is None:
                continue
            known = self.committed.setdefault(index, term)
            if known != term:
                raise Violation(f"state machine safety: index {index} committed with terms {known} and {term}")
            # The node's current term bounds the term in which the entry was committed.
            self.committed_by[index] = min(self.committed_by.get(index, raft.term), raft.term)

    def _leader_complete(self, node_id: int, raft) -> None:
        """Paper 5.4: an entry committed by term T is in the log of every leader of a later term."""
        for index, by_term in self.committed_by.items():
            if by_term >= raft.term or index <= raft.log.snapshot.index:
                continue
            if raft.log.term(index) != self.committed[index]:
                raise Violation(f"leader completeness: leader {node_id} (term {raft.term}) has term "
                                f"{raft.log.term(index)} at index {index}, committed with term "
                                f"{self.committed[index]} by term {by_term}")


async def _workload(cluster, client: Client, rng: random.Random, until: float) -> int:
    loop, count = asyncio.get_running_loop(), 0
    while loop.time() < until:
        key = rng.choice(KEYS)
        if rng.random() < 0.5:
            await client.put(key, b"%d-%d" % (client.id, count))
        else:
            await client.get(key)
        count += 1
        await asyncio.sleep(rng.uniform(0, 0.05))
    return count


async def _faults(cluster: DriverCluster, rng: random.Random, until: float, report: SeedReport) -> None:
    loop = asyncio.get_running_loop()
    rates = {"crash": rng.uniform(0, 0.15), "partition": rng.uniform(0, 0.1), "one_way": rng.uniform(0, 0.05),
             "pause": rng.uniform(0, 0.05), "heal": rng.uniform(0.01, 0.3), "network": rng.uniform(0, 0.1),
             "clock": rng.uniform(0, 0.05)}
    minority = (len(cluster.nodes) - 1) // 2
    while loop.time() < until:
        await asyncio.sleep(0.1)
        ids = sorted(cluster.nodes)
        down = [n for n in ids if not cluster.nodes[n].up]
        if rng.random() < rates["crash"] and len(down) < minority:
            victim = rng.choice([n for n in ids if n not in down])
            await cluster.nodes[victim].crash()
            report.faults["crash"] += 1
        elif down and rng.random() < 0.3:
            await cluster.nodes[rng.choice(down)].boot()
            report.faults["restart"] += 1
        if rng.random() < rates["partition"]:
            leader = cluster.leader()
            if leader is not None and rng.random() < 0.5:
                # Isolating the leader is the partition that tests deposed leaders.
                cluster.partition([leader], [n for n in ids if n != leader])
                report.faults["leader isolated"] += 1
            else:
                rng.shuffle(ids)
                cut = rng.randint(1, len(ids) - 1)
                cluster.partition(ids[:cut], ids[cut:])
                report.faults["partition"] += 1
        if rng.random() < rates["one_way"]:
            a, b = rng.sample(ids, 2)
            cluster.faults.cut.add((a, b))
            report.faults["one-way partition"] += 1
        if rng.random() < rates["pause"]:
            node = cluster.nodes[rng.choice(ids)]
            if node.up and not node.frozen:
                node.freeze()
                loop.call_later(rng.uniform(0.02, 1.0), node.thaw)
                report.faults["pause"] += 1
        if rng.random() < rates["clock"]:
            cluster.skew_clocks(rng.uniform(0.05, 0.5))
            report.faults["clock skew"] += 1
        if rng.random() < rates["network"]:
            cluster.faults.loss = rng.uniform(0, 0.3)
            cluster.faults.duplicate = rng.uniform(0, 0.2)
            cluster.faults.delay_seconds_max = rng.uniform(0.001, 0.05)
            report.faults["lossy network"] += 1
        if rng.random() < rates["heal"]:
            cluster.heal()


async def _check_forever(checker: SafetyChecker) -> None:
    while True:
        checker.check()
        await asyncio.sleep(TICK_SECONDS)


async def _liveness(cluster: DriverCluster, history) -> None:
    cluster.heal()
    cluster.faults.loss = cluster.faults.duplicate = 0.0
    cluster.faults.delay_seconds_max = 0.002
    for node in cluster.nodes.values():
        if not node.up:
            await node.boot()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIVENESS_SECONDS
    probe = Client(cluster, 10_000, history, attempts_max=100, attempt_seconds=0.2)
    written = await probe.put(b"liveness", b"ok")
    if not written or await probe.get(b"liveness") != b"ok" or loop.time() > deadline:
        raise Violation(f"liveness: no write and read within {LIVENESS_SECONDS} s after faults stopped")


async def simulate(seed: int, safety_seconds: float = 5.0, raft_config: dict | None = None) -> SeedReport:
    rng = random.Random(seed)
    nodes = rng.choice([3, 3, 5])
    # drawn apart, so that the other draws keep their values
    snapshot_bytes = random.Random(f"snapshot-bytes-{seed}").choice([2 << 10, 16 << 10, SNAPSHOT_BYTES])
    cluster = DriverCluster(list(range(1, nodes + 1)), seed=rng.getrandbits(64),
                            snapshot_entries=rng.choice([50, 200, 1000]), snapshot_bytes=snapshot_bytes,
                            **(raft_config or {}))
    report = SeedReport(seed, nodes, 0.0, 0)
    history = linearizability.History()
    checker = SafetyChecker(cluster)
    loop = asyncio.get_running_loop()
    await cluster.start()
    checking = loop.create_task(_check_forever(checker))
    until = loop.time() + safety_seconds
    clients = [Client(cluster, c + 1, history) for c in range(rng.randint(2, 8))]
    work = [loop.create_task(_workload(cluster, c, random.Random(rng.getrandbits(64)), until)) for c in clients]
    await _faults(cluster, rng, until, report)
    counts = await asyncio.gather(*work)
    try:
        await _liveness(cluster, history)
        checker.check()
        if checking.done():
            checking.result()
    finally:
        checking.cancel()
        for node in cluster.nodes.values():
            await node.crash()
    result = linearizability.check(history.operations())
    if not result.ok:
        raise Violation("linearizability: " + result.explain())
    report.operations = sum(counts)
    report.simulated_seconds = loop.time()
    report.trace = checker.trace.hexdigest()
    return report


WALL_SECONDS_MAX = 60


def run_seed(seed: int, safety_seconds: float = 5.0, raft_config: dict | None = None) -> SeedReport:
    loop = SimLoop()
    try:
        with wall_clock_limit(WALL_SECONDS_MAX):
            return loop.run_until_complete(simulate(seed, safety_seconds, raft_config))
    except (Violation, WallClockExceeded) as violation:
        return SeedReport(seed, 0, loop.time(), 0, violation=str(violation))
    finally:
        cancel_all(loop)
        loop.close()
