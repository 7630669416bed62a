"""The replicated-state-machine interface, and client sessions for exactly-once commands.

A state machine sees committed commands in log order, on every node, and must be
deterministic: the same commands give the same state and results everywhere. It snapshots to
bytes (taken as of its last applied index) and restores from them.

Sessions (Raft dissertation 6.3): a client tags each command with its id and a sequence
number. When a leader fails after committing a command but before answering, the client retries
on the new leader; the session table, part of the replicated state, recognizes the retry and
answers with the stored result instead of applying it twice. The table is bounded: past
`sessions_max` clients the one idle longest (by log index, so every node evicts the same one)
is dropped, and a retry from it gets SessionExpired rather than a second application.
"""
from __future__ import annotations

import struct
from typing import Protocol

_ENVELOPE = struct.Struct(">QQ")  # client id, sequence
NO_SESSION = 0


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> bytes: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class SessionExpired(Exception):
    """The client's session was evicted; the command may or may not have been applied."""


def envelope(client_id: int, sequence: int, command: bytes) -> bytes:
    return _ENVELOPE.pack(client_id, sequence) + command


class Sessions:
    """Wraps a state machine so that enveloped commands apply at most once per (client, sequence)."""

    RESULT_EXPIRED = b"\x00session-expired"

    def __init__(self, inner: StateMachine, sessions_max: int = 100_000):
        self.inner = inner
        self.sessions_max = sessions_max
        self._sessions: dict[int, tuple[int, int, bytes]] = {}  # client -> (sequence, last index, result)

    def apply(self, index: int, data: bytes) -> bytes:
        client, sequence = _ENVELOPE.unpack_from(data)
        command = data[_ENVELOPE.size:]
        if client == NO_SESSION:
            return self.inner.apply(index, command)
        known = self._sessions.get(client)
        if known is not None and sequence <= known[0]:
            return known[2] if sequence == known[0] else self.RESULT_EXPIRED
        result = self.inner.apply(index, command)
        self._sessions[client] = (sequence, index, result)
        if len(self._sessions) > self.sessions_max:
            idle = min(self._sessions.items(), key=lambda item: (item[1][1], item[0]))[0]
            del self._sessions[idle]
        return result

    def snapshot(self) -> bytes:
        table = b"".join(struct.pack(">QQQI", c, s, i, len(r)) + r for c, (s, i, r) in sorted(self._sessions.items()))
        return struct.pack(">Q", len(table)) + table + self.inner.snapshot()

    def restore(self, data: bytes) -> None:
        (size,) = struct.unpack_from(">Q", data)
        table, position = data[8:8 + size], 0
        self._sessions = {}
        while position < len(table):
            client, sequence, index, length = struct.unpack_from(">QQQI", table, position)
            position += 28
            self._sessions[client] = (sequence, index, bytes(table[position:position + length]))
            position += length
        self.inner.restore(data[8 + size:])
