"""Cairn: a distributed, content-addressed, erasure-coded storage cluster."""

from cluster.rpc import polling as _polling

__version__ = "0.1.0"

_polling.configure()  # before anything imports grpc (see cluster/rpc/polling.py)


def connect(addresses, **options):
    """A blocking client of a Cairn cluster (see cluster.client)."""
    from cluster.client import connect as connect_client

    return connect_client(addresses, **options)


def connect_async(addresses, **options):
    """An asyncio client of a Cairn cluster (see cluster.client)."""
    from cluster.client import connect_async as connect_client

    return connect_client(addresses, **options)
