"""The load generator of ops/bench/raft.py: closed-loop clients on grpc.aio, the same for both systems.

    python ops/bench/raft_load.py --system cairn|etcd --op put|get --targets H:P,H:P,H:P
        --clients N [--start EPOCH] --warmup S --duration S --latencies FILE [--leader H:P]
        [--etcd-stubs DIR] [--client-base ID] [--seed N]

raft.py starts one (or more) of these per measurement point. Each of the N clients does one
operation after another: a put of a 256-byte value or a linearizable get, on a key drawn
uniformly from a fixed space. At the wall-clock time --start (or, without it, at the time read
from stdin after the process printed "ready" once connected) the clients begin; operations
that complete between start+warmup and start+warmup+duration count. The process prints one
JSON line (operations counted, retries, its own CPU seconds in the window, operations still
unanswered DRAIN_SECONDS after the window) and saves the latencies (seconds) of the counted
operations to --latencies as a numpy array, with those unanswered ones at the time they had
waited (a lower bound) so that a stall shows in the percentiles.

Cairn clients go to the leader and follow `leader_address` when a node is not (with a short
backoff when no leader is known); each has its own session (client_id, sequence from 1), and a
retry repeats the sequence so the session table applies it once. etcd clients go to the given
targets (etcd forwards to its leader) and retry on another member after an error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # first: `cluster` is the package, not ops/bench/cluster.py
from cluster.rpc.mux import StreamBroken  # noqa: E402

KEYS = 10_000
VALUE_BYTES = 256
RPC_SECONDS = 5.0
BACKOFF_SECONDS = 0.02
GIVE_UP_SECONDS = 30.0  # one operation failing for this long means the cluster is gone
CONNECTIONS_MAX = 8     # per target address; clients share them round-robin
DRAIN_SECONDS = 15.0


def key_of(number: int) -> bytes:
    return b"bench/%05d" % number


class GiveUp(Exception):
    pass


class Load:
    def __init__(self, args):
        self.args = args
        self.value = os.urandom(VALUE_BYTES)
        self.targets = args.targets.split(",")
        connections = max(1, min(CONNECTIONS_MAX, args.clients))
        # a local subchannel pool per channel: each channel gets its own TCP connection
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = {t: [grpc.aio.insecure_channel(t, options=options) for _ in range(connections)]
                         for t in self.targets}
        self.leader = args.leader or self.targets[0]
        self.retries = 0
        self.done: list[tuple[float, float]] = []  # (end, latency), perf_counter seconds
        self.in_flight: dict[int, float] = {}  # client -> start of its unfinished operation
        if args.system == "cairn":
            from cluster.proto import raft_pb2, raft_pb2_grpc

            from cluster.rpc.mux import StreamMux

            self.pb = raft_pb2
            self.stubs = {t: [raft_pb2_grpc.KVStub(c) for c in cs] for t, cs in self.channels.items()}
            # the Cairn client's way: every client of this process on one stream per node
            self.muxes = {t: StreamMux(stubs[0].Pipeline, raft_pb2.KvOps, "ops", "replies")
                          for t, stubs in self.stubs.items()}
        else:
            sys.path.insert(0, args.etcd_stubs)
            import etcd_kv_pb2
            import etcd_kv_pb2_grpc

            self.pb = etcd_kv_pb2
            self.stubs = {t: [etcd_kv_pb2_grpc.KVStub(c) for c in cs] for t, cs in self.channels.items()}

    async def connect(self, timeout: float) -> None:
        waits = [asyncio.wait_for(c.channel_ready(), timeout) for cs in self.channels.values() for c in cs]
        try:
            await asyncio.gather(*waits)
        except asyncio.TimeoutError:
            raise GiveUp(f"could not connect to {self.args.targets} in {timeout:.0f} s") from None

    async def close(self) -> None:
        if self.args.system == "cairn":
            await asyncio.gather(*(mux.close() for mux in self.muxes.values()))
        await asyncio.gather(*(c.close() for cs in self.channels.values() for c in cs))

    # ---- one operation, retried until it succeeds

    async def cairn(self, client: int, key: bytes, client_id: int, sequence: int) -> None:
        started = time.perf_counter()
        while True:
            address = self.leader
            stub = self.stubs[address][client % len(self.stubs[address])]
            hint, not_leader = "", False
            try:
                if self.args.op == "put":
                    request = self.pb.PutRequest(key=key, value=self.value, client_id=client_id, sequence=sequence)
                    if self.args.cairn_api == "unary":
                        response = await stub.Put(request, timeout=RPC_SECONDS)
                    else:
                        response = (await self.muxes[address].call(self.pb.KvOp(put=request), RPC_SECONDS)).put
                    if response.ok:
                        return
                else:
                    request = self.pb.GetRequest(key=key, stale=False)
                    if self.args.cairn_api == "unary":
                        response = await stub.Get(request, timeout=RPC_SECONDS)
                    else:
                        response = (await self.muxes[address].call(self.pb.KvOp(get=request), RPC_SECONDS)).get
                    if not response.error:
                        return
                hint, not_leader = response.leader_address, bool(response.leader_address) or "leader" in response.error
            except (grpc.aio.AioRpcError, StreamBroken, asyncio.TimeoutError):
                not_leader = True  # node down or unreachable: try another
            self.retries += 1
            if time.perf_counter() - started > GIVE_UP_SECONDS:
                raise GiveUp(f"cairn {self.args.op} found no working leader in {GIVE_UP_SECONDS:.0f} s")
            if hint in self.stubs and hint != address:
                self.leader = hint
                continue
            if not_leader and self.leader == address:
                self.leader = self.targets[(self.targets.index(address) + 1) % len(self.targets)]
            await asyncio.sleep(BACKOFF_SECONDS)

    async def etcd(self, client: int, key: bytes, attempt_base: int) -> None:
        started, attempt = time.perf_counter(), 0
        while True:
            if self.args.leader:
                address = self.leader if attempt == 0 else self.targets[(attempt_base + attempt) % len(self.targets)]
            else:
                address = self.targets[(attempt_base + attempt) % len(self.targets)]
            stub = self.stubs[address][client % len(self.stubs[address])]
            try:
                if self.args.op == "put":
                    await stub.Put(self.pb.PutRequest(key=key, value=self.value), timeout=RPC_SECONDS)
                else:
                    await stub.Range(self.pb.RangeRequest(key=key), timeout=RPC_SECONDS)  # linearizable
                return
            except grpc.aio.AioRpcError as error:
                self.retries += 1
                if time.perf_counter() - started > GIVE_UP_SECONDS:
                    raise GiveUp(f"etcd {self.args.op} kept failing for {GIVE_UP_SECONDS:.0f} s: {error.details()}")
            attempt += 1
            await asyncio.sleep(BACKOFF_SECONDS)

    # ---- clients

    async def client(self, number: int, begin: float, stop: float) -> None:
        rng = random.Random(self.args.seed * 1_000_003 + number)
        client_id, sequence = self.args.client_base + number, 0
        delay = begin - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        done = self.done
        while time.perf_counter() < stop:
            key = key_of(rng.randrange(KEYS))
            start = self.in_flight[number] = time.perf_counter()
            if self.args.system == "cairn":
                sequence += 1
                await self.cairn(number, key, client_id, sequence)
            else:
                await self.etcd(number, key, number)
            end = time.perf_counter()
            del self.in_flight[number]
            done.append((end, end - start))


async def cpu_in_window(begin: float, end: float) -> float:
    await asyncio.sleep(max(0.0, begin - time.perf_counter()))
    before = os.times()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    after = os.times()
    return (after.user + after.system) - (before.user + before.system)


async def run(args) -> dict:
    return await drive(Load(args), args)


async def drive(load, args) -> dict:
    """The measurement protocol any load (connect, client, close; done, in_flight, retries) runs
    under: the start handshake, the window, the drain, and the JSON result."""
    try:
        await load.connect(10.0)
        if args.start == 0:  # handshake: say ready, read the start time from stdin
            print("ready", flush=True)
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            args.start = float(line)
        # wall clock -> this process's perf_counter
        begin = time.perf_counter() + (args.start - time.time())
        window = (begin + args.warmup, begin + args.warmup + args.duration)
        cpu = asyncio.ensure_future(cpu_in_window(*window))
        clients = [asyncio.ensure_future(load.client(i, begin, window[1])) for i in range(args.clients)]
        try:
            await asyncio.wait(clients, timeout=window[1] - time.perf_counter() + DRAIN_SECONDS)
            stalled_at = time.perf_counter()
            # operations still unanswered long after the window: their latency is at least this
            stalled = [stalled_at - start for start in load.in_flight.values() if start < window[1]]
        finally:
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
        for task in clients:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        cpu_seconds = await cpu
    finally:
        await load.close()
    done = np.array(load.done, dtype=np.float64).reshape(-1, 2)
    counted = done[(done[:, 0] >= window[0]) & (done[:, 0] < window[1])]
    # stalled operations count in the latencies (as lower bounds), not in the throughput
    np.save(args.latencies, np.concatenate([counted[:, 1], np.array(stalled, dtype=np.float64)]))
    return {"ops": int(len(counted)), "retries": load.retries, "cpu_seconds": cpu_seconds,
            "stalled": len(stalled), "window_seconds": args.duration}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=("cairn", "etcd"), required=True)
    parser.add_argument("--op", choices=("put", "get"), required=True)
    parser.add_argument("--targets", required=True, help="HOST:PORT,... of the cluster's client endpoints")
    parser.add_argument("--leader", default="", help="send here first (cairn: the known leader)")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--start", type=float, default=0.0,
                        help="wall-clock time the clients begin (0: print 'ready' once connected, read it from stdin)")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--latencies", required=True, help=".npy file for the counted latencies (s)")
    parser.add_argument("--etcd-stubs", default="", help="directory of the generated etcd_kv_pb2 modules")
    parser.add_argument("--client-base", type=int, default=1, help="session id of client 0 (cairn)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cairn-api", choices=("pipeline", "unary"), default="pipeline",
                        help="Cairn clients share a multiplexed stream per node (default) or make unary calls")
    args = parser.parse_args()
    try:
        result = asyncio.run(run(args))
    except GiveUp as error:
        sys.exit(f"raft_load: {error}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
