"""A real data node process with three real meta nodes: it registers and heartbeats, moves
fragments over the ZeroMQ data plane, refuses bad input with clear errors, answers the gRPC
control API, and keeps its id across a restart."""
import asyncio
import os
import signal
import subprocess
import sys

import grpc
import pytest

from cluster.codec.crc import crc32c
from cluster.data import wire
from cluster.data.wire import DataClient, DataError
from cluster.proto import data_pb2 as pb
from cluster.proto import data_pb2_grpc as pb_grpc
from cluster.proto import meta_pb2 as meta_pb
from tests.test_meta_server import MetaCluster
from cluster.dev import free_ports


@pytest.fixture
def meta(tmp_path):
    c = MetaCluster(tmp_path)
    for node_id in (1, 2, 3):
        c.start(node_id)
    yield c
    c.stop_all()


def start_data_node(tmp_path, meta, ports, name="d1", extra=()):
    log = open(tmp_path / f"{name}.log", "ab")
    disks = ",".join(str(tmp_path / name / f"disk{i}") for i in range(2))
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.data.server", "--disks", disks, "--listen", f"127.0.0.1:{ports[0]}",
         "--data-listen", f"127.0.0.1:{ports[1]}", "--meta", ",".join(meta.addresses.values()),
         "--label", "host=alpha", "--label", "rack=r1", *extra],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc):
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(15)


async def registered_nodes(meta, count, timeout=30):
    client = meta.client()
    try:
        for _ in range(int(timeout / 0.2)):
            reply = await client.call(meta_pb.MetaOp(list_nodes=meta_pb.ListNodes()))
            if len(reply.list_nodes.nodes) >= count and all(n.disks for n in reply.list_nodes.nodes):
                return list(reply.list_nodes.nodes)
            await asyncio.sleep(0.2)
        raise AssertionError("the data node did not register")
    finally:
        await client.close()


def test_a_data_node_end_to_end(tmp_path, meta):
    ports = free_ports(2)
    proc = start_data_node(tmp_path, meta, ports)
    try:
        async def main():
            nodes = await registered_nodes(meta, 1)
            assert nodes[0].data_address == f"127.0.0.1:{ports[1]}" and nodes[0].labels["host"] == "alpha"
            assert len(nodes[0].disks) == 2 and all(d.healthy and d.capacity_bytes for d in nodes[0].disks)
            client = DataClient(f"127.0.0.1:{ports[1]}")
            chunk = os.urandom(32)
            blobs = {i: os.urandom(100_000 + i) for i in range(6)}
            await asyncio.gather(*(client.put(chunk, i, b, crc32c(b)) for i, b in blobs.items()))
            for i, b in blobs.items():
                assert bytes(await client.get(chunk, i)) == b
            assert bytes(await client.get(chunk, 2, offset=10, length=5)) == blobs[2][10:15]
            with pytest.raises(DataError) as missing:
                await client.get(chunk, 7)
            assert missing.value.status == wire.NOT_FOUND
            with pytest.raises(DataError) as bad_crc:
                await client.put(chunk, 7, b"data", crc32c(b"other"))
            assert bad_crc.value.status == wire.BAD_REQUEST and "CRC32C" in str(bad_crc.value)
            with pytest.raises(ValueError):
                await client.put(b"short", 0, b"data", crc32c(b"data"))
            with pytest.raises(DataError) as malformed:  # what a broken client might send
                await client._call([wire.OP_PUT, b"too short a header", b"data"], 5.0)
            assert malformed.value.status == wire.BAD_REQUEST
            with pytest.raises(DataError) as unknown:
                await client._call([b"X", b"header"], 5.0)
            assert unknown.value.status == wire.BAD_REQUEST

            await client.close()

            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
                control = pb_grpc.DataStub(channel)
                has = await control.Has(pb.HasRequest(fragments=[pb.FragmentId(chunk=chunk, index=i) for i in (0, 7)]))
                assert list(has.present) == [True, False]
                listed = await control.List(pb.ListRequest(max_entries=4))
                assert len(listed.fragments) == 4 and listed.next == chunk
                rest = await control.List(pb.ListRequest(start=listed.next, max_entries=100))
                assert len(rest.fragments) == 6  # the page boundary fell inside one chunk: it repeats
                deleted = await control.Delete(pb.DeleteRequest(fragments=[pb.FragmentId(chunk=chunk, index=0)]))
                assert list(deleted.deleted) == [True]
                status = await control.Status(pb.StatusRequest())
                assert status.fragments == 5 and status.node_id == nodes[0].id
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await control.Has(pb.HasRequest(fragments=[pb.FragmentId(chunk=b"x", index=0)]))
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            return nodes[0].id
        node_id = asyncio.run(main())
        stop(proc)
        proc = start_data_node(tmp_path, meta, ports)  # restarts with its id, its fragments intact

        async def again():
            nodes = await registered_nodes(meta, 1)
            assert [n.id for n in nodes] == [node_id]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
                for _ in range(100):
                    try:
                        status = await pb_grpc.DataStub(channel).Status(pb.StatusRequest(), timeout=2)
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.1)
                assert status.fragments == 5
        asyncio.run(again())
    finally:
        if proc.poll() is None:
            stop(proc)


