"""A metadata node process: the metadata state machine on Raft, serving the Meta API.

    python -m cluster.meta.server --id 1 --data DIR --listen 127.0.0.1:7101 \
        --peers 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103

Raft and the Meta API share the port. The state lives in DIR/meta (RocksDB), the Raft log in
DIR/raft-log; snapshots are checkpoints of DIR/meta.
"""
from __future__ import annotations

import os

from cluster.meta.service import MetaService
from cluster.meta.state import MetaState
from cluster.proto import meta_pb2_grpc as pb_grpc
from cluster.raft.node import RaftNode, node_arguments, run_node
from cluster.storage.disk import RocksDisk


class MetaNode(RaftNode):
    def __init__(self, node_id: int, data_dir: str, peers: dict[int, str], tick_seconds: float = 0.05,
                 snapshot_entries: int = 100_000):
        os.makedirs(data_dir, exist_ok=True)
        self.state = MetaState(RocksDisk(os.path.join(data_dir, "meta")))
        super().__init__(node_id, data_dir, peers, self.state, tick_seconds, snapshot_entries)
        self.service = MetaService(self.driver, self.state, self.address_of)

    def add_services(self, server) -> None:
        pb_grpc.add_MetaServicer_to_server(self.service, server)

    async def serve(self, listen, stop, services=()):
        try:
            await super().serve(listen, stop, (self.add_services, *services))
        finally:
            self.state.disk.close()


def main(argv: list[str] | None = None) -> None:
    parser = node_arguments("Run one Cairn metadata node.")
    parser.add_argument("--snapshot-entries", type=int, default=100_000,
                        help="take a snapshot (a RocksDB checkpoint) every this many applied entries")
    args = parser.parse_args(argv)

    def start():
        node = MetaNode(args.id, args.data, args.peers, args.tick_seconds, args.snapshot_entries)
        return node, ()
    run_node(args, start)


if __name__ == "__main__":
    main()
