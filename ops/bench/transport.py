"""Which wire moves fragments faster: gRPC streaming or ZeroMQ (the data plane's choice).

    python ops/bench/transport.py [--quick] [--json PATH]

A sink server in another process takes fragments and acknowledges each; the client keeps a
window of fragments in flight and measures GB/s for 128 KiB and 1 MiB fragments, for: ZeroMQ
(pyzmq DEALER -> ROUTER, zero-copy multipart frames), gRPC bidirectional streaming of bytes, gRPC
unary calls, and a raw TCP socket (the ceiling). Rounds alternate between the wires; medians.
The data node uses ZeroMQ for fragments when its row shows it faster than gRPC streaming.

Batches: 64 fragments of 16 KiB per ZeroMQ message, as the data plane's PUT_MANY carries them,
either joined in one frame with their sizes in another (cluster/data/wire.py, split back into
views by the sink) or one frame each; fragments per second, the same window of batches.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # first: `cluster` is the package, not ops/bench/cluster.py
from common import bench_parser, print_table, progress, row, write_json  # noqa: E402

WINDOW = 16
SIZES = [128 << 10, 1 << 20]
BATCH_ITEMS, BATCH_ITEM_BYTES, BATCH_WINDOW = 64, 16 << 10, 4


# ---- the sink (a separate process)

def serve(kind: str, port: int) -> None:
    if kind in ("zmq", "zmq-frames", "zmq-joined"):
        import zmq

        from cluster.data import wire

        context = zmq.Context()
        router = context.socket(zmq.ROUTER)
        router.bind(f"tcp://127.0.0.1:{port}")
        print("ready", flush=True)
        while True:
            frames = router.recv_multipart(copy=False)
            if kind != "zmq":  # a batch: the views of its payloads that a data node takes
                views = (wire.split_payloads(frames[1].bytes, frames[2].buffer, BATCH_ITEMS) if kind == "zmq-joined"
                         else [frame.buffer for frame in frames[1:]])
                if len(views) != BATCH_ITEMS:
                    raise SystemExit(f"transport.py: the sink got {len(views)} payloads, not {BATCH_ITEMS}")
            router.send_multipart([frames[0], b"ok"])
    elif kind in ("grpc-stream", "grpc-unary"):
        import grpc

        async def main():
            server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])

            async def stream(requests, context):
                async for _ in requests:
                    yield b"ok"

            async def unary(request, context):
                return b"ok"
            handlers = {"Stream": grpc.stream_stream_rpc_method_handler(stream),
                        "Unary": grpc.unary_unary_rpc_method_handler(unary)}
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Sink", handlers)])
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            print("ready", flush=True)
            await server.wait_for_termination()
        import uvloop

        uvloop.run(main())
    else:  # raw: length-prefixed frames, one-byte acks
        listener = socket.create_server(("127.0.0.1", port))
        print("ready", flush=True)
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray(64 << 20)
        while True:
            header = _recv_exact(conn, memoryview(buffer)[:4])
            if header is None:
                return
            size = int.from_bytes(header, "big")
            if _recv_exact(conn, memoryview(buffer)[:size]) is None:
                return
            conn.sendall(b"k")


def _recv_exact(conn, view):
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return view


# ---- the client side

def send_zmq(port: int, payload: bytes, count: int) -> float:
    return _zmq_round_trips(port, lambda: [payload], count, WINDOW)


def send_batches(port: int, joined: bool, batches: int) -> float:
    """Seconds to send `batches` messages of BATCH_ITEMS fragments, joined or a frame each."""
    from cluster.data import wire

    payloads = [os.urandom(BATCH_ITEM_BYTES) for _ in range(BATCH_ITEMS)]
    # joined anew for every message, as the client does
    frames_of = (lambda: wire.join_payloads(payloads)) if joined else (lambda: payloads)
    return _zmq_round_trips(port, frames_of, batches, BATCH_WINDOW)


def _zmq_round_trips(port: int, frames_of, count: int, window: int) -> float:
    """Seconds to send `count` messages (`frames_of()` each, zero-copy) from a DEALER, keeping
    `window` unacknowledged."""
    import zmq

    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    start = time.perf_counter()
    sent = received = 0
    while received < count:
        while sent < count and sent - received < window:
            dealer.send_multipart(frames_of(), copy=False)
            sent += 1
        dealer.recv()
        received += 1
    elapsed = time.perf_counter() - start
    dealer.close(0)
    context.term()
    return elapsed


def send_grpc(port: int, payload: bytes, count: int, unary: bool) -> float:
    import grpc

    async def main():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_send_message_length", 64 << 20)]) as channel:
            if unary:
                call = channel.unary_unary("/bench.Sink/Unary")
                start = time.perf_counter()
                semaphore = asyncio.Semaphore(WINDOW)

                async def one():
                    async with semaphore:
                        await call(payload)
                await asyncio.gather(*(one() for _ in range(count)))
                return time.perf_counter() - start
            stream = channel.stream_stream("/bench.Sink/Stream")()
            start = time.perf_counter()

            async def writer():
                for _ in range(count):
                    await stream.write(payload)
                await stream.done_writing()
            task = asyncio.ensure_future(writer())
            received = 0
            async for _ in stream:
                received += 1
                if received == count:
                    break
            await task
            return time.perf_counter() - start
    import uvloop

    return uvloop.run(main())


def send_raw(port: int, payload: bytes, count: int) -> float:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = len(payload).to_bytes(4, "big")
    start = time.perf_counter()
    sent = received = 0
    while received < count:
        while sent < count and sent - received < WINDOW:
            conn.sendall(header)
            conn.sendall(payload)
            sent += 1
        if not conn.recv(1):
            raise ConnectionError("sink closed")
        received += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def start_sink(kind: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the {kind} sink did not start")
    return proc, port


def measure(kind: str, size: int, total_bytes: int) -> float:
    proc, port = start_sink(kind)
    try:
        payload, count = os.urandom(size), max(WINDOW * 2, total_bytes // size)
        if kind == "zmq":
            elapsed = send_zmq(port, payload, count)
        elif kind == "raw":
            elapsed = send_raw(port, payload, count)
        else:
            elapsed = send_grpc(port, payload, count, unary=kind == "grpc-unary")
        return size * count / elapsed / 1e9
    finally:
        proc.kill()
        proc.wait()


def measure_batches(kind: str, total_bytes: int) -> float:
    """Fragments per second in batches (`kind`: zmq-joined or zmq-frames)."""
    proc, port = start_sink(kind)
    try:
        batches = max(BATCH_WINDOW * 2, total_bytes // (BATCH_ITEMS * BATCH_ITEM_BYTES))
        return batches * BATCH_ITEMS / send_batches(port, kind == "zmq-joined", batches)
    finally:
        proc.kill()
        proc.wait()


KINDS = ["zmq", "grpc-stream", "grpc-unary", "raw"]
BATCH_KINDS = ["zmq-joined", "zmq-frames"]


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--serve", choices=KINDS + BATCH_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    rounds, total = (3, 256 << 20) if args.quick else (5, 1 << 30)
    samples = {(k, s): [] for k in KINDS for s in SIZES}
    batched = {k: [] for k in BATCH_KINDS}
    for round_number in range(rounds):
        for size in SIZES:
            order = KINDS if round_number % 2 == 0 else KINDS[::-1]
            for kind in order:
                samples[(kind, size)].append(measure(kind, size, total))
        for kind in BATCH_KINDS if round_number % 2 == 0 else BATCH_KINDS[::-1]:
            batched[kind].append(measure_batches(kind, total // 4))
        progress(f"  round {round_number + 1}/{rounds} done")
    medians = {key: statistics.median(v) for key, v in samples.items()}
    rows = []
    for size in SIZES:
        label = f"{size >> 10}k"
        zmq, stream = medians[("zmq", size)], medians[("grpc-stream", size)]
        rows.append(row(f"transport_zmq_gbps_{label}", zmq, "GB/s", "grpc stream", stream))
        rows.append(row(f"transport_zmq_vs_unary_gbps_{label}", zmq, "GB/s", "grpc unary", medians[("grpc-unary", size)]))
        rows.append(row(f"transport_zmq_vs_raw_gbps_{label}", zmq, "GB/s", "raw socket", medians[("raw", size)]))
    rows.append(row("transport_zmq_batch_joined_per_s_16k", statistics.median(batched["zmq-joined"]), "frag/s",
                    "a frame each", statistics.median(batched["zmq-frames"])))
    print_table(f"Fragment transport, window {WINDOW}, loopback ({'quick' if args.quick else 'full'}; "
                "ratio > 1: ZeroMQ faster)", rows)
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
