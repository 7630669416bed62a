"""The cold tier's command-line pieces: lifecycle rules and durations as people type them."""
import pytest
from hypothesis import given, strategies as st

from cluster.proto import meta_pb2 as pb
from cluster.tier_commands import describe_rule, parse_duration, parse_rule


def test_a_rule_as_typed():
    assert parse_rule("target=cloud,prefix=raw/,min-size=1MiB,after-created=30d,after-read=12h,reheat") == {
        "target": "cloud", "prefix": "raw/", "min_size": 1 << 20, "after_created_seconds": 30 * 86_400,
        "after_read_seconds": 12 * 3600, "reheat_on_read": True}
    assert parse_rule("target=t,after-read=90m,reheat=no") == {"target": "t", "after_read_seconds": 5400,
                                                               "reheat_on_read": False}


@pytest.mark.parametrize("text, message", [
    ("prefix=a/,after-read=1d", "needs target"),
    ("target=t", "after-created=DURATION or after-read"),
    ("target=t,after-read=1w", "bad duration"),
    ("target=t,after-read=", "needs a value"),
    ("target=t,after-read=1d,colour=blue", "unknown rule field 'colour'"),
    ("target=t,after-read=1d,min-size=lots", "not a size"),
    ("target=t,after-read=1d,reheat=maybe", "reheat takes no value"),
])
def test_a_bad_rule_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_rule(text)


@given(st.builds(pb.LifecycleRule, target=st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True),
                 prefix=st.from_regex(r"[a-z0-9/._-]{0,20}", fullmatch=True), min_size=st.integers(0, 1 << 40),
                 after_created_seconds=st.integers(1, 10**9), after_read_seconds=st.integers(0, 10**9),
                 reheat_on_read=st.booleans()))
def test_a_described_rule_parses_back_to_itself(rule):
    assert pb.LifecycleRule(**parse_rule(describe_rule(rule))) == rule


@given(st.integers(0, 10**7), st.sampled_from(["", "s", "m", "h", "d"]))
def test_durations(count, unit):
    assert parse_duration(f"{count}{unit}") == count * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}[unit]
