"""Three real meta processes on 127.0.0.1: the Meta API end to end, a follower pointing at the
leader, and commits from concurrent clients while the leader is killed: every acknowledged commit
survives on the new leader, and nothing is half-applied."""
import asyncio
import os
import subprocess
import sys

import blake3
import pytest

from cluster.client.meta import MetaClient
from cluster.proto import meta_pb2 as pb
from cluster.rpc.mux import StreamBroken
from tests.test_raft_server import Cluster


class MetaCluster(Cluster):
    """The Raft test cluster's process handling, running meta nodes."""

    def start(self, node_id):
        log = open(self.tmp_path / f"meta{node_id}.log", "ab")
        self.processes[node_id] = subprocess.Popen(
            [sys.executable, "-m", "cluster.meta.server", "--id", str(node_id), "--data",
             str(self.tmp_path / f"m{node_id}"), "--listen", self.addresses[node_id], "--peers", self.peers,
             "--tick-seconds", "0.02", "--snapshot-entries", "200",
             # the data nodes these tests register are records that never heartbeat
             "--suspect-after-seconds", "1e9", "--dead-after-seconds", "2e9"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def client(self, **kwargs):
        return MetaClient(list(self.addresses.values()), **kwargs)


@pytest.fixture
def cluster(tmp_path):
    c = MetaCluster(tmp_path)
    for node_id in (1, 2, 3):
        c.start(node_id)
    yield c
    c.stop_all()


async def setup_bucket(client, nodes=6):
    reply = await client.command(create_bucket=pb.CreateBucket(name="data", profile=pb.ErasureProfile(k=4, m=2),
                                                               inline_max_bytes=4096))
    assert reply.code == pb.OK, reply
    for n in range(nodes):
        node = pb.Node(address=f"10.0.0.{n}:7000", labels={"host": f"h{n}"},
                       disks=[pb.Disk(path="/d", capacity_bytes=1 << 40, free_bytes=1 << 40, healthy=True)])
        reply = await client.command(register_node=pb.RegisterNode(node=node))
        assert reply.code == pb.OK and reply.result.node_id == n + 1


def chunks_of(name: str, count: int = 4):
    return [pb.ChunkRef(id=blake3.blake3(b"%s/%d" % (name.encode(), i)).digest(), length=1000 + i)
            for i in range(count)]


async def put_object(client, key: str, chunks):
    """BeginPut then CommitPut, as the client library does (fragment upload left out)."""
    begin = await client.call(pb.MetaOp(begin_put=pb.BeginPut(bucket="data", chunks=chunks, seed=key.encode())))
    assert begin.code == pb.OK, begin
    manifest = pb.Manifest(head=pb.ObjectHead(size=sum(c.length for c in chunks), blake3=b"h" * 32), chunks=chunks)
    op = pb.MetaOp(command=pb.MetaCommand(op_id=os.urandom(16), commit_put=pb.CommitPut(
        bucket="data", key=key, manifest=manifest, placements=begin.begin_put.placements)))
    return begin, await client.call(op)


def test_the_meta_api_end_to_end(cluster):
    async def main():
        client = cluster.client()
        try:
            await setup_bucket(client)
            shared = chunks_of("shared", 2)
            begin, commit = await put_object(client, "dir/a", shared)
            assert list(begin.begin_put.exists) == [False, False] and commit.code == pb.OK
            placement = begin.begin_put.placements[0].nodes
            assert len(placement) == 6 and len(set(placement)) == 6
            begin, commit = await put_object(client, "dir/b", shared)  # dedup: nothing to place
            assert list(begin.begin_put.exists) == [True, True] and not begin.begin_put.placements
            got = await client.call(pb.MetaOp(get_object=pb.GetObject(bucket="data", key="dir/a", with_chunks=True)))
            assert got.code == pb.OK and [c.refs for c in got.get_object.chunks] == [2, 2]
            assert len(got.get_object.nodes) == 6 and got.get_object.nodes_version != 0
            # a client whose node table is current gets the placements without the records
            version = (await client.call(pb.MetaOp(list_nodes=pb.ListNodes()))).list_nodes.nodes_version
            assert version == got.get_object.nodes_version
            again = await client.call(pb.MetaOp(get_object=pb.GetObject(bucket="data", key="dir/a", with_chunks=True,
                                                                        nodes_version=version)))
            assert not again.get_object.nodes and again.get_object.chunks == got.get_object.chunks
            stale = await client.call(pb.MetaOp(get_object=pb.GetObject(bucket="data", key="dir/a", with_chunks=True,
                                                                        nodes_version=version + 1)))
            assert len(stale.get_object.nodes) == 6
            listing = await client.call(pb.MetaOp(list_objects=pb.ListObjects(bucket="data", delimiter="/")))
            assert list(listing.list_objects.common_prefixes) == ["dir/"]
            copy = await client.command(copy_object=pb.CopyObject(bucket="data", key="c", source_bucket="data",
                                                                  source_key="dir/a"))
            assert copy.code == pb.OK
            deleted = await client.command(delete_object=pb.DeleteObject(bucket="data", key="dir/a"))
            assert deleted.code == pb.OK
            missing = await client.call(pb.MetaOp(get_object=pb.GetObject(bucket="data", key="dir/a")))
            assert missing.code == pb.NO_SUCH_KEY
            bad = await client.call(pb.MetaOp(begin_put=pb.BeginPut(bucket="data", chunks=[pb.ChunkRef(id=b"x")])))
            assert bad.code == pb.INVALID_ARGUMENT and "32 bytes" in bad.message
            nodes = await client.call(pb.MetaOp(list_nodes=pb.ListNodes()))
            assert len(nodes.list_nodes.nodes) == 6
            beat = await client.call(pb.MetaOp(heartbeat=pb.Heartbeat(id=99)))
            assert beat.code == pb.UNKNOWN_NODE
            # a follower sends clients to the leader
            follower = next(a for a in cluster.addresses.values() if a != client.leader)
            direct = MetaClient([follower])
            # (on a loaded machine an election may have moved leadership meanwhile, and a
            # follower names nobody until it hears from the new leader: ask until it names one)
            for _ in range(300):
                reply = await direct._mux(follower).call(pb.MetaOp(command=pb.MetaCommand(
                    create_bucket=pb.CreateBucket(name="other", profile=pb.ErasureProfile(k=1)))), 5.0)
                if reply.code != pb.NOT_LEADER or reply.leader_address:
                    break
                await asyncio.sleep(0.1)
            assert reply.code == pb.NOT_LEADER
            assert reply.leader_address in cluster.addresses.values() and reply.leader_address != follower
            begin = await direct._mux(follower).call(pb.MetaOp(begin_put=pb.BeginPut(bucket="data")), 5.0)
            assert begin.code == pb.NOT_LEADER
            stale = await direct._mux(follower).call(
                pb.MetaOp(get_object=pb.GetObject(bucket="data", key="c", stale=True)), 5.0)
            assert stale.code in (pb.OK, pb.NO_SUCH_KEY)  # a follower's own (maybe lagging) state
            await direct.close()
        finally:
            await client.close()
    asyncio.run(main())


def test_commits_survive_a_leader_kill_and_nothing_is_half_applied(cluster):
    async def main():
        client = cluster.client()
        await setup_bucket(client)
        acknowledged, attempted = set(), set()

        async def writer(w):
            c = cluster.client(timeout=60)
            try:
                for i in range(40):
                    key = f"w{w}/{i}"
                    attempted.add(key)
                    _, commit = await put_object(c, key, chunks_of(key) + chunks_of("common", 1))
                    assert commit.code == pb.OK, commit
                    acknowledged.add(key)
            finally:
                await c.close()

        writers = [asyncio.ensure_future(writer(w)) for w in range(8)]
        while len(acknowledged) < 60:
            await asyncio.sleep(0.02)
        leader_id = next(n for n, a in cluster.addresses.items() if a == client.leader)
        cluster.kill(leader_id)
        await asyncio.gather(*writers)
        cluster.start(leader_id)

        keys, token = [], ""
        while True:
            page = await client.call(pb.MetaOp(list_objects=pb.ListObjects(bucket="data", start_after=token,
                                                                           max_keys=100)))
            assert page.code == pb.OK, page
            keys += [e.key for e in page.list_objects.entries]
            token = page.list_objects.next
            if not token:
                break
        assert acknowledged <= set(keys) <= attempted
        assert len(acknowledged) == 8 * 40
        # every present object is whole: its chunks are recorded with exact reference counts
        common = chunks_of("common", 1)[0].id
        got = await client.call(pb.MetaOp(get_object=pb.GetObject(bucket="data", key="w0/0", with_chunks=True)))
        refs = dict(zip(got.get_object.chunk_ids, (c.refs for c in got.get_object.chunks)))
        assert refs[common] == len(keys)
        # the restarted node catches up (by a snapshot, a RocksDB checkpoint, when the others
        # compacted their logs past it) and serves the same state from its own disk
        restarted = MetaClient([cluster.addresses[leader_id]])
        newest = sorted(acknowledged)[-1]
        for _ in range(300):
            try:
                stale = await restarted._mux(cluster.addresses[leader_id]).call(
                    pb.MetaOp(get_object=pb.GetObject(bucket="data", key=newest, stale=True, with_chunks=True)), 5.0)
            except StreamBroken:  # still starting
                stale = None
            if stale is not None and stale.code == pb.OK:
                break
            await asyncio.sleep(0.1)
        assert stale.code == pb.OK, stale
        await restarted.close()
        await client.close()
    asyncio.run(main())


def test_the_meta_node_command_takes_a_snapshot_size(monkeypatch, capsys):
    """--snapshot-mb reaches the node as bytes (default: the driver's SNAPSHOT_BYTES); a size of
    zero is refused before anything starts."""
    from cluster.meta import server
    from cluster.raft.driver import SNAPSHOT_BYTES

    flags = ["--id", "1", "--data", "/nonexistent", "--listen", "127.0.0.1:1", "--peers", "1=127.0.0.1:1"]
    with pytest.raises(SystemExit):
        server.main([*flags, "--snapshot-mb", "0"])
    assert "--snapshot-mb positive" in capsys.readouterr().err
    given = []
    monkeypatch.setattr(server, "MetaNode", lambda *args: given.append(args))
    monkeypatch.setattr(server, "run_node", lambda args, start: start())
    server.main([*flags, "--snapshot-mb", "0.5"])
    server.main(flags)
    assert [args[-1] for args in given] == [1 << 19, SNAPSHOT_BYTES]
