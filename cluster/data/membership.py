"""A data node's membership in the cluster: it registers with the metadata leader (which gives it
its id the first time), heartbeats its disks' state, and sends the scrubber's damage reports.

The I/O comes in as arguments (the meta client, how disk records are gathered, where the id is
kept, how to sleep), so the cluster simulator runs this same code.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from cluster import faultpoints
from cluster.proto import meta_pb2 as pb

log = logging.getLogger("cairn.data")

HEARTBEAT_SECONDS = 2.0
DAMAGE_KEPT_MAX = 10_000   # reports waiting for the leader at most (the oldest go first)
DAMAGE_PER_REPORT = 1000


def disk_records(disks) -> list[pb.Disk]:
    """What a DiskSet reports of its disks to the leader."""
    return [pb.Disk(path=d["path"], capacity_bytes=d["capacity_bytes"], free_bytes=d["free_bytes"],
                    healthy=d["healthy"]) for d in disks.status()]


class Membership:
    def __init__(self, meta, address: str, data_address: str, labels: dict[str, str],
                 disk_records: Callable[[], Awaitable[list[pb.Disk]]], node_id: int,
                 save_id: Callable[[int], None], sleep=asyncio.sleep, orphan_grace_seconds: float = 0.0):
        """`orphan_grace_seconds`: the node's, told to clients in its record (0: the default)."""
        self.meta = meta
        self.orphan_grace_seconds = orphan_grace_seconds
        self.address, self.data_address, self.labels = address, data_address, labels
        self._disk_records = disk_records
        self.node_id = node_id
        self._save_id = save_id
        self._sleep = sleep
        self.damage: list[tuple[bytes, int, str]] = []  # (chunk, index, reason) not reported yet

    async def register(self) -> None:
        node = pb.Node(id=self.node_id, address=self.address, data_address=self.data_address,
                       labels=self.labels, disks=await self._disk_records(),
                       orphan_grace_seconds=self.orphan_grace_seconds)
        reply = await self.meta.command(register_node=pb.RegisterNode(node=node))
        if reply.code != pb.OK:
            raise RuntimeError(f"registration refused: {reply.message}")
        if reply.result.node_id != self.node_id:
            self._save_id(reply.result.node_id)  # kept before it is used
            self.node_id = reply.result.node_id
        log.info("registered as data node %d", self.node_id)

    async def beat(self) -> None:
        """One heartbeat (registering first when the node has no id), then the damage found."""
        if faultpoints.hit("heartbeat.lost"):
            raise RuntimeError("fault point: heartbeat lost")
        if self.node_id == 0:
            await self.register()
        disks = await self._disk_records()
        reply = await self.meta.call(pb.MetaOp(heartbeat=pb.Heartbeat(id=self.node_id, disks=disks)))
        if reply.code == pb.UNKNOWN_NODE:
            self.node_id = 0  # the cluster forgot us (a new cluster): register again
        await self.report_damage()

    async def run(self, every_seconds: float = HEARTBEAT_SECONDS) -> None:
        while True:
            try:
                await self.beat()
            except Exception as error:  # noqa: BLE001 - whatever failed, the next beat tries again
                log.warning("heartbeat: %s", error)
            await self._sleep(every_seconds)

    def found_damage(self, chunk_id: bytes, index: int, reason: str) -> None:
        self.damage.append((chunk_id, index, reason))
        del self.damage[:-DAMAGE_KEPT_MAX]

    async def report_damage(self) -> None:
        """Sends what the scrubber found to the leader (repair acts on it); keeps it if that fails."""
        if not self.damage or not self.node_id:
            return
        taken = self.damage[:DAMAGE_PER_REPORT]
        damage = [pb.Damage(chunk=c, index=i, node=self.node_id, reason=r) for c, i, r in taken]
        reply = await self.meta.command(report_damage=pb.ReportDamage(damage=damage))
        if reply.code == pb.OK:
            del self.damage[:len(taken)]
