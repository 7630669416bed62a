"""The production Raft driver, store and key-value state machine, on simulated time, network
and disks: what `python -m simulations raft` runs.

Each node is the real `RaftDriver` over the real `LogStore` (on a `SimDisk`) with the real
`Sessions(KeyValueStore)`, running on the deterministic `SimLoop`. The network delivers each
message after a seeded delay, or drops or duplicates it, and honours partitions (also one-way
ones) at delivery time; a paused node fires no timers and reads its messages when it wakes. Clients are coroutines that retry across leaders with
session sequence numbers and record every operation in a linearizability history.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from cluster.raft import kv
from cluster.raft.config import RaftConfig
from cluster.raft.core import NotLeader, ProposalDropped, Raft
from cluster.raft.driver import SNAPSHOT_BYTES, ProposalOutcomeUnknown, RaftDriver
from cluster.raft.log_store import LogStore
from cluster.raft.messages import Membership, Message
from cluster.raft.rsm import Sessions, envelope
from cluster.raft.snapshot_files import MemorySnapshots
from simulations.disk import SimDisk

TICK_SECONDS = 0.01
DELIVERIES_PER_INSTANT_MAX = 10_000


@dataclass
class NetworkFaults:
    loss: float = 0.0
    duplicate: float = 0.0
    delay_seconds_max: float = 0.002
    cut: set[tuple[int, int]] = field(default_factory=set)


class SimNode:
    def __init__(self, node_id: int, cluster: "DriverCluster"):
        self.id, self.cluster = node_id, cluster
        self.disk = SimDisk(random.Random(cluster.rng.getrandbits(64)))
        self.snapshots = MemorySnapshots()
        self.driver: RaftDriver | None = None
        self.kv: kv.KeyValueStore | None = None
        self.clock_rate = 1.0  # > 1: this node's clock runs slow (its ticks come late); < 1: fast
        self.frozen = False    # a paused process: no timers fire, messages wait in the backlog
        self.backlog: list[Message] = []
        self._deferred: list = []
        self.boots = 0

    async def boot(self) -> None:
        store = LogStore(self.disk)
        recovered = store.load(self.cluster.membership)
        config = RaftConfig(node_id=self.id, **self.cluster.config)
        raft = Raft(config, random.Random(self.cluster.rng.getrandbits(64)), recovered.hard_state,
                    recovered.snapshot, recovered.entries)
        self.kv = kv.KeyValueStore()
        self.driver = RaftDriver(raft, store, Sessions(self.kv), self.cluster.transport(self.id),
                                 self.snapshots, tick_seconds=TICK_SECONDS * self.clock_rate,
                                 snapshot_entries=self.cluster.snapshot_entries,
                                 snapshot_bytes=self.cluster.snapshot_bytes, on_fatal=self._lost_power,
                                 call_later=self._call_later)
        await self.driver.start()
        self.boots += 1

    def _call_later(self, delay: float, callback, *args):
        return asyncio.get_running_loop().call_later(delay, self._fire, callback, args)

    def _fire(self, callback, args) -> None:
        if self.frozen:
            self._deferred.append((callback, args))
        else:
            callback(*args)

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        """The process runs again: overdue timers fire and queued messages arrive, in order."""
        if not self.frozen:
            return
        self.frozen = False
        deferred, self._deferred = self._deferred, []
        for callback, args in deferred:
            callback(*args)
        backlog, self.backlog = self.backlog, []
        for m in backlog:
            self.cluster._deliver(m)

    def _lost_power(self, error: Exception) -> None:
        asyncio.get_running_loop().create_task(self.crash())

    async def crash(self) -> None:
        self.frozen, self.backlog, self._deferred = False, [], []
        driver, self.driver = self.driver, None
        if driver is not None:
            await driver.stop()
        self.disk.crash()

    @property
    def up(self) -> bool:
        return self.driver is not None


class DriverCluster:
    def __init__(self, node_ids: list[int], seed: int, snapshot_entries: int = 200,
                 snapshot_bytes: int = SNAPSHOT_BYTES, **config):
        self.rng = random.Random(seed)
        self.seed = seed
        self.membership = Membership(frozenset(node_ids))
        self.config = config
        self.snapshot_entries, self.snapshot_bytes = snapshot_entries, snapshot_bytes
        self.faults = NetworkFaults()
        self.nodes = {n: SimNode(n, self) for n in sorted(node_ids)}
        self._events = 0
        self._instant, self._deliveries_this_instant = -1.0, 0
        self.livelock = False

    async def start(self) -> None:
        for node in self.nodes.values():
            await node.boot()

    def now(self) -> tuple[float, int]:
        """History time: virtual seconds, then the order of events within one instant (events
        at the same virtual time still happen one after another)."""
        self._events += 1
        return (asyncio.get_running_loop().time(), self._events)

    def transport(self, source: int) -> "_Transport":
        return _Transport(self, source)

    def _deliver(self, m: Message) -> None:
        now = asyncio.get_running_loop().time()
        if now != self._instant:
            self._instant, self._deliveries_this_instant = now, 0
        self._deliveries_this_instant += 1
        if self._deliveries_this_instant > DELIVERIES_PER_INSTANT_MAX:
            self.livelock = True  # messages bounce forever without time passing: stop them
            return
        node = self.nodes.get(m.target)
        if node is None or not node.up or (m.source, m.target) in self.faults.cut:
            return
        if node.frozen:
            node.backlog.append(m)  # a paused process reads its socket when it wakes
            return
        node.driver.receive(m)

    def leader(self) -> int | None:
        leaders = [n for n, node in self.nodes.items() if node.up and node.driver.is_leader]
        return max(leaders, key=lambda n: self.nodes[n].driver.raft.term) if leaders else None

    async def wait_leader(self, timeout_seconds: float = 10.0) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while loop.time() < deadline:
            leader = self.leader()
            if leader is not None:
                return leader
            await asyncio.sleep(TICK_SECONDS)
        raise AssertionError(f"no leader within {timeout_seconds} s (seed {self.seed})")

    def skew_clocks(self, spread: float) -> None:
        """Gives every node a clock rate in [1 - spread, 1 + spread], effective at its next boot
        and for its current driver's future ticks."""
        for _, node in sorted(self.nodes.items()):
            node.clock_rate = self.rng.uniform(1 - spread, 1 + spread)
            if node.driver is not None:
                node.driver.tick_seconds = TICK_SECONDS * node.clock_rate

    def partition(self, *groups: list[int]) -> None:
        self.faults.cut = {(a, b) for g in groups for h in groups if g is not h for a in g for b in h}

    def heal(self) -> None:
        self.faults.cut = set()
        for node in self.nodes.values():
            node.thaw()


