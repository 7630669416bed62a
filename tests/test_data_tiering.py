"""A data node's tier executor (cluster/data/tiering.py): the limits on a batch, and orders run
through the real fragment reader over in-memory data nodes (the injected transport) against a
real moto S3 server process. Real processes run the whole tier in tests/test_tier_cluster.py."""
import asyncio
import os
import time

import blake3
import boto3
import pytest

from cluster.client.fragments import Fragments
from cluster.codec import ReedSolomon
from cluster.data import tiering
from cluster.proto import data_pb2 as pb
from cluster.proto import meta_pb2 as meta_pb
from cluster.tier.store import ColdStore, CorruptRemote, TierError
from cluster.tier.targets import TierTarget
from tests.s3_server import S3Server
from tests.test_data_repairs import MemoryNodes

K, M = 2, 2
NODES = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def server():
    server = S3Server().start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIER_ACCESS_KEY_ID", "testing")
        patch.setenv("TIER_SECRET_ACCESS_KEY", "testing")
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="cold")
        yield server
    server.stop()


class Meta:
    """The leader's ListTierTargets, as a MetaClient answers it."""

    def __init__(self, *targets):
        self.targets, self.calls = list(targets), 0

    async def call(self, op):
        self.calls += 1
        return meta_pb.MetaReply(list_tier_targets=meta_pb.ListTierTargetsReply(targets=self.targets))


def record(server, name="cloud", **fields) -> meta_pb.TierTarget:
    return meta_pb.TierTarget(name=name, url=server.url, bucket="cold", **{"credentials": "env:TIER", **fields})


def order(kind, chunk_id, length, **fields) -> pb.TierOrder:
    fields = {"target": "cloud", **fields}
    return pb.TierOrder(kind=kind, chunk=chunk_id, length=length, k=K, m=M, nodes=NODES,
                        data_addresses=[f"a{n}" for n in NODES], **fields)


def stored_chunk(nodes: MemoryNodes, lost=(), size=300_000):
    data = os.urandom(size)
    chunk_id = blake3.blake3(data).digest()
    for index, fragment in enumerate(ReedSolomon(K, M).encode_chunk(data)):
        if index not in lost:
            nodes.stores.setdefault(f"a{index + 1}", {})[(chunk_id, index)] = bytes(fragment)
    return chunk_id, data


def executor(server, nodes: MemoryNodes) -> tiering.TierExecutor:
    return tiering.TierExecutor(Fragments(meta=None, connect=nodes.connect), tiering.TierStores(Meta(record(server))))


def test_a_batch_out_of_limits_or_with_a_bad_order_is_refused_whole():
    good = order(pb.TierOrder.UPLOAD, os.urandom(32), 1000)
    tiering.check_request(pb.TierRequest(orders=[good]))
    cases = [
        (pb.TierRequest(), "0 orders"),
        (pb.TierRequest(orders=[good] * (tiering.ORDERS_PER_CALL_MAX + 1)), "orders in one call"),
        (pb.TierRequest(orders=[order(pb.TierOrder.UPLOAD, os.urandom(32), 60 << 20)] * 5), "chunk bytes in one call"),
        (pb.TierRequest(orders=[good, order(pb.TierOrder.UPLOAD, b"short", 1000)]), "order 1: a chunk id is 32 bytes"),
        (pb.TierRequest(orders=[order(pb.TierOrder.REHEAT, os.urandom(32), 0)]), "bad chunk length"),
        (pb.TierRequest(orders=[order(pb.TierOrder.UPLOAD, os.urandom(32), 9, target="")]), "no tier target"),
        (pb.TierRequest(orders=[pb.TierOrder(kind=pb.TierOrder.REHEAT, chunk=os.urandom(32), length=9, k=2, m=2,
                                             nodes=[1, 1, 2, 3], data_addresses=["a"] * 4, target="t")]), "distinct"),
    ]
    for request, message in cases:
        with pytest.raises(ValueError, match=message):
            tiering.check_request(request)
    tiering.check_request(pb.TierRequest(orders=[pb.TierOrder(kind=pb.TierOrder.DELETE, chunk=os.urandom(32),
                                                              target="cloud")]))
    with pytest.raises(ValueError, match="chunk length"):
        tiering.check_recall(pb.RecallRequest(chunk=os.urandom(32), length=(64 << 20) + 1, target="cloud"))


