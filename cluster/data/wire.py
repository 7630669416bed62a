"""The fragment data plane on ZeroMQ: a ROUTER on the data node, a DEALER per client and node.

A request is a multipart message [request id (8 bytes), op (1 byte), fragment header, payload?];
the reply is [request id, status (1 byte), text or CRC32C (4 bytes), payload?]. The header is the
chunk id (32 bytes), the fragment index (1 byte), then for PUT the CRC32C of the payload (4 bytes)
and for GET the offset and length (8 bytes each; length 2^64-1 for "to the end"). Frames move
without copies (zmq copy=False), every message has a size limit (the socket's MAXMSGSIZE and the
checks here), and each side bounds what it has in flight.
"""
from __future__ import annotations

import asyncio
import itertools
import struct
from collections import deque

import zmq

from cluster.data.store import FRAGMENT_BYTES_MAX, FRAGMENT_INDEX_MAX

OP_PUT, OP_GET, OP_PUT_MANY, OP_GET_MANY, OP_TOUCH = b"P", b"G", b"M", b"N", b"T"
OK, NOT_FOUND, CORRUPT, BAD_REQUEST, DISK_FULL, UNAVAILABLE = range(6)
STATUS_NAMES = ["OK", "NOT_FOUND", "CORRUPT", "BAD_REQUEST", "DISK_FULL", "UNAVAILABLE"]
_ID = struct.Struct(">Q")
_PUT = struct.Struct(">32sBI")
_GET = struct.Struct(">32sBQQ")
_FRAGMENT = struct.Struct(">32sB")
TO_THE_END = (1 << 64) - 1
MESSAGE_BYTES_MAX = FRAGMENT_BYTES_MAX + 1024  # a frame, as ZeroMQ's MAXMSGSIZE counts
JOINED_BYTES_MAX = FRAGMENT_BYTES_MAX  # a batch's joined payloads: one frame
IN_FLIGHT_MAX = 64
# Small puts issued together to one node travel as one PUT_MANY message [header of N PUT headers,
# payload sizes, payloads joined]; its reply's payload is N status bytes then, for each failure,
# its text after a NUL. Small gets likewise: GET_MANY [header of N GET headers]; the reply carries
# the statuses, the sizes and the fragments joined (nothing where one failed). Joined, because
# ZeroMQ spends far more on each frame of a multipart message than the copy into one costs
# (ops/bench/transport.py, transport_zmq_batch_joined_per_s_16k).
PUT_MANY_MAX = 64                  # fragments in one message
PUT_MANY_BYTES_MAX = 4 << 20       # their bytes
COALESCE_BYTES_MAX = 256 << 10     # only fragments up to this size wait to share a message
# A node reads a GET_MANY's fragments one after another on one worker, so a batch carries at most
# this many expected bytes: 16 gets of 128 KiB go as two messages served side by side (one is read
# while the other travels), 64 gets of 4 KiB as one (ops/bench/data.py: 128 KiB reads at 16
# streams went from 0.66x the plain directory, in one 2 MiB message, to 0.77-1.00x).
GET_MANY_BYTES_MAX = 1 << 20
# A put that runs longer than the data nodes' orphan grace touches its fragments (TOUCH [header of
# N fragment ids]; the reply's payload is one byte per fragment: 1 held, 0 not) so that their
# collectors keep them until its commit (cluster/data/orphans.py).
TOUCH_MAX = 4096
CALL_SECONDS = 30.0
RECEIVES_PER_TURN = 256  # replies taken in one readiness callback before others get a turn
UNSENT_RETRY_SECONDS = 0.01


class DataError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{STATUS_NAMES[status] if status < len(STATUS_NAMES) else status}: {message}")
        self.status = status


