"""Lifecycle rules (cluster/tier/lifecycle.py): which objects go cold, and where."""
from hypothesis import given, strategies as st

from cluster.proto import meta_pb2 as pb
from cluster.tier.lifecycle import first_match, reheats, rule_matches

DAY_MS = 86_400_000


def head(size, age_days, marker=False, now_ms=100 * DAY_MS):
    return pb.ObjectHead(size=size, modified_ms=now_ms - age_days * DAY_MS, delete_marker=marker)


def test_rules_select_by_prefix_size_and_age_first_match_wins():
    now = 100 * DAY_MS
    rules = [pb.LifecycleRule(prefix="logs/", after_created_seconds=7 * 86_400, target="cheap"),
             pb.LifecycleRule(min_size=1 << 20, after_created_seconds=30 * 86_400, target="archive")]
    objects = [("logs/a", head(10, 8)),            # old log: first rule
               ("logs/b", head(10, 6)),            # young log: neither
               ("video/c", head(2 << 20, 31)),     # big and old: second rule
               ("video/d", head(100, 31)),         # old but small: neither
               ("logs/e", head(2 << 20, 40)),      # both match: the first wins
               ("logs/f", head(10, 9, marker=True))]  # a delete marker never moves
    chosen = [(key, target) for key, head in objects if (target := first_match(rules, key, head, now))]
    assert chosen == [("logs/a", "cheap"), ("video/c", "archive"), ("logs/e", "cheap")]


def test_read_time_rules_count_from_the_last_read_or_else_the_write():
    now = 100 * DAY_MS
    rule = pb.LifecycleRule(after_read_seconds=30 * 86_400, target="cheap")
    never_read = head(10, 50)
    assert rule_matches(rule, "k", never_read, now)
    read_lately = head(10, 50)
    read_lately.read_ms = now - 2 * DAY_MS
    assert not rule_matches(rule, "k", read_lately, now)
    read_long_ago = head(10, 50)
    read_long_ago.read_ms = now - 31 * DAY_MS
    assert rule_matches(rule, "k", read_long_ago, now)
    both = pb.LifecycleRule(after_read_seconds=30 * 86_400, after_created_seconds=60 * 86_400, target="cheap")
    assert not rule_matches(both, "k", read_long_ago, now)  # both conditions must hold
    assert not rule_matches(pb.LifecycleRule(target="cheap"), "k", never_read, now)  # no condition: no rule


def test_reheat_follows_the_rule_for_the_key_and_the_chunk_tier():
    rules = [pb.LifecycleRule(prefix="hot/", after_read_seconds=60, target="cheap", reheat_on_read=True),
             pb.LifecycleRule(prefix="", after_read_seconds=60, target="cheap")]
    assert reheats(rules, "hot/a", "cheap")
    assert not reheats(rules, "cold/a", "cheap")
    assert not reheats(rules, "hot/a", "other")


@given(age_seconds=st.integers(0, 10**8), after=st.integers(1, 10**8), size=st.integers(0, 10**9),
       min_size=st.integers(0, 10**9))
def test_a_rule_matches_exactly_at_its_thresholds(age_seconds, after, size, min_size):
    now = 10**12
    h = pb.ObjectHead(size=size, modified_ms=now - age_seconds * 1000)
    rule = pb.LifecycleRule(after_created_seconds=after, min_size=min_size, target="t")
    assert rule_matches(rule, "any", h, now) == (age_seconds >= after and size >= min_size)
