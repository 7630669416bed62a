"""The leader's view of one follower: how much of the log it has, and how to send it more.

PROBE: we do not know where the follower's log matches ours; send one AppendEntries at a time
and back off on rejection. REPLICATE: it matches; stream entries optimistically (pipelining),
at most inflight_messages_max unacknowledged messages. SNAPSHOT: the entries it needs are
compacted away; send the snapshot in chunks, one unacknowledged chunk at a time.
"""
from __future__ import annotations

import enum
from collections import deque


class State(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = ("match", "next", "state", "inflight", "probe_sent", "recent_active",
                 "snapshot_index", "snapshot_offset", "inflight_max")

    def __init__(self, next_index: int, inflight_max: int):
        self.match = 0
        self.next = next_index
        self.state = State.PROBE
        self.inflight: deque[int] = deque()  # last index of each unacknowledged AppendEntries
        self.inflight_max = inflight_max
        self.probe_sent = False
        self.recent_active = False
        self.snapshot_index = 0
        self.snapshot_offset = 0

    def __repr__(self) -> str:
        return f"Progress(match={self.match}, next={self.next}, state={self.state.value})"

    def paused(self) -> bool:
        if self.state is State.PROBE:
            return self.probe_sent
        if self.state is State.REPLICATE:
            return len(self.inflight) >= self.inflight_max
        return True  # SNAPSHOT: chunks are driven by responses, not by new entries

    def become_probe(self) -> None:
        if self.state is State.SNAPSHOT:
            self.next = max(self.match + 1, self.snapshot_index + 1)
        else:
            self.next = self.match + 1
        self.state, self.probe_sent = State.PROBE, False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state, self.probe_sent = State.REPLICATE, False
        self.next = self.match + 1
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state, self.snapshot_index, self.snapshot_offset = State.SNAPSHOT, snapshot_index, 0
        self.inflight.clear()

    def sent_entries(self, last_index: int) -> None:
        """Bookkeeping after an AppendEntries ending at last_index went out."""
        if self.state is State.REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
                self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def acknowledged(self, index: int) -> bool:
        """The follower matches up to index; False if that is old news."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match:
            return False
        self.match = index
        self.next = max(self.next, index + 1)
        self.probe_sent = False
        return True

    def rejected(self, rejected_index: int, hint_index: int) -> bool:
        """An AppendEntries at rejected_index failed; False if the rejection is stale."""
        if self.state is State.REPLICATE:
            if rejected_index <= self.match:
                return False
            self.become_probe()
            self.next = min(self.next, max(self.match + 1, hint_index + 1))
            return True
        if self.next - 1 != rejected_index:
            return False
        self.next = max(min(rejected_index, hint_index + 1), self.match + 1, 1)
        self.probe_sent = False
        return True
