"""Many concurrent calls multiplexed over one gRPC bidirectional stream.

A unary gRPC call costs the Python side of grpc.aio about as much as the work a metadata
operation does, so a busy client pays for calls, not for work. `StreamMux` sends every call
made while the previous message was on the wire together in the next message (no timer, no
waiting: an idle stream sends at once), and the server answers in batches the same way. Each
operation carries a `tag` the mux assigns; replies are matched by it, in any order.

The stream is opened on first use and reopened after it breaks; a break fails every call in
flight with `StreamBroken` (the caller decides whether to retry: only it knows whether the
operation is idempotent). Calls in flight are bounded; past the bound callers wait.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

import grpc

BATCH_OPS_MAX = 1024
IN_FLIGHT_MAX = 8192


class StreamBroken(Exception):
    """The stream ended before this call's reply came; it may or may not have been applied."""


class StreamMux:
    def __init__(self, method: Callable[[], Any], batch_type: type, ops_field: str, replies_field: str,
                 batch_ops_max: int = BATCH_OPS_MAX, in_flight_max: int = IN_FLIGHT_MAX):
        if batch_ops_max < 1 or in_flight_max < 1:
            raise ValueError("batch_ops_max and in_flight_max must be at least 1")
        self._method = method  # a stub's stream-stream method
        self._batch_type, self._ops_field, self._replies_field = batch_type, ops_field, replies_field
        self._batch_ops_max = batch_ops_max
        self._slots = asyncio.Semaphore(in_flight_max)
        self._tags = itertools.count(1)
        self._queue: list = []
        self._pending: dict[int, asyncio.Future] = {}
        self._wake = asyncio.Event()
        self._call = None
        self._tasks: list[asyncio.Task] = []

    async def call(self, op, timeout: float):
        """Sends a copy of `op` (a message with a `tag` field, set on the copy) and returns its reply."""
        async with self._slots:
            if self._call is None:
                self._open()
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            tag = next(self._tags)
            sent = type(op)()  # a copy: the caller may retry the same op elsewhere, under another tag
            sent.CopyFrom(op)
            sent.tag = tag
            self._pending[tag] = future
            self._queue.append(sent)
            self._wake.set()
            timer = loop.call_later(timeout, _expire, future, timeout)
            try:
                return await future
            finally:
                timer.cancel()
                self._pending.pop(tag, None)

    async def close(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_pending("the client closed")

    def _open(self) -> None:
        call = self._call = self._method()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer(call)), loop.create_task(self._reader(call))]

    async def _writer(self, call) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    ops = self._queue[:self._batch_ops_max]
                    del self._queue[:len(ops)]
                    await call.write(self._batch_type(**{self._ops_field: ops}))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the reader sees the same end and fails what is in flight
        except Exception:  # noqa: BLE001 - anything else: end the stream so the next call reopens it
            call.cancel()

    async def _reader(self, call) -> None:
        reason = "the server ended the stream"
        try:
            async for batch in call:
                pending = self._pending
                for reply in getattr(batch, self._replies_field):
                    future = pending.pop(reply.tag, None)
                    if future is not None and not future.done():
                        future.set_result(reply)
        except grpc.aio.AioRpcError as error:
            reason = f"{error.code().name}: {error.details()}"
        finally:
            if self._call is call:
                self._call = None
                for task in self._tasks:
                    if task is not asyncio.current_task():
                        task.cancel()
                self._queue.clear()
                self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(StreamBroken(reason))


def _expire(future: asyncio.Future, timeout: float) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError(f"no reply in {timeout:.1f} s"))


class MuxServer:
    """The server side of one multiplexed stream: `handle(ops, reply)` starts the operations of
    each incoming batch and calls `reply(message)` once per operation, now or later; replies
    ready together go out as one message. Reading stops while `in_flight_max` operations are
    unanswered, so a fast client cannot queue unbounded work (gRPC flow control holds it back)."""

    def __init__(self, batch_type: type, ops_field: str, replies_field: str,
                 in_flight_max: int = IN_FLIGHT_MAX, batch_ops_max: int = BATCH_OPS_MAX):
        self._batch_type, self._ops_field, self._replies_field = batch_type, ops_field, replies_field
        self._in_flight_max, self._batch_ops_max = in_flight_max, batch_ops_max

    async def serve(self, request_iterator, context, handle: Callable[[list, Callable], None]) -> None:
        replies: list = []
        wake, room = asyncio.Event(), asyncio.Event()
        in_flight = 0

        def reply(message) -> None:
            nonlocal in_flight
            replies.append(message)
            in_flight -= 1
            if in_flight < self._in_flight_max:
                room.set()
            wake.set()

        async def read() -> None:
            nonlocal in_flight
            try:
                async for batch in request_iterator:
                    ops = getattr(batch, self._ops_field)
                    if len(ops) > self._batch_ops_max:
                        raise ValueError(f"a batch of {len(ops)} operations; the limit is {self._batch_ops_max}")
                    in_flight += len(ops)
                    handle(ops, reply)
                    while in_flight >= self._in_flight_max:
                        room.clear()
                        await room.wait()
            finally:
                wake.set()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                await wake.wait()
                wake.clear()
                while replies:
                    chunk = replies[:self._batch_ops_max]
                    del replies[:len(chunk)]
                    await context.write(self._batch_type(**{self._replies_field: chunk}))
                if reader.done() and (in_flight == 0 or reader.exception() is not None):
                    break
            error = reader.exception()
            if isinstance(error, ValueError):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            elif error is not None:
                raise error
        finally:
            reader.cancel()
