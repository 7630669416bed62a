"""The data plane's message codecs: round trips and refusals."""
import pytest
from hypothesis import given, strategies as st

from cluster.data import wire

ids = st.binary(min_size=32, max_size=32)
items = st.lists(st.tuples(ids, st.integers(0, 254), st.integers(0, 2**32 - 1)), min_size=1, max_size=wire.PUT_MANY_MAX)
texts = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=50)


@given(items)
def test_put_many_headers_round_trip(batch):
    assert wire.decode_put_many(wire.join_headers([wire.encode_put(*i) for i in batch])) == batch


gets = st.lists(st.tuples(ids, st.integers(0, 254), st.integers(0, 2**63), st.none() | st.integers(0, 2**63)),
                min_size=1, max_size=wire.PUT_MANY_MAX)


@given(gets)
def test_get_many_headers_round_trip(batch):
    assert wire.decode_get_many(wire.join_headers([wire.encode_get(*i) for i in batch])) == batch


@given(st.lists(st.tuples(st.integers(0, 5), texts), min_size=1, max_size=64))
def test_statuses_round_trip(results):
    expected = [(status, "" if status == wire.OK else text.encode()[:256].decode(errors="replace"))
                for status, text in results]
    assert wire.decode_statuses(wire.encode_statuses(results), len(results)) == expected


def test_put_many_refusals():
    one = (b"x" * 32, 0, 0)
    with pytest.raises(ValueError):
        wire.join_headers([])
    with pytest.raises(ValueError):
        wire.join_headers([wire.encode_put(*one)] * (wire.PUT_MANY_MAX + 1))
    with pytest.raises(ValueError):
        wire.encode_put(b"short", 0, 0)
    header = wire.join_headers([wire.encode_put(*one)] * 2)
    with pytest.raises(ValueError):
        wire.decode_put_many(header[:-1])
    with pytest.raises(ValueError):
        wire.decode_statuses(b"\x00", 2)
    with pytest.raises(ValueError):
        wire.decode_get_many(wire.encode_get(b"x" * 32, 0)[:-1])


@given(st.lists(st.binary(max_size=300), max_size=wire.PUT_MANY_MAX))
def test_payloads_joined_split_back_into_views_of_one_frame(payloads):
    sizes, joined = wire.join_payloads(payloads)
    parts = wire.split_payloads(sizes, memoryview(joined), len(payloads))
    assert [bytes(p) for p in parts] == payloads
    assert all(p.obj is parts[0].obj for p in parts)  # views of the one frame, not copies


def test_joined_payloads_that_disagree_with_their_sizes_are_refused():
    sizes, joined = wire.join_payloads([b"abc", b"", b"defg"])
    with pytest.raises(ValueError, match="sizes"):
        wire.split_payloads(sizes, joined, 2)  # the header names two fragments, the sizes three
    with pytest.raises(ValueError, match="add up to 7 bytes, its payloads to 6"):
        wire.split_payloads(sizes, joined[:-1], 3)
    with pytest.raises(ValueError, match="add up to 7 bytes, its payloads to 8"):
        wire.split_payloads(sizes, joined + b"x", 3)
    with pytest.raises(ValueError):
        wire.join_payloads([b"x"] * (wire.PUT_MANY_MAX + 1))


@given(st.lists(st.tuples(ids, st.integers(0, 254)), min_size=1, max_size=200))
def test_touch_headers_round_trip(fragments):
    assert wire.decode_touch(wire.encode_touch(fragments)) == fragments


def test_touch_refusals():
    with pytest.raises(ValueError):
        wire.encode_touch([])
    with pytest.raises(ValueError):
        wire.encode_touch([(b"x" * 32, 0)] * (wire.TOUCH_MAX + 1))
    with pytest.raises(ValueError):
        wire.decode_touch(b"x" * 34)  # not a whole number of ids
    with pytest.raises(ValueError):
        wire.decode_touch(b"")
