"""Raft messages to and from their protobuf form (proto/raft.proto)."""
from __future__ import annotations

from cluster.proto import raft_pb2 as pb
from cluster.raft.messages import Entry, EntryKind, Membership, Message, MessageType, SnapshotMeta

MESSAGE_BYTES_MAX = 64 << 20  # gRPC limit for one batch: entries are capped far below this


def to_proto(m: Message) -> pb.RaftMessage:
    out = pb.RaftMessage(type=m.type, source=m.source, target=m.target, term=m.term, log_term=m.log_term,
                         index=m.index, commit=m.commit, reject=m.reject, reject_hint=m.reject_hint,
                         reject_term=m.reject_term, context=m.context, offset=m.offset, done=m.done)
    if m.entries:
        out.entries.extend(pb.Entry(term=e.term, index=e.index, kind=e.kind, data=e.data) for e in m.entries)
    if m.snapshot is not None:
        s = m.snapshot
        out.snapshot.CopyFrom(pb.SnapshotMeta(index=s.index, term=s.term, size_bytes=s.size_bytes,
                                              membership=pb.Membership(voters=sorted(s.membership.voters),
                                                                       learners=sorted(s.membership.learners))))
    if m.data is not None:
        out.data = m.data
    return out


def from_proto(p: pb.RaftMessage) -> Message:
    """Raises ValueError on a message no Raft peer could have sent."""
    try:
        kind = MessageType(p.type)
        entries = tuple(Entry(e.term, e.index, EntryKind(e.kind), e.data) for e in p.entries)
    except ValueError as error:
        raise ValueError(f"malformed Raft message: {error}") from None
    snapshot = None
    if p.HasField("snapshot"):
        s = p.snapshot
        snapshot = SnapshotMeta(s.index, s.term, Membership(frozenset(s.membership.voters),
                                                            frozenset(s.membership.learners)), s.size_bytes)
    return Message(kind, p.source, p.target, p.term, log_term=p.log_term, index=p.index, entries=entries,
                   commit=p.commit, reject=p.reject, reject_hint=p.reject_hint, reject_term=p.reject_term,
                   context=p.context, snapshot=snapshot, offset=p.offset,
                   data=p.data if p.HasField("data") else None, done=p.done)
