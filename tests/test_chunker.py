"""Content-defined chunker: the native core against pure-Python models of the cut rule."""
import hashlib
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster._load import ffi, lib
from cluster.codec.chunker import Chunker, chunk_lengths

MASK64 = (1 << 64) - 1
SMALL = dict(min_size=64, avg_size=256, max_size=1024)
# Regions longer than the native 4-chain rounds, with frequent cuts: exercises the interleaved path.
WIDE = dict(min_size=1024, avg_size=1 << 16, max_size=1 << 18, normalization=3)
MIB = 1 << 20


def gear_table(seed: int = 0x436169726E434443) -> list[int]:
    """The 256 gear values: splitmix64 outputs from the fixed seed, as native/cdc.c documents."""
    out = []
    for _ in range(256):
        seed = (seed + 0x9E3779B97F4A7C15) & MASK64
        z = seed
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


GEAR = gear_table()
GEAR_NP = np.array(GEAR, dtype=np.uint64)


def masks(avg_size: int, normalization: int) -> tuple[int, int]:
    bits = avg_size.bit_length() - 1
    top = lambda n: (MASK64 << (64 - n)) & MASK64  # noqa: E731
    return top(bits + normalization), top(bits - normalization)


def reference(data: bytes, min_size, avg_size, max_size, normalization=2) -> list[int]:
    """The cut rule byte by byte, hashing every byte of every chunk (no skipping)."""
    small, large = masks(avg_size, normalization)
    out, h, length = [], 0, 0
    for byte in data:
        h = ((h << 1) + GEAR[byte]) & MASK64
        length += 1
        if length < min_size:
            continue
        mask = small if length < avg_size else large
        if length == max_size or h & mask == 0:
            out.append(length)
            h, length = 0, 0
    return out + [length] if length else out


def window_hashes(data: np.ndarray) -> np.ndarray:
    """Hash of the 64 bytes ending at each position, by doubling the window 6 times."""
    h = GEAR_NP[data]
    for width in (1, 2, 4, 8, 16, 32):
        shifted = np.zeros_like(h)
        shifted[width:] = h[:-width] << np.uint64(width)
        h = h + shifted
    return h


def vector_reference(data: np.ndarray, min_size, avg_size, max_size, normalization=2) -> list[int]:
    """Same rule for big inputs: every tested hash depends only on its 64-byte window."""
    small_mask, large_mask = (np.uint64(m) for m in masks(avg_size, normalization))
    h = window_hashes(data)
    small = np.flatnonzero((h & small_mask) == 0)
    large = np.flatnonzero((h & large_mask) == 0)
    out, start, total = [], 0, len(data)
    while start < total:
        first, middle, last = start + min_size - 1, start + avg_size - 1, start + max_size - 1
        cut = last
        k = np.searchsorted(small, first)
        if k < len(small) and small[k] < middle:
            cut = int(small[k])
        else:
            k = np.searchsorted(large, middle)
            if k < len(large) and large[k] < last:
                cut = int(large[k])
        cut = min(cut, total - 1)
        out.append(cut - start + 1)
        start = cut + 1
    return out


