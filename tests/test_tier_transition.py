"""The upload half of a transition (cluster/tier/transition.py): fragments from in-memory data
nodes (the injected transport), the bucket a real moto S3 server process."""
import asyncio
import os

import blake3
import boto3
import pytest

from cluster.client.errors import NotEnoughFragmentsError
from cluster.client.fragments import Fragments
from cluster.codec import ReedSolomon
from cluster.proto import meta_pb2 as pb
from cluster.tier.store import ColdStore
from cluster.tier.targets import TierTarget
from cluster.tier.transition import upload_chunk
from tests.s3_server import S3Server
from tests.test_data_repairs import MemoryNodes


@pytest.fixture(scope="module")
def store():
    server = S3Server().start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIER_ACCESS_KEY_ID", "testing")
        patch.setenv("TIER_SECRET_ACCESS_KEY", "testing")
        boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="cold")
        yield ColdStore(TierTarget("cloud", server.url, "cold", credentials="env:TIER"))
    server.stop()


def stored_chunk(nodes: MemoryNodes, lost=()):
    data = os.urandom(300_000)
    chunk_id = blake3.blake3(data).digest()
    for index, fragment in enumerate(ReedSolomon(2, 2).encode_chunk(data)):
        if index not in lost:
            nodes.stores.setdefault(f"a{index + 1}", {})[(chunk_id, index)] = bytes(fragment)
    chunk = pb.Chunk(length=len(data), profile=pb.ErasureProfile(k=2, m=2), nodes=[1, 2, 3, 4], state=pb.HOT)
    return chunk_id, chunk, data


def fragments_over(nodes: MemoryNodes) -> Fragments:
    fragments = Fragments(meta=None, connect=nodes.connect)
    fragments.learn(pb.Node(id=n, data_address=f"a{n}") for n in range(1, 5))
    return fragments


def test_a_hot_chunk_is_rebuilt_from_any_k_fragments_and_uploaded_once(store):
    nodes = MemoryNodes()
    chunk_id, chunk, data = stored_chunk(nodes, lost=(0,))  # one data fragment gone: decoded from parity
    fragments = fragments_over(nodes)
    assert asyncio.run(upload_chunk(fragments, store, chunk_id, chunk)) is True
    assert asyncio.run(upload_chunk(fragments, store, chunk_id, chunk)) is False  # there already
    assert store.get(chunk_id) == data


def test_nothing_is_uploaded_when_the_chunk_cannot_be_read_whole(store):
    nodes = MemoryNodes()
    chunk_id, chunk, _ = stored_chunk(nodes, lost=(0, 1, 2))
    with pytest.raises(NotEnoughFragmentsError):
        asyncio.run(upload_chunk(fragments_over(nodes), store, chunk_id, chunk))
    assert not store.exists(chunk_id)
    cold = pb.Chunk(length=1, profile=pb.ErasureProfile(k=2, m=2), state=pb.COLD, tier="cloud")
    with pytest.raises(ValueError, match="not hot"):
        asyncio.run(upload_chunk(fragments_over(nodes), store, chunk_id, cold))
