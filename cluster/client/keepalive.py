"""Keeps a put's uploaded fragments from the data nodes' orphan collectors until its commit.

A data node deletes a fragment that no committed chunk places once it has watched it for its
orphan grace (cluster/data/orphans.py: one hour by default, each node's grace in its record).
A put that runs longer (a slow stream, a stall through faults) would lose its first fragments
before its commit, and the commit would name fragments that are gone. So while a put runs, it
touches the fragments of each chunk whose last word from its nodes (the upload, or a touch) is
older than a quarter of the shortest grace among them, which starts their grace afresh; and once
more just before the commit. A fragment that its node no longer holds fails the put before the
commit: nothing is committed that is not there. A node that does not answer fails it only once
its fragments are half its grace old. The one case left open: a commit that itself takes longer
than the rest of the grace (half of it at least).

The clock comes in as an argument and the waits are the event loop's timers: the cluster
simulator runs this on its virtual time, with its grace of seconds.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from cluster.client.errors import ClusterUnavailable, PutExpired
from cluster.client.fragments import NODE_FAILURES
from cluster.data.wire import TOUCH_MAX

RENEW_AFTER = 0.25     # of a node's grace: a fragment this old (since its node's last word) is touched
RISKY_AFTER = 0.5      # of a node's grace: one this old that cannot be touched before the commit fails it
PERIOD_MIN_SECONDS = 0.05
_UNREACHED = (*NODE_FAILURES, ClusterUnavailable)  # the node's failure, or no table to find it in


class Keepalive:
    def __init__(self, fragments, clock: Callable[[], float]):
        """`fragments`: the Fragments of the put (its `touch(node, ids)` and `orphan_grace(node)`)."""
        self.fragments, self.clock = fragments, clock
        # chunk id -> (its nodes, fragment i on nodes[i]; when they last all vouched for it). One
        # entry per chunk, as the writer's placements: a put's memory stays proportional to them.
        self._chunks: dict[bytes, tuple[tuple[int, ...], float]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._round: asyncio.Task | None = None
        self._period_armed = float("inf")
        self._shortest_grace = float("inf")  # of the nodes seen so far
        self._failure: BaseException | None = None
        self._stopped = False
        self.touched = 0  # fragments touched, for tests and diagnostics

    def stored(self, chunk_id: bytes, nodes: list[int], since: float) -> None:
        """A chunk's fragments are on their nodes, sent from `since` on. The first one starts
        the background rounds: every eighth of the shortest grace of the nodes seen so far (a
        timer, not a task, between rounds: most puts end long before the first)."""
        self._chunks[chunk_id] = (tuple(nodes), since)
        self._shortest_grace = min([self._shortest_grace, *(self.fragments.orphan_grace(node) for node in nodes)])
        period = self._period()
        if period < self._period_armed and self._round is None and not self._stopped:
            self._arm(period)  # (the first chunk, or a node with a shorter grace)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        if self._round is not None:
            self._round.cancel()

    def check(self) -> None:
        """Raises the failure a background round found, if any."""
        if self._failure is not None:
            raise self._failure

    async def renew(self, before_commit: bool = True) -> None:
        """Touches the fragments of every chunk due. A node that no longer holds one fails the
        put; before the commit, so does a node that does not answer for fragments older than
        half its grace."""
        self.check()
        now, grace = self.clock(), self.fragments.orphan_grace
        due = [(chunk_id, nodes, since) for chunk_id, (nodes, since) in self._chunks.items()
               if now - since >= RENEW_AFTER * min(grace(node) for node in nodes)]
        if not due:
            return
        by_node: dict[int, list[tuple[bytes, int]]] = {}
        for chunk_id, nodes, _ in due:
            for index, node in enumerate(nodes):
                by_node.setdefault(node, []).append((chunk_id, index))
        asked = self.clock()
        calls = [(node, ids[start:start + TOUCH_MAX]) for node, ids in by_node.items()
                 for start in range(0, len(ids), TOUCH_MAX)]
        answers = await asyncio.gather(*(self.fragments.touch(node, ids) for node, ids in calls),
                                       return_exceptions=True)
        unanswered: set[int] = set()
        for (node, ids), answer in zip(calls, answers):
            if isinstance(answer, _UNREACHED):
                unanswered.add(node)
                continue
            if isinstance(answer, BaseException):
                raise answer
            self.touched += len(ids)
            lost = [fragment for fragment, held in zip(ids, answer) if not held]
            if lost:
                raise self._lost(node, lost)
        for chunk_id, nodes, since in due:
            if not unanswered.intersection(nodes):
                self._chunks[chunk_id] = (nodes, asked)
            elif before_commit and any(now - since >= RISKY_AFTER * grace(node)
                                       for node in unanswered.intersection(nodes)):
                node = min(unanswered.intersection(nodes))
                raise PutExpired(f"data node {node} did not answer for fragments of this put that were uploaded "
                                 f"more than half its orphan grace ({grace(node):g} s) ago: they may be gone. "
                                 "Nothing was committed; put the object again")

    def _lost(self, node: int, lost: list[tuple[bytes, int]]) -> PutExpired:
        chunk_id, index = lost[0]
        return PutExpired(f"{len(lost)} uploaded fragments (one: fragment {index} of chunk {chunk_id.hex()[:16]}) "
                          f"are no longer on data node {node}: the put ran longer than its orphan grace "
                          f"({self.fragments.orphan_grace(node):g} s) without word to it. Nothing was committed; "
                          "put the object again")

    def _arm(self, period: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._period_armed = period
        self._timer = asyncio.get_running_loop().call_later(period, self._begin_round)

    def _begin_round(self) -> None:
        self._timer, self._period_armed = None, float("inf")
        if not self._stopped:
            self._round = asyncio.ensure_future(self.renew(before_commit=False))
            self._round.add_done_callback(self._round_done)

    def _round_done(self, round_: asyncio.Task) -> None:
        self._round = None
        if self._stopped or round_.cancelled():
            return  # (a round that ended just before stop() must not arm another)
        if round_.exception() is not None:
            self._failure = round_.exception()
            return
        self._arm(self._period())

    def _period(self) -> float:
        return max(PERIOD_MIN_SECONDS, self._shortest_grace * RENEW_AFTER / 2)
