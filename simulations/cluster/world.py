"""The whole Cairn cluster in one process, on simulated time, network and disks.

Metadata nodes run the real Raft driver and log store, the real metadata state machine and the
real MetaService (failure detection, repair planning, the repairer, the cold tier's lifecycle,
garbage collection). Data nodes run the real fragment store over simulated files and index, the
real membership (registration, heartbeats), the real repair executor and the real tier executor.
Clients are the real AsyncClient with its writer, reader and fragment protocol. Only time
(SimLoop), the network (network.py), the disks (SimFiles, SimDisk) and the cloud bucket (s3.py)
are substitutes: the clients and nodes talk through the same interfaces they use over gRPC and
ZeroMQ (MetaClient's transport, Fragments' connect and control channels, the repairer's channel),
and the tier's ColdStore calls the bucket through boto3's client interface.
"""
from __future__ import annotations

import asyncio
import random

import grpc

from cluster.client.fragments import Fragments
from cluster.client.meta import MetaClient
from cluster.client.objects import AsyncClient
from cluster.data.disks import DiskSet
from cluster.data.membership import Membership, disk_records
from cluster.data.orphans import OrphanCollector, placements_from
from cluster.data.repairs import RepairExecutor, check_request
from cluster.data.scrubber import Scrubber
from cluster.data import tiering
from cluster.data.server import COMPACT_THRESHOLD, _status_of, fragment_ids, put_admitted
from cluster.data.store import BadFragment, FragmentStore, StripedStore
from cluster.data.wire import JOINED_BYTES_MAX, DataError
from cluster.meta.liveness import FailureDetector
from cluster.meta.service import MetaService
from cluster.meta.state import MetaState
from cluster.proto import data_pb2 as data_pb
from cluster.proto import meta_pb2 as pb
from cluster.raft.config import RaftConfig
from cluster.raft.core import Raft
from cluster.raft.driver import SNAPSHOT_BYTES, RaftDriver
from cluster.raft.log_store import LogStore
from cluster.tier.store import ColdStore, TierError
from simulations.cluster.network import Network
from simulations.cluster.s3 import SimS3
from simulations.disk import SimDisk
from simulations.files import SimFiles
from simulations.raft.driver_cluster import TICK_SECONDS, DriverCluster, SimNode

DATA_CALL_SECONDS = 2.0
META_TIMEOUT_SECONDS = 20.0
SEGMENT_BYTES_MAX = 256 << 10       # small segments: rolling and compaction happen in short runs
DISK_BYTES = 128 << 20
SUSPECT_AFTER_SECONDS = 5.0
DEAD_AFTER_SECONDS = 20.0
GARBAGE_GRACE_SECONDS = 30.0
ORPHAN_GRACE_SECONDS = 30.0
ORPHAN_INTERVAL_SECONDS = 10.0
SCRUB_PAUSE_SECONDS = 60.0
COMPACT_INTERVAL_SECONDS = 20.0
LIFECYCLE_EVERY_SECONDS = 2.0
READ_RESOLUTION_SECONDS = 1.0
REHEAT_GRACE_SECONDS = 30.0
AUDIT_FRAGMENTS_PER_SECOND = 2000.0  # the production default: a pass over a run's few chunks takes seconds
WALL_EPOCH = 1_800_000_000.0         # the simulated wall clock starts here (commands carry it)


