"""The blocking client: the same shape as AsyncClient, for scripts, notebooks and data loaders.

It runs one AsyncClient on an event loop in a background thread and waits for each call, so it
may be used from any number of threads at once (calls from several threads overlap on the loop).
`open` returns a standard binary file object (io.BufferedReader over a raw reader that seeks and
fetches only the chunks a read covers), so it works wherever a file does.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import io
import threading
from typing import Iterator

from cluster.client.objects import AsyncClient, Page
from cluster.client.reader import ObjectReader

OPEN_BUFFER_BYTES = 1 << 20


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (a declared dependency): its loop runs the client's many small
    tasks and callbacks in C."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Client:
    def __init__(self, meta_addresses: list[str], **options):
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cairn-client", daemon=True)
        self._thread.start()
        self._async = self._run(_make(meta_addresses, options))

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._async.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def aio(self) -> AsyncClient:
        """The AsyncClient underneath (its coroutines run on this client's loop thread only)."""
        return self._async

    # ---- the same calls as AsyncClient, blocking

    def __getattr__(self, name: str):
        """Any coroutine method of AsyncClient (create_bucket, put, get, head, manifest, delete,
        copy, drain_node, status ...), run to completion on the loop thread."""
        if name.startswith("_"):
            raise AttributeError(name)
        attribute = getattr(self._async, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return functools.wraps(attribute)(lambda *args, **kwargs: self._run(attribute(*args, **kwargs)))

    def list_pages(self, bucket: str, prefix: str = "", delimiter: str = "", **options) -> Iterator[Page]:
        pages = self._async.list_pages(bucket, prefix, delimiter, **options)
        try:
            while True:
                try:
                    yield self._run(pages.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(pages.aclose())

    def list(self, bucket: str, prefix: str = "", delimiter: str = "") -> Iterator:
        for page in self.list_pages(bucket, prefix, delimiter):
            yield from page.entries

    def open(self, bucket: str, key: str, version: int = 0, buffer_size: int = OPEN_BUFFER_BYTES) -> io.BufferedReader:
        reader = self._run(self._async.open(bucket, key, version))
        return io.BufferedReader(RawReader(self, reader), buffer_size)



class RawReader(io.RawIOBase):
    """A raw binary file over an ObjectReader; reads block on the client's loop."""

    def __init__(self, client: Client, reader: ObjectReader):
        self._client, self._reader = client, reader
        self.size = reader.size
        self.head = reader.head

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._client._run(self._reader.readinto(buffer))

    def readall(self) -> bytes:
        """The rest in one read (io's default loops over 8 KiB reads, a loop-thread hop each)."""
        return bytes(self._client._run(self._reader.read(-1)))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._reader.seek(offset, whence)

    def tell(self) -> int:
        return self._reader.tell()

    def close(self) -> None:
        if not self.closed:
            self._client._run(self._reader.close())
        super().close()


async def _make(addresses, options) -> AsyncClient:
    return AsyncClient(addresses, **options)  # on the loop thread: its transports belong to that loop
