"""CRC32C (Castagnoli) checksums, computed by the native core.

Theory of operation: the C core computes the standard reflected CRC32C (polynomial 0x82F63B78,
initial value and final XOR 0xFFFFFFFF), so `crc32c(b"123456789") == 0xE3069283`. Passing an
earlier result as `crc` continues the checksum: `crc32c(b, crc32c(a)) == crc32c(a + b)`. The
kernel (portable tables, the SSE4.2 crc32 instruction, or carry-less-multiply folding with
PCLMUL or AVX-512 VPCLMULQDQ) is chosen once at import by `kernels.crc_kernel()` (the fastest
this CPU runs, or CAIRN_CRC_KERNEL); every kernel gives the same result. Data reaches C without
a copy through `ffi.from_buffer`, and cffi releases the GIL for the duration of the call.
"""
import operator

from cluster._load import lib
from cluster.codec import buffers, kernels

_DEFAULT_KERNEL = kernels.crc_kernel()
_crc32c_chars = lib.cairn_crc32c_chars


def crc32c(data, crc: int = 0, kernel: str | None = None) -> int:
    """CRC32C of the bytes of `data`, continuing from `crc` (the result for preceding bytes).

    `data` is anything with a C-contiguous buffer: bytes, bytearray, memoryview, numpy arrays of
    any dtype (their raw bytes). `kernel` forces one kernel by name (see kernels.CRC_KERNELS);
    an unknown name or one this CPU cannot run raises kernels.KernelUnavailable.
    """
    if type(data) is bytes and kernel is None and type(crc) is int and 0 <= crc <= 0xFFFFFFFF:
        # The common case, without the checks below: small fragments make call overhead count.
        return _crc32c_chars(_DEFAULT_KERNEL, crc, data, len(data))
    crc = operator.index(crc)
    if not 0 <= crc < 1 << 32:
        raise ValueError(f"crc must be in [0, 2**32), got {crc}")
    kernel_id = _DEFAULT_KERNEL if kernel is None else kernels.crc_kernel(kernel)
    pointer, size = buffers.readable(data, "crc32c input")
    return lib.cairn_crc32c(kernel_id, crc, pointer, size)
