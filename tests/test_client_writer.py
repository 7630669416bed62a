"""The write path's pure parts: cutting a source of any shape into the same chunks."""
import asyncio
import io

from hypothesis import given, settings, strategies as st

from cluster.client.writer import Budget, chunks
from cluster.codec import Chunker, chunk_lengths

SIZES = dict(min_size=64, avg_size=256, max_size=1024)


def cut(source) -> list[bytes]:
    async def run():
        return [bytes(c) async for c in chunks(source, Chunker(**SIZES))]
    return asyncio.run(run())


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=6000), st.lists(st.integers(1, 700), max_size=30))
def test_any_split_of_a_source_gives_the_chunks_of_the_whole(data, cuts):
    expected, offset = [], 0
    for length in chunk_lengths(data, **SIZES):
        expected.append(data[offset:offset + length])
        offset += length
    pieces, start = [], 0
    for size in cuts:
        pieces.append(bytearray(data[start:start + size]))  # mutable: the writer must copy it
        start += size
    pieces.append(bytearray(data[start:]))
    assert cut(data) == expected
    assert cut(iter(pieces)) == expected
    assert cut(io.BytesIO(data)) == expected


def test_a_budget_lets_one_oversized_take_through_alone():
    async def run():
        budget = Budget(100)
        await budget.take(250)  # nothing else held: it goes
        waiting = asyncio.ensure_future(budget.take(10))
        await asyncio.sleep(0)
        assert not waiting.done()
        await budget.give(250)
        await waiting
        assert budget.used == 10
    asyncio.run(run())
