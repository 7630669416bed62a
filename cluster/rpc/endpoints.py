"""How Cairn opens gRPC channels and servers: two of gRPC's defaults do not suit a cluster.

- By default gRPC shares connections (subchannels) between every channel of a process that names
  the same address, and with them a failed connection's reconnect backoff: a new channel to a
  server that was down a moment ago then fails at once with the old "connection refused", for up
  to gRPC's maximum backoff of two minutes, although the server is back. Cairn opens a new
  channel precisely when it wants a fresh attempt (a Raft peer's sender reconnecting, a client
  trying another node), so its channels keep their connections to themselves.
- By default a gRPC server binds with SO_REUSEPORT, so a second server on a port already in use
  starts without complaint and the kernel splits the connections between the two: two nodes
  given the same port would each answer part of the calls. Cairn's servers bind the port alone,
  and a taken port fails at start.
"""
from __future__ import annotations

import grpc

OWN_CONNECTIONS = ("grpc.use_local_subchannel_pool", 1)
EXCLUSIVE_PORT = ("grpc.so_reuseport", 0)


def insecure_channel(address: str, options=()) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[*options, OWN_CONNECTIONS])


def server(options=()) -> grpc.aio.Server:
    return grpc.aio.server(options=[*options, EXCLUSIVE_PORT])


def listen(server: grpc.aio.Server, address: str) -> None:
    """Binds `address`, or raises OSError naming it (taken by another process, or not ours)."""
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:  # what grpc raises for a port it cannot bind
        raise OSError(f"cannot listen on {address}: {error}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}")
