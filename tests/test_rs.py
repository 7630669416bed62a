"""Reed-Solomon: field arithmetic, the MDS property, every SIMD kernel against the portable one."""
import itertools
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cluster._load import lib
from cluster.codec import kernels
from cluster.codec.rs import CodecError, NotEnoughFragments, ReedSolomon

SUPPORTED = kernels.rs_kernels_supported()
SIMD = [name for name in SUPPORTED if name != "portable"]


def gf_mul_reference(a: int, b: int) -> int:
    """Carry-less multiply then reduce by 0x11D, bit by bit."""
    product = 0
    for bit in range(8):
        if (b >> bit) & 1:
            product ^= a << bit
    for bit in range(15, 7, -1):
        if (product >> bit) & 1:
            product ^= 0x11D << (bit - 8)
    return product


def test_field_multiplication_matches_reference_on_all_pairs():
    for a in range(256):
        for b in range(0, 256, 7):
            assert lib.cairn_gf_mul(a, b) == gf_mul_reference(a, b)


def test_every_nonzero_element_has_an_inverse():
    for a in range(1, 256):
        assert lib.cairn_gf_mul(a, lib.cairn_gf_inv(a)) == 1


def test_generator_is_systematic_cauchy():
    rs = ReedSolomon(4, 3)
    g = rs.generator
    for row in range(4):
        assert list(g[row * 4:(row + 1) * 4]) == [1 if col == row else 0 for col in range(4)]
    for i in range(3):
        for j in range(4):
            assert lib.cairn_gf_mul(g[(4 + i) * 4 + j], (4 + i) ^ j) == 1


@pytest.mark.parametrize("k,m", [(1, 1), (2, 1), (3, 2), (4, 2), (4, 4), (5, 3)])
def test_every_k_subset_rebuilds_every_fragment(k, m):
    rs = ReedSolomon(k, m)
    chunk = os.urandom(k * 97 + 5)
    fragments = [bytes(f) for f in rs.encode_chunk(chunk)]
    for present in itertools.combinations(range(k + m), k):
        available = {index: fragments[index] for index in present}
        rebuilt = rs.decode(available, wanted=range(k + m))
        assert [bytes(rebuilt[index]) for index in range(k + m)] == fragments
        assert rs.decode_chunk(available, len(chunk)) == chunk


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 32), m=st.integers(1, 16), size=st.integers(0, 3000), data=st.data())
def test_random_k_subsets_decode_to_the_original(k, m, size, data):
    rs = ReedSolomon(k, m)
    chunk = data.draw(st.binary(min_size=size, max_size=size))
    fragments = rs.encode_chunk(chunk)
    present = data.draw(st.lists(st.sampled_from(range(k + m)), min_size=k, max_size=k, unique=True))
    extra = data.draw(st.lists(st.sampled_from(range(k + m)), max_size=3, unique=True))
    available = {index: fragments[index] for index in set(present) | set(extra)}
    assert rs.decode_chunk(available, size) == chunk


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 12), m=st.integers(1, 6), size=st.integers(0, 3000), data=st.data())
def test_decoding_into_a_buffer_writes_exactly_the_chunk(k, m, size, data):
    """decode_chunk(out=) fills a chunk-sized slice of a larger buffer and touches nothing around
    it, whichever fragments are missing (the last one's padding is decoded aside)."""
    rs = ReedSolomon(k, m)
    chunk = data.draw(st.binary(min_size=size, max_size=size))
    fragments = rs.encode_chunk(chunk)
    present = data.draw(st.lists(st.sampled_from(range(k + m)), min_size=k, max_size=k, unique=True))
    buffer = bytearray(b"\xaa" * (size + 20))
    out = memoryview(buffer)[7:7 + size]
    assert rs.decode_chunk({index: fragments[index] for index in present}, size, out=out) is out
    assert buffer == b"\xaa" * 7 + chunk + b"\xaa" * 13


