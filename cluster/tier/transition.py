"""The first half of a transition, run where the fragments are read: rebuild a hot chunk from
any k fragments (checked against its BLAKE3 by Fragments.read), and upload it to the tier under
its content address (ColdStore.put checks the name again, the bucket checks the MD5 of what
arrived). Only after this returns may the leader record the chunk COLD (TransitionChunk); its
fragments are deleted after that, by the orphan collectors. So a crash at any step leaves the
hot copy, or the hot copy and a verified cold copy, or the cold copy: never neither.
"""
from __future__ import annotations

import asyncio

from cluster.client.fragments import Fragments
from cluster.proto import meta_pb2 as pb
from cluster.tier.store import ColdStore


async def upload_chunk(fragments: Fragments, store: ColdStore, chunk_id: bytes, chunk: pb.Chunk,
                       offload=asyncio.to_thread) -> bool:
    """Puts a hot chunk's bytes in the tier; True if they were sent, False if the tier had them."""
    if chunk.state != pb.HOT or len(chunk.nodes) != chunk.profile.k + chunk.profile.m:
        raise ValueError(f"chunk {chunk_id.hex()[:16]} is not hot on k+m nodes: nothing to upload")
    data = await fragments.read(chunk_id, chunk.length, chunk)
    return await offload(store.put, chunk_id, data)
