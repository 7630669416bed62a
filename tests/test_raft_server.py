"""Three real Raft node processes on 127.0.0.1: writes, linearizable reads, leader failover,
restart from disk, and a follower pointing clients at the leader."""
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from cluster.dev import free_ports
from cluster.proto import raft_pb2 as pb
from cluster.proto import raft_pb2_grpc as pb_grpc

START_SECONDS_MAX = 30


class Cluster:
    def __init__(self, tmp_path):
        ports = free_ports(3)
        self.addresses = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.peers = ",".join(f"{i}={a}" for i, a in self.addresses.items())
        self.tmp_path = tmp_path
        self.processes = {}
        self.client_id, self.sequence = 77, 0

    def start(self, node_id):
        log = open(self.tmp_path / f"node{node_id}.log", "ab")
        self.processes[node_id] = subprocess.Popen(
            [sys.executable, "-m", "cluster.raft.server", "--id", str(node_id), "--data",
             str(self.tmp_path / f"n{node_id}"), "--listen", self.addresses[node_id], "--peers", self.peers,
             "--tick-seconds", "0.02"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, node_id):
        process = self.processes.pop(node_id)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop_all(self):
        for node_id in list(self.processes):
            self.kill(node_id)

    def call(self, method, request, address=None, deadline_seconds=START_SECONDS_MAX):
        """Follows leader hints and retries until the deadline; returns the final response."""
        end = time.monotonic() + deadline_seconds
        address = address or next(iter(self.addresses.values()))
        live = [self.addresses[n] for n in sorted(self.processes)]
        attempt = 0
        while True:
            try:
                with grpc.insecure_channel(address) as channel:
                    response = getattr(pb_grpc.KVStub(channel), method)(request, timeout=2)
                if not response.error:
                    return response
                address = response.leader_address or live[attempt % len(live)]
            except grpc.RpcError:
                address = live[attempt % len(live)]
            attempt += 1
            assert time.monotonic() < end, f"{method} did not succeed within {deadline_seconds} s"
            time.sleep(0.05)

    def put(self, key, value):
        self.sequence += 1
        return self.call("Put", pb.PutRequest(key=key, value=value, client_id=self.client_id, sequence=self.sequence))

    def get(self, key):
        response = self.call("Get", pb.GetRequest(key=key))
        return response.value if response.found else None

    def leader_address(self):
        for address in (self.addresses[n] for n in sorted(self.processes)):
            with grpc.insecure_channel(address) as channel:
                response = pb_grpc.KVStub(channel).Get(pb.GetRequest(key=b"?"), timeout=2)
            if not response.error:
                return address
        return None


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    for node_id in (1, 2, 3):
        c.start(node_id)
    yield c
    c.stop_all()


def test_writes_and_linearizable_reads(cluster):
    for i in range(20):
        assert cluster.put(b"key-%d" % i, b"value-%d" % i).ok
    assert cluster.get(b"key-7") == b"value-7"
    assert cluster.get(b"missing") is None


def test_a_follower_names_the_leader(cluster):
    cluster.put(b"a", b"1")
    # a follower that has not heard from a just-elected leader yet names nobody: ask again
    for _ in range(50):
        leader = cluster.leader_address()
        follower = next(a for a in cluster.addresses.values() if a != leader)
        with grpc.insecure_channel(follower) as channel:
            response = pb_grpc.KVStub(channel).Put(pb.PutRequest(key=b"b", value=b"2"), timeout=2)
        assert not response.ok
        if response.leader_address == leader:
            return
        time.sleep(0.1)
    raise AssertionError(f"follower {follower} never named leader {leader}: {response}")


def test_leader_failover_and_restart_from_disk(cluster):
    for i in range(10):
        cluster.put(b"k%d" % i, b"v%d" % i)
    leader = cluster.leader_address()
    leader_id = next(n for n, a in cluster.addresses.items() if a == leader)
    cluster.kill(leader_id)
    assert cluster.put(b"after", b"failover").ok
    assert cluster.get(b"k3") == b"v3"
    cluster.start(leader_id)
    for node_id in (1, 2, 3):
        if node_id != leader_id:
            cluster.kill(node_id)
            cluster.start(node_id)
    assert cluster.get(b"after") == b"failover"
    assert cluster.get(b"k9") == b"v9"


def test_pipelined_puts_and_gets_from_many_callers(cluster):
    import asyncio

    from cluster.rpc.mux import StreamMux

    cluster.put(b"warm", b"up")
    leader = cluster.leader_address()
    follower = next(a for a in cluster.addresses.values() if a != leader)

    async def main():
        channels = {a: grpc.aio.insecure_channel(a) for a in (leader, follower)}
        muxes = {a: StreamMux(pb_grpc.KVStub(c).Pipeline, pb.KvOps, "ops", "replies") for a, c in channels.items()}
        try:
            async def put(i):
                request = pb.PutRequest(key=b"p%03d" % i, value=b"v%d" % i, client_id=1000 + i, sequence=1)
                return (await muxes[leader].call(pb.KvOp(put=request), 10.0)).put
            puts = await asyncio.gather(*(put(i) for i in range(300)))
            assert all(r.ok for r in puts), [r.error for r in puts if not r.ok][:3]
            gets = await asyncio.gather(*(muxes[leader].call(pb.KvOp(get=pb.GetRequest(key=b"p%03d" % i)), 10.0)
                                          for i in range(300)))
            assert [r.get.value for r in gets] == [b"v%d" % i for i in range(300)]
            # a follower answers pipelined operations with the leader's address (once it has heard
            # from the leader: a node still starting up names nobody, so ask again for a while)
            end = time.monotonic() + START_SECONDS_MAX
            while True:
                redirected = (await muxes[follower].call(pb.KvOp(put=pb.PutRequest(key=b"f", value=b"1")), 10.0)).put
                assert not redirected.ok and redirected.error == "not leader"
                if redirected.leader_address or time.monotonic() > end:
                    break
                await asyncio.sleep(0.1)
            assert redirected.leader_address == leader
            read = (await muxes[follower].call(pb.KvOp(get=pb.GetRequest(key=b"f")), 10.0)).get
            assert read.error == "not leader" and read.leader_address == leader
            empty = (await muxes[leader].call(pb.KvOp(), 10.0)).put
            assert not empty.ok and "empty" in empty.error
        finally:
            for mux in muxes.values():
                await mux.close()
            for channel in channels.values():
                await channel.close()
    asyncio.run(main())


def test_a_retried_put_applies_once(cluster):
    first = cluster.call("Put", pb.PutRequest(key=b"x", value=b"1", client_id=5, sequence=1))
    cluster.put(b"x", b"2")
    again = cluster.call("Put", pb.PutRequest(key=b"x", value=b"1", client_id=5, sequence=1))
    assert first.ok and again.ok
    assert cluster.get(b"x") == b"2"  # the retry was recognized, not applied a second time


def test_bad_requests_get_clear_errors(cluster):
    cluster.put(b"warm", b"up")
    leader = cluster.leader_address()
    with grpc.insecure_channel(leader) as channel:
        stub = pb_grpc.KVStub(channel)
        empty_key = stub.Put(pb.PutRequest(key=b"", value=b"v"), timeout=5)
        huge_key = stub.Put(pb.PutRequest(key=b"k" * 2000, value=b"v"), timeout=5)
    assert not empty_key.ok and "key must be" in empty_key.error
    assert not huge_key.ok and "key must be" in huge_key.error


def test_an_older_sequence_than_the_session_has_is_refused(cluster):
    assert cluster.call("Put", pb.PutRequest(key=b"s", value=b"1", client_id=9, sequence=5)).ok
    with grpc.insecure_channel(cluster.leader_address()) as channel:
        older = pb_grpc.KVStub(channel).Put(pb.PutRequest(key=b"s", value=b"2", client_id=9, sequence=4), timeout=5)
    assert not older.ok and "session expired" in older.error
    assert cluster.get(b"s") == b"1"


def _resident_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


LOAD_SCRIPT = """
import asyncio, sys, time, grpc
from cluster.proto import raft_pb2 as pb, raft_pb2_grpc as pb_grpc
async def main(address, seconds):
    async with grpc.aio.insecure_channel(address) as channel:
        stub, end = pb_grpc.KVStub(channel), time.monotonic() + seconds
        async def client(c):
            i = 0
            while time.monotonic() < end:
                i += 1
                try:
                    await stub.Put(pb.PutRequest(key=b"k%d" % (i % 100), value=b"x" * 256,
                                                 client_id=1000 + c, sequence=i), timeout=2)
                except grpc.RpcError:
                    pass
        await asyncio.gather(*[client(c) for c in range(64)])
asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


def test_sigterm_stops_a_follower_promptly_and_within_its_memory_under_load(cluster):
    """A follower told to stop while 64 clients keep the leader streaming to it must wind down,
    not pile up work (an earlier shutdown order let memory climb by hundreds of MiB)."""
    cluster.put(b"warm", b"up")
    leader = cluster.leader_address()
    follower = next(n for n, a in cluster.addresses.items() if a != leader)
    load = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, leader, "8"])
    try:
        time.sleep(3.0)
        process = cluster.processes.pop(follower)
        before = _resident_mib(process.pid)
        process.send_signal(signal.SIGTERM)
        peak, deadline = before, time.monotonic() + 5
        while process.poll() is None and time.monotonic() < deadline:
            peak = max(peak, _resident_mib(process.pid))
            time.sleep(0.02)
        assert process.wait(1) == 0
        assert peak < before + 200, f"memory grew from {before:.0f} to {peak:.0f} MiB while stopping"
    finally:
        load.kill()
        load.wait(10)
