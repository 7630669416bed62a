"""CRC32C: known vectors, a bitwise reference, and every kernel against the portable one."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster._load import ffi, lib
from cluster.codec import kernels
from cluster.codec.crc import crc32c

SUPPORTED = kernels.crc_kernels_supported()
RNG = np.random.default_rng(20240611)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference(data: bytes, crc: int = 0) -> int:
    """Bit-at-a-time CRC32C, straight from the definition."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def random_bytes(n: int) -> bytes:
    return RNG.integers(0, 256, n, dtype=np.uint8).tobytes()


# RFC 3720 appendix B.4, plus the usual check value.
VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0),
]


def test_kernel_names_and_support():
    assert list(kernels.CRC_KERNELS) == ["portable", "sse42", "pclmul", "vpclmul"]
    assert "portable" in SUPPORTED
    assert lib.cairn_crc_kernel_supported(lib.cairn_crc_kernel_best())
    assert not lib.cairn_crc_kernel_supported(-1)
    assert not lib.cairn_crc_kernel_supported(lib.CAIRN_CRC_KERNELS)


@pytest.mark.parametrize("kernel", SUPPORTED)
@pytest.mark.parametrize("data, expected", VECTORS)
def test_known_vectors(kernel, data, expected):
    assert crc32c(data, kernel=kernel) == expected


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 2**32 - 1))
def test_matches_bitwise_reference(data, crc):
    assert crc32c(data, crc) == reference(data, crc)


@pytest.mark.parametrize("kernel", SUPPORTED)
def test_every_short_length_and_every_residue(kernel):
    """All lengths below 1100 and every length mod 64 around a few long sizes, unaligned."""
    buf = random_bytes(70000)
    lengths = list(range(1100)) + [base + r for base in (4096, 23000, 65536) for r in range(64)]
    for i, n in enumerate(lengths):
        view = memoryview(buf)[i % 61 : i % 61 + n]
        crc = (i * 0x9E3779B9) & 0xFFFFFFFF
        assert crc32c(view, crc, kernel=kernel) == crc32c(view, crc, kernel="portable"), n


lengths = st.one_of(
    st.integers(0, 511),
    st.builds(lambda blocks, rest: 64 * blocks + rest, st.integers(0, 312), st.integers(0, 63)),
    st.integers(0, 20000),
)


@pytest.mark.parametrize("kernel", SUPPORTED)
@settings(max_examples=80, deadline=None)
@given(n=lengths, offset=st.integers(0, 63), crc=st.integers(0, 2**32 - 1), seed=st.integers(0, 2**64))
def test_kernels_agree_with_portable(kernel, n, offset, crc, seed):
    buf = np.random.default_rng(seed).integers(0, 256, n + 64, dtype=np.uint8).tobytes()
    view = memoryview(buf)[offset : offset + n]
    assert crc32c(view, crc, kernel=kernel) == crc32c(view, crc, kernel="portable")


@pytest.mark.parametrize("kernel", SUPPORTED)
@pytest.mark.parametrize("n", [(1 << 20) + 13, 1 << 20, 3 * 23040 + 4567, 23040, 23056, 10368, 10384])
def test_big_buffers(kernel, n):
    buf = random_bytes(n + 7)
    view = memoryview(buf)[7:]
    assert crc32c(view, 0x12345678, kernel=kernel) == crc32c(view, 0x12345678, kernel="portable")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=3000), st.integers(0, 2**32 - 1))
def test_chaining(a, b, crc):
    for kernel in SUPPORTED:
        first = crc32c(a, crc, kernel=kernel)
        assert crc32c(b, first, kernel=kernel) == crc32c(a + b, crc, kernel=kernel)


def test_buffer_types_agree():
    data = random_bytes(4096 + 24)
    expected = crc32c(data)
    assert crc32c(bytearray(data)) == expected
    assert crc32c(memoryview(data)) == expected
    assert crc32c(np.frombuffer(data, dtype=np.uint8)) == expected
    assert crc32c(np.frombuffer(data, dtype=np.uint32)) == expected
    assert crc32c(np.frombuffer(data, dtype=np.float64).reshape(5, -1)) == expected
    assert crc32c(memoryview(data).cast("I")) == expected
    assert crc32c(np.zeros(0, dtype=np.uint16)) == 0


def test_bad_inputs():
    for bad in ("text", 12, None, [1, 2, 3]):
        with pytest.raises(TypeError):
            crc32c(bad)
    array = np.arange(64, dtype=np.uint8)
    with pytest.raises(ValueError):
        crc32c(array[::2])
    with pytest.raises(ValueError):
        crc32c(memoryview(bytes(64))[::2])
    with pytest.raises(ValueError):
        crc32c(np.asfortranarray(array.reshape(8, 8)))
    for bad_crc in (-1, 2**32):
        with pytest.raises(ValueError):
            crc32c(b"x", bad_crc)
    with pytest.raises(TypeError):
        crc32c(b"x", 1.5)


def test_forced_kernels():
    for kernel in SUPPORTED:
        assert crc32c(b"123456789", kernel=kernel) == 0xE3069283
    with pytest.raises(kernels.KernelUnavailable):
        crc32c(b"x", kernel="crc64")
    unsupported = [name for name in kernels.CRC_KERNELS if name not in SUPPORTED]
    for kernel in unsupported:
        with pytest.raises(kernels.KernelUnavailable):
            crc32c(b"x", kernel=kernel)


def test_unsupported_kernel_id_falls_back_to_portable():
    data = random_bytes(1000)
    expected = crc32c(data, kernel="portable")
    for kernel in (-1, lib.CAIRN_CRC_KERNELS, 99):
        assert lib.cairn_crc32c(kernel, 0, data, len(data)) == expected
    assert ffi.string(lib.cairn_crc_kernel_name(99)) == b"unknown"


def test_environment_selects_default_kernel():
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, CAIRN_CRC_KERNEL="portable", PYTHONPATH=path)
    code = "from cluster.codec import crc; print(crc._DEFAULT_KERNEL, crc.crc32c(b'123456789'))"
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", str(0xE3069283)]


def test_threads_share_kernels():
    data = random_bytes(1 << 18)
    expected = crc32c(data)
    results = []
    threads = [threading.Thread(target=lambda: results.append(crc32c(data))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4
