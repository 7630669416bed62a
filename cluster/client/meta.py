"""The client side of the Meta API: finds the leader from any meta address, follows it when it
moves, multiplexes every caller's operations on one stream per node, and retries what is safe to
retry (reads, leader-local answers, and commands, which carry an op id so they apply once).

`MetaClient.call(op)` returns the MetaReply; codes other than OK stay in the reply for the caller
to turn into its own errors. Only when no leader answers within `timeout` does it raise
ClusterUnavailable.
"""
from __future__ import annotations

import asyncio
import os
import random
import time

import grpc

from cluster.client.errors import ClusterUnavailable
from cluster.proto import meta_pb2 as pb
from cluster.proto import meta_pb2_grpc as pb_grpc
from cluster.rpc.endpoints import insecure_channel
from cluster.rpc.mux import StreamBroken, StreamMux

CALL_SECONDS = 10.0
TIMEOUT_SECONDS = 30.0
BACKOFF_SECONDS = (0.02, 0.5)
MESSAGE_BYTES_MAX = 64 << 20
_OPTIONS = [("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)]


class MetaClient:
    """`transport(address)` gives an object with `call(op, timeout)` and `close()` (by default a
    gRPC stream multiplexer to that node; the simulator passes its own network), `clock` the
    time deadlines are measured on."""

    def __init__(self, addresses: list[str], timeout: float = TIMEOUT_SECONDS, rng: random.Random | None = None,
                 transport=None, clock=time.monotonic):
        if not addresses:
            raise ValueError("at least one meta address is needed")
        self.addresses = list(addresses)
        self.timeout = timeout
        self.leader = self.addresses[0]
        self._rng = rng or random.Random()
        self._transport = transport or self._grpc_mux
        self._clock = clock
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._muxes: dict[str, StreamMux] = {}
        self.retries = 0  # attempts beyond the first, for diagnostics

    def _mux(self, address: str):
        mux = self._muxes.get(address)
        if mux is None:
            mux = self._muxes[address] = self._transport(address)
        return mux

    def _grpc_mux(self, address: str) -> StreamMux:
        channel = self._channels[address] = insecure_channel(address, options=_OPTIONS)
        return StreamMux(pb_grpc.MetaStub(channel).Pipeline, pb.MetaOps, "ops", "replies")

    async def close(self) -> None:
        for mux in self._muxes.values():
            await mux.close()
        for channel in self._channels.values():
            await channel.close()
        self._muxes.clear()
        self._channels.clear()

    async def command(self, **command) -> pb.MetaReply:
        """Proposes a command (one field of MetaCommand) under a fresh op id."""
        return await self.call(pb.MetaOp(command=pb.MetaCommand(op_id=os.urandom(16), **command)))

    async def call(self, op: pb.MetaOp) -> pb.MetaReply:
        deadline = self._clock() + self.timeout
        delay, last = BACKOFF_SECONDS[0], "no attempt"
        while True:
            address = self.leader
            try:
                reply = await self._mux(address).call(op, CALL_SECONDS)
            except (StreamBroken, asyncio.TimeoutError, grpc.aio.AioRpcError) as error:
                reply, last = None, f"{address}: {type(error).__name__}: {error}"
            if reply is not None and reply.code not in (pb.NOT_LEADER, pb.UNAVAILABLE):
                return reply
            if reply is not None:
                last = f"{address}: {pb.Code.Name(reply.code)} {reply.message}"
                if reply.leader_address and reply.leader_address != address:
                    self.leader = reply.leader_address  # follow the hint at once
                    self.retries += 1
                    continue
            if reply is None or reply.code == pb.NOT_LEADER:
                others = [a for a in self.addresses if a != address] or self.addresses
                self.leader = self._rng.choice(others)
            self.retries += 1
            if self._clock() + delay > deadline:
                raise ClusterUnavailable(f"no metadata leader answered in {self.timeout:.0f} s (last: {last})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_SECONDS[1])
