"""The Raft consensus algorithm as a pure state machine (in the manner of etcd's raft library).

Theory of operation. A `Raft` object does no I/O and reads no clock: the driver feeds it
`tick()` (time), `step(message)` (the network) and `propose(...)` / `read_index(...)` (clients),
then asks `ready()` for what to do: the hard state and entries to write to stable storage, the
messages to send, the committed entries to apply, the ReadIndex results to release. The driver
does all of it in that order (persist, then send `messages`; `messages_now` may go out before
persisting) and calls `advance(ready)`. Randomness comes from an injected `random.Random`, so a
seed replays a run exactly.

Roles swap behaviour through `self._step_role` rather than branching everywhere. Sections of the
Raft paper (Ongaro & Ousterhout 2014) and of Ongaro's dissertation are cited where they apply.
Implemented: elections with randomized timeouts, PreVote and CheckQuorum (dissertation 9.6),
replication with fast backtracking, pipelining and flow control, the commit rule for earlier
terms (paper 5.4.2), ReadIndex and optional lease reads (dissertation 6.4), leadership transfer
(3.10), chunked snapshots and compaction (paper 7), and single-server membership changes with
learners (dissertation 4.1-4.2, with the fix of committing an entry of the current term first).
"""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from cluster.raft.config import RaftConfig
from cluster.raft.log import RaftLog
from cluster.raft.messages import (NONE, Entry, EntryKind, HardState, Membership, Message, MessageType,
                                   SnapshotMeta)
from cluster.raft.progress import Progress, State

