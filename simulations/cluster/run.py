"""One simulated run of the whole Cairn cluster from a seed: a safety phase in which clients put,
get and delete objects while faults hit, a liveness phase without faults, then the checks.

The seed decides everything: the cluster's shape (data nodes, erasure profile), the fault rates,
which faults hit when, the clients' operations and object sizes, every network delay, and the
bytes production code draws from os.urandom (op ids, placement seeds), which the run takes from
the seed too. Faults are capped so recovery stays possible: at most m data nodes are impaired at
once (down, cut off, with a lost or corrupted disk, or missing a fragment while up, which counts
for the rest of the run), and at most a minority of metadata nodes are down.

Fault points in the production code (cluster/faultpoints.py) fail its failure-handling branches
on purpose: a client dying between its uploads and its commit, fragment puts and gets failing
(replacement nodes, parity reads), repair answers lost before or after the placement changes,
orphans not deleted, heartbeats lost. A fragment lost from a node that stays up is found only by
the leader's audit (cluster/meta/audit.py), which the liveness check then waits for. Garbled
replies flip bits in fragments on their way to a reader, after the node's CRC32C check: only the
reader's BLAKE3 checks stand between them and the caller.

Checks: the clients' history (objects as registers: put, delete, get) is linearizable, which
also means an acknowledged put reads back byte-identical at the end and a get never returns bytes
that were not put (every value is named by its BLAKE3); the metadata replicas agree; every
chunk's reference count equals the references of the manifests; and within a bound after the
faults stop, every chunk has all k+m fragments intact on live nodes where its placement says,
no chunk without references is left, no data node keeps a fragment no placement names, and
rebalancing has come to rest.

Half the seeds also run a cold tier (a simulated S3 bucket, simulations/cluster/s3.py) with a
lifecycle rule on the bucket: by age since written, or since read with or without re-heat. The
bucket goes down, throttles, fails and garbles what it returns, at seeded rates. Extra checks:
every COLD chunk's object is in the bucket and matches its BLAKE3 (a cold chunk never loses its
only copy); every object in the bucket belongs to a chunk record or waits in tier garbage; and
within the liveness bound, tier garbage is deleted. At the end every object must read back
(cold ones through a recall): a read that fails after healing is a violation.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections import Counter
from dataclasses import dataclass, field

import blake3

from cluster import faultpoints
from cluster.client.errors import CairnError, NoSuchKey
from cluster.meta.state import tier_garbage_range, tier_intent_range
from cluster.proto import meta_pb2 as pb
from cluster.raft.driver import SNAPSHOT_BYTES
from cluster.tier.targets import TierTarget
from simulations import linearizability
from simulations.cluster.world import DEAD_AFTER_SECONDS, DISK_BYTES, World
from simulations.loop import SimLoop, WallClockExceeded, cancel_all, wall_clock_limit

TIER = TierTarget("cold", "http://s3.sim:9000", "cold-bucket", prefix="sim")

BUCKET = "sim"
KEYS = [f"k{n}" for n in range(6)]
SIZES = [0, 100, 3000, 20_000, 150_000, 600_000]  # inline, one chunk, several chunks
SAFETY_SECONDS = 60.0
# Some puts read a source of several chunks slowly: stalls that together may outlast the data
# nodes' orphan grace (world.ORPHAN_GRACE_SECONDS), so the put must keep its fragments until
# its commit.
SLOW_PUTS = 0.1  # of puts, while the client has none running
SLOW_PUT_BYTES = 3_000_000
SLOW_PUT_PIECE = 250_000
SLOW_PUT_STALL_SECONDS = (1.5, 4.0)  # before each piece but the first: 16-44 s in all
LIVENESS_SECONDS = 400.0
SETTLED_SECONDS = 30.0
OPERATION_ERRORS = (CairnError, asyncio.TimeoutError, OSError)
FAULT_POINTS = ["put.before_commit", "fragment.put", "fragment.get", "repair.after_store",
                "repair.before_placement", "orphans.before_delete", "heartbeat.lost"]


class Violation(AssertionError):
    pass


@dataclass
class SeedReport:
    seed: int
    shape: str
    simulated_seconds: float
    operations: int
    faults: Counter = field(default_factory=Counter)
    activity: Counter = field(default_factory=Counter)  # what the cold tier did
    violation: str | None = None
    trace: str = ""


class Recorder:
    """The history of client operations, and a hash of everything that happened (the trace)."""

    def __init__(self, verbose: bool = False):
        self.history = linearizability.History()
        self.trace = hashlib.blake2b(digest_size=16)
        self.verbose = verbose
        self._events = 0
        self.operations = 0

    def now(self) -> tuple[float, int]:
        self._events += 1
        return (asyncio.get_running_loop().time(), self._events)

    def event(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        self.trace.update(line.encode() + b"\n")
        if self.verbose:
            print(f"{asyncio.get_running_loop().time():10.3f} {line}", flush=True)


def _name(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()[:16]


async def stalling(data: bytes, stall: float, piece: int = SLOW_PUT_PIECE):
    """A slow source: the data in pieces of `piece` bytes, a stall before each but the first."""
    for start in range(0, len(data), piece):
        if start:
            await asyncio.sleep(stall)
        yield data[start:start + piece]


async def _put(client, name: str, key: str, data: bytes, rec: Recorder, stall: float = 0.0) -> None:
    op = rec.history.invoke(name, "put", key, (_name(data),), rec.now())
    try:
        await client.put(BUCKET, key, stalling(data, stall) if stall else data)
    except OPERATION_ERRORS as error:
        rec.event(name, "put", key, _name(data), "->", type(error).__name__)
        return  # outcome unknown: it stays pending
    rec.history.complete(op, None, rec.now())
    rec.event(name, "put", key, _name(data), "-> ok")


async def _delete(client, name: str, key: str, rec: Recorder) -> None:
    op = rec.history.invoke(name, "put", key, (None,), rec.now())
    try:
        await client.delete(BUCKET, key)
    except NoSuchKey:
        pass  # nothing there: the same outcome as deleting it
    except OPERATION_ERRORS as error:
        rec.event(name, "delete", key, "->", type(error).__name__)
        return
    rec.history.complete(op, None, rec.now())
    rec.event(name, "delete", key, "-> ok")


async def _get(client, name: str, key: str, rec: Recorder, strict: bool = False) -> None:
    op = rec.history.invoke(name, "get", key, (), rec.now())
    try:
        value = _name(await client.get(BUCKET, key))
    except NoSuchKey:
        value = None
    except OPERATION_ERRORS as error:
        rec.event(name, "get", key, "->", type(error).__name__)
        if strict:
            raise Violation(f"liveness: {key} does not read back after healing: {type(error).__name__}: {error}")
        return  # no answer: a pending read constrains nothing
    rec.history.complete(op, value, rec.now())
    rec.event(name, "get", key, "->", value)


async def _workload(world: World, name: str, rng: random.Random, until: float, rec: Recorder) -> None:
    loop = asyncio.get_running_loop()
    client = world.client(name)
    client.writer.buffer_bytes = 1 << 20  # chunks go as they are cut, not all at the end
    slow: asyncio.Task | None = None  # one slow put at a time, beside the client's other operations
    try:
        while loop.time() < until:
            key, roll = rng.choice(KEYS), rng.random()
            if roll < 0.45 and (slow is None or slow.done()) and rng.random() < SLOW_PUTS:
                data, stall = rng.randbytes(SLOW_PUT_BYTES), rng.uniform(*SLOW_PUT_STALL_SECONDS)
                slow = loop.create_task(_put(client, f"{name}-slow", key, data, rec, stall))  # (its own process)
            elif roll < 0.45:
                await _put(client, name, key, rng.randbytes(rng.choice(SIZES)), rec)
            elif roll < 0.9:
                await _get(client, name, key, rec)
            else:
                await _delete(client, name, key, rec)
            rec.operations += 1
            await asyncio.sleep(rng.uniform(0, 0.5))
        if slow is not None:
            await slow
    finally:
        if slow is not None:
            slow.cancel()
        await client.close()


class Faults:
    """Injects faults at seeded rates while keeping recovery possible (see the module's doc)."""

    def __init__(self, world: World, rng: random.Random, m: int, report: SeedReport, rec: Recorder,
                 tier_rng: random.Random | None = None):
        """`tier_rng`: the seed runs a cold tier, whose faults draw from it."""
        self.world, self.rng, self.m, self.report, self.rec = world, rng, m, report, rec
        self.tier_rng = tier_rng
        self.tier_rates = {kind: tier_rng.uniform(0, top) for kind, top in (
            ("tier outage", 0.02), ("tier errors", 0.02), ("tier garble", 0.02))} if tier_rng else {}
        self.rates = {kind: rng.uniform(0, top) for kind, top in (
            ("data crash", 0.04), ("disk lost", 0.01), ("corruption", 0.02), ("meta crash", 0.03),
            ("isolation", 0.02), ("lossy network", 0.03), ("slow node", 0.03), ("clock skew", 0.02),
            ("garbled replies", 0.01), ("full disk", 0.01), ("fragment lost", 0.02))}
        self.points = {name: rng.uniform(0, 0.05) for name in FAULT_POINTS}
        self.harmed: set[str] = set()    # data nodes whose disk was lost, corrupted or lacks a fragment
        self.isolated: set[str] = set()
        self._pending: list[asyncio.Task] = []

    def _impaired(self) -> set[str]:
        down = {n.name for n in self.world.datas.values() if not n.up}
        return self.harmed | down | (self.isolated & {n.name for n in self.world.datas.values()})

    def _may_impair(self) -> bool:
        return len(self._impaired()) < self.m

    def _count(self, kind: str, *detail) -> None:
        self.report.faults[kind] += 1
        self.rec.event("FAULT", kind, *detail)

    def _later(self, seconds: float, coroutine_function, *args) -> None:
        async def run():
            await asyncio.sleep(seconds)
            await coroutine_function(*args)
        self._pending.append(asyncio.get_running_loop().create_task(run()))

    def _point(self, name: str) -> bool:
        """The production code's fault points (cluster/faultpoints.py) fire at seeded rates."""
        if self.rng.random() < self.points.get(name, 0.0):
            self._count(f"point {name}")
            return True
        return False

    async def run(self, until: float) -> None:
        faultpoints.install(self._point)
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            await asyncio.sleep(0.5)
            for kind, rate in self.rates.items():
                if self.rng.random() < rate:
                    await getattr(self, "_" + kind.replace(" ", "_"))()
            for kind, rate in self.tier_rates.items():
                if self.tier_rng.random() < rate:
                    self._tier_fault(kind)

    def _tier_fault(self, kind: str) -> None:
        s3, seconds = self.world.s3, self.tier_rng.uniform(5.0, 60.0)
        field, value = {"tier outage": ("down", True), "tier errors": ("error_rate", self.tier_rng.uniform(0.1, 0.7)),
                        "tier garble": ("garble_rate", self.tier_rng.uniform(0.1, 0.7))}[kind]
        setattr(s3, field, value)
        self._count(kind, f"{seconds:.0f} s")

        async def end():
            setattr(s3, field, type(value)())
        self._later(seconds, end)

    async def _data_crash(self) -> None:
        up = [n for n in self.world.datas.values() if n.up and n.name not in self._impaired()]
        if up and self._may_impair():
            node = self.rng.choice(up)
            await node.crash()
            # back before DEAD (no repair) or after (repaired elsewhere, then reconciled)
            self._later(self.rng.uniform(1.0, DEAD_AFTER_SECONDS * 2), self._boot, node)
            self._count("data crash", node.name)

    async def _boot(self, node) -> None:
        if not node.up:
            await node.boot()

    async def _disk_lost(self) -> None:
        up = [n for n in self.world.datas.values() if n.up and n.name not in self._impaired()]
        if up and self._may_impair():
            node = self.rng.choice(up)
            await node.crash()
            node.new_disk()
            self.harmed.add(node.name)
            self._later(self.rng.uniform(1.0, 30.0), self._boot, node)
            self._count("disk lost", node.name)

    async def _corruption(self) -> None:
        candidates = [n for n in self.world.datas.values() if n.up and n.files.used()
                      and (n.name in self.harmed or self._may_impair())]
        if candidates:
            node = self.rng.choice(candidates)
            files = [name for name in node.files.list() if node.files.size_of(name)]
            name = self.rng.choice(files)
            node.files.flip(name, self.rng.randrange(node.files.size_of(name)))
            self.harmed.add(node.name)
            self._count("corruption", node.name, name)

    async def _fragment_lost(self) -> None:
        """A fragment vanishes from a node that stays up (a failed disk of several, a deleted
        segment): no read may ask for it, so only the leader's audit can find it."""
        candidates = [n for n in self.world.datas.values() if n.up and n.name not in self.isolated
                      and (n.name in self.harmed or self._may_impair())]
        held = [(n, _live_fragments(self.world, n)) for n in candidates]
        held = [(node, fragments) for node, fragments in held if fragments]
        if held:
            node, fragments = self.rng.choice(held)
            self.lose(node, [self.rng.choice(fragments)])

    def lose(self, node, fragments: list[tuple[bytes, int]]) -> None:
        for chunk_id, index in fragments:
            node.disks.delete(chunk_id, index)
            self._count("fragment lost", node.name, chunk_id.hex()[:16], index)
        self.harmed.add(node.name)

    async def _meta_crash(self) -> None:
        nodes = self.world.meta.nodes
        down = [n for n in nodes.values() if not n.up]
        if len(down) < (len(nodes) - 1) // 2:
            leader = self.world.leader()
            up = [n for n in nodes.values() if n.up]
            node = leader if leader is not None and self.rng.random() < 0.5 else self.rng.choice(up)
            await node.crash()
            self._later(self.rng.uniform(0.5, 10.0), self._boot_meta, node)
            self._count("meta crash", node.name, "(leader)" if node is leader else "")

    async def _boot_meta(self, node) -> None:
        if not node.up:
            await node.boot()

    async def _isolation(self) -> None:
        names = [n.name for n in self.world.meta.nodes.values()] + [n.name for n in self.world.datas.values()]
        name = self.rng.choice(names)
        is_data = name.startswith("d")
        if name in self.isolated or (is_data and not self._may_impair()):
            return
        if not is_data and any(n.startswith("m") for n in self.isolated):
            return  # one metadata node cut off at a time
        one_way = self.rng.random() < 0.3
        self.world.isolate(name, one_way)
        self.isolated.add(name)
        self._later(self.rng.uniform(1.0, 30.0), self._rejoin, name)
        self._count("one-way isolation" if one_way else "isolation", name)

    async def _rejoin(self, name: str) -> None:
        self.world.rejoin(name)
        self.isolated.discard(name)

    async def _lossy_network(self) -> None:
        faults = self.world.network.faults
        faults.loss = self.rng.uniform(0, 0.05)
        faults.duplicate = self.rng.uniform(0, 0.05)
        faults.delay_seconds_max = self.rng.uniform(0.001, 0.05)
        self.world.meta.faults.loss = self.rng.uniform(0, 0.1)
        self.world.meta.faults.duplicate = self.rng.uniform(0, 0.1)
        self._count("lossy network")

    async def _garbled_replies(self) -> None:
        self.world.network.faults.corrupt = self.rng.uniform(0, 0.05)
        self._count("garbled replies")

    async def _full_disk(self) -> None:
        """A data node's disk fills up (other tenants, a runaway log) for a while."""
        node = self.rng.choice(list(self.world.datas.values()))
        node.files.capacity = node.files.used() + self.rng.randrange(1 << 20)
        self._later(self.rng.uniform(1.0, 30.0), self._room, node)
        self._count("full disk", node.name)

    async def _room(self, node) -> None:
        node.files.capacity = DISK_BYTES

    async def _slow_node(self) -> None:
        node = self.rng.choice(list(self.world.datas.values()))
        self.world.network.faults.slow[node.name] = self.rng.uniform(0.1, 1.0)
        self._later(self.rng.uniform(1.0, 20.0), self._unslow, node.name)
        self._count("slow node", node.name)

    async def _unslow(self, name: str) -> None:
        self.world.network.faults.slow.pop(name, None)

    async def _clock_skew(self) -> None:
        self.world.meta.skew_clocks(self.rng.uniform(0.05, 0.3))
        for node in self.world.meta.nodes.values():
            node.clock_offset = self.rng.uniform(-5.0, 5.0)
        self._count("clock skew")

    async def stop(self) -> None:
        faultpoints.install(None)
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        self.world.heal()
        self.world.s3.heal()
        for node in self.world.datas.values():
            node.files.capacity = DISK_BYTES
        for node in self.world.meta.nodes.values():
            if not node.up:
                await node.boot()
        for node in self.world.datas.values():
            if not node.up:
                await node.boot()
        self.isolated.clear()


# ---- named scenarios: scripted faults in place of the seeded ones (the seed still decides the
# cluster's shape, the clients and the network's delays)


async def _leader_dies_during_puts(world: World, faults: Faults, until: float) -> None:
    """The metadata leader crashes every few seconds, in the middle of puts, commits and repairs."""
    loop = asyncio.get_running_loop()
    while loop.time() < until - 5:
        await asyncio.sleep(faults.rng.uniform(2.0, 6.0))
        leader = world.leader()
        if leader is not None:
            await leader.crash()
            faults._count("meta crash", leader.name, "(leader)")
            faults._later(faults.rng.uniform(0.5, 3.0), faults._boot_meta, leader)


async def _m_data_nodes_die_together(world: World, faults: Faults, until: float) -> None:
    """m data nodes crash at once, stay down past DEAD (their fragments are rebuilt elsewhere),
    then return and are reconciled."""
    await asyncio.sleep(5.0)
    victims = faults.rng.sample(sorted(world.datas.values(), key=lambda n: n.name), faults.m)
    for node in victims:
        await node.crash()
        faults._count("data crash", node.name)
    await asyncio.sleep(DEAD_AFTER_SECONDS + 15.0)
    for node in victims:
        await node.boot()


async def _disk_lost_and_node_back(world: World, faults: Faults, until: float) -> None:
    """A data node loses its disk and comes back at once, empty, before anyone declared it dead;
    as the clients stop, so what it held is still referenced."""
    await asyncio.sleep(max(0.0, until - asyncio.get_running_loop().time()))
    node = faults.rng.choice(sorted(world.datas.values(), key=lambda n: n.name))
    await node.crash()
    node.new_disk()
    faults.harmed.add(node.name)
    faults._count("disk lost", node.name)
    await node.boot()


async def _fragments_lost_on_up_nodes(world: World, faults: Faults, until: float) -> None:
    """As the clients stop, m data nodes that stay up each lose a few fragments of live chunks;
    nothing reads them afterwards, so only the leader's audit can find them for repair."""
    await asyncio.sleep(max(0.0, until - asyncio.get_running_loop().time()))
    client = world.client("scenario")  # objects of its own: the workload's may all be gone by now
    try:
        for n in range(2):
            await client.put(BUCKET, f"audit-{n}", faults.rng.randbytes(600_000))
    finally:
        await client.close()
    for node in faults.rng.sample(sorted(world.datas.values(), key=lambda n: n.name), faults.m):
        fragments = _live_fragments(world, node)
        faults.lose(node, faults.rng.sample(fragments, min(3, len(fragments))))


def _live_fragments(world: World, node) -> list[tuple[bytes, int]]:
    """The fragments on the node that a referenced HOT chunk places there, by the leader's word
    (a fragment of an orphan or of a chunk being deleted may lawfully go)."""
    leader = world.leader()
    if leader is None or not node.membership.node_id:
        return []
    live = []
    for chunk_id, index in node.disks.fragments(b"", b"\xff" * 32):
        chunk = leader.state.chunk(chunk_id)
        if chunk is not None and chunk.state == pb.HOT and chunk.refs and index < len(chunk.nodes) \
                and chunk.nodes[index] == node.membership.node_id:
            live.append((chunk_id, index))
    return live


async def _leader_cut_off(world: World, faults: Faults, until: float) -> None:
    """The leader is cut off from everyone (a new one is elected, the old one must not serve),
    then only what it sends is lost."""
    for one_way in (False, True):
        await asyncio.sleep(8.0)
        leader = world.leader()
        if leader is not None:
            world.isolate(leader.name, one_way)
            faults._count("one-way isolation" if one_way else "isolation", leader.name)
            await asyncio.sleep(12.0)
            world.rejoin(leader.name)


SCENARIOS = {
    "leader-dies-during-puts": _leader_dies_during_puts,
    "m-data-nodes-die-together": _m_data_nodes_die_together,
    "disk-lost-and-node-back": _disk_lost_and_node_back,
    "leader-cut-off": _leader_cut_off,
    "fragments-lost-on-up-nodes": _fragments_lost_on_up_nodes,
}


# ---- checks


def _manifest_references(state) -> Counter:
    references = Counter()
    for _, raw in state.disk.scan(b"M", b"N"):
        references.update(ref.id for ref in pb.Manifest.FromString(raw).chunks)
    return references


def _chunks(state) -> dict[bytes, pb.Chunk]:
    return {key[1:]: pb.Chunk.FromString(raw) for key, raw in state.disk.scan(b"C", b"D")}


def check_references(state) -> None:
    references = _manifest_references(state)
    chunks = _chunks(state)
    for chunk_id, chunk in chunks.items():
        if chunk.refs != references.get(chunk_id, 0):
            raise Violation(f"chunk {chunk_id.hex()[:16]} counts {chunk.refs} references; the manifests "
                            f"hold {references.get(chunk_id, 0)}")
    missing = [c for c in references if c not in chunks]
    if missing:
        raise Violation(f"manifests reference {len(missing)} chunks without a record, e.g. {missing[0].hex()[:16]}")


def check_replicas_agree(world: World) -> None:
    states = {}
    for node in world.meta.nodes.values():
        if node.up:
            states.setdefault(node.state.applied, []).append((node.name, node.state.disk.export_state()))
    for applied, copies in states.items():
        if len({data for _, data in copies}) > 1:
            raise Violation(f"metadata replicas {[n for n, _ in copies]} differ at applied index {applied}")


def healing_left(world: World) -> str | None:
    """What still keeps the cluster from full health, or None."""
    leader = world.leader()
    if leader is None:
        return "no leader"
    state = leader.state
    nodes = {n.id: n for n in state.nodes()}
    by_id = {d.membership.node_id: d for d in world.datas.values() if d.up and d.membership.node_id}
    placed: set[tuple[bytes, int, int]] = set()
    for chunk_id, chunk in _chunks(state).items():
        if chunk.refs == 0:
            return f"chunk {chunk_id.hex()[:16]} has no references and is not collected yet"
        for index, node_id in enumerate(chunk.nodes):
            placed.add((chunk_id, index, node_id))
            if node_id not in nodes or nodes[node_id].state != pb.UP or node_id not in by_id:
                return f"chunk {chunk_id.hex()[:16]} fragment {index} is on node {node_id}, not up"
            try:
                by_id[node_id].disks.get(chunk_id, index)
            except Exception as error:  # noqa: BLE001 - missing or corrupt: not healed yet
                return f"chunk {chunk_id.hex()[:16]} fragment {index} on node {node_id}: {type(error).__name__}"
    for node_id, node in by_id.items():
        for chunk_id, index in node.disks.fragments(b"", b"\xff" * 32):
            if (chunk_id, index, node_id) not in placed:
                return f"node {node_id} keeps fragment {index} of {chunk_id.hex()[:16]}, which no placement names"
    now_ms = int(leader.service.clock() * 1000)
    for target, chunk_id, settle_ms, not_before_ms in state.tier_garbage(100_000):
        if settle_ms == 0 and not_before_ms <= now_ms:  # (a re-heated chunk's copy waits for readers first)
            return f"tier object of {chunk_id.hex()[:16]} in {target} is not deleted yet"
    return None


def check_tier(world: World) -> None:
    """Every cold chunk's only copy is in the bucket, intact; every object in the bucket is
    accounted for: a cold chunk's, a hot chunk's whose upload is recorded (TierIntent), or tier
    garbage."""
    state = world.leader().state
    chunks = _chunks(state)
    garbage = {key[-32:] for key, _ in state.disk.scan(*tier_garbage_range())}
    for chunk_id, chunk in chunks.items():
        if chunk.tier:
            data = world.s3.objects.get((TIER.bucket, TIER.chunk_key(chunk_id)))
            if data is None or blake3.blake3(data).digest() != chunk_id:
                raise Violation(f"cold chunk {chunk_id.hex()[:16]}: its object in the tier is "
                                f"{'missing' if data is None else 'corrupt'}")
    intents = {key[-32:] for key, _ in state.disk.scan(*tier_intent_range())}
    for _, key in world.s3.objects:
        chunk_id = bytes.fromhex(key.rsplit("/", 1)[-1])
        cold = chunk_id in chunks and chunks[chunk_id].tier
        if not (cold or chunk_id in intents or chunk_id in garbage):
            raise Violation(f"tier object {key} belongs to no chunk record and is not tier garbage")


async def _settled(world: World, deadline: float) -> None:
    """Rebalancing comes to rest: no fragment moved for SETTLED_SECONDS, within the bound."""
    loop = asyncio.get_running_loop()
    moved = None
    while loop.time() < deadline:
        leader = world.leader()
        now = (leader.name, leader.service.repairer.stats.moved) if leader is not None else None
        if now is not None and now == moved:
            return
        moved = now
        await asyncio.sleep(SETTLED_SECONDS)
    raise Violation(f"liveness: rebalancing still moving fragments {LIVENESS_SECONDS:.0f} s after faults stopped "
                    f"({moved})")


async def _liveness(world: World, rec: Recorder, report: SeedReport) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIVENESS_SECONDS
    left = "not checked"
    while loop.time() < deadline:
        await asyncio.sleep(5.0)
        left = healing_left(world)
        if left is None:
            break
    else:
        raise Violation(f"liveness: not healed {LIVENESS_SECONDS:.0f} s after faults stopped: {left}")
    rec.event("healed")
    await _settled(world, deadline)
    client = world.client("final")
    try:
        for key in KEYS:
            await _get(client, "final", key, rec, strict=True)
    finally:
        await client.close()


async def simulate(seed: int, safety_seconds: float = SAFETY_SECONDS, verbose: bool = False,
                   scenario: str | None = None) -> SeedReport:
    rng = random.Random(seed)
    datas = rng.choice([5, 6, 7, 8])
    k, m = rng.choice([(k, m) for k, m in ((2, 1), (2, 2), (3, 1), (3, 2), (4, 2)) if k + m <= datas - 1])
    # drawn apart, so that the other draws keep their values
    snapshot_bytes = random.Random(f"snapshot-bytes-{seed}").choice([16 << 10, 256 << 10, SNAPSHOT_BYTES])
    world = World(rng.getrandbits(64), metas=3, datas=datas, snapshot_entries=rng.choice([100, 500, 2000]),
                  snapshot_bytes=snapshot_bytes)
    report = SeedReport(seed, f"3 meta, {datas} data, {k}+{m}", 0.0, 0)
    rec = Recorder(verbose)
    loop = asyncio.get_running_loop()
    await world.start()
    tier_rng = random.Random(f"tier-{seed}")  # (apart: the other draws keep their values)
    rule = _tier_rule(tier_rng)
    admin = world.client("admin")
    try:
        await admin.create_bucket(BUCKET, k=k, m=m, inline_max_bytes=rng.choice([0, 1024, 4096]))
        if rule is not None:
            await admin.set_tier_target(TIER.name, TIER.url, TIER.bucket, TIER.prefix)
            await admin.set_lifecycle(BUCKET, [rule])
            report.shape += f", tier ({_describe(rule)})"
    finally:
        await admin.close()
    rec.event("bucket", k, m, rule)
    until = loop.time() + safety_seconds
    faults = Faults(world, random.Random(rng.getrandbits(64)), m, report, rec, tier_rng if rule else None)
    clients = [loop.create_task(_workload(world, f"c{n}", random.Random(rng.getrandbits(64)), until, rec))
               for n in range(rng.randint(2, 4))]
    if scenario is None:
        await faults.run(until)
    else:
        await SCENARIOS[scenario](world, faults, until)
    await asyncio.gather(*clients)
    await faults.stop()
    try:
        await _liveness(world, rec, report)
        check_replicas_agree(world)
        check_references(world.leader().state)
        check_tier(world)
        report.activity.update(world.s3.done)
        report.activity["cold chunks at the end"] += sum(c.state == pb.COLD for c in _chunks(world.leader().state).values())
    finally:
        await world.stop()
    result = linearizability.check(rec.history.operations())
    if not result.ok:
        raise Violation("linearizability: " + result.explain())
    report.operations = rec.operations
    report.simulated_seconds = loop.time()
    report.trace = rec.trace.hexdigest()
    return report


def _tier_rule(rng: random.Random) -> pb.LifecycleRule | None:
    """Half the seeds: a cold tier with one of three kinds of rule."""
    if rng.random() < 0.5:
        return None
    kind = rng.choice(["created", "read", "read-reheat"])
    if kind == "created":
        return pb.LifecycleRule(target=TIER.name, after_created_seconds=rng.choice([1, 3, 10]))
    return pb.LifecycleRule(target=TIER.name, after_read_seconds=rng.choice([2, 8]), reheat_on_read=kind == "read-reheat")


def _describe(rule: pb.LifecycleRule) -> str:
    if rule.after_created_seconds:
        return f"cold {rule.after_created_seconds} s after written"
    return f"cold {rule.after_read_seconds} s after read" + (", re-heat on read" if rule.reheat_on_read else "")


WALL_SECONDS_MAX = 300


def run_seed(seed: int, safety_seconds: float = SAFETY_SECONDS, verbose: bool = False,
             scenario: str | None = None) -> SeedReport:
    """Runs one seed on a fresh SimLoop; os.urandom draws from the seed meanwhile."""
    loop = SimLoop()
    entropy = random.Random(f"urandom-{seed}")
    real_urandom, os.urandom = os.urandom, entropy.randbytes
    try:
        with wall_clock_limit(WALL_SECONDS_MAX):
            return loop.run_until_complete(simulate(seed, safety_seconds, verbose, scenario))
    except (Violation, WallClockExceeded) as violation:
        return SeedReport(seed, "", loop.time(), 0, violation=str(violation))
    finally:
        faultpoints.install(None)
        cancel_all(loop)
        loop.close()
        os.urandom = real_urandom
