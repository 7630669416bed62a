"""A deterministic asyncio event loop on virtual time, for running production asyncio code
(drivers, services, clients) inside the simulator.

The loop never waits: when nothing is ready it jumps its clock to the next timer. With no real
I/O (the simulator injects in-memory networks and disks), callbacks run in an order fixed by the
program alone, so one seed gives one run. A run that would block with nothing scheduled is a
deadlock and raises instead of hanging.
"""
from __future__ import annotations

import asyncio
import contextlib
import selectors
import signal


class Deadlock(RuntimeError):
    pass


class _VirtualSelector(selectors.BaseSelector):
    """Accepts the loop's own wake-up pipe, never reports I/O, and moves time forward."""

    def __init__(self, loop_ref):
        self._map: dict = {}
        self._loop_ref = loop_ref

    def register(self, fileobj, events, data=None):
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj):
        return self._map.pop(fileobj)

    def modify(self, fileobj, events, data=None):
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def select(self, timeout=None):
        loop = self._loop_ref()
        if timeout is None:
            raise Deadlock("nothing is scheduled and nothing can arrive: the simulated system is stuck")
        loop.advance(timeout)
        return []

    def get_map(self):
        return self._map

    def close(self):
        self._map.clear()


class SimLoop(asyncio.SelectorEventLoop):
    def __init__(self, start_seconds: float = 0.0):
        self._now = start_seconds
        super().__init__(selector=_VirtualSelector(lambda: self))
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


def run(coroutine, start_seconds: float = 0.0):
    """Runs a coroutine to completion on a fresh SimLoop, then cancels what it left behind."""
    loop = SimLoop(start_seconds)
    try:
        return loop.run_until_complete(coroutine)
    finally:
        cancel_all(loop)
        loop.close()


def cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancels every unfinished task of a loop and lets them unwind, so none outlives it."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


class WallClockExceeded(BaseException):
    """Not an Exception, so that no handler in the code under test can swallow it."""


@contextlib.contextmanager
def wall_clock_limit(seconds: int):
    """Raises WallClockExceeded in the body if it runs over `seconds` of real time (a seed that
    hangs must fail, not stall the suite)."""
    def exceeded(signum, frame):
        raise WallClockExceeded(f"hung: the seed ran over {seconds} s of real time")
    previous = signal.signal(signal.SIGALRM, exceeded)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