def test_decoding_into_a_wrong_buffer_is_refused():
    rs = ReedSolomon(2, 1)
    fragments = rs.encode_chunk(b"abcdef")
    with pytest.raises(CodecError, match="holds 5 bytes"):
        rs.decode_chunk(dict(enumerate(fragments)), 6, out=bytearray(5))
    with pytest.raises(TypeError, match="writable"):
        rs.decode_chunk(dict(enumerate(fragments)), 6, out=bytes(6))


@pytest.mark.parametrize("kernel", SIMD)
@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 32), m=st.integers(1, 16), size=st.integers(0, 700), data=st.data())
def test_simd_encode_equals_portable(kernel, k, m, size, data):
    seed = data.draw(st.integers(0, 2**32 - 1))
    fragments = list(np.random.default_rng(seed).integers(0, 256, (k, size), dtype=np.uint8))
    expected = ReedSolomon(k, m, kernel="portable").encode(fragments)
    got = ReedSolomon(k, m, kernel=kernel).encode(fragments)
    assert [bytes(x) for x in got] == [bytes(x) for x in expected]


@pytest.mark.parametrize("kernel", SIMD)
@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 20), m=st.integers(1, 16), size=st.integers(1, 700), data=st.data())
def test_simd_decode_equals_portable(kernel, k, m, size, data):
    seed = data.draw(st.integers(0, 2**32 - 1))
    chunk = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    fragments = ReedSolomon(k, m, kernel="portable").encode_chunk(chunk)
    present = data.draw(st.lists(st.sampled_from(range(k + m)), min_size=k, max_size=k, unique=True))
    wanted = [index for index in range(k + m) if index not in present]
    available = {index: fragments[index] for index in present}
    expected = ReedSolomon(k, m, kernel="portable").decode(available, wanted)
    got = ReedSolomon(k, m, kernel=kernel).decode(available, wanted)
    assert {i: bytes(v) for i, v in got.items()} == {i: bytes(v) for i, v in expected.items()}


@pytest.mark.parametrize("kernel", SIMD)
def test_simd_kernels_on_every_tail_length(kernel):
    """Lengths around the vector widths and the unrolled block sizes (64, 128, 256 bytes)."""
    rng = np.random.default_rng(7)
    for k, m in [(4, 2), (3, 9), (8, 3), (5, 16)]:
        portable, simd = ReedSolomon(k, m, kernel="portable"), ReedSolomon(k, m, kernel=kernel)
        for size in list(range(0, 300)) + [511, 512, 513, 4095, 4097]:
            fragments = list(rng.integers(0, 256, (k, size), dtype=np.uint8))
            assert [bytes(x) for x in simd.encode(fragments)] == [bytes(x) for x in portable.encode(fragments)]


def test_large_fragments_all_kernels_agree():
    chunk = os.urandom(4 * 1024 * 1024 + 3)
    expected = [bytes(f) for f in ReedSolomon(10, 4, kernel="portable").encode_chunk(chunk)]
    for kernel in SIMD:
        assert [bytes(f) for f in ReedSolomon(10, 4, kernel=kernel).encode_chunk(chunk)] == expected


def test_encode_writes_into_caller_buffers_without_copying():
    rs = ReedSolomon(3, 2)
    data = [np.full(1000, i + 1, dtype=np.uint8) for i in range(3)]
    parity = [bytearray(1000), np.zeros(1000, dtype=np.uint8)]
    views = rs.encode(data, parity)
    assert bytes(views[0]) == bytes(parity[0]) and bytes(views[1]) == parity[1].tobytes()
    assert any(parity[0]) and parity[1].any()
    assert bytes(views[0]) == bytes(ReedSolomon(3, 2).encode([bytes(d) for d in data])[0])