def test_upload_reheat_and_delete_each_succeed_or_fail_alone(server):
    nodes = MemoryNodes()
    chunk_id, data = stored_chunk(nodes, lost=(0,))  # a data fragment gone: decoded from parity
    broken_id, _ = stored_chunk(nodes, lost=(0, 1, 2))  # fewer than k: nothing may go up
    run = executor(server, nodes)
    reply = asyncio.run(run.run(pb.TierRequest(orders=[order(pb.TierOrder.UPLOAD, chunk_id, len(data)),
                                                       order(pb.TierOrder.UPLOAD, broken_id, 300_000)])))
    assert [(o.ok, o.sent) for o in reply.outcomes] == [(True, True), (False, False)]
    assert "NotEnoughFragments" in reply.outcomes[1].error
    store = ColdStore(TierTarget("cloud", server.url, "cold", credentials="env:TIER"))
    assert store.get(chunk_id) == data and not store.exists(broken_id)
    again = asyncio.run(run.run(pb.TierRequest(orders=[order(pb.TierOrder.UPLOAD, chunk_id, len(data))])))
    assert [(o.ok, o.sent) for o in again.outcomes] == [(True, False)]  # there already: not sent twice

    for fragments in nodes.stores.values():  # every fragment gone: re-heat from the tier
        fragments.clear()
    reply = asyncio.run(run.run(pb.TierRequest(orders=[order(pb.TierOrder.REHEAT, chunk_id, len(data))])))
    assert reply.outcomes[0].ok
    fragments = [nodes.stores[f"a{n}"][(chunk_id, n - 1)] for n in NODES]
    assert bytes(ReedSolomon(K, M).decode_chunk({2: fragments[2], 3: fragments[3]}, len(data))) == data

    late = order(pb.TierOrder.DELETE, chunk_id, 0, not_after_ms=int((time.time() - 1) * 1000))
    reply = asyncio.run(run.run(pb.TierRequest(orders=[late])))
    assert not reply.outcomes[0].ok and "too late" in reply.outcomes[0].error and store.exists(chunk_id)
    timely = order(pb.TierOrder.DELETE, chunk_id, 0, not_after_ms=int((time.time() + 60) * 1000))
    assert asyncio.run(run.run(pb.TierRequest(orders=[timely]))).outcomes[0].ok
    assert not store.exists(chunk_id)


def test_a_recall_returns_only_verified_bytes(server):
    nodes = MemoryNodes()
    chunk_id, data = stored_chunk(nodes)
    store = ColdStore(TierTarget("cloud", server.url, "cold", credentials="env:TIER"))
    store.put(chunk_id, data)
    run = executor(server, nodes)
    assert asyncio.run(run.recall(chunk_id, len(data), "cloud")) == data and run.recalls == 1
    with pytest.raises(CorruptRemote):
        asyncio.run(run.recall(chunk_id, len(data) + 1, "cloud"))  # a record that lies about the length
    store.client.put_object(Bucket="cold", Key=store.target.chunk_key(chunk_id), Body=data[:-1] + b"!")
    with pytest.raises(CorruptRemote, match="does not match"):
        asyncio.run(run.recall(chunk_id, len(data), "cloud"))
    with pytest.raises(TierError, match="no tier target 'elsewhere'"):
        asyncio.run(run.recall(chunk_id, len(data), "elsewhere"))


def test_tier_targets_are_looked_up_through_the_leader_and_refreshed(server, monkeypatch):
    now = [0.0]
    meta = Meta(record(server))
    stores = tiering.TierStores(meta, clock=lambda: now[0], ttl=30)
    first = asyncio.run(stores.get("cloud"))
    assert asyncio.run(stores.get("cloud")) is first and meta.calls == 1  # cached
    meta.targets = [record(server, prefix="moved")]
    now[0] = 31.0
    moved = asyncio.run(stores.get("cloud"))
    assert moved is not first and moved.target.prefix == "moved" and meta.calls == 2
    meta.targets = [record(server, prefix="moved"), record(server, name="other", credentials="env:NOT_SET")]
    with pytest.raises(TierError, match="not usable here: credentials env:NOT_SET"):
        asyncio.run(stores.get("other"))
    now[0] = 62.0
    assert asyncio.run(stores.get("cloud")) is moved  # a target this node cannot use breaks no other
