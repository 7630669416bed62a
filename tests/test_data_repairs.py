"""A data node's repair executor (cluster/data/repairs.py): the limits on a batch, and a batch run
through the real fragment reader over in-memory data nodes (the transport is injected, as the
cluster simulator does). Real processes repair in tests/test_meta_duties.py."""
import asyncio
import os

import blake3
import pytest

from cluster.codec import ReedSolomon
from cluster.data import repairs
from cluster.data.wire import NOT_FOUND, DataError
from cluster.client.fragments import Fragments
from cluster.proto import data_pb2 as pb

K, M = 2, 2


class MemoryNodes:
    """Data nodes as dicts: address -> {(chunk, index): bytes}."""

    def __init__(self):
        self.stores: dict[str, dict] = {}

    def connect(self, address: str):
        store = self.stores.setdefault(address, {})

        class Client:
            async def get(self, chunk_id, index, offset=0, length=None, timeout=None, expect=None):
                if (chunk_id, index) not in store:
                    raise DataError(NOT_FOUND, "no such fragment")
                return store[(chunk_id, index)]

            async def put(self, chunk_id, index, data, crc, timeout=None):
                store[(chunk_id, index)] = bytes(data)

            async def close(self):
                pass
        return Client()


def order(chunk_id: bytes, length: int, lost=(1,), targets=(5,), **fields) -> pb.RepairOrder:
    return pb.RepairOrder(chunk=chunk_id, length=length, k=K, m=M, nodes=[1, 2, 3, 4],
                          data_addresses=["a1", "a2", "a3", "a4"], lost=list(lost), targets=list(targets),
                          target_addresses=[f"a{t}" for t in targets], **fields)


def test_a_batch_out_of_limits_or_with_a_bad_order_is_refused_whole():
    good = order(os.urandom(32), 1000)
    repairs.check_request(pb.RepairRequest(orders=[good]))
    cases = [
        (pb.RepairRequest(), "0 orders"),
        (pb.RepairRequest(orders=[good] * (repairs.ORDERS_PER_CALL_MAX + 1)), "orders in one call"),
        (pb.RepairRequest(orders=[order(os.urandom(32), 200 << 20)] * 2), "chunk bytes in one call"),
        (pb.RepairRequest(orders=[good, order(b"short", 1000)]), "order 1: a chunk id is 32 bytes"),
        (pb.RepairRequest(orders=[order(os.urandom(32), 1000, lost=(1, 2, 3), targets=(5, 6, 7))]), "at most 2"),
        (pb.RepairRequest(orders=[order(os.urandom(32), 1000, targets=())]), "one target node"),
        (pb.RepairRequest(orders=[order(os.urandom(32), 1000, avoid=[9])]), "bad indexes to avoid"),
        (pb.RepairRequest(orders=[order(os.urandom(32), 0)]), "bad chunk length"),
    ]
    for request, message in cases:
        with pytest.raises(ValueError, match=message):
            repairs.check_request(request)


def test_a_batch_rebuilds_each_chunk_here_or_elsewhere_and_fails_each_order_alone():
    nodes = MemoryNodes()
    codec = ReedSolomon(K, M)
    chunks = {}
    for n in range(3):
        data = os.urandom(50_000 + n)
        chunk_id = blake3.blake3(data).digest()
        chunks[chunk_id] = data
        for index, fragment in enumerate(codec.encode_chunk(data)):
            if index != 1:  # fragment 1 lives on the dead node 2
                nodes.stores.setdefault(f"a{index + 1}", {})[(chunk_id, index)] = bytes(fragment)
    ids = list(chunks)
    stored_here = []

    async def store_local(items):
        stored_here.extend(items)
        return [None] * len(items)

    async def run():
        executor = repairs.RepairExecutor(Fragments(meta=None, connect=nodes.connect), lambda: 5, store_local)
        request = pb.RepairRequest(orders=[
            order(ids[0], len(chunks[ids[0]]), targets=(5,)),         # rebuilt here
            order(ids[1], len(chunks[ids[1]]), targets=(6,)),         # rebuilt and sent to node 6
            order(blake3.blake3(b"other").digest(), len(chunks[ids[2]]), targets=(6,)),  # nothing decodes to it
        ])
        repairs.check_request(request)
        return await executor.run(request)
    reply = asyncio.run(run())
    assert [o.ok for o in reply.outcomes] == [True, True, False]
    assert [o.fragments_read for o in reply.outcomes[:2]] == [K, K]
    expected = [bytes(codec.encode_chunk(chunks[i])[1]) for i in ids[:2]]
    assert [(c, i, bytes(f)) for c, i, f, _ in stored_here] == [(ids[0], 1, expected[0])]
    assert nodes.stores["a6"] == {(ids[1], 1): expected[1]}  # and nothing for the chunk that failed
    assert reply.outcomes[1].bytes_written == len(expected[1])
