"""Named fault points: places in the failure-handling paths where the simulator can make the
production code fail on purpose (a client dying between its uploads and its commit, a repair
whose answer never comes back ...), so those branches run under test.

Outside the simulator nothing is installed and `hit` is one global lookup returning False.
"""
from __future__ import annotations

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