def test_inputs_of_any_buffer_type_give_the_same_parity():
    rs = ReedSolomon(2, 2)
    raw = [os.urandom(128), os.urandom(128)]
    expected = [bytes(p) for p in rs.encode(raw)]
    for convert in (bytearray, memoryview, lambda b: np.frombuffer(b, dtype=np.uint32)):
        assert [bytes(p) for p in rs.encode([convert(b) for b in raw])] == expected


def test_decode_matrices_are_cached_per_erasure_pattern():
    rs = ReedSolomon(4, 2)
    fragments = rs.encode_chunk(os.urandom(400))
    rs.decode({i: fragments[i] for i in (1, 2, 3, 4)})
    rs.decode({i: fragments[i] for i in (1, 2, 3, 4)})
    assert len(rs._decode_cache) == 1
    rs.decode({i: fragments[i] for i in (0, 2, 3, 5)})
    assert len(rs._decode_cache) == 2
    rs.clear_cache()
    assert len(rs._decode_cache) == 0


def test_threads_share_one_codec():
    rs = ReedSolomon(8, 3)
    chunks = [os.urandom(256 * 1024 + i) for i in range(8)]
    expected = [[bytes(f) for f in rs.encode_chunk(chunk)] for chunk in chunks]
    failures = []

    def work(index):
        for _ in range(5):
            fragments = rs.encode_chunk(chunks[index])
            if [bytes(f) for f in fragments] != expected[index]:
                failures.append(index)
            survivors = {i: fragments[i] for i in range(3, 11)}
            if rs.decode_chunk(survivors, len(chunks[index])) != chunks[index]:
                failures.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_profile_limits():
    with pytest.raises(CodecError, match="k \\+ m <= 255"):
        ReedSolomon(200, 56)
    with pytest.raises(CodecError):
        ReedSolomon(0, 2)
    with pytest.raises(CodecError):
        ReedSolomon(2, 0)
    with pytest.raises(TypeError):
        ReedSolomon(2.0, 1)
    assert ReedSolomon(200, 55).k == 200


def test_bad_fragments_raise_clear_errors():
    rs = ReedSolomon(3, 2)
    good = [bytes(10)] * 3
    with pytest.raises(CodecError, match="exactly k=3"):
        rs.encode(good[:2])
    with pytest.raises(CodecError, match="equal lengths"):
        rs.encode([bytes(10), bytes(10), bytes(11)])
    with pytest.raises(CodecError, match="output buffer 1 has 9 bytes"):
        rs.encode(good, [bytearray(10), bytearray(9)])
    with pytest.raises(TypeError, match="writable"):
        rs.encode(good, [bytearray(10), bytes(10)])
    with pytest.raises(TypeError, match="bytes-like"):
        rs.encode([bytes(10), bytes(10), "text"])
    with pytest.raises(ValueError, match="C-contiguous"):
        rs.encode([bytes(10), bytes(10), np.zeros(20, dtype=np.uint8)[::2]])
    fragments = rs.encode_chunk(bytes(30))
    with pytest.raises(NotEnoughFragments, match="need 3"):
        rs.decode({0: fragments[0], 4: fragments[4]})
    with pytest.raises(IndexError, match="out of range"):
        rs.decode({0: fragments[0], 1: fragments[1], 5: fragments[4]})
    with pytest.raises(IndexError):
        rs.decode({0: fragments[0], 1: fragments[1], 2: fragments[2]}, wanted=[-1])
    with pytest.raises(CodecError, match="repeat"):
        rs.decode({0: fragments[0], 1: fragments[1], 3: fragments[3]}, wanted=[2, 2])
    with pytest.raises(CodecError, match="expected 10"):
        rs.decode_chunk({0: fragments[0], 1: bytes(11), 3: fragments[3]}, 30)


def test_forcing_an_unknown_kernel_fails_loudly(monkeypatch):
    with pytest.raises(kernels.KernelUnavailable):
        ReedSolomon(2, 1, kernel="avx9000")
    monkeypatch.setenv("CAIRN_RS_KERNEL", "portable")
    assert ReedSolomon(2, 1).kernel == "portable"