class Tasks:
    """The tasks of one simulated process: a crash cancels them all."""

    def __init__(self):
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SimMetaNode(SimNode):
    """A metadata node: the real Raft driver and metadata service over simulated disks."""

    def __init__(self, node_id: int, group: "MetaGroup"):
        super().__init__(node_id, group)
        self.name = f"m{node_id}"
        self.state_disk = SimDisk(random.Random(group.rng.getrandbits(64)))
        self.state: MetaState | None = None
        self.service: MetaService | None = None
        self.tasks = Tasks()
        self.clock_offset = 0.0  # skew of this node's wall clock

    def spawn(self, coroutine) -> asyncio.Task:
        return self.tasks.spawn(coroutine)

    async def boot(self) -> None:
        group, loop = self.cluster, asyncio.get_running_loop()
        store = LogStore(self.disk)
        recovered = store.load(group.membership)
        raft = Raft(RaftConfig(node_id=self.id, **group.config), random.Random(group.rng.getrandbits(64)),
                    recovered.hard_state, recovered.snapshot, recovered.entries)
        self.state = MetaState(self.state_disk)
        self.driver = RaftDriver(raft, store, self.state, group.transport(self.id), self.snapshots,
                                 tick_seconds=TICK_SECONDS * self.clock_rate, snapshot_entries=group.snapshot_entries,
                                 snapshot_bytes=group.snapshot_bytes, on_fatal=self._lost_power,
                                 call_later=self._call_later)
        world = group.world
        self.service = MetaService(
            self.driver, self.state, lambda n: f"m{n}", clock=lambda: WALL_EPOCH + loop.time() + self.clock_offset,
            detector=FailureDetector(SUSPECT_AFTER_SECONDS, DEAD_AFTER_SECONDS),
            garbage_grace_seconds=GARBAGE_GRACE_SECONDS, monotonic=loop.time,
            repair_channel=lambda address: SimChannel(world, self.name, address),
            lifecycle_every_seconds=LIFECYCLE_EVERY_SECONDS, read_resolution_seconds=READ_RESOLUTION_SECONDS,
            reheat_grace_seconds=REHEAT_GRACE_SECONDS, audit_fragments_per_second=AUDIT_FRAGMENTS_PER_SECOND)
        await self.driver.start()
        self.spawn(self.service.keep_house())
        self.boots += 1

    async def crash(self) -> None:
        await self.tasks.cancel()
        if self.service is not None:
            await self.service.tiering.close()
            await self.service.repairer.close()
            await self.service.auditor.close()
        self.service = None
        await super().crash()
        self.state_disk.crash()


class MetaGroup(DriverCluster):
    def __init__(self, world: "World", node_ids: list[int], seed: int, **config):
        self.world = world
        super().__init__(node_ids, seed, **config)
        self.nodes = {n: SimMetaNode(n, self) for n in sorted(node_ids)}