def test_small_puts_issued_together_share_messages(tmp_path, meta):
    """Small puts and gets issued together share messages; a bad fragment fails alone; a
    malformed PUT_MANY is refused."""
    ports = free_ports(2)
    proc = start_data_node(tmp_path, meta, ports)
    try:
        async def main():
            await registered_nodes(meta, 1)
            client = DataClient(f"127.0.0.1:{ports[1]}")
            small = {i: os.urandom(4096 + i) for i in range(100)}
            other = os.urandom(32)
            sent = client.messages
            results = await asyncio.gather(
                *(client.put(other, i, b, crc32c(b) ^ (i == 42)) for i, b in small.items()),
                return_exceptions=True)
            assert client.messages - sent <= 4, "100 small puts were not coalesced"
            assert isinstance(results[42], DataError) and results[42].status == wire.BAD_REQUEST
            assert all(r is None for i, r in enumerate(results) if i != 42)
            sent = client.messages
            got = await asyncio.gather(*(client.get(other, i, expect=len(b)) for i, b in small.items()),
                                       return_exceptions=True)
            assert client.messages - sent <= 4, "100 small gets were not coalesced"
            assert isinstance(got[42], DataError) and got[42].status == wire.NOT_FOUND  # its put failed
            assert all(bytes(got[i]) == b for i, b in small.items() if i != 42)
            part = await client.get(other, 7, offset=100, length=10, expect=10)
            assert bytes(part) == small[7][100:110]
            # a batch of gets carries at most GET_MANY_BYTES_MAX expected bytes (read side by side)
            sent = client.messages
            expect = wire.GET_MANY_BYTES_MAX // 4
            got = await asyncio.gather(*(client.get(other, i, expect=expect) for i in range(8)))
            assert client.messages - sent == 2 and [bytes(g) for g in got] == [small[i] for i in range(8)]
            two = wire.join_headers([wire.encode_put(other, 1, 0), wire.encode_put(other, 2, 0)])
            for malformed in ([two, *wire.join_payloads([b"x"])],  # one payload for two headers
                              [two, wire.join_payloads([b"x", b"y"])[0], b"xyz"],  # sizes say 2 bytes, 3 came
                              [two, b"x", b"y"]):  # the old form: a frame per payload
                with pytest.raises(DataError) as malformed_many:
                    await client._call([wire.OP_PUT_MANY, *malformed], 5.0)
                assert malformed_many.value.status == wire.BAD_REQUEST
            await client.close()
        asyncio.run(main())
    finally:
        stop(proc)


