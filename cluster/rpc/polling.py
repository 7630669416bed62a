"""How gRPC's core polls its sockets in Cairn's processes. Imported by `cluster/__init__.py`,
so it runs before anything imports grpc: grpc reads its configuration once, at import.

gRPC's EventEngine (the default since 1.6x) reads and writes sockets on its own thread pool and
hands every finished operation to the thread that waits on the completion queue, which grpc.aio
then hands to the event loop: two thread switches per message before Python sees it. With the
EventEngine client and listener turned off, the thread that waits on the completion queue polls
the sockets itself, one switch fewer. On a 2-core VM a one-message round trip between two
processes took about 150 µs with the EventEngine and 80 µs without, and each switch costs CPU
as well as time (ops/bench/raft.py shows both; see the README).

A process that sets GRPC_EXPERIMENTS itself (even to an empty value, which restores grpc's
defaults) keeps its own setting."""
from __future__ import annotations

import os

GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def configure(environ=os.environ) -> str:
    """Sets grpc's experiments for this process unless the environment already names some;
    returns the setting in effect. Has no effect on a grpc that was imported before."""
    return environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