class SimDataNode:
    """A data node: the real fragment store on a simulated disk, membership and repair."""

    def __init__(self, world: "World", number: int):
        self.world, self.number, self.name = world, number, f"d{number}"
        self.rng = random.Random(world.rng.getrandbits(64))
        self.labels = {"host": f"h{number}", "rack": f"r{(number - 1) % 3 + 1}"}
        self.saved_id = 0  # the node-id file: survives crashes, not a lost disk
        self.up, self.boots = False, 0
        self.tasks = Tasks()
        self.disks: DiskSet | None = None
        self.membership: Membership | None = None
        self.repairs: RepairExecutor | None = None
        self.tier: tiering.TierExecutor | None = None
        self.orphans: OrphanCollector | None = None
        self.new_disk()

    def new_disk(self) -> None:
        self.files = SimFiles(random.Random(self.rng.getrandbits(64)), capacity=DISK_BYTES)
        self.index = SimDisk(random.Random(self.rng.getrandbits(64)))
        self.saved_id = 0

    def spawn(self, coroutine) -> asyncio.Task:
        return self.tasks.spawn(coroutine)

    async def boot(self) -> None:
        self.disks = DiskSet([self.name], stripes=1, files=lambda path: self.files,
                             open_store=lambda path, stripes: StripedStore(
                                 [FragmentStore(self.files, self.index, SEGMENT_BYTES_MAX)]))
        meta = self.world.meta_client(self.name)

        async def records():
            return disk_records(self.disks)

        def save_id(node_id: int) -> None:
            self.saved_id = node_id
        self.membership = Membership(meta, self.name, self.name, self.labels, records, self.saved_id, save_id,
                                     orphan_grace_seconds=ORPHAN_GRACE_SECONDS)
        self.disks.on_corrupt = self.membership.found_damage
        self.orphans = self._orphan_collector(meta)

        async def store_local(items):
            return put_admitted(self.disks, self.orphans, list(items))
        self.repairs = RepairExecutor(self.world.fragments(self.name, meta), lambda: self.membership.node_id, store_local)
        loop = asyncio.get_running_loop()

        def cold_store(target) -> ColdStore:  # no backoff sleeps: the retries happen at once
            return ColdStore(target, client=self.world.s3, sleep=lambda _: None, rng=random.Random(self.rng.getrandbits(64)))
        stores = tiering.TierStores(meta, make_store=cold_store, clock=loop.time, offload=_inline)
        self.tier = tiering.TierExecutor(self.repairs.fragments, stores, wall_clock=lambda: WALL_EPOCH + loop.time(),
                                         offload=_inline)
        self.up, self.boots = True, self.boots + 1
        self.spawn(self.membership.run())
        self.spawn(self.orphans.run_forever(ORPHAN_INTERVAL_SECONDS))
        self.spawn(self._scrub())
        self.spawn(self._compact())

    async def _compact(self) -> None:
        while True:
            await asyncio.sleep(COMPACT_INTERVAL_SECONDS)
            self.disks.compact(COMPACT_THRESHOLD)

    async def _scrub(self) -> None:
        """A whole scrub pass now and then (reading is instant on a simulated disk)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SCRUB_PAUSE_SECONDS)
            for disk in self.disks.healthy():
                Scrubber(disk.store, self.membership.found_damage, clock=loop.time, sleep=lambda _: None).run_pass()

    def _orphan_collector(self, meta) -> OrphanCollector:
        async def delete(fragments):
            for chunk_id, index in fragments:
                self.disks.delete(chunk_id, index)
        return OrphanCollector(lambda: self.membership.node_id, lambda: list(self.disks.fragments(b"", b"\xff" * 32)),
                               placements_from(meta), delete, asyncio.get_running_loop().time, ORPHAN_GRACE_SECONDS)

    async def crash(self) -> None:
        self.up = False
        await self.tasks.cancel()
        self.files.crash()
        self.index.crash()
        self.disks = None

    # ---- what the network delivers

    async def put(self, chunk_id: bytes, index: int, data: bytes, crc: int) -> None:
        try:
            error = put_admitted(self.disks, self.orphans, [(chunk_id, index, data, crc)])[0]
        except Exception as failure:  # noqa: BLE001
            error = failure
        if error is not None:  # the data plane answers every failure with a status
            raise DataError(_status_of(error), str(error))

    async def touch(self, fragments: list[tuple[bytes, int]]) -> list[bool]:
        try:
            return self.orphans.touch(fragments, self.disks.has)
        except Exception as error:  # noqa: BLE001
            raise DataError(_status_of(error), str(error)) from None

    async def get(self, chunk_id: bytes, index: int, offset: int, length: int | None) -> bytes:
        """A whole fragment is read as a real node reads a batch's (`DiskSet.get_many`), so
        the faults reach that path too; a range as a real node reads one."""
        try:
            if offset or length is not None:
                return self.disks.get(chunk_id, index, offset, length)
            (outcome,), joined = self.disks.get_many([(chunk_id, index)], JOINED_BYTES_MAX)
            if isinstance(outcome, Exception):
                raise outcome
            return joined  # (a buffer of its own: no scratch was lent)
        except Exception as error:  # noqa: BLE001
            raise DataError(_status_of(error), str(error)) from None

    async def control(self, method: str, request):
        check = {"Repair": check_request, "Tier": tiering.check_request, "Recall": tiering.check_recall,
                 "Has": fragment_ids}.get(method)
        if check is None:
            raise _rpc_error(grpc.StatusCode.UNIMPLEMENTED, method)
        try:
            checked = check(request)
            if method == "Has":  # (the audit's question, answered as a real node's control API does)
                return data_pb.HasReply(present=[self.disks.has(c, i) for c, i in checked])
        except (BadFragment, ValueError) as error:
            raise _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        if method == "Repair":
            return await self.repairs.run(request)
        if method == "Tier":
            return await self.tier.run(request)
        try:
            return data_pb.RecallReply(data=await self.tier.recall(request.chunk, request.length, request.target))
        except TierError as error:
            raise _rpc_error(tiering.recall_status(error), str(error)) from None


async def _inline(function, *args):
    return function(*args)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class SimDataClient:
    """Fragments' view of one data node (DataClient's put, get and close) over the network."""

    def __init__(self, world: "World", source: str, target: str):
        self.world, self.source, self.target = world, source, target

    async def put(self, chunk_id: bytes, index: int, data, crc: int, timeout: float = DATA_CALL_SECONDS) -> None:
        data = bytes(data)  # the bytes leave the sender
        await self.world.network.call(self.source, self.target, lambda node: node.put(chunk_id, index, data, crc),
                                      min(timeout, DATA_CALL_SECONDS))

    async def touch(self, fragments: list[tuple[bytes, int]], timeout: float = DATA_CALL_SECONDS) -> list[bool]:
        fragments = list(fragments)
        return await self.world.network.call(self.source, self.target, lambda node: node.touch(fragments),
                                             min(timeout, DATA_CALL_SECONDS))

    async def get(self, chunk_id: bytes, index: int, offset: int = 0, length: int | None = None,
                  timeout: float = DATA_CALL_SECONDS, expect: int | None = None):
        network = self.world.network
        data = await network.call(self.source, self.target, lambda node: node.get(chunk_id, index, offset, length),
                                  min(timeout, DATA_CALL_SECONDS))
        return network.garble(data)

    async def close(self) -> None:
        pass


class SimMetaTransport:
    """MetaClient's transport to one metadata node: each op is one Call over the network."""

    def __init__(self, world: "World", source: str, target: str):
        self.world, self.source, self.target = world, source, target

    async def call(self, op: pb.MetaOp, timeout: float) -> pb.MetaReply:
        async def handle(node):
            if node.service is None:
                await asyncio.Future()  # booting: no answer
            return await node.service.Call(op, None)
        return await self.world.network.call(self.source, self.target, handle, timeout)

    async def close(self) -> None:
        pass


