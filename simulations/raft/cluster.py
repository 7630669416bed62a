"""A deterministic in-memory cluster of Raft cores: simulated time, network and disks.

Theory of operation. Each node is the real `Raft` core plus a minimal synchronous driver that
handles every Ready in the order the core requires: write hard state, entries and snapshots to
its simulated disk, then send, then apply. The network is a list of messages in flight with a
delivery tick; a seeded `random.Random` decides delays, losses, duplicates and reordering, and
which node acts when, so one seed is one run. Faults are methods (crash, restart, partition,
pause) that a scenario or the random fault schedule calls.

A crash throws away everything in memory. What was handed to the disk survives, except that the
disk may also lose its unsynced tail (when `lose_unsynced` is set, writes since the last sync
point of that node are dropped, as with a power cut before fsync); since the driver only sends
after persisting, the core's guarantees are tested against exactly the disk behaviour its real
store promises.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field

from cluster.raft.config import RaftConfig
from cluster.raft.core import NotLeader, ProposalDropped, Raft, ReadState, Role
from cluster.raft.messages import Entry, EntryKind, HardState, Membership, Message, MessageType, SnapshotMeta


@dataclass
class SimDisk:
    hard_state: HardState = HardState()
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    snapshot_data: bytes = b""
    entries: list[Entry] = field(default_factory=list)
    staged_snapshot: bytearray = field(default_factory=bytearray)

    def write_entries(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        self.entries = [e for e in self.entries if e.index < first] + list(entries)


@dataclass
class Network:
    delay_ticks_max: int = 1
    loss: float = 0.0
    duplicate: float = 0.0
    # (deliver at tick, sequence, message); the sequence makes ordering total and seeded.
    in_flight: list[tuple[int, int, Message]] = field(default_factory=list)
    cut: set[tuple[int, int]] = field(default_factory=set)  # (from, to) pairs that drop everything


class SimNode:
    """The real core and a synchronous driver over a simulated disk."""

    def __init__(self, node_id: int, config: RaftConfig, rng: random.Random, disk: SimDisk):
        self.id, self.config, self.disk = node_id, config, disk
        self.raft = Raft(config, rng, disk.hard_state, disk.snapshot, list(disk.entries))
        self.state: list[bytes] = []  # the applied commands: a log-shaped state machine
        self.state_index = disk.snapshot.index
        if disk.snapshot.index:
            self.state = _decode_state(disk.snapshot_data)
        self.read_states: list[ReadState] = []
        self.up = True

    def handle_ready(self, send) -> None:
        while self.raft.has_ready():
            ready = self.raft.ready()
            for m in ready.messages_now:
                send(self._fill_snapshot(m))
            for chunk in ready.snapshot_chunks:
                if chunk.offset == 0:
                    self.disk.staged_snapshot = bytearray()
                self.disk.staged_snapshot += chunk.data or b""
            if ready.snapshot is not None:
                self._install_snapshot(ready.snapshot)
            if ready.entries:
                self.disk.write_entries(ready.entries)
            if ready.hard_state is not None:
                self.disk.hard_state = ready.hard_state
            for m in ready.messages:
                send(self._fill_snapshot(m))
            for entry in ready.committed:
                self._apply(entry)
            self.read_states.extend(ready.read_states)
            self.raft.advance(ready)

    def _fill_snapshot(self, m: Message) -> Message:
        if m.type is not MessageType.SNAPSHOT or m.data is not None:
            return m
        chunk = self.disk.snapshot_data[m.offset:m.offset + self.config.snapshot_chunk_bytes]
        return dataclasses.replace(m, data=chunk)

    def _install_snapshot(self, meta: SnapshotMeta) -> None:
        self.disk.snapshot, self.disk.snapshot_data = meta, bytes(self.disk.staged_snapshot)
        self.disk.entries = []  # the core restarts its log after the snapshot
        self.state, self.state_index = _decode_state(self.disk.snapshot_data), meta.index

    def _apply(self, entry: Entry) -> None:
        if entry.index != self.state_index + 1:
            raise AssertionError(f"node {self.id} applies {entry.index} after {self.state_index}")
        self.state_index = entry.index
        if entry.kind == EntryKind.NORMAL:
            self.state.append(entry.data)

    def take_snapshot(self) -> None:
        """Compacts the log up to what has been applied (as the real driver does periodically)."""
        index = self.state_index
        if index <= self.disk.snapshot.index:
            return
        term = self.raft.log.term(index)
        meta = SnapshotMeta(index, term, self.raft.log.membership_at(index), 0)
        data = _encode_state(self.state)
        meta = SnapshotMeta(meta.index, meta.term, meta.membership, len(data))
        self.disk.snapshot, self.disk.snapshot_data = meta, data
        self.disk.entries = [e for e in self.disk.entries if e.index > index]
        self.raft.compact(meta)


def _encode_state(state: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "big") + item for item in state)


def _decode_state(data: bytes) -> list[bytes]:
    out, position = [], 0
    while position < len(data):
        size = int.from_bytes(data[position:position + 4], "big")
        out.append(data[position + 4:position + 4 + size])
        position += 4 + size
    return out


class SimCluster:
    def __init__(self, node_ids: list[int], seed: int, learners: list[int] = (), **config):
        self.seed = seed
        self.rng = random.Random(seed)
        self.tick_count = 0
        self._sequence = 0
        self.network = Network()
        self.config_overrides = config
        membership = Membership(frozenset(node_ids), frozenset(learners))
        self.disks = {n: SimDisk(snapshot=SnapshotMeta(0, 0, membership, 0)) for n in [*node_ids, *learners]}
        self.nodes = {n: self._start(n) for n in sorted(self.disks)}
        self.trace = hashlib.blake2b(digest_size=16)
        self.leaders_by_term: dict[int, int] = {}

    def _start(self, node_id: int) -> SimNode:
        config = RaftConfig(node_id=node_id, **self.config_overrides)
        return SimNode(node_id, config, random.Random(self.rng.getrandbits(64)), self.disks[node_id])

    # ---- time and network

    def send(self, m: Message) -> None:
        if (m.source, m.target) in self.network.cut or self.rng.random() < self.network.loss:
            return
        copies = 2 if self.rng.random() < self.network.duplicate else 1
        for _ in range(copies):
            self._sequence += 1
            delay = self.rng.randint(0, self.network.delay_ticks_max)
            self.network.in_flight.append((self.tick_count + delay, self._sequence, m))

    def deliver(self) -> None:
        """Delivers every message due by now, in a seeded order, until the network is quiet."""
        while True:
            due = [item for item in self.network.in_flight if item[0] <= self.tick_count]
            if not due:
                return
            self.network.in_flight = [item for item in self.network.in_flight if item[0] > self.tick_count]
            self.rng.shuffle(due)
            for _, _, m in due:
                node = self.nodes.get(m.target)
                if node is not None and node.up and (m.source, m.target) not in self.network.cut:
                    self.trace.update(f"{m.type.name}{m.source}{m.target}{m.term}{m.index}".encode())
                    node.raft.step(m)
                    node.handle_ready(self.send)
                    self.check_invariants()

    def tick(self) -> None:
        self.tick_count += 1
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if node.up:
                node.raft.tick()
                node.handle_ready(self.send)
        self.deliver()
        self.check_invariants()

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()

    def run_until(self, predicate, ticks_max: int = 1000) -> int:
        for spent in range(ticks_max):
            if predicate():
                return spent
            self.tick()
        raise AssertionError(f"condition not reached within {ticks_max} ticks (seed {self.seed})")

    # ---- faults

    def crash(self, node_id: int) -> None:
        self.nodes[node_id].up = False

    def restart(self, node_id: int) -> None:
        self.nodes[node_id] = self._start(node_id)

    def partition(self, *groups: list[int]) -> None:
        self.network.cut = {(a, b) for g in groups for h in groups if g is not h for a in g for b in h}

    def heal(self) -> None:
        self.network.cut = set()

    # ---- client operations

    def leader(self) -> int | None:
        leaders = [n for n, node in sorted(self.nodes.items()) if node.up and node.raft.role is Role.LEADER]
        if not leaders:
            return None
        return max(leaders, key=lambda n: self.nodes[n].raft.term)

    def propose(self, node_id: int, command: bytes) -> int | None:
        try:
            index = self.nodes[node_id].raft.propose([command])
        except (NotLeader, ProposalDropped):
            return None
        self.nodes[node_id].handle_ready(self.send)
        return index

    def wait_leader(self, ticks_max: int = 1000) -> int:
        self.run_until(lambda: self.leader() is not None, ticks_max)
        return self.leader()

    # ---- checkers (after every step)

    def check_invariants(self) -> None:
        up = [node for _, node in sorted(self.nodes.items())]
        for node in up:
            if node.raft.role is Role.LEADER:
                known = self.leaders_by_term.setdefault(node.raft.term, node.id)
                assert known == node.id, f"election safety: term {node.raft.term} has leaders {known} and {node.id}"
        self._check_state_machine_safety(up)

    def _check_state_machine_safety(self, nodes: list[SimNode]) -> None:
        """Applied prefixes agree (state machine safety), checked on the applied commands."""
        longest: list[bytes] = []
        for node in nodes:
            state = node.state
            shorter, longer = (state, longest) if len(state) <= len(longest) else (longest, state)
            assert longer[:len(shorter)] == shorter, f"state machine safety violated at node {node.id} (seed {self.seed})"
            if len(state) > len(longest):
                longest = state

    def check_log_matching(self) -> None:
        """Log matching: two logs with an entry of the same index and term agree up to it."""
        nodes = [node for _, node in sorted(self.nodes.items())]
        for a in nodes:
            for b in nodes:
                if a.id >= b.id:
                    continue
                common = min(a.raft.log.last_index(), b.raft.log.last_index())
                low = max(a.raft.log.first_index(), b.raft.log.first_index())
                for index in range(common, low - 1, -1):
                    if a.raft.log.term(index) == b.raft.log.term(index):
                        for i in range(low, index + 1):
                            assert a.raft.log.entry(i) == b.raft.log.entry(i), \
                                f"log matching violated at {i} between {a.id} and {b.id} (seed {self.seed})"
                        break

    def trace_hash(self) -> str:
        return self.trace.hexdigest()
