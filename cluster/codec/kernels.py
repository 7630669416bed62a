"""Which SIMD kernel each native routine uses.

By default the fastest one this CPU supports. Two environment variables force a choice, for
tests and benchmarks: CAIRN_RS_KERNEL (portable, ssse3, avx2, gfni-avx2, gfni-avx512) for the
Reed-Solomon kernels and CAIRN_CRC_KERNEL (portable, sse42, pclmul, vpclmul) for CRC32C. A forced
kernel the CPU lacks is an error at import, not a silent fallback.
"""
import os

from cluster._load import ffi, lib


class KernelUnavailable(RuntimeError):
    """The requested SIMD kernel is unknown or this CPU cannot run it."""


def _names(count: int, name_of) -> dict[str, int]:
    return {ffi.string(name_of(kernel)).decode(): kernel for kernel in range(count)}


RS_KERNELS = _names(lib.CAIRN_GF_KERNELS, lib.cairn_gf_kernel_name)
CRC_KERNELS = _names(lib.CAIRN_CRC_KERNELS, lib.cairn_crc_kernel_name)


def rs_kernel_name(kernel: int) -> str:
    return ffi.string(lib.cairn_gf_kernel_name(kernel)).decode()


def crc_kernel_name(kernel: int) -> str:
    return ffi.string(lib.cairn_crc_kernel_name(kernel)).decode()


def rs_kernels_supported() -> list[str]:
    return [name for name, kernel in RS_KERNELS.items() if lib.cairn_gf_kernel_supported(kernel)]


def crc_kernels_supported() -> list[str]:
    return [name for name, kernel in CRC_KERNELS.items() if lib.cairn_crc_kernel_supported(kernel)]


def _resolve(name: str, table: dict[str, int], supported, variable: str) -> int:
    if name not in table:
        raise KernelUnavailable(f"{variable}={name!r} is not a kernel; choose one of {sorted(table)}")
    if not supported(table[name]):
        raise KernelUnavailable(f"{variable}={name!r}: this CPU cannot run that kernel")
    return table[name]


def rs_kernel(name: str | None = None) -> int:
    """Kernel id for Reed-Solomon: `name` if given, else CAIRN_RS_KERNEL, else the best."""
    name = name or os.environ.get("CAIRN_RS_KERNEL")
    if not name:
        return lib.cairn_gf_kernel_best()
    return _resolve(name, RS_KERNELS, lib.cairn_gf_kernel_supported, "CAIRN_RS_KERNEL")


def crc_kernel(name: str | None = None) -> int:
    """Kernel id for CRC32C: `name` if given, else CAIRN_CRC_KERNEL, else the best."""
    name = name or os.environ.get("CAIRN_CRC_KERNEL")
    if not name:
        return lib.cairn_crc_kernel_best()
    return _resolve(name, CRC_KERNELS, lib.cairn_crc_kernel_supported, "CAIRN_CRC_KERNEL")