T = MessageType
TRANSFER = b"transfer"


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class NotLeader(Exception):
    """Only the leader accepts this; `leader` is the leader's id if known (else 0)."""

    def __init__(self, leader: int):
        super().__init__(f"not the leader (leader is {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(Exception):
    """The leader refused a proposal for now (transfer in progress, too much uncommitted, a
    membership change pending); retrying later is safe."""


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: the read tagged `context` is linearizable once `index` is applied."""

    context: bytes
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    hard_state: HardState | None       # persist if not None
    must_sync: bool                    # term, vote or entries changed: fsync before acting; a
                                       # commit-only change may be written lazily (etcd does too)
    entries: tuple[Entry, ...]         # persist; the store first drops everything from entries[0].index
    snapshot: SnapshotMeta | None      # a snapshot received in full: restore it, persist it, drop the log
    snapshot_chunks: tuple[Message, ...]  # received chunks to stage (offset, data)
    committed: tuple[Entry, ...]       # apply in order
    messages_now: tuple[Message, ...]  # may be sent before persisting (the leader's replication)
    messages: tuple[Message, ...]      # send only after persisting
    read_states: tuple[ReadState, ...]
    leader: int
    role: Role


@dataclass
class _ReadRequest:
    context: bytes
    index: int
    acks: set[int]


class Raft:
    def __init__(self, config: RaftConfig, rng: random.Random, hard_state: HardState = HardState(),
                 snapshot: SnapshotMeta | None = None, entries: list[Entry] | None = None):
        self.config = config.validate()
        self.id = config.node_id
        self.rng = rng
        self.term, self.vote = hard_state.term, hard_state.vote
        self.log = RaftLog(snapshot or SnapshotMeta(), entries or [], hard_state.commit)
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self.lead_transferee = NONE
        self._reads: list[_ReadRequest] = []
        self._reads_waiting: list[bytes] = []  # until this term's first entry commits
        self._read_states: list[ReadState] = []
        self._messages: list[Message] = []
        self._snapshot_chunks: list[Message] = []
        self._snapshot_received: tuple[int, int, int] | None = None  # (index, term, bytes so far)
        self._snapshot_installed: SnapshotMeta | None = None
        self._prev_hard_state = self.hard_state()
        self._step_role = self._step_follower
        self._reset_election_timeout()

    # ---- state

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit)

    def membership(self) -> Membership:
        return self.log.membership()

    def voters(self) -> frozenset[int]:
        return self.log.membership().voters

    def quorum(self) -> int:
        return len(self.voters()) // 2 + 1

    def promotable(self) -> bool:
        return self.id in self.voters()

    def _reset_election_timeout(self) -> None:
        self.election_elapsed = 0
        self.randomized_timeout = self.config.election_ticks + self.rng.randrange(self.config.election_ticks)

    def _send(self, message: Message) -> None:
        self._messages.append(message)

    def _message(self, type_: MessageType, target: int, **fields) -> Message:
        return Message(type_, self.id, target, fields.pop("term", self.term), **fields)

    # ---- role transitions

    def _become_follower(self, term: int, lead: int) -> None:
        if term > self.term:
            self.term, self.vote = term, NONE
        self.role, self.lead, self._step_role = Role.FOLLOWER, lead, self._step_follower
        self.lead_transferee = NONE
        self._reads.clear()
        self._reads_waiting.clear()
        self._reset_election_timeout()

    def _become_pre_candidate(self) -> None:
        # No term change: a node cut off from the cluster cannot inflate terms (dissertation 9.6).
        self.role, self.lead, self._step_role = Role.PRE_CANDIDATE, NONE, self._step_candidate
        self.votes = {self.id: True}

    def _become_candidate(self) -> None:
        self.term, self.vote = self.term + 1, self.id
        self.role, self.lead, self._step_role = Role.CANDIDATE, NONE, self._step_candidate
        self.votes = {self.id: True}
        self._reset_election_timeout()

    def _become_leader(self) -> None:
        self.role, self.lead, self._step_role = Role.LEADER, self.id, self._step_leader
        self.lead_transferee = NONE
        self.heartbeat_elapsed = 0
        self.election_elapsed = 0
        self.progress = {}
        for member in self.membership().members():
            self._add_progress(member)
        # Paper 5.4.2: entries of earlier terms commit only under an entry of this term.
        self.log.append([Entry(self.term, self.log.last_index() + 1, EntryKind.NOOP)])
        self._broadcast_append()

    def _add_progress(self, member: int) -> None:
        progress = Progress(self.log.last_index() + 1, self.config.inflight_messages_max)
        if member == self.id:
            progress.match = self.log.persisted
            progress.state = State.REPLICATE
        progress.recent_active = True
        self.progress[member] = progress

    # ---- the driver's inputs

    def tick(self) -> None:
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self.randomized_timeout:
            self._reset_election_timeout()
            self.campaign()

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            self.lead_transferee = NONE  # a transfer not done within an election timeout is abandoned
            if self.config.check_quorum and not self._quorum_active():
                self._become_follower(self.term, NONE)
                return
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(self._reads[-1].context if self._reads else b"")

    def _quorum_active(self) -> bool:
        active = 0
        for member, progress in self.progress.items():
            if member in self.voters() and (member == self.id or progress.recent_active):
                active += 1
            progress.recent_active = member == self.id
        return active >= self.quorum()

    def campaign(self, transfer: bool = False) -> None:
        """Starts an election now (pre-vote first unless this is a leadership transfer)."""
        self._campaign(pre_vote=self.config.pre_vote and not transfer, transfer=transfer)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if not self.promotable() or self.role is Role.LEADER:
            return
        if pre_vote:
            self._become_pre_candidate()
            kind, term = T.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            kind, term = T.VOTE, self.term
        if self._tally() == "won":
            return
        for voter in sorted(self.voters()):
            if voter != self.id:
                self._send(self._message(kind, voter, term=term, index=self.log.last_index(),
                                         log_term=self.log.last_term(), context=TRANSFER if transfer else b""))

    def step(self, m: Message) -> None:
        if m.target != self.id:
            return
        if m.term > self.term and not self._step_higher_term(m):
            return
        if m.term < self.term:
            self._step_lower_term(m)
            return
        if m.type in (T.PRE_VOTE, T.VOTE):
            self._step_vote(m)
        else:
            self._step_role(m)

    def _step_higher_term(self, m: Message) -> bool:
        """False if the message is to be ignored."""
        if m.type in (T.PRE_VOTE, T.VOTE):
            in_lease = self.config.check_quorum and self.lead != NONE and \
                self.election_elapsed < self.config.election_ticks
            if in_lease and m.context != TRANSFER:
                return False  # we heard from a leader recently: do not let a stray node depose it
            if m.type is T.PRE_VOTE:
                return True  # a pre-vote never changes our term
        if m.type is T.PRE_VOTE_RESPONSE and not m.reject:
            return True  # granted pre-votes carry the term the pre-candidate will use
        leader = m.source if m.type in (T.APPEND, T.HEARTBEAT, T.SNAPSHOT) else NONE
        self._become_follower(m.term, leader)
        return True

    def _step_lower_term(self, m: Message) -> None:
        if m.type in (T.APPEND, T.HEARTBEAT) and (self.config.check_quorum or self.config.pre_vote):
            # A deposed leader cut off by a partition learns our term and steps down.
            self._send(self._message(T.APPEND_RESPONSE, m.source))
        elif m.type is T.PRE_VOTE:
            self._send(self._message(T.PRE_VOTE_RESPONSE, m.source, reject=True))

    def _step_vote(self, m: Message) -> None:
        pre = m.type is T.PRE_VOTE
        may_vote = self.vote == m.source or (self.vote == NONE and self.lead == NONE) or (pre and m.term > self.term)
        response = T.PRE_VOTE_RESPONSE if pre else T.VOTE_RESPONSE
        if may_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted pre-vote answers with the candidate's term (paper 5.2 for real votes).
            self._send(self._message(response, m.source, term=m.term))
            if not pre:
                self.vote = m.source
                self.election_elapsed = 0
        else:
            self._send(self._message(response, m.source, reject=True))

    # ---- followers and candidates

    def _step_follower(self, m: Message) -> None:
        if m.type in (T.APPEND, T.HEARTBEAT, T.SNAPSHOT):
            self.election_elapsed = 0
            self.lead = m.source
            self._handle_from_leader(m)
        elif m.type is T.TIMEOUT_NOW:
            self.campaign(transfer=True)

    def _step_candidate(self, m: Message) -> None:
        if m.type in (T.APPEND, T.HEARTBEAT, T.SNAPSHOT):
            self._become_follower(m.term, m.source)
            self._handle_from_leader(m)
            return
        expected = T.PRE_VOTE_RESPONSE if self.role is Role.PRE_CANDIDATE else T.VOTE_RESPONSE
        if m.type is not expected or m.source not in self.voters():
            return
        self.votes[m.source] = not m.reject
        outcome = self._tally()
        if outcome == "lost":
            self._become_follower(self.term, NONE)

    def _tally(self) -> str:
        granted = sum(1 for v, ok in self.votes.items() if ok and v in self.voters())
        rejected = sum(1 for v, ok in self.votes.items() if not ok and v in self.voters())
        if granted >= self.quorum():
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False, transfer=False)  # pre-vote won: the real election
            else:
                self._become_leader()
            return "won"
        if rejected > len(self.voters()) - self.quorum():
            return "lost"
        return "pending"

    def _handle_from_leader(self, m: Message) -> None:
        if m.type is T.APPEND:
            self._handle_append(m)
        elif m.type is T.HEARTBEAT:
            self.log.commit_to(min(m.commit, self.log.last_index()))
            self._send(self._message(T.HEARTBEAT_RESPONSE, m.source, context=m.context))
        else:
            self._handle_snapshot_chunk(m)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.commit:
            self._send(self._message(T.APPEND_RESPONSE, m.source, index=self.log.commit))
            return
        last = self.log.maybe_append(m.index, m.log_term, m.entries)
        if last is not None:
            self.log.commit_to(min(m.commit, last))
            self._send(self._message(T.APPEND_RESPONSE, m.source, index=last))
            return
        hint_index, hint_term = self.log.conflict_hint(m.index, m.log_term)
        self._send(self._message(T.APPEND_RESPONSE, m.source, index=m.index, reject=True,
                                 reject_hint=hint_index, reject_term=hint_term))

    def _handle_snapshot_chunk(self, m: Message) -> None:
        meta = m.snapshot
        if meta is not None and self.log.matches(meta.index, meta.term):
            # Paper 7: we hold the snapshot's last entry: keep the entries after it (we may have
            # acknowledged them), and only learn that everything up to it is committed.
            self.log.commit_to(meta.index)
            self._send(self._message(T.SNAPSHOT_RESPONSE, m.source, index=meta.index, done=True))
            return
        if meta is None or meta.index <= self.log.commit:
            # Nothing to install: tell the leader where we are so it resumes with entries.
            self._send(self._message(T.SNAPSHOT_RESPONSE, m.source, index=self.log.commit, done=True))
            return
        received = self._snapshot_received
        if m.offset == 0:
            received = (meta.index, meta.term, 0)
        if received is None or received[:2] != (meta.index, meta.term) or m.offset != received[2]:
            have = received[2] if received and received[:2] == (meta.index, meta.term) else 0
            self._send(self._message(T.SNAPSHOT_RESPONSE, m.source, index=meta.index, offset=have, reject=True))
            return
        data = m.data or b""
        self._snapshot_chunks.append(m)
        self._snapshot_received = (meta.index, meta.term, m.offset + len(data))
        if m.done:
            self._snapshot_received = None
            self._snapshot_installed = meta
            self.log.restore(meta)
        self._send(self._message(T.SNAPSHOT_RESPONSE, m.source, index=meta.index,
                                 offset=m.offset + len(data), done=m.done))

    # ---- leader

    def _step_leader(self, m: Message) -> None:
        progress = self.progress.get(m.source)
        if progress is None:
            return
        progress.recent_active = True
        if m.type is T.APPEND_RESPONSE:
            self._handle_append_response(m, progress)
        elif m.type is T.HEARTBEAT_RESPONSE:
            progress.probe_sent = False
            if progress.state is State.SNAPSHOT:
                self._send_snapshot_chunk(m.source, progress)  # resend if a chunk was lost
            elif progress.match < self.log.last_index():
                # An empty append finds out if the follower lost what we streamed to it: it
                # rejects, and we probe back from its answer.
                self._send_append(m.source, send_if_empty=True)
            if m.context:
                self._ack_read(m.source, m.context)
        elif m.type is T.SNAPSHOT_RESPONSE:
            self._handle_snapshot_response(m, progress)

    def _handle_append_response(self, m: Message, progress: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.reject_term > 0:
                hint, _ = self.log.conflict_hint(m.reject_hint, m.reject_term)
            if progress.rejected(m.index, hint):
                self._send_append(m.source)
            return
        if not progress.acknowledged(m.index):
            return
        if progress.state is State.PROBE:
            progress.become_replicate()
        if self._maybe_commit():
            self._broadcast_append()
        else:
            self._send_append(m.source)  # more to send, or an inflight slot was freed
        if m.source == self.lead_transferee and progress.match == self.log.last_index():
            self._send(self._message(T.TIMEOUT_NOW, m.source))

    def _handle_snapshot_response(self, m: Message, progress: Progress) -> None:
        if progress.state is not State.SNAPSHOT:
            return
        if m.done and not m.reject:
            progress.acknowledged(m.index)
            progress.become_probe()
            self._send_append(m.source)
            return
        progress.snapshot_offset = m.offset
        self._send_snapshot_chunk(m.source, progress)

    def _maybe_commit(self) -> bool:
        matches = sorted((self.progress[v].match for v in self.voters() if v in self.progress), reverse=True)
        if len(matches) < self.quorum():
            return False
        candidate = matches[self.quorum() - 1]
        if candidate <= self.log.commit or self.log.term(candidate) != self.term:
            return False  # paper 5.4.2: count replicas only of entries from this term
        first_commit_of_term = self.log.term(self.log.commit) != self.term
        self.log.commit_to(candidate)
        if first_commit_of_term:
            self._release_waiting_reads()
        if self.id not in self.log.membership().voters and self.log.pending_config_index() == 0:
            self._become_follower(self.term, NONE)  # removed: step down once the change commits
        return True

    def _broadcast_append(self) -> None:
        for member in sorted(self.progress):
            if member != self.id:
                self._send_append(member)

    def _broadcast_heartbeat(self, context: bytes) -> None:
        for member in sorted(self.progress):
            if member != self.id:
                progress = self.progress[member]
                self._send(self._message(T.HEARTBEAT, member, commit=min(progress.match, self.log.commit),
                                         context=context))

    def _send_append(self, target: int, send_if_empty: bool = False) -> None:
        progress = self.progress[target]
        if progress.paused():
            return
        prev_index = progress.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None:
            progress.become_snapshot(self.log.snapshot.index)
            self._send_snapshot_chunk(target, progress)
            return
        entries = ()
        if progress.next <= self.log.last_index():
            entries = self.log.slice(progress.next, self.log.last_index(), self.config.append_bytes_max)
        if not entries and progress.state is State.REPLICATE and not send_if_empty:
            return  # nothing new; heartbeats carry the commit index
        self._send(self._message(T.APPEND, target, index=prev_index, log_term=prev_term, entries=entries,
                                 commit=self.log.commit))
        progress.sent_entries(entries[-1].index if entries else prev_index)

    def _send_snapshot_chunk(self, target: int, progress: Progress) -> None:
        meta = self.log.snapshot
        if progress.snapshot_index != meta.index:
            progress.become_snapshot(meta.index)  # we compacted again: restart with the new one
        end = progress.snapshot_offset + self.config.snapshot_chunk_bytes
        self._send(self._message(T.SNAPSHOT, target, snapshot=meta, offset=progress.snapshot_offset,
                                 data=None, done=end >= meta.size_bytes))

    # ---- client requests

    def propose(self, commands: list[bytes]) -> int:
        """Appends commands (one entry each); returns the index of the last one."""
        if not commands:
            raise ValueError("propose needs at least one command")
        return self._append_entries([(EntryKind.NORMAL, data) for data in commands])

    def propose_membership(self, new: Membership) -> int:
        """One server changes at a time: add a learner, promote a caught-up learner, or remove."""
        current = self.membership()
        self._check_membership_change(current, new)
        return self._append_entries([(EntryKind.CONFIG, new.encode())], config=new)

    def _check_membership_change(self, current: Membership, new: Membership) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.log.pending_config_index():
            raise ProposalDropped("a membership change is still uncommitted")
        if self.log.term(self.log.commit) != self.term:
            raise ProposalDropped("the leader has not committed an entry of its term yet")
        changed = (current.voters ^ new.voters) | (current.learners ^ new.learners)
        if len(changed) > 1 or not new.voters:
            raise ValueError(f"change one server at a time: {current} -> {new}")
        if new.voters & new.learners:
            raise ValueError("a node cannot be voter and learner at once")
        for promoted in (new.voters - current.voters):
            progress = self.progress.get(promoted)
            if promoted not in current.learners or progress is None or \
                    progress.match + self.config.learner_catch_up_entries < self.log.last_index():
                raise ProposalDropped(f"node {promoted} must be a caught-up learner before it votes")

    def _append_entries(self, items: list[tuple[EntryKind, bytes]], config: Membership | None = None) -> int:
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership is moving to {self.lead_transferee}")
        if self.log.last_index() - self.log.commit + len(items) > self.config.uncommitted_entries_max:
            raise ProposalDropped("too many uncommitted entries; slow down")
        first = self.log.last_index() + 1
        self.log.append([Entry(self.term, first + i, kind, data) for i, (kind, data) in enumerate(items)])
        if config is not None:
            for member in config.members():
                if member not in self.progress:
                    self._add_progress(member)
            for member in list(self.progress):
                if member not in config.members() and member != self.id:
                    del self.progress[member]
        self._broadcast_append()
        return self.log.last_index()

    def read_index(self, context: bytes) -> None:
        """Asks for a linearizable read point; the answer arrives as a ReadState in a Ready."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if len(self._reads) + len(self._reads_waiting) >= self.config.read_requests_max:
            raise ProposalDropped("too many pending reads")
        if self.log.term(self.log.commit) != self.term:
            self._reads_waiting.append(context)  # our commit index is not known to be current yet
            return
        self._start_read(context)

    def _start_read(self, context: bytes) -> None:
        if self.quorum() == 1 or self.config.lease_read:
            self._read_states.append(ReadState(context, self.log.commit))
            return
        self._reads.append(_ReadRequest(context, self.log.commit, {self.id}))
        self._broadcast_heartbeat(context)

    def _release_waiting_reads(self) -> None:
        waiting, self._reads_waiting = self._reads_waiting, []
        for context in waiting:
            self._start_read(context)

    def _ack_read(self, member: int, context: bytes) -> None:
        for position, request in enumerate(self._reads):
            if request.context == context:
                request.acks.add(member)
                if len(request.acks & self.voters()) >= self.quorum():
                    # A quorum confirmed us as leader after every earlier request too.
                    for done in self._reads[:position + 1]:
                        self._read_states.append(ReadState(done.context, done.index))
                    del self._reads[:position + 1]
                return

    def transfer_leadership(self, target: int) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if target == self.id or target not in self.voters():
            raise ValueError(f"cannot transfer leadership to {target}: not another voter")
        self.lead_transferee = target
        self.election_elapsed = 0
        if self.progress[target].match == self.log.last_index():
            self._send(self._message(T.TIMEOUT_NOW, target))
        else:
            self._send_append(target)

    # ---- the driver's outputs

    def has_ready(self) -> bool:
        return bool(self._messages or self.log.unstable() or self._read_states or self._snapshot_chunks
                    or self._snapshot_installed or self.hard_state() != self._prev_hard_state
                    or self.log.applicable(1))

    def ready(self) -> Ready:
        hard_state = self.hard_state()
        now, later = [], []
        for m in self._messages:
            leader_replication = self.role is Role.LEADER and m.type in (T.APPEND, T.HEARTBEAT, T.SNAPSHOT)
            (now if leader_replication else later).append(m)
        previous = self._prev_hard_state
        entries = tuple(self.log.unstable())
        ready = Ready(
            hard_state=hard_state if hard_state != previous else None,
            must_sync=bool(entries) or self._snapshot_installed is not None
            or (hard_state.term, hard_state.vote) != (previous.term, previous.vote),
            entries=entries,
            snapshot=self._snapshot_installed,
            snapshot_chunks=tuple(self._snapshot_chunks),
            committed=tuple(self.log.applicable(self.config.apply_entries_max)),
            messages_now=tuple(now),
            messages=tuple(later),
            read_states=tuple(self._read_states),
            leader=self.lead,
            role=self.role,
        )
        self._messages, self._read_states, self._snapshot_chunks = [], [], []
        self._snapshot_installed = None
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver persisted and sent everything in `ready` and took its committed entries."""
        if ready.entries:
            last = ready.entries[-1]
            self.log.mark_persisted(last.index, last.term)
        if ready.committed:
            self.log.applied_to(ready.committed[-1].index)
        if self.role is Role.LEADER and self.id in self.progress:
            self.progress[self.id].match = self.log.persisted
            if self._maybe_commit():
                self._broadcast_append()

    def compact(self, snapshot: SnapshotMeta) -> None:
        """The driver snapshotted the state machine at snapshot.index: drop the log up to it."""
        self.log.compact(snapshot)

    def status(self) -> dict:
        return {"id": self.id, "term": self.term, "vote": self.vote, "role": self.role.value, "leader": self.lead,
                "commit": self.log.commit, "applied": self.log.applied, "last_index": self.log.last_index(),
                "persisted": self.log.persisted, "membership": self.membership().encode().decode()}
