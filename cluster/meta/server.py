"""A metadata node process: the metadata state machine on Raft, serving the Meta API.

    python -m cluster.meta.server --id 1 --data DIR --listen 127.0.0.1:7101 \
        --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103

Raft and the Meta API share the port. The state lives in DIR/meta (RocksDB), the Raft log in
DIR/raft-log; snapshots are checkpoints of DIR/meta.
"""
from __future__ import annotations

import os

import asyncio

from cluster.data.membership import HEARTBEAT_SECONDS
from cluster.meta.liveness import DEAD_AFTER_SECONDS, SUSPECT_AFTER_SECONDS, FailureDetector
from cluster.meta.audit import FRAGMENTS_PER_SECOND
from cluster.meta.repairer import BYTES_PER_SECOND
from cluster import faultpoints
from cluster.meta.service import GARBAGE_GRACE_SECONDS, MetaService
from cluster.meta.tiering import LIFECYCLE_EVERY_SECONDS, READ_RESOLUTION_SECONDS, REHEAT_GRACE_SECONDS
from cluster.meta.state import MetaState
from cluster.proto import meta_pb2_grpc as pb_grpc
from cluster.raft.driver import SNAPSHOT_BYTES
from cluster.raft.node import RaftNode, node_arguments, run_node
from cluster.storage.disk import RocksDisk


class MetaNode(RaftNode):
    def __init__(self, node_id: int, data_dir: str, peers: dict[int, str], tick_seconds: float = 0.05,
                 snapshot_entries: int = 100_000, suspect_after: float = SUSPECT_AFTER_SECONDS,
                 dead_after: float = DEAD_AFTER_SECONDS, garbage_grace: float = GARBAGE_GRACE_SECONDS,
                 repair_bytes_per_second: float = BYTES_PER_SECOND,
                 lifecycle_every: float = LIFECYCLE_EVERY_SECONDS, read_resolution: float = READ_RESOLUTION_SECONDS,
                 reheat_grace: float = REHEAT_GRACE_SECONDS, audit_fragments_per_second: float = FRAGMENTS_PER_SECOND,
                 snapshot_bytes: int = SNAPSHOT_BYTES):
        os.makedirs(data_dir, exist_ok=True)
        self.state = MetaState(RocksDisk(os.path.join(data_dir, "meta")))
        super().__init__(node_id, data_dir, peers, self.state, tick_seconds, snapshot_entries, snapshot_bytes)
        self.service = MetaService(self.driver, self.state, self.address_of,
                                   detector=FailureDetector(suspect_after, dead_after),
                                   garbage_grace_seconds=garbage_grace,
                                   repair_bytes_per_second=repair_bytes_per_second,
                                   lifecycle_every_seconds=lifecycle_every, read_resolution_seconds=read_resolution,
                                   reheat_grace_seconds=reheat_grace,
                                   audit_fragments_per_second=audit_fragments_per_second)

    def add_services(self, server) -> None:
        pb_grpc.add_MetaServicer_to_server(self.service, server)

    async def serve(self, listen, stop, services=()):
        watcher = asyncio.get_running_loop().create_task(self.service.keep_house())
        try:
            await super().serve(listen, stop, (self.add_services, *services))
        finally:
            watcher.cancel()
            await self.service.tiering.close()
            await self.service.repairer.close()
            await self.service.auditor.close()
            self.state.disk.close()


def main(argv: list[str] | None = None) -> None:
    parser = node_arguments("Run one Cairn metadata node.")
    parser.add_argument("--snapshot-entries", type=int, default=100_000,
                        help="take a snapshot (a RocksDB checkpoint) every this many applied entries")
    parser.add_argument("--snapshot-mb", type=float, default=SNAPSHOT_BYTES / (1 << 20),
                        help="or sooner, once the entries applied since the last snapshot hold more than this "
                             "many MiB and more than that snapshot (it bounds the log a node keeps in memory)")
    parser.add_argument("--suspect-after-seconds", type=float, default=SUSPECT_AFTER_SECONDS,
                        help="a data node not heard for this long is SUSPECT (reads go around it)")
    parser.add_argument("--dead-after-seconds", type=float, default=DEAD_AFTER_SECONDS,
                        help="a data node not heard for this long is DEAD (its fragments need repair)")
    parser.add_argument("--garbage-grace-seconds", type=float, default=GARBAGE_GRACE_SECONDS,
                        help="forget a chunk without references after this long (its fragments are then deleted)")
    parser.add_argument("--repair-mb-per-s", type=float, default=BYTES_PER_SECOND / 1e6,
                        help="cluster-wide limit on chunk bytes rebuilt per second by repairs")
    parser.add_argument("--lifecycle-every-seconds", type=float, default=LIFECYCLE_EVERY_SECONDS,
                        help="start a pass of the buckets' lifecycle rules at most this often")
    parser.add_argument("--read-resolution-seconds", type=float, default=READ_RESOLUTION_SECONDS,
                        help="record an object's read time when the last recorded one is older than this")
    parser.add_argument("--reheat-grace-seconds", type=float, default=REHEAT_GRACE_SECONDS,
                        help="keep a re-heated chunk's tier copy this long (readers may still be fetching it)")
    parser.add_argument("--audit-fragments-per-second", type=float, default=FRAGMENTS_PER_SECOND,
                        help="the audit asks data nodes about this many fragments per second, to find ones "
                             "missing from the node their chunk places them on (0: no audit)")
    args = parser.parse_args(argv)
    if args.snapshot_entries < 1 or args.snapshot_mb <= 0:
        parser.error("--snapshot-entries must be at least 1 and --snapshot-mb positive")
    if args.audit_fragments_per_second < 0:
        parser.error("--audit-fragments-per-second must be 0 (no audit) or more")
    if args.lifecycle_every_seconds <= 0 or args.read_resolution_seconds <= 0 or args.reheat_grace_seconds < 0:
        parser.error("--lifecycle-every-seconds and --read-resolution-seconds must be positive, "
                     "--reheat-grace-seconds not negative")
    if args.repair_mb_per_s <= 0:
        parser.error("--repair-mb-per-s must be positive")
    if not HEARTBEAT_SECONDS * 1.25 <= args.suspect_after_seconds < args.dead_after_seconds:
        parser.error(f"need {HEARTBEAT_SECONDS * 1.25:g} <= --suspect-after-seconds < --dead-after-seconds "
                     f"(data nodes heartbeat every {HEARTBEAT_SECONDS:g} s)")

    def start():
        node = MetaNode(args.id, args.data, args.peers, args.tick_seconds, args.snapshot_entries,
                        args.suspect_after_seconds, args.dead_after_seconds, args.garbage_grace_seconds,
                        args.repair_mb_per_s * 1e6, args.lifecycle_every_seconds, args.read_resolution_seconds,
                        args.reheat_grace_seconds, args.audit_fragments_per_second,
                        max(1, int(args.snapshot_mb * (1 << 20))))
        return node, ()
    faultpoints.install_from_environment()
    run_node(args, start)


if __name__ == "__main__":
    main()
