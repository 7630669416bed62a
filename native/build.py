"""cffi build script for the native core: `cluster._native`.

setup.py names it in cffi_modules, so `pip install .` (or `-e .`) compiles it with the system C
compiler and nothing else. SIMD kernels are compiled with per-function target attributes and
chosen at run time, so one build runs on any x86-64 (and the portable kernels anywhere else).
"""
import os
import pathlib
import platform

from cffi import FFI

NATIVE = pathlib.Path(__file__).resolve().parent
SOURCES = ["gf.c", "rs.c", "gf_kernels.c", "crc32c.c", "cdc.c", "cpu.c"]


def _cdef_text() -> str:
    """The header without its preprocessor lines: cffi parses plain declarations only."""
    lines = (NATIVE / "cairn.h").read_text().splitlines()
    decls = [line for line in lines if not line.lstrip().startswith("#")]
    defines = [line for line in lines if line.startswith("#define CAIRN_") and len(line.split()) == 3]
    return "\n".join(decls + defines)


def _compile_args() -> list[str]:
    args = ["-O3", "-std=c11", "-fno-strict-aliasing", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        args.append("-mtune=generic")
    return args


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "cluster._native",
    '#include "cairn.h"',
    # setuptools wants paths relative to the project root (the working directory of the build).
    sources=[os.path.relpath(NATIVE / name) for name in SOURCES],
    include_dirs=[os.path.relpath(NATIVE)],
    extra_compile_args=_compile_args(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