def _check(chunk_id: bytes, index: int) -> None:
    if len(chunk_id) != 32 or not 0 <= index <= FRAGMENT_INDEX_MAX:
        raise ValueError(f"a fragment is named by a 32-byte chunk id and an index 0..{FRAGMENT_INDEX_MAX}, "
                         f"got {len(chunk_id)} bytes and {index}")


def encode_put(chunk_id: bytes, index: int, crc: int) -> bytes:
    _check(chunk_id, index)
    return _PUT.pack(chunk_id, index, crc)


def decode_put(header: bytes) -> tuple[bytes, int, int]:
    if len(header) != _PUT.size:
        raise ValueError(f"a PUT header is {_PUT.size} bytes")
    return _PUT.unpack(header)


def join_headers(headers: list[bytes]) -> bytes:
    """The header of a PUT_MANY or GET_MANY: its fragments' PUT or GET headers, in order."""
    if not 0 < len(headers) <= PUT_MANY_MAX:
        raise ValueError(f"a batch carries 1..{PUT_MANY_MAX} fragments, not {len(headers)}")
    return b"".join(headers)


def decode_put_many(header: bytes) -> list[tuple[bytes, int, int]]:
    count, rest = divmod(len(header), _PUT.size)
    if rest or not 0 < count <= PUT_MANY_MAX:
        raise ValueError(f"a PUT_MANY header holds 1..{PUT_MANY_MAX} PUT headers")
    return [_PUT.unpack_from(header, n * _PUT.size) for n in range(count)]


def join_payloads(payloads: list) -> list[bytes]:
    """A batch's payloads as two frames: their sizes (4 bytes each), then all their bytes."""
    if len(payloads) > PUT_MANY_MAX:
        raise ValueError(f"a batch carries at most {PUT_MANY_MAX} payloads, not {len(payloads)}")
    return [encode_sizes([memoryview(p).nbytes for p in payloads]), b"".join(payloads)]


def encode_sizes(sizes: list[int]) -> bytes:
    """The sizes frame of a batch (see join_payloads)."""
    return struct.pack(f">{len(sizes)}I", *sizes)


def split_payloads(sizes: bytes, joined, count: int) -> list[memoryview]:
    """The `count` payloads of `join_payloads`' two frames, as views of the joined bytes."""
    if len(sizes) != 4 * count:
        raise ValueError(f"a batch of {count} payloads has {len(sizes)} bytes of sizes, not {4 * count}")
    view = memoryview(joined).cast("B")
    lengths = struct.unpack(f">{count}I", sizes)
    if sum(lengths) != len(view):
        raise ValueError(f"a batch's payload sizes add up to {sum(lengths)} bytes, its payloads to {len(view)}")
    parts, start = [], 0
    for length in lengths:
        parts.append(view[start:start + length])
        start += length
    return parts


def decode_get_many(header: bytes) -> list[tuple[bytes, int, int, int | None]]:
    count, rest = divmod(len(header), _GET.size)
    if rest or not 0 < count <= PUT_MANY_MAX:
        raise ValueError(f"a GET_MANY header holds 1..{PUT_MANY_MAX} GET headers")
    return [decode_get(header[n * _GET.size:(n + 1) * _GET.size]) for n in range(count)]


def encode_statuses(results: list[tuple[int, str]]) -> bytes:
    return bytes(status for status, _ in results) + b"".join(
        b"\0" + text.encode()[:256] for status, text in results if status != OK)


def decode_statuses(payload: bytes, count: int) -> list[tuple[int, str]]:
    if len(payload) < count:
        raise ValueError("a PUT_MANY reply shorter than its statuses")
    texts = iter(payload[count:].split(b"\0")[1:])
    return [(status, "" if status == OK else next(texts, b"").decode(errors="replace"))
            for status in payload[:count]]


def encode_touch(fragments: list[tuple[bytes, int]]) -> bytes:
    if not 0 < len(fragments) <= TOUCH_MAX:
        raise ValueError(f"a TOUCH names 1..{TOUCH_MAX} fragments, not {len(fragments)}")
    for chunk_id, index in fragments:
        _check(chunk_id, index)
    return b"".join(_FRAGMENT.pack(chunk_id, index) for chunk_id, index in fragments)


