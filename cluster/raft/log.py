"""The Raft log as the core sees it: pure, in memory, with a stable/unstable boundary.

Theory of operation. The log holds every entry after the last snapshot (compaction keeps it
short). `persisted` is the last index known to be on stable storage: entries past it are handed
to the driver in the next Ready and count as persisted only when the driver says so (advance).
A follower that learns of a conflicting suffix truncates it here; if the truncation reaches
entries already persisted, `persisted` moves back, and the next Ready starts at the truncation
point, telling the store to cut its suffix there. Entries are applied only once committed AND
persisted, so a node never applies what it could lose in a crash.

Configuration entries take effect as soon as they are in the log (single-server changes), so
the log also remembers where each one sits, to fall back to the previous one on truncation.
"""
from __future__ import annotations

from cluster.raft.messages import Entry, EntryKind, Membership, SnapshotMeta


class LogError(Exception):
    """The core asked the log for something that breaks an invariant: a bug, never input."""


class RaftLog:
    def __init__(self, snapshot: SnapshotMeta, entries: list[Entry], commit: int):
        self.snapshot = snapshot
        self.entries = list(entries)
        self.persisted = self.last_index()
        self.commit = max(commit, snapshot.index)
        self.applied = snapshot.index
        self._configs = [(e.index, Membership.decode(e.data)) for e in self.entries if e.kind == EntryKind.CONFIG]
        self._check_contiguous()

    def _check_contiguous(self) -> None:
        for offset, entry in enumerate(self.entries):
            if entry.index != self.snapshot.index + 1 + offset:
                raise LogError(f"log not contiguous at {entry.index}")

    # ---- positions

    def first_index(self) -> int:
        return self.snapshot.index + 1

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot.index

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term(self, index: int) -> int | None:
        """The term of the entry at index; None if compacted away or past the end."""
        if index == self.snapshot.index:
            return self.snapshot.term
        if index < self.snapshot.index or index > self.last_index():
            return None
        return self.entries[index - self.first_index()].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.first_index()]

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft 5.4.1: a candidate's log is at least as up to date as ours."""
        return last_term > self.last_term() or (last_term == self.last_term() and last_index >= self.last_index())

    def membership(self) -> Membership:
        return self._configs[-1][1] if self._configs else self.snapshot.membership

    def membership_at(self, index: int) -> Membership:
        """The membership in force once the log up to index is applied."""
        found = self.snapshot.membership
        for config_index, membership in self._configs:
            if config_index > index:
                break
            found = membership
        return found

    def pending_config_index(self) -> int:
        """Index of the newest config entry not yet committed (0 if none)."""
        if self._configs and self._configs[-1][0] > self.commit:
            return self._configs[-1][0]
        return 0

    # ---- changes

    def append(self, entries: list[Entry]) -> None:
        """Appends after the last entry (leader path, or a follower after conflict checks)."""
        for entry in entries:
            if entry.index != self.last_index() + 1:
                raise LogError(f"append of {entry.index} after {self.last_index()}")
            self.entries.append(entry)
            if entry.kind == EntryKind.CONFIG:
                self._configs.append((entry.index, Membership.decode(entry.data)))

    def truncate_from(self, index: int) -> None:
        if index <= self.commit:
            raise LogError(f"truncating committed entry {index} (commit {self.commit})")
        del self.entries[index - self.first_index():]
        self._configs = [(i, c) for i, c in self._configs if i < index]
        self.persisted = min(self.persisted, index - 1)

    def maybe_append(self, prev_index: int, prev_term: int, entries: tuple[Entry, ...]) -> int | None:
        """Follower side of AppendEntries: None on mismatch, else the last index now matching."""
        if not self.matches(prev_index, prev_term):
            return None
        for entry in entries:
            if entry.index <= self.snapshot.index:
                continue  # already covered by our snapshot
            existing = self.term(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                self.truncate_from(entry.index)
            self.append([e for e in entries if e.index >= entry.index])
            break
        return prev_index + len(entries)

    def conflict_hint(self, index: int, term: int) -> tuple[int, int]:
        """Fast backtracking (etcd style): for a rejected append at (index, term), the largest
        index <= index whose term <= term, and that term. The leader resumes from there."""
        index = min(index, self.last_index())
        while index > self.snapshot.index:
            entry_term = self.term(index)
            if entry_term is not None and entry_term <= term:
                return index, entry_term
            index -= 1
        return self.snapshot.index, self.snapshot.term

    def commit_to(self, index: int) -> bool:
        if index > self.commit:
            if index > self.last_index():
                raise LogError(f"commit {index} past last index {self.last_index()}")
            self.commit = index
            return True
        return False

    # ---- the driver's view

    def unstable(self) -> list[Entry]:
        return self.entries[self.persisted + 1 - self.first_index():]

    def mark_persisted(self, index: int, term: int) -> None:
        # A later truncation may have replaced the entry that was written: check its term.
        if index > self.persisted and self.term(index) == term:
            self.persisted = index

    def applicable(self, max_count: int) -> list[Entry]:
        high = min(self.commit, self.persisted, self.applied + max_count)
        if high <= self.applied:
            return []
        return self.entries[self.applied + 1 - self.first_index():high + 1 - self.first_index()]

    def applied_to(self, index: int) -> None:
        if index < self.applied or index > min(self.commit, self.persisted):
            raise LogError(f"applied {index} outside ({self.applied}, {min(self.commit, self.persisted)}]")
        self.applied = index

    def slice(self, low: int, high: int, max_bytes: int) -> tuple[Entry, ...]:
        """Entries [low, high], at least one, then as many as fit in max_bytes."""
        out, size = [], 0
        for index in range(low, high + 1):
            entry = self.entry(index)
            size += len(entry.data) + 32
            if out and size > max_bytes:
                break
            out.append(entry)
        return tuple(out)

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Installs a snapshot received from the leader: the log restarts after it."""
        self.snapshot = snapshot
        self.entries = []
        self._configs = []
        self.commit = max(self.commit, snapshot.index)
        self.applied = snapshot.index
        self.persisted = snapshot.index

    def compact(self, snapshot: SnapshotMeta) -> None:
        """Drops entries up to a snapshot the driver took locally (at or below applied)."""
        if snapshot.index > self.applied or snapshot.index <= self.snapshot.index:
            raise LogError(f"compaction to {snapshot.index} outside ({self.snapshot.index}, {self.applied}]")
        if self.term(snapshot.index) != snapshot.term:
            raise LogError(f"snapshot term {snapshot.term} differs from the log at {snapshot.index}")
        del self.entries[:snapshot.index + 1 - self.first_index()]
        self._configs = [(i, c) for i, c in self._configs if i > snapshot.index]
        self.snapshot = snapshot
