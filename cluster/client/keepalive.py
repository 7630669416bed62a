"""Keeps a put's uploaded fragments from the data nodes' orphan collectors until its commit.

A data node deletes a fragment that no committed chunk places once it has watched it for its
orphan grace (cluster/data/orphans.py: one hour by default, each node's grace in its record).
A put that runs longer (a slow stream, a stall through faults) would lose its first fragments
before its commit, and the commit would name fragments that are gone. So while a put runs, it
touches each fragment whose last word from its node (the upload, or a touch) is older than a
quarter of that node's grace, which starts the grace afresh; and once more just before the
commit. A fragment that its node no longer holds fails the put before the commit: nothing is
committed that is not there. The one case left open: a commit that itself takes longer than
the rest of the grace (three quarters of it at least).

The clock comes in as an argument and the waits are the event loop's timers: the cluster
simulator runs this on its virtual time, with its grace of seconds.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from cluster.client.errors import ClusterUnavailable, PutExpired
from cluster.data.wire import TOUCH_MAX, DataError

RENEW_AFTER = 0.25     # of a node's grace: a fragment this old (since its node's last word) is touched
RISKY_AFTER = 0.5      # of a node's grace: one this old that cannot be touched before the commit fails it
PERIOD_MIN_SECONDS = 0.05


class Keepalive:
    def __init__(self, fragments, clock: Callable[[], float]):
        """`fragments`: the Fragments of the put (its `touch(node, ids)` and `orphan_grace(node)`)."""
        self.fragments, self.clock = fragments, clock
        self._heard: dict[int, dict[tuple[bytes, int], float]] = {}  # node -> fragment -> its last word at
        self._timer: asyncio.TimerHandle | None = None
        self._round: asyncio.Task | None = None
        self._failure: BaseException | None = None
        self.touched = 0  # fragments touched, for tests and diagnostics

    def start(self) -> None:
        """Touches what is due every eighth of the shortest grace, in the background, until
        `stop` (from the first `stored` on). A timer, not a task, between rounds: most puts end
        long before the first. A node that does not answer is tried again next time; one that
        no longer holds a fragment fails the put, raised by `check`."""
        self._timer = asyncio.get_running_loop().call_later(self._period(), self._begin_round)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._round is not None:
            self._round.cancel()

    def check(self) -> None:
        """Raises the failure a background round found, if any."""
        if self._failure is not None:
            raise self._failure

    def stored(self, chunk_id: bytes, nodes: list[int], since: float) -> None:
        """A chunk's fragments are on their nodes (fragment i on nodes[i]), sent from `since` on."""
        for index, node in enumerate(nodes):
            self._heard.setdefault(node, {})[(chunk_id, index)] = since
        if self._timer is None:
            self.start()  # (now that the nodes, and so their graces, are known)

    def _begin_round(self) -> None:
        self._round = asyncio.ensure_future(self.renew(before_commit=False))
        self._round.add_done_callback(self._round_done)

    def _round_done(self, round_: asyncio.Task) -> None:
        if round_.cancelled():
            return
        if round_.exception() is not None:
            self._failure = round_.exception()
            return
        self.start()

    async def renew(self, before_commit: bool = True) -> None:
        """Touches every fragment due. Before the commit, a fragment whose node does not answer
        and whose last word is older than half its node's grace fails the put too."""
        self.check()
        now = self.clock()
        due = {node: [f for f, heard in held.items() if now - heard >= RENEW_AFTER * self.fragments.orphan_grace(node)]
               for node, held in self._heard.items()}
        if any(due.values()):
            await asyncio.gather(*(self._touch(node, ids[start:start + TOUCH_MAX], before_commit)
                                   for node, ids in due.items() for start in range(0, len(ids), TOUCH_MAX)))

    async def _touch(self, node: int, ids: list[tuple[bytes, int]], before_commit: bool) -> None:
        asked = self.clock()
        try:
            held = await self.fragments.touch(node, ids)
        except (DataError, OSError, asyncio.TimeoutError, KeyError, ClusterUnavailable) as error:  # not reached
            self._unanswered(node, ids, before_commit, error)
            return
        self.touched += len(ids)
        lost = [f for f, kept in zip(ids, held) if not kept]
        if lost:
            chunk_id, index = lost[0]
            raise PutExpired(f"{len(lost)} uploaded fragments (one: fragment {index} of chunk {chunk_id.hex()[:16]}) "
                             f"are no longer on data node {node}: the put ran longer than its orphan grace "
                             f"({self.fragments.orphan_grace(node):g} s) without word to it. Nothing was "
                             "committed; put the object again")
        heard = self._heard[node]
        for fragment in ids:
            heard[fragment] = asked

    def _unanswered(self, node: int, ids, before_commit: bool, error: Exception) -> None:
        if not before_commit:
            return  # next time
        grace = self.fragments.orphan_grace(node)
        now, heard = self.clock(), self._heard[node]
        if any(now - heard[f] >= RISKY_AFTER * grace for f in ids):
            raise PutExpired(f"data node {node} did not answer for the put's fragments it holds ({error}), and "
                             f"some were uploaded more than half its orphan grace ({grace:g} s) ago: they may be "
                             "gone. Nothing was committed; put the object again")

    def _period(self) -> float:
        graces = [self.fragments.orphan_grace(node) for node in self._heard]
        return max(PERIOD_MIN_SECONDS, min(graces, default=self.fragments.orphan_grace(0)) * RENEW_AFTER / 2)
