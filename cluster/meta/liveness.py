"""Failure detection of data nodes, run by the metadata leader. Pure: times come in as arguments.

A data node heartbeats the leader every few seconds. One not heard for `suspect_after` seconds is
SUSPECT (clients read around it; placement skips it), for `dead_after` seconds DEAD (its fragments
are lost for repair). A heartbeat brings a SUSPECT node back to UP at once (the service proposes
that). Heartbeats that change nothing are not written to Raft, so when they were heard lives only
in the leader's memory: a new leader counts every node as heard when it took office, so a leader
change never declares the whole cluster dead.
"""
from __future__ import annotations

from cluster.proto import meta_pb2 as pb

SUSPECT_AFTER_SECONDS = 15.0
DEAD_AFTER_SECONDS = 300.0
REPROPOSE_SECONDS = 5.0  # a verdict not yet applied is proposed again after this long


class FailureDetector:
    def __init__(self, suspect_after: float = SUSPECT_AFTER_SECONDS, dead_after: float = DEAD_AFTER_SECONDS):
        if not 0 < suspect_after < dead_after:
            raise ValueError(f"need 0 < suspect_after < dead_after, got {suspect_after} and {dead_after}")
        self.suspect_after, self.dead_after = suspect_after, dead_after
        self._heard: dict[int, float] = {}
        self._since: float | None = None  # when this node became leader (None: not leading)
        self._proposed: dict[int, tuple[int, float]] = {}

    def lead(self, now: float) -> None:
        """This node leads from `now` (no-op if it already did)."""
        if self._since is None:
            self._since = now
            self._heard.clear()
            self._proposed.clear()

    def follow(self) -> None:
        self._since = None

    def heard(self, node_id: int, now: float) -> None:
        self._heard[node_id] = now

    def verdicts(self, nodes, now: float) -> list[pb.MarkNode]:
        """The state changes to propose now for `nodes` (their replicated records)."""
        if self._since is None:
            return []
        marks = []
        for node in nodes:
            if node.state not in (pb.UP, pb.SUSPECT):
                continue  # DEAD stays dead until it heartbeats; DRAINING is the operator's
            silent = now - max(self._heard.get(node.id, self._since), self._since)
            state = pb.DEAD if silent >= self.dead_after else pb.SUSPECT if silent >= self.suspect_after else node.state
            if state == node.state:
                continue
            last = self._proposed.get(node.id)
            if last is not None and last[0] == state and now - last[1] < REPROPOSE_SECONDS:
                continue
            self._proposed[node.id] = (state, now)
            marks.append(pb.MarkNode(id=node.id, state=state, expect=node.state))
        return marks