def random_bytes(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


@st.composite
def sizes(draw):
    avg = 1 << draw(st.integers(6, 11))
    min_size = draw(st.integers(64, avg))
    max_size = draw(st.integers(max(avg, min_size + 1), 4 * avg))
    return dict(min_size=min_size, avg_size=avg, max_size=max_size,
                normalization=draw(st.integers(0, 3)))


@st.composite
def payloads(draw, max_size=20_000):
    """Mostly random bytes (realistic hashes), sometimes hypothesis' low-entropy binaries."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=max_size))
    size = draw(st.one_of(st.integers(0, 2_000), st.integers(max_size // 2, max_size)))
    return random_bytes(size, draw(st.integers(0, 2**32))).tobytes()


fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(data=payloads(), normalization=st.integers(0, 3))
def test_matches_reference_small_sizes(data, normalization):
    sizes = dict(SMALL, normalization=normalization)
    assert chunk_lengths(data, **sizes) == reference(data, **sizes)


@fast
@given(data=payloads(8_000), sizes=sizes())
def test_matches_reference_any_sizes(data, sizes):
    assert chunk_lengths(data, **sizes) == reference(data, **sizes)


@fast
@given(data=payloads(8_000), sizes=sizes())
def test_vector_reference_is_the_same_rule(data, sizes):
    expected = reference(data, **sizes)
    assert vector_reference(np.frombuffer(data, dtype=np.uint8), **sizes) == expected


@pytest.mark.parametrize("sizes", [WIDE, dict(WIDE, normalization=1), SMALL])
def test_matches_reference_large_input(sizes):
    data = random_bytes(4 * MIB, seed=7)
    lengths = chunk_lengths(data, **sizes)
    assert lengths == vector_reference(data, **sizes)
    assert len(lengths) > 40


def test_matches_reference_structured_input():
    """Runs of equal bytes and short periods make the hash constant or periodic."""
    rng = np.random.default_rng(3)
    parts = [np.zeros(300_000, np.uint8), np.full(200_000, 0xAB, np.uint8),
             np.tile(np.arange(7, dtype=np.uint8), 50_000), random_bytes(300_000, 4),
             np.repeat(rng.integers(0, 256, 2_000, dtype=np.uint8), 100)]
    data = np.concatenate(parts)
    for sizes in (WIDE, SMALL, dict(min_size=64, avg_size=64, max_size=65)):
        assert chunk_lengths(data, **sizes) == vector_reference(data, **sizes)


def hitting_window(mask: int, rng) -> np.ndarray:
    """64 bytes whose hash has (h & mask) == 0, and whose first byte decides h's top bit."""
    mask = np.uint64(mask)
    while True:
        prefixes = rng.integers(0, 256, (4096, 63), dtype=np.uint8)
        prefixes[:, 0] = rng.choice(np.flatnonzero(GEAR_NP & np.uint64(1)), 4096)
        h = np.zeros(4096, np.uint64)
        for column in prefixes.T:
            h = (h << np.uint64(1)) + GEAR_NP[column]
        hits = np.argwhere((((h << np.uint64(1))[:, None] + GEAR_NP[None, :]) & mask) == 0)
        if len(hits):
            row, last = hits[0]
            return np.append(prefixes[row], np.uint8(last))


# White box: native/cdc.c hashes long regions as rounds of 4 chains x 16384 bytes (4 x 4096 when
# that does not fit) from the first tested byte (index min_size - 1 of a chunk). Planted hits sit
# where those chains meet; should the layout change, these cases still check correctness but may
# lose that aim.
ROUND_START = 63
PLANTS = [  # (chain, offset) of planted hits, and of the expected first cut
    ([(0, -1), (1, 100)], (0, -1)),  # a later chain hits first; chain 0's last byte cuts
    ([(1, 0)], (1, 0)),  # the first byte of a chain, whose hash comes from the 63 before it
    ([(3, 500), (2, 3000)], (2, 3000)),
    ([(1, 63), (0, 62)], (0, 62)),
]


@pytest.mark.parametrize("block", [16384, 4096])
@pytest.mark.parametrize("hits, cut", PLANTS)
def test_interleaved_chains_find_the_first_hit(block, hits, cut):
    sizes = dict(min_size=64, avg_size=1 << 20, max_size=1 << 22, normalization=0)
    rng = np.random.default_rng(21)
    data = random_bytes(ROUND_START + 4 * block + 8, seed=22)  # one round and a bit
    window = hitting_window(masks(sizes["avg_size"], 0)[0], rng)
    where = lambda chain, offset: ROUND_START + chain * block + offset % block  # noqa: E731
    for chain, offset in hits:
        end = where(chain, offset)
        data[end - 63:end + 1] = window
    expected = vector_reference(data, **sizes)
    assert expected[0] == where(*cut) + 1
    assert chunk_lengths(data, **sizes) == expected


def feed_in_pieces(data: bytes, cuts: list[int], **sizes) -> list[int]:
    chunker, start, out = Chunker(**sizes), 0, []
    for cut in sorted(cuts) + [len(data)]:
        out += chunker.feed(data[start:cut])
        start = cut
    return out + chunker.finish()


@fast
@given(data=st.data(), payload=payloads(), normalization=st.integers(0, 3))
def test_cuts_do_not_depend_on_feed_sizes(data, payload, normalization):
    sizes = dict(SMALL, normalization=normalization)
    points = st.integers(0, len(payload))
    cuts = data.draw(st.lists(points, max_size=40))
    cuts += [c + 1 for c in cuts if c < len(payload)]  # 1-byte pieces (and empty ones, repeated)
    assert feed_in_pieces(payload, cuts, **sizes) == chunk_lengths(payload, **sizes)


def test_cuts_do_not_depend_on_feed_sizes_large():
    data = random_bytes(3 * MIB, seed=11)
    rng = np.random.default_rng(12)
    cuts = list(rng.integers(0, len(data), 60)) + [1, 2, 3, 70_000, 70_001]
    payload = data.tobytes()
    assert feed_in_pieces(payload, cuts, **WIDE) == chunk_lengths(data, **WIDE)


def test_full_output_resumes_at_the_cut():
    """cairn_cdc_scan with room for 0 or 1 lengths stops before a cut and picks up from there."""
    data = random_bytes(200_000, seed=5)
    expected = chunk_lengths(data, **SMALL)
    for room in (0, 1):
        state, lengths = ffi.new("cairn_cdc *"), ffi.new("uint64_t[]", 1)
        consumed = ffi.new("size_t *")
        assert lib.cairn_cdc_init(state, 64, 256, 1024, 2) == 0
        buf, offset, out = ffi.from_buffer("uint8_t[]", data), 0, []
        while offset < len(data):
            count = lib.cairn_cdc_scan(state, buf + offset, len(data) - offset, lengths, room,
                                       consumed)
            assert count == 0 or (room == 1 and count == 1)
            if count:
                out.append(lengths[0])
            elif consumed[0] == 0:  # stuck before a cut byte: give it room for one length
                assert lib.cairn_cdc_scan(state, buf + offset, 1, lengths, 1, consumed) == 1
                out.append(lengths[0])
            offset += consumed[0]
        assert out + ([state.length] if state.length else []) == expected


@fast
@given(payload=payloads(), sizes=sizes())
def test_chunk_size_bounds(payload, sizes):
    lengths = chunk_lengths(payload, **sizes)
    assert sum(lengths) == len(payload)
    assert all(sizes["min_size"] <= n <= sizes["max_size"] for n in lengths[:-1])
    assert all(1 <= n <= sizes["max_size"] for n in lengths[-1:])


def test_empty_input():
    assert chunk_lengths(b"") == []
    chunker = Chunker(**SMALL)
    assert chunker.feed(b"") == [] and chunker.feed(bytearray()) == [] and chunker.finish() == []


def test_accepted_buffers_and_finish_resets():
    data = random_bytes(100_000, seed=9)
    expected = chunk_lengths(data.tobytes(), **SMALL)
    chunker = Chunker(**SMALL)
    for buffer in (data, data.tobytes(), bytearray(data), memoryview(data), data.reshape(100, -1)):
        assert chunker.feed(buffer) + chunker.finish() == expected
    assert chunker.feed(data[:100]) == [] and chunker.pending == 100
    assert (chunker.min_size, chunker.avg_size, chunker.max_size, chunker.normalization) == \
        (64, 256, 1024, 2)


@pytest.fixture(scope="module")
def big_random():
    return random_bytes(64 * MIB, seed=2026)


def digests(data, lengths) -> set[bytes]:
    view, out, start = memoryview(data), set(), 0
    for n in lengths:
        out.add(hashlib.blake2b(view[start:start + n], digest_size=16).digest())
        start += n
    return out


def test_insert_one_byte_keeps_chunks(big_random):
    before = chunk_lengths(big_random)
    shifted = np.concatenate([np.array([0x5A], np.uint8), big_random])
    after = chunk_lengths(shifted)
    kept = digests(big_random, before) & digests(shifted, after)
    assert len(kept) >= 0.95 * len(before)


def expected_mean(min_size, avg_size, max_size, normalization=2) -> float:
    """Mean chunk length on random data: sum over L of P(length >= L), per-byte cut chances."""
    bits = avg_size.bit_length() - 1
    p = np.zeros(max_size)  # p[i]: chance of a cut at length i + 1, given none before
    p[min_size - 1:avg_size - 1] = 2.0 ** -(bits + normalization)
    p[avg_size - 1:max_size - 1] = 2.0 ** -(bits - normalization)
    p[max_size - 1] = 1.0
    survive = np.concatenate([[1.0], np.cumprod(1 - p)[:-1]])
    return float(survive.sum())


def test_average_size_on_random_data(big_random):
    lengths = chunk_lengths(big_random)[:-1]
    assert 0.9 * MIB < np.mean(lengths) < 1.4 * MIB  # theory: 1.12 MiB
    sizes = dict(min_size=2048, avg_size=8192, max_size=32768)
    lengths = chunk_lengths(big_random[:32 * MIB], **sizes)[:-1]
    assert abs(np.mean(lengths) / expected_mean(**sizes) - 1) < 0.03


def test_threads_give_the_same_cuts(big_random):
    parts = [big_random[i * 8 * MIB:(i + 1) * 8 * MIB] for i in range(4)]
    results = [None] * len(parts)

    def run(i):
        results[i] = chunk_lengths(parts[i], **WIDE)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(parts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [chunk_lengths(part, **WIDE) for part in parts]


@pytest.mark.parametrize("sizes, message", [
    (dict(min_size=4096, avg_size=2048, max_size=8192), "min_size <= avg_size"),
    (dict(min_size=1024, avg_size=3000, max_size=8192), "power of two"),
    (dict(min_size=32, avg_size=256, max_size=1024), "at least 64"),
    (dict(min_size=64, avg_size=256, max_size=1 << 40), "below 2\\*\\*40"),
    (dict(min_size=1024, avg_size=1024, max_size=1024), "smaller than max_size"),
    (dict(min_size=1024, avg_size=4096, max_size=2048), "avg_size <= max_size"),
    (dict(normalization=4), "normalization"),
    (dict(normalization=-1), "normalization"),
])
def test_bad_sizes_raise_value_error(sizes, message):
    with pytest.raises(ValueError, match=message):
        Chunker(**sizes)
    with pytest.raises(ValueError, match=message):
        chunk_lengths(b"abc", **sizes)


def test_native_init_rejects_what_python_rejects():
    state = ffi.new("cairn_cdc *")
    for args in [(4096, 2048, 8192, 2), (1024, 3000, 8192, 2), (32, 256, 1024, 2),
                 (64, 256, 1 << 40, 2), (1024, 1024, 1024, 2), (64, 256, 1024, 4),
                 (64, 256, 1024, -1)]:
        assert lib.cairn_cdc_init(state, *args) == lib.CAIRN_E_ARG
    assert lib.cairn_cdc_init(state, 64, 64, 65, 3) == 0


@pytest.mark.parametrize("bad", ["text", 42, None, [1, 2, 3], object()])
def test_non_buffer_raises_type_error(bad):
    with pytest.raises(TypeError):
        Chunker().feed(bad)


def test_strided_buffer_and_float_sizes_are_refused():
    with pytest.raises(ValueError, match="C-contiguous"):
        Chunker().feed(np.zeros(100, np.uint8)[::2])
    with pytest.raises(TypeError):
        Chunker(min_size=1024.0)