class _Transport:
    def __init__(self, cluster: DriverCluster, source: int):
        self.cluster, self.source = cluster, source

    def send(self, messages: tuple[Message, ...]) -> None:
        cluster, loop = self.cluster, asyncio.get_running_loop()
        faults = cluster.faults
        for m in messages:
            if (m.source, m.target) in faults.cut or cluster.rng.random() < faults.loss:
                continue
            copies = 2 if cluster.rng.random() < faults.duplicate else 1
            for _ in range(copies):
                loop.call_later(cluster.rng.uniform(0, faults.delay_seconds_max), cluster._deliver, m)

    async def flush(self) -> None:
        pass  # send() has already scheduled every delivery


class Client:
    """A key-value client with a session: retries a command across leaders until it is
    answered or its attempts run out (then its outcome stays unknown in the history)."""

    def __init__(self, cluster: DriverCluster, client_id: int, history, attempts_max: int = 20,
                 attempt_seconds: float = 0.5):
        self.cluster, self.id, self.history = cluster, client_id, history
        self.sequence = 0
        self.leader_guess = 0
        self.attempts_max, self.attempt_seconds = attempts_max, attempt_seconds

    async def put(self, key: bytes, value: bytes) -> bool:
        self.sequence += 1
        op = self.history.invoke(self.id, "put", key, (value,), self.cluster.now())
        command = envelope(self.id, self.sequence, kv.encode_put(key, value))
        if await self._until_answered(lambda node: node.driver.propose(command)) is None:
            return False  # outcome unknown: the history keeps it pending
        self.history.complete(op, None, self.cluster.now())
        return True

    async def get(self, key: bytes) -> bytes | None:
        op = self.history.invoke(self.id, "get", key, (), self.cluster.now())
        node = await self._until_answered(lambda node: node.driver.read_barrier())
        if node is None:
            return None
        value = node.kv.get(key)  # right after the barrier, in the same loop turn
        self.history.complete(op, value, self.cluster.now())
        return value

    async def _until_answered(self, request) -> SimNode | None:
        """Retries request(node) on the node believed to lead; the node that answered, or None."""
        for attempt in range(self.attempts_max):
            node = self._pick(attempt)
            if node is None:
                await asyncio.sleep(self.attempt_seconds / 5)
                continue
            try:
                await asyncio.wait_for(request(node), self.attempt_seconds)
            except (NotLeader, ProposalDropped, ProposalOutcomeUnknown, asyncio.TimeoutError) as error:
                self._learn(error)
                await asyncio.sleep(self.attempt_seconds / 10)
                continue
            if node.up:
                return node
        return None

    def _pick(self, attempt: int) -> SimNode | None:
        """The node this client believes leads: like a real client it learns only from answers
        (NotLeader hints) and from timeouts, so it can reach a deposed leader."""
        up = [node for _, node in sorted(self.cluster.nodes.items()) if node.up]
        if not up:
            return None
        guess = self.cluster.nodes.get(self.leader_guess)
        if guess is None or not guess.up or attempt % 4 == 3:
            guess = self.cluster.rng.choice(up)
            self.leader_guess = guess.id
        return guess

    def _learn(self, error: Exception) -> None:
        """A NotLeader answer names the leader (or nobody); a timeout says nothing, so the
        client keeps trying the same node for a while, as real clients do."""
        if isinstance(error, NotLeader):
            self.leader_guess = error.leader
