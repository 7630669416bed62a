"""Every limit of the Raft core in one place, checked once (TigerBeetle style)."""
from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A Raft configuration that cannot work; the message says which limit and why."""


@dataclass(frozen=True)
class RaftConfig:
    node_id: int
    election_ticks: int = 10          # follower silence before it campaigns (randomized up to 2x)
    heartbeat_ticks: int = 1          # leader heartbeat period
    pre_vote: bool = True             # ask before disrupting a term (Raft dissertation 9.6)
    check_quorum: bool = True         # a leader that hears from no quorum for an election steps down
    lease_read: bool = False          # ReadIndex without a heartbeat round (relies on bounded clock drift)
    inflight_messages_max: int = 256  # pipelined AppendEntries per follower before waiting for acks
    append_bytes_max: int = 1 << 20   # entry bytes in one AppendEntries
    apply_entries_max: int = 4096     # committed entries handed out in one Ready
    uncommitted_entries_max: int = 65536  # proposals refused past this many uncommitted entries
    snapshot_chunk_bytes: int = 1 << 20   # InstallSnapshot chunk size
    learner_catch_up_entries: int = 1000  # a learner this close to the leader's log may be promoted
    read_requests_max: int = 65536    # pending ReadIndex requests

    def validate(self) -> "RaftConfig":
        if self.node_id <= 0:
            raise ConfigError(f"node_id must be positive, got {self.node_id}")
        if self.heartbeat_ticks < 1:
            raise ConfigError("heartbeat_ticks must be >= 1")
        if self.election_ticks <= self.heartbeat_ticks * 2:
            raise ConfigError(f"election_ticks ({self.election_ticks}) must exceed two heartbeats "
                              f"({2 * self.heartbeat_ticks}) or followers campaign against a live leader")
        if self.lease_read and not self.check_quorum:
            raise ConfigError("lease_read needs check_quorum: without it a deposed leader could serve stale reads")
        for name in ("inflight_messages_max", "append_bytes_max", "apply_entries_max", "uncommitted_entries_max",
                     "snapshot_chunk_bytes", "read_requests_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        return self