def decode_touch(header: bytes) -> list[tuple[bytes, int]]:
    count, rest = divmod(len(header), _FRAGMENT.size)
    if rest or not 0 < count <= TOUCH_MAX:
        raise ValueError(f"a TOUCH header holds 1..{TOUCH_MAX} fragment ids of {_FRAGMENT.size} bytes")
    fragments = [_FRAGMENT.unpack_from(header, n * _FRAGMENT.size) for n in range(count)]
    for chunk_id, index in fragments:
        _check(chunk_id, index)
    return fragments


def encode_get(chunk_id: bytes, index: int, offset: int = 0, length: int | None = None) -> bytes:
    _check(chunk_id, index)
    return _GET.pack(chunk_id, index, offset, TO_THE_END if length is None else length)


def decode_get(header: bytes) -> tuple[bytes, int, int, int | None]:
    if len(header) != _GET.size:
        raise ValueError(f"a GET header is {_GET.size} bytes")
    chunk_id, index, offset, length = _GET.unpack(header)
    return chunk_id, index, offset, None if length == TO_THE_END else length


class DataClient:
    """One DEALER connection to a data node; any number of concurrent calls, matched by id.

    The socket is driven straight from the event loop (its file descriptor watched with
    add_reader, every receive and send non-blocking) rather than through zmq.asyncio, whose
    futures and flag enums per operation cost a busy client more than the rest of a small get:
    one readiness callback drains every reply that has arrived. A call is a future that the
    reply settles, without a task; at most `in_flight_max` are on the wire, the rest queue here
    in order."""

    def __init__(self, address: str, context: zmq.Context | None = None, in_flight_max: int = IN_FLIGHT_MAX):
        if in_flight_max < 1:
            raise ValueError("in_flight_max must be at least 1")
        self.address = address
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MESSAGE_BYTES_MAX)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(f"tcp://{address}")
        self._in_flight_max = in_flight_max
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future, asyncio.TimerHandle]] = {}  # on the wire
        self._waiting: deque = deque()    # (frames, future, timeout): past the in-flight bound
        self._unsent: deque = deque()     # (request id, frames): the socket was full
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_soon = self._retry_soon = False
        self._closed = False
        self._puts: deque = deque()   # small puts waiting for the end of this loop turn
        self._gets: deque = deque()
        self.messages = 0  # requests sent, for tests and diagnostics

    def put(self, chunk_id: bytes, index: int, data, crc: int, timeout: float = CALL_SECONDS) -> asyncio.Future:
        """A future that is done once the node has the fragment durable; cancelling it withdraws
        the call. Small puts issued in the same turn of the event loop share one message (and
        the node's fsync). (A future, as for get: a writer waits on many without a task each.)"""
        header = encode_put(chunk_id, index, crc)
        if len(data) > COALESCE_BYTES_MAX:
            return asyncio.ensure_future(self._call([OP_PUT, header, data], timeout))  # large: a task costs little
        return self._join(self._puts, self._send_puts, (header, data, timeout))

    def get(self, chunk_id: bytes, index: int, offset: int = 0, length: int | None = None,
            timeout: float = CALL_SECONDS, expect: int | None = None) -> asyncio.Future:
        """A future of the bytes (a zero-copy buffer), verified by the node against the fragment's
        CRC32C; cancelling it withdraws the call. `expect`, the bytes the caller expects: a get of
        at most COALESCE_BYTES_MAX may share a message with other small gets to this node issued
        in the same turn of the event loop. (A future, not a coroutine: a reader waits on many
        small ones without a task for each.)"""
        header = encode_get(chunk_id, index, offset, length)
        if expect is not None and 0 <= expect <= COALESCE_BYTES_MAX:
            return self._join(self._gets, self._send_gets, (header, expect, timeout))
        return asyncio.ensure_future(self._get_alone(header, timeout))  # large: a task costs little

    async def touch(self, fragments: list[tuple[bytes, int]], timeout: float = CALL_SECONDS) -> list[bool]:
        """Starts the orphan grace of these fragments afresh on the node; whether each is held
        (False: the node does not have it, or its collector is deleting it)."""
        frames = await self._call([OP_TOUCH, encode_touch(fragments)], timeout)
        held = frames[3].bytes if len(frames) > 3 else b""
        if len(held) != len(fragments):
            raise DataError(BAD_REQUEST, f"a TOUCH of {len(fragments)} fragments answered for {len(held)}")
        return [flag == 1 for flag in held]

    async def _get_alone(self, header: bytes, timeout: float):
        frames = await self._call([OP_GET, header], timeout)
        return frames[3].buffer if len(frames) > 3 else b""

    def _join(self, waiting: deque, send, item) -> asyncio.Future:
        """Queues a call to go out with the others of this loop turn; its own outcome comes back."""
        loop = asyncio.get_running_loop()
        if not waiting:
            loop.call_soon(send)
        future = loop.create_future()
        waiting.append((*item, future))
        return future

    def _send_puts(self) -> None:
        _drop_withdrawn(self._puts)
        while self._puts:
            batch = self._take(self._puts, PUT_MANY_BYTES_MAX, lambda item: len(item[1]))  # (its payload)
            frames = [OP_PUT_MANY, join_headers([header for header, *_ in batch]),
                      *join_payloads([data for _, data, *_ in batch])]
            self._start(batch, frames, max(timeout for _, _, timeout, _ in batch), payloads=False)

    def _send_gets(self) -> None:
        _drop_withdrawn(self._gets)
        while self._gets:
            batch = self._take(self._gets, GET_MANY_BYTES_MAX, lambda item: item[1])  # (the bytes it expects)
            frames = [OP_GET_MANY, join_headers([header for header, *_ in batch])]
            self._start(batch, frames, max(timeout for _, _, timeout, _ in batch), payloads=True)

    @staticmethod
    def _take(waiting: deque, bytes_max: int, size_of) -> list:
        """The next batch: up to PUT_MANY_MAX calls and `bytes_max` bytes, and never none."""
        batch, size = [], 0
        while waiting and len(batch) < PUT_MANY_MAX and (not batch or size + size_of(waiting[0]) <= bytes_max):
            batch.append(waiting.popleft())
            size += size_of(batch[-1])
        return batch

    def _start(self, batch: list, frames: list, timeout: float, payloads: bool) -> None:
        futures = [item[-1] for item in batch]
        self._request(frames, timeout).add_done_callback(lambda reply: self._settle(futures, reply, payloads))

    @staticmethod
    def _settle(futures: list, reply: asyncio.Future, payloads: bool) -> None:
        """Settles each call of a PUT_MANY or GET_MANY with its own outcome."""
        try:
            frames = _checked(reply.result())
            if len(frames) != (6 if payloads else 4):
                raise DataError(BAD_REQUEST, f"a batch reply of {len(frames)} frames")
            results = decode_statuses(frames[3].bytes, len(futures))
            values = split_payloads(frames[4].bytes, frames[5].buffer, len(futures)) if payloads \
                else [None] * len(futures)
        except Exception as failure:  # noqa: BLE001 - each waiting call gets the failure
            error = failure
        else:
            for future, (status, text), value in zip(futures, results, values):
                if not future.done():
                    future.set_result(value) if status == OK else future.set_exception(DataError(status, text))
            return
        for future in futures:
            if not future.done():
                future.set_exception(error)

    async def _call(self, frames: list, timeout: float) -> list:
        return _checked(await self._request(frames, timeout))

    # ---- the socket, driven by the event loop

    def _request(self, frames: list, timeout: float) -> asyncio.Future:
        """A future of the reply's frames (any status), or of the failure: TimeoutError after
        `timeout` seconds, DataError(UNAVAILABLE) once the client is closed."""
        if self._closed:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(DataError(UNAVAILABLE, "client closed"))
            return future
        future = self._attach().create_future()
        if len(self._pending) < self._in_flight_max:
            self._transmit(frames, future, timeout)
        else:
            self._waiting.append((frames, future, timeout))
        return future

    def _attach(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._socket.FD, self._drain)
        return self._loop

    def _transmit(self, frames: list, future: asyncio.Future, timeout: float) -> None:
        request_id = next(self._ids)
        timer = self._loop.call_later(timeout, self._expire, request_id)
        self._pending[request_id] = (future, timer)
        future.add_done_callback(lambda _: self._forget(request_id))  # a cancelled caller frees its slot
        self.messages += 1
        message = [_ID.pack(request_id), *frames]
        if self._unsent or not self._send(message):
            self._unsent.append((request_id, message))
        self._wake()

    def _send(self, message: list) -> bool:
        try:
            self._socket.send_multipart(message, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:  # the node's queue is full: it goes when the socket has room
            return False

    def _wake(self) -> None:
        """The socket's descriptor signals edges, and an operation on the socket may consume one:
        look again after this loop turn, whatever the descriptor says."""
        if not self._drain_soon:
            self._drain_soon = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Settles every reply that has arrived (up to a bound per turn) and sends what waited."""
        self._drain_soon = False
        if self._closed:
            return
        for _ in range(RECEIVES_PER_TURN):
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if len(frames) < 3 or len(frames[0]) != 8:
                continue  # not ours: ignore
            entry = self._pending.pop(_ID.unpack(frames[0].bytes)[0], None)
            if entry is not None:
                entry[1].cancel()
                if not entry[0].done():
                    entry[0].set_result(frames)
        else:
            self._wake()  # more may be waiting: after the other callbacks have had a turn
        while self._unsent:
            request_id, message = self._unsent[0]
            if request_id in self._pending and not self._send(message):
                if not self._retry_soon:  # the descriptor signals when the node drains its queue;
                    self._retry_soon = True  # look again anyway, in case that edge was taken
                    self._loop.call_later(UNSENT_RETRY_SECONDS, self._retry)
                break
            self._unsent.popleft()  # sent, or timed out or cancelled before it could go
        self._admit()

    def _retry(self) -> None:
        self._retry_soon = False
        self._drain()

    def _admit(self) -> None:
        while self._waiting and len(self._pending) < self._in_flight_max:
            frames, future, timeout = self._waiting.popleft()
            if not future.done():
                self._transmit(frames, future, timeout)

    def _expire(self, request_id: int) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(asyncio.TimeoutError())
        self._admit()

    def _forget(self, request_id: int) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is not None:
            entry[1].cancel()
            self._admit()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._socket.FD)
        failed = [future for future, timer in self._pending.values()] + [item[1] for item in self._waiting]
        failed += [item[-1] for item in (*self._puts, *self._gets)]
        for future, timer in self._pending.values():
            timer.cancel()
        self._pending.clear()
        self._waiting.clear()
        self._unsent.clear()
        for future in failed:
            if not future.done():
                future.set_exception(DataError(UNAVAILABLE, "client closed"))
        self._socket.close(0)


def _drop_withdrawn(waiting: deque) -> None:
    """Calls whose callers gave up (cancelled) before their batch went out do not go."""
    if any(item[-1].done() for item in waiting):
        kept = [item for item in waiting if not item[-1].done()]
        waiting.clear()
        waiting.extend(kept)


def _checked(reply: list) -> list:
    status = reply[1].bytes[0]
    if status != OK:
        raise DataError(status, reply[2].bytes.decode(errors="replace"))
    return reply
