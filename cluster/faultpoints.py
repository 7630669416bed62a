"""Named fault points: places in the failure-handling paths where the simulator can make the
production code fail on purpose (a client dying between its uploads and its commit, a repair
whose answer never comes back ...), so those branches run under test.

Outside the simulator nothing is installed and `hit` is one global lookup returning False.
"""
from __future__ import annotations

import os
import signal
from typing import Callable

_decide: Callable[[str], bool] | None = None


def hit(name: str) -> bool:
    """Whether the fault at point `name` happens now (only ever True in a simulation)."""
    return _decide is not None and _decide(name)


def install(decide: Callable[[str], bool] | None) -> None:
    """The simulator's decision function (None: no faults)."""
    global _decide
    _decide = decide


class Injected(OSError):
    """A failure a fault point made up."""


CRASH_FILE_VARIABLE = "CAIRN_CRASH_FILE"
CRASHABLE = ("tier.", "orphans.")  # points where a real process may be told to crash


def crash_decider(path: str) -> Callable[[str], bool]:
    """For tests of real processes: the first process (of all those given the same `path`) to
    reach the point named in the file removes the file and dies at once (SIGKILL: no cleanup,
    as in a power cut). Other points, and every point once the file is gone, go on."""
    def decide(name: str) -> bool:
        if not name.startswith(CRASHABLE):
            return False
        try:
            with open(path) as f:
                wanted = f.read().strip()
        except OSError:
            return False
        if wanted == name:
            try:
                os.unlink(path)  # atomic: exactly one process wins
            except FileNotFoundError:
                return False
            os.kill(os.getpid(), signal.SIGKILL)
        return False
    return decide


def install_from_environment(environ=os.environ) -> None:
    """Arms crash_decider when CAIRN_CRASH_FILE names a file (the server processes call this)."""
    path = environ.get(CRASH_FILE_VARIABLE)
    if path:
        install(crash_decider(path))
