"""Values that the Raft core consumes and produces: entries, messages, hard state, config.

All are frozen dataclasses: the core never mutates what it hands out, so the driver may queue,
serialize or retransmit them freely. Node ids are positive integers; 0 means "none".
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

NONE = 0


class EntryKind(enum.IntEnum):
    NORMAL = 0  # an application command
    NOOP = 1    # appended by every new leader, so it can commit entries of earlier terms
    CONFIG = 2  # data is an encoded Membership: takes effect when appended, not when committed


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Membership:
    """Who votes and who only learns. One server changes at a time (Raft dissertation 4.1)."""

    voters: frozenset[int]
    learners: frozenset[int] = frozenset()

    def members(self) -> list[int]:
        return sorted(self.voters | self.learners)

    def encode(self) -> bytes:
        voters = ",".join(str(v) for v in sorted(self.voters))
        learners = ",".join(str(v) for v in sorted(self.learners))
        return f"{voters};{learners}".encode()

    @staticmethod
    def decode(data: bytes) -> "Membership":
        voters, _, learners = data.decode().partition(";")
        parse = lambda text: frozenset(int(v) for v in text.split(",") if v)  # noqa: E731
        return Membership(parse(voters), parse(learners))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on stable storage before the node acts on it (votes, acknowledgements)."""

    term: int = 0
    vote: int = NONE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    membership: Membership = field(default_factory=lambda: Membership(frozenset()))
    size_bytes: int = 0


class MessageType(enum.IntEnum):
    PRE_VOTE = 1
    PRE_VOTE_RESPONSE = 2
    VOTE = 3
    VOTE_RESPONSE = 4
    APPEND = 5
    APPEND_RESPONSE = 6
    HEARTBEAT = 7
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9            # one chunk of a snapshot; data None means "driver, fill it in"
    SNAPSHOT_RESPONSE = 10
    TIMEOUT_NOW = 11        # leadership transfer: campaign now, skipping pre-vote


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    source: int
    target: int
    term: int
    # APPEND: the entry before `entries`; VOTE: the candidate's last entry; responses: see core.
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0     # APPEND_RESPONSE: where the leader should look next
    reject_term: int = 0     # APPEND_RESPONSE: the term of the follower's conflicting entry
    context: bytes = b""     # HEARTBEAT(_RESPONSE): the ReadIndex round; VOTE: b"transfer" forces
    snapshot: SnapshotMeta | None = None
    offset: int = 0          # SNAPSHOT: where `data` starts; SNAPSHOT_RESPONSE: bytes received
    data: bytes | None = None
    done: bool = False       # SNAPSHOT: the last chunk


def message_bytes(m: Message) -> int:
    """Roughly what a message holds in memory: its entries' and snapshot chunk's bytes, plus a
    fixed overhead. Queues of messages are bounded by this, not only by count: one append to a
    follower that is catching up can carry megabytes."""
    return 128 + sum(len(e.data) + 64 for e in m.entries) + len(m.data or b"") + len(m.context)
