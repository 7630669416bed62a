"""How gRPC's core polls its sockets in Cairn's processes. Imported by `cluster/__init__.py`,
so it runs before anything imports grpc: grpc reads its configuration once, at import.

gRPC's EventEngine reads and writes sockets on its own thread pool and hands each finished
operation to the thread that waits on the completion queue, which grpc.aio then hands to the
event loop. With the EventEngine's client and listener turned off, grpc's older I/O manager
polls the sockets on the thread that waits on the completion queue, which saves a thread switch
per message. On this 2-core VM switches are a large part of what a message costs, in time and
in CPU (`perf` puts much of the kernel's share of a Raft node's CPU in them);
ops/bench/raft.py shows the difference (see the README, session 13).

A process that sets GRPC_EXPERIMENTS itself (even to an empty value, which restores grpc's
defaults) keeps its own setting."""
from __future__ import annotations

import os

GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def configure(environ=os.environ) -> str:
    """Sets grpc's experiments for this process unless the environment already names some;
    returns the setting in effect. Has no effect on a grpc that was imported before."""
    return environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
