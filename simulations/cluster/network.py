"""The simulated network between the cluster's processes: calls from one named endpoint to
another, each way after a seeded delay; a lost message, a cut link (partitions may be one-way)
or a process that is down or restarted meanwhile means no answer, and the caller times out, as
it would on a real network. Endpoints are the processes (`m1`, `d3`, `c2`); what a call does on
arrival is the caller's handler, run against the target process.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Awaitable, Callable


class NoAnswer(asyncio.TimeoutError):
    """The call got no answer within its timeout (lost, cut, or the target is down)."""


@dataclass
class LinkFaults:
    loss: float = 0.0
    delay_seconds_max: float = 0.002
    cut: set[tuple[str, str]] = field(default_factory=set)  # (from, to): messages that way are lost
    slow: dict[str, float] = field(default_factory=dict)     # endpoint -> extra delay on everything it answers
    corrupt: float = 0.0  # chance a payload arrives with a bit flipped (what checksums and hashes are for)
    duplicate: float = 0.0  # chance a request arrives twice (a retransmission): its handler runs twice


class Network:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.faults = LinkFaults()
        self.endpoints: dict[str, object] = {}  # name -> process (with `up` and `boots`)
        self.calls = 0

    def _lost(self, source: str, target: str) -> bool:
        return (source, target) in self.faults.cut or self.rng.random() < self.faults.loss

    def _delay(self, target: str) -> float:
        return self.rng.uniform(0, self.faults.delay_seconds_max) + self.faults.slow.get(target, 0.0)

    async def call(self, source: str, target: str, handler: Callable[[object], Awaitable], timeout: float):
        """handler(process) run on `target` (as a task of that process: the caller giving up
        does not stop it, the process crashing does); its result, or its exception, back at
        `source`; NoAnswer after `timeout` if nothing came back."""
        self.calls += 1
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if not self._lost(source, target):
            loop.call_later(self._delay(target), self._arrive, source, target, handler, answer)
            if self.rng.random() < self.faults.duplicate:
                loop.call_later(self._delay(target), self._arrive, source, target, handler, answer)
        try:
            kind, value = await asyncio.wait_for(asyncio.shield(answer), timeout)
        except asyncio.TimeoutError:
            raise NoAnswer(f"{source} -> {target}: no answer in {timeout:g} s") from None
        if kind == "error":
            raise value
        return value

    def _arrive(self, source: str, target: str, handler, answer: asyncio.Future) -> None:
        process = self.endpoints.get(target)
        if process is None or not process.up:
            return
        boots = process.boots

        async def serve():
            try:
                outcome = ("ok", await handler(process))
            except Exception as error:  # noqa: BLE001 - the error travels back as the answer
                outcome = ("error", error)
            if process.boots != boots or not process.up or self._lost(target, source):
                return  # it crashed while answering, or the answer was lost
            asyncio.get_running_loop().call_later(self._delay(target), _answer, answer, outcome)
        process.spawn(serve())

    def garble(self, payload: bytes) -> bytes:
        """The payload as it arrives: now and then with one bit flipped."""
        if not payload or self.rng.random() >= self.faults.corrupt:
            return payload
        garbled = bytearray(payload)
        garbled[self.rng.randrange(len(garbled))] ^= 1 << self.rng.randrange(8)
        return bytes(garbled)

    def partition(self, *groups: list[str]) -> None:
        self.faults.cut = {(a, b) for g in groups for h in groups if g is not h for a in g for b in h}

    def heal(self) -> None:
        self.faults = LinkFaults()


def _answer(answer: asyncio.Future, outcome) -> None:
    if not answer.done():
        answer.set_result(outcome)
