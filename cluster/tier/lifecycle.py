"""Which objects a bucket's lifecycle rules send to a cold tier. Pure: object heads and rules
in, (key, target) out, so the leader (and the simulator) decide the same way from the same state.

An object matches a rule when its key starts with the rule's prefix, it is at least min_size
bytes, and it was written more than after_created_seconds ago. The first matching rule wins.
Rules by time since the last read (after_read_seconds) need read times, which the metadata does
not record yet: such a rule matches nothing until it does.
"""
from __future__ import annotations

from typing import Iterable

from cluster.proto import meta_pb2 as pb


def rule_matches(rule: pb.LifecycleRule, key: str, head: pb.ObjectHead, now_ms: int) -> bool:
    if head.delete_marker or not key.startswith(rule.prefix) or head.size < rule.min_size:
        return False
    if not rule.after_created_seconds:
        return False  # read-time rules: no read times recorded yet
    return now_ms - head.modified_ms >= rule.after_created_seconds * 1000


def cold_candidates(rules: Iterable[pb.LifecycleRule], objects: Iterable[tuple[str, pb.ObjectHead]],
                    now_ms: int) -> list[tuple[str, str]]:
    """(key, target) for every object the first matching rule sends to a tier."""
    rules = list(rules)
    out = []
    for key, head in objects:
        for rule in rules:
            if rule_matches(rule, key, head, now_ms):
                out.append((key, rule.target))
                break
    return out
