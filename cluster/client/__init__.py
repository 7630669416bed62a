"""Cairn's Python client.

    import cluster
    with cluster.connect(["127.0.0.1:7400"]) as client:    # blocking
        client.put("bucket", "key", b"bytes or a path or a stream")

    client = cluster.connect_async([...])                    # asyncio, the same calls awaited
"""
from cluster.client.errors import (BucketExists, BucketNotEmpty, CairnError, ClusterUnavailable,
                                   CorruptObject, InvalidArgument, NoSuchBucket, NoSuchKey,
                                   NotEnoughFragmentsError, NotEnoughNodes, QuotaExceeded, Refused,
                                   TierUnavailable)
from cluster.client.objects import AsyncClient
from cluster.client.sync import Client

__all__ = ["AsyncClient", "BucketExists", "BucketNotEmpty", "CairnError", "Client", "ClusterUnavailable",
           "CorruptObject", "InvalidArgument", "NoSuchBucket", "NoSuchKey", "NotEnoughFragmentsError",
           "NotEnoughNodes", "QuotaExceeded", "Refused", "TierUnavailable", "connect", "connect_async"]


def connect(addresses, **options) -> Client:
    """A blocking client of the cluster whose meta nodes include `addresses` (a list, or one
    comma-separated string); options as for AsyncClient."""
    return Client(_addresses(addresses), **options)


def connect_async(addresses, **options) -> AsyncClient:
    """An asyncio client; create it inside the event loop that will use it."""
    return AsyncClient(_addresses(addresses), **options)


def _addresses(addresses) -> list[str]:
    if isinstance(addresses, str):
        addresses = addresses.split(",")
    addresses = [a.strip() for a in addresses if a.strip()]
    if not addresses:
        raise InvalidArgument("give at least one meta address (HOST:PORT)")
    return addresses
