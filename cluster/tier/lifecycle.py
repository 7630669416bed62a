"""Which objects a bucket's lifecycle rules send to a cold tier. Pure: object heads and rules
in, (key, target) out, so the leader (and the simulator) decide the same way from the same state.

An object matches a rule when its key starts with the rule's prefix, it is at least min_size
bytes, it was written more than after_created_seconds ago and was last read (or, never read,
written) more than after_read_seconds ago; a zero is no condition. The first matching rule wins.
Read times are recorded by the leader to a resolution (cluster/meta/tiering.py), so a rule by
read time is as exact as that resolution.
"""
from __future__ import annotations

from typing import Iterable

from cluster.proto import meta_pb2 as pb


def rule_matches(rule: pb.LifecycleRule, key: str, head: pb.ObjectHead, now_ms: int) -> bool:
    if head.delete_marker or not key.startswith(rule.prefix) or head.size < rule.min_size:
        return False
    if not (rule.after_created_seconds or rule.after_read_seconds):
        return False
    if rule.after_created_seconds and now_ms - head.modified_ms < rule.after_created_seconds * 1000:
        return False
    last_read = max(head.read_ms, head.modified_ms)
    return not rule.after_read_seconds or now_ms - last_read >= rule.after_read_seconds * 1000


def first_match(rules: Iterable[pb.LifecycleRule], key: str, head: pb.ObjectHead, now_ms: int) -> str:
    """The target of the first rule that sends the object cold, or ""."""
    for rule in rules:
        if rule_matches(rule, key, head, now_ms):
            return rule.target
    return ""


def reheats(rules: Iterable[pb.LifecycleRule], key: str, target: str) -> bool:
    """Whether a read of the object's chunks cold in `target` brings them back: a rule for its
    key and that target asks for it."""
    return any(rule.reheat_on_read and rule.target == target and key.startswith(rule.prefix) for rule in rules)