def test_orphans_are_deleted_after_the_grace_period_and_committed_fragments_stay(tmp_path, meta):
    ports = free_ports(2)
    proc = start_data_node(tmp_path, meta, ports, extra=("--orphan-grace-seconds", "1",
                                                         "--orphan-interval-seconds", "0.3"))
    try:
        async def main():
            me = (await registered_nodes(meta, 1))[0].id
            client = meta.client()
            await client.command(create_bucket=meta_pb.CreateBucket(name="orphans", profile=meta_pb.ErasureProfile(k=2, m=1)))
            others = []
            for n in range(2):
                reply = await client.command(register_node=meta_pb.RegisterNode(node=meta_pb.Node(address=f"10.1.1.{n}:1")))
                others.append(reply.result.node_id)
            data = DataClient(f"127.0.0.1:{ports[1]}")
            committed, orphan = os.urandom(32), os.urandom(32)
            for chunk, index in ((committed, 0), (committed, 1), (orphan, 0)):
                await data.put(chunk, index, b"fragment", crc32c(b"fragment"))
            manifest = meta_pb.Manifest(head=meta_pb.ObjectHead(size=100, blake3=b"h" * 32),
                                        chunks=[meta_pb.ChunkRef(id=committed, length=100)])
            reply = await client.command(commit_put=meta_pb.CommitPut(
                bucket="orphans", key="k", manifest=manifest,
                placements=[meta_pb.Placement(chunk=committed, nodes=[me, *others])]))
            assert reply.code == meta_pb.OK, reply
            await client.close()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
                control = pb_grpc.DataStub(channel)
                ids = [pb.FragmentId(chunk=c, index=i) for c, i in ((committed, 0), (committed, 1), (orphan, 0))]
                for _ in range(100):
                    present = list((await control.Has(pb.HasRequest(fragments=ids))).present)
                    if present == [True, False, False]:
                        break
                    await asyncio.sleep(0.1)
                assert present == [True, False, False]  # (committed, 1) belongs to another node
            await data.close()
        asyncio.run(main())
    finally:
        stop(proc)


def test_touched_fragments_outlive_the_grace_and_the_node_tells_its_grace(tmp_path, meta):
    """A put in flight touches its fragments: the collector keeps them while the touches come,
    and deletes them once they stop. The node's record carries its grace for clients."""
    ports = free_ports(2)
    proc = start_data_node(tmp_path, meta, ports, extra=("--orphan-grace-seconds", "1",
                                                         "--orphan-interval-seconds", "0.2"))
    try:
        async def main():
            node = (await registered_nodes(meta, 1))[0]
            assert node.orphan_grace_seconds == 1.0
            data = DataClient(f"127.0.0.1:{ports[1]}")
            kept, dropped, never = (os.urandom(32), 0), (os.urandom(32), 3), (os.urandom(32), 1)
            for chunk, index in (kept, dropped):
                await data.put(chunk, index, b"fragment", crc32c(b"fragment"))
            loop = asyncio.get_running_loop()
            start = loop.time()
            while loop.time() - start < 3.0:  # three graces, touched every 0.25 s
                assert await data.touch([kept]) == [True]
                await asyncio.sleep(0.25)
            assert await data.touch([kept, never]) == [True, False]
            for _ in range(50):
                if await data.touch([dropped]) == [False]:
                    break
                await asyncio.sleep(0.1)
            assert await data.touch([kept, dropped]) == [True, False]
            with pytest.raises(ValueError, match="32-byte chunk id"):
                await data.touch([(b"short", 0)])
            await data.close()
        asyncio.run(main())
    finally:
        stop(proc)


_OPEN_AND_CLOSE_A_PLANE = """
import sys
from cluster.data.disks import DiskSet
from cluster.data.server import DataPlane
from cluster.dev import free_ports
disks = DiskSet([sys.argv[1]])
DataPlane(disks, f"127.0.0.1:{free_ports(1)[0]}").close()
"""


def test_a_data_plane_closes_without_crashing(tmp_path):
    # closing the proxy's sockets from another thread crashed zmq's reaper now and then
    crashes = []
    for attempt in range(20):
        done = subprocess.run([sys.executable, "-c", _OPEN_AND_CLOSE_A_PLANE, str(tmp_path / f"d{attempt}")],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            crashes.append((done.returncode, done.stderr[-500:]))
    assert not crashes, crashes


def test_a_batch_reply_refuses_what_would_pass_its_one_frame(tmp_path, monkeypatch):
    from cluster.data.disks import DiskSet
    from cluster.data.server import DataPlane

    plane = DataPlane.__new__(DataPlane)  # the request logic alone, without sockets or workers
    plane.disks = DiskSet([str(tmp_path)])
    chunk = b"c" * 32
    for index in range(3):
        plane.disks.put(chunk, index, bytes([index]) * 100)
    monkeypatch.setattr(wire, "JOINED_BYTES_MAX", 250)
    statuses, sizes, joined = plane._get_many([(chunk, index, 0, None) for index in range(3)])
    results = wire.decode_statuses(statuses, 3)
    assert [status for status, _ in results] == [wire.OK, wire.OK, wire.BAD_REQUEST]
    assert "get this fragment alone" in results[2][1]
    assert [bytes(p) for p in wire.split_payloads(sizes, joined, 3)] == [b"\0" * 100, b"\1" * 100, b""]
    plane.disks.close()