class SimChannel:
    """A gRPC channel to a data node's control API for the repairer (DataStub's calls)."""

    def __init__(self, world: "World", source: str, target: str):
        self.world, self.source, self.target = world, source, target

    def unary_unary(self, path: str, request_serializer=None, response_deserializer=None, **options):
        method = path.rsplit("/", 1)[-1]

        async def call(request, timeout: float | None = None, **kwargs):
            try:
                return await self.world.network.call(self.source, self.target,
                                                     lambda node: node.control(method, request), timeout or 60.0)
            except asyncio.TimeoutError:
                raise _rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} to {self.target}") from None
        return call

    async def close(self) -> None:
        pass


class World:
    def __init__(self, seed: int, metas: int = 3, datas: int = 6, snapshot_entries: int = 200,
                 snapshot_bytes: int = SNAPSHOT_BYTES):
        self.seed = seed
        self.rng = random.Random(seed)
        self.network = Network(random.Random(self.rng.getrandbits(64)))
        self.meta = MetaGroup(self, list(range(1, metas + 1)), self.rng.getrandbits(64),
                              snapshot_entries=snapshot_entries, snapshot_bytes=snapshot_bytes)
        self.datas = {n: SimDataNode(self, n) for n in range(1, datas + 1)}
        for node in self.meta.nodes.values():
            self.network.endpoints[node.name] = node
        for node in self.datas.values():
            self.network.endpoints[node.name] = node
        self.meta_names = [node.name for node in self.meta.nodes.values()]
        self.s3 = SimS3(random.Random(f"s3-{seed}"))  # (not drawn from self.rng: other draws keep their values)

    async def start(self) -> None:
        await self.meta.start()
        for node in self.datas.values():
            await node.boot()

    def meta_client(self, source: str) -> MetaClient:
        loop = asyncio.get_running_loop()
        return MetaClient(self.meta_names, timeout=META_TIMEOUT_SECONDS, rng=random.Random(self.rng.getrandbits(64)),
                          transport=lambda address: SimMetaTransport(self, source, address), clock=loop.time)

    def data_connect(self, source: str):
        return lambda address: SimDataClient(self, source, address)

    def fragments(self, name: str, meta: MetaClient) -> Fragments:
        return Fragments(meta, self.data_connect(name), clock=asyncio.get_running_loop().time, offload=_inline,
                         control=lambda address: SimChannel(self, name, address))

    def client(self, name: str) -> AsyncClient:
        meta = self.meta_client(name)
        return AsyncClient(self.meta_names, meta=meta, fragments=self.fragments(name, meta))

    def isolate(self, name: str, one_way: bool = False) -> None:
        """Cuts a process off from every other (one way: only what it sends is lost)."""
        others = [n for n in self.network.endpoints if n != name]
        self.network.faults.cut |= {(name, o) for o in others} | (set() if one_way else {(o, name) for o in others})
        if name.startswith("m"):
            me = int(name[1:])
            peers = [n for n in self.meta.nodes if n != me]
            self.meta.faults.cut |= {(me, p) for p in peers} | (set() if one_way else {(p, me) for p in peers})

    def rejoin(self, name: str) -> None:
        self.network.faults.cut = {(a, b) for a, b in self.network.faults.cut if name not in (a, b)}
        if name.startswith("m"):
            me = int(name[1:])
            self.meta.faults.cut = {(a, b) for a, b in self.meta.faults.cut if me not in (a, b)}

    def heal(self) -> None:
        """No more network faults: links whole, no loss, short delays."""
        self.network.heal()
        self.meta.heal()
        self.meta.faults.loss = self.meta.faults.duplicate = 0.0
        self.meta.faults.delay_seconds_max = 0.002

    def leader(self) -> SimMetaNode | None:
        leader = self.meta.leader()
        return self.meta.nodes[leader] if leader is not None else None

    async def stop(self) -> None:
        for node in self.datas.values():
            if node.up:
                await node.crash()
        for node in self.meta.nodes.values():
            await node.crash()
