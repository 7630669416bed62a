"""Benchmark of the native core against Intel ISA-L, zfec, pyeclib, fastcdc and crc32c.

    python ops/bench/native.py [--quick] [--json PATH]

Two halves, both single-threaded, both reported as GB/s of input (median of the rounds):

- C against C: ops/bench/native_driver.c links Cairn's native sources and dlopen()s two ISA-L
  builds: the one Debian ships (libisal-dev, 2.30: AVX-512, no GFNI) and the newer one bundled
  in the pyeclib wheel (2.32, with GFNI). Reed-Solomon encode for 4+2, 8+3, 10+4 with 64 KiB
  and 1 MiB fragments; decode with 1, 2 and m data fragments lost (the matrix inversion is timed
  in every call, on both sides); CRC32C at 4 KiB, 64 KiB and 1 MiB.
- Python against Python: what a Python user would otherwise pick: zfec and pyeclib for erasure
  coding (whole chunk in, fragments out, and back), the `fastcdc` package for chunking (same
  min/avg/max), the `crc32c` package for CRC32C.

The benchmark installs its references itself (apt-get for libisal-dev, pip for the rest).
"""
from __future__ import annotations

import glob
import os
import pathlib
import platform
import shutil
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ops" / "bench"))
sys.path.insert(0, str(ROOT))  # first: `cluster` is the package, not ops/bench/cluster.py
from common import bench_parser, pip_install, print_table, progress, rates_side_by_side, row, write_json  # noqa: E402

CACHE = ROOT / ".bench"
DEBIAN_ISAL = "/usr/lib/x86_64-linux-gnu/libisal.so.2"
PROFILES = [(4, 2), (8, 3), (10, 4)]
FRAGMENT_SIZES = [64 * 1024, 1024 * 1024]
CRC_SIZES = [4 * 1024, 64 * 1024, 1024 * 1024]
PYTHON_PACKAGES = {"zfec": "zfec", "pyeclib": "pyeclib", "fastcdc": "fastcdc", "crc32c": "crc32c"}


def size_name(size: int) -> str:
    return f"{size // (1 << 20)}MiB" if size >= 1 << 20 else f"{size // 1024}KiB"


# ---- references

def ensure_debian_isal() -> str:
    if not os.path.exists(DEBIAN_ISAL):
        if os.geteuid() != 0:
            sys.exit("native.py: needs libisal-dev (apt-get install libisal-dev) and is not root to install it")
        progress("installing libisal-dev ...")
        install = ["apt-get", "install", "-y", "-q", "libisal-dev"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
            subprocess.run(install, check=True, capture_output=True)
    return DEBIAN_ISAL


def ensure_python_references() -> None:
    missing = []
    for module, package in PYTHON_PACKAGES.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        progress(f"installing {' '.join(missing)} ...")
        pip_install(*missing)


def pyeclib_isal() -> str:
    import pyeclib

    libs = pathlib.Path(pyeclib.__file__).resolve().parent.parent / "pyeclib.libs"
    found = sorted(glob.glob(str(libs / "libisal*.so*")))
    if not found:
        sys.exit(f"native.py: no bundled ISA-L found in {libs}")
    return found[0]


def build_driver() -> pathlib.Path:
    CACHE.mkdir(exist_ok=True)
    binary = CACHE / "native_driver"
    sources = sorted(str(p) for p in (ROOT / "native").glob("*.c")) + [str(ROOT / "ops/bench/native_driver.c")]
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O3", "-std=c11", "-I", str(ROOT / "native"), *sources, "-ldl", "-o", str(binary)], check=True)
    return binary


# ---- C against C

def driver_cases() -> list[str]:
    cases = [f"encode:{k}:{m}:{size}" for k, m in PROFILES for size in FRAGMENT_SIZES]
    for k, m in PROFILES:
        for lost in sorted({1, 2, m}):
            cases += [f"decode:{k}:{m}:{size}:{lost}" for size in FRAGMENT_SIZES]
    return cases + [f"crc:{size}" for size in CRC_SIZES]


def metric_of(case: str) -> str:
    kind, *fields = case.split(":")
    if kind == "crc":
        return f"crc32c_{size_name(int(fields[0]))}"
    k, m, size = int(fields[0]), int(fields[1]), int(fields[2])
    name = f"{kind}_{k}+{m}_{size_name(size)}"
    return name + (f"_lost{fields[3]}" if kind == "decode" else "")


def run_driver(binary: pathlib.Path, refs: dict[str, str], quick: bool) -> list[dict]:
    import json

    args = [str(binary)] + (["--quick"] if quick else [])
    for name, path in refs.items():
        args += ["--ref", f"{name}={path}"]
    rows = []
    for case in driver_cases():
        progress(f"  {case}")
        out = subprocess.run(args + [case], check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])["gbps"]
        for ref in refs:
            rows.append(row(f"{metric_of(case)}@{ref}", result["cairn"], "GB/s", ref, result[ref]))
    return rows


# ---- Python against Python

def python_erasure_rows(quick: bool) -> list[dict]:
    import zfec
    from pyeclib.ec_iface import ECDriver

    from cluster.codec.rs import ReedSolomon

    rows = []
    rounds, sample = (5, 0.02) if quick else (9, 0.1)
    for k, m in [(8, 3), (10, 4)]:
        for size in FRAGMENT_SIZES:
            chunk = np.random.default_rng(1).integers(0, 256, k * size, dtype=np.uint8).tobytes()
            rs, pyec = ReedSolomon(k, m), ECDriver(k=k, m=m, ec_type="isa_l_rs_cauchy")
            encoder = zfec.Encoder(k, k + m)
            blocks = tuple(chunk[i * size:(i + 1) * size] for i in range(k))
            parity_ids = tuple(range(k, k + m))
            rates = rates_side_by_side({
                "cairn": lambda: rs.encode_chunk(chunk),
                "zfec": lambda: encoder.encode(blocks, parity_ids),
                "pyeclib": lambda: pyec.encode(chunk),
            }, len(chunk), rounds, sample)
            for ref in ("zfec", "pyeclib"):
                rows.append(row(f"py_encode_{k}+{m}_{size_name(size)}@{ref}", rates["cairn"], "GB/s", ref, rates[ref]))
            rows += python_decode_rows(k, m, size, chunk, rs, pyec, encoder, rounds, sample)
    return rows


def python_decode_rows(k, m, size, chunk, rs, pyec, encoder, rounds, sample) -> list[dict]:
    import zfec

    lost = 2
    ours = rs.encode_chunk(chunk)
    ours_left = {i: ours[i] for i in range(lost, k + lost)}
    zfec_blocks = encoder.encode(tuple(chunk[i * size:(i + 1) * size] for i in range(k)))
    zfec_ids = list(range(lost, k + lost))
    zfec_left = [zfec_blocks[i] for i in zfec_ids]
    decoder = zfec.Decoder(k, k + m)
    pyec_left = pyec.encode(chunk)[lost:k + lost]
    assert rs.decode_chunk(ours_left, len(chunk)) == chunk
    assert b"".join(decoder.decode(zfec_left, zfec_ids)) == chunk
    assert pyec.decode(pyec_left) == chunk
    rates = rates_side_by_side({
        "cairn": lambda: rs.decode_chunk(ours_left, len(chunk)),
        "zfec": lambda: decoder.decode(zfec_left, zfec_ids),
        "pyeclib": lambda: pyec.decode(pyec_left),
    }, len(chunk), rounds, sample)
    return [row(f"py_decode_{k}+{m}_{size_name(size)}_lost{lost}@{ref}", rates["cairn"], "GB/s", ref, rates[ref])
            for ref in ("zfec", "pyeclib")]


def python_chunker_rows(quick: bool) -> list[dict]:
    from fastcdc import fastcdc

    from cluster.codec.chunker import Chunker

    data = np.random.default_rng(2).integers(0, 256, (64 if quick else 256) << 20, dtype=np.uint8).tobytes()
    rows = []
    for avg in (64 * 1024, 1024 * 1024):
        low, high = avg // 4, avg * 4

        def ours():
            chunker = Chunker(low, avg, high)
            return chunker.feed(data) + chunker.finish()

        def theirs():
            return sum(1 for _ in fastcdc(data, low, avg, high, fat=False))

        rates = rates_side_by_side({"cairn": ours, "fastcdc": theirs}, len(data), 5 if quick else 7, 0.01)
        rows.append(row(f"chunk_avg{size_name(avg)}@fastcdc", rates["cairn"], "GB/s", "fastcdc", rates["fastcdc"]))
    return rows


def python_crc_rows(quick: bool) -> list[dict]:
    import crc32c as crc32c_package

    from cluster.codec.crc import crc32c

    rows = []
    for size in CRC_SIZES:
        data = os.urandom(size)
        assert crc32c(data) == crc32c_package.crc32c(data)
        rates = rates_side_by_side({"cairn": lambda: crc32c(data), "crc32c": lambda: crc32c_package.crc32c(data)},
                                   size, 5 if quick else 9, 0.02 if quick else 0.1)
        rows.append(row(f"py_crc32c_{size_name(size)}@crc32c", rates["cairn"], "GB/s", "crc32c-pkg", rates["crc32c"]))
    return rows


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    if platform.machine() not in ("x86_64", "AMD64") or shutil.which(os.environ.get("CC", "cc")) is None:
        sys.exit("native.py: needs an x86-64 machine with a C compiler (the ISA-L references are x86 builds)")

    ensure_python_references()
    refs = {"isal-debian": ensure_debian_isal(), "isal-pyeclib": pyeclib_isal()}
    from cluster.codec import kernels

    progress(f"kernels: rs={kernels.rs_kernels_supported()[-1]} crc={kernels.crc_kernels_supported()[-1]}")
    progress("C against C (Cairn vs ISA-L):")
    c_rows = run_driver(build_driver(), refs, args.quick)
    progress("Python against Python:")
    py_rows = python_erasure_rows(args.quick) + python_chunker_rows(args.quick) + python_crc_rows(args.quick)
    print_table("Native core vs ISA-L (C driver, single thread, GB/s of input, median)", c_rows)
    print_table("Python API vs Python packages (single thread, GB/s of input, median)", py_rows)
    write_json(args.json, c_rows + py_rows)


if __name__ == "__main__":
    main()
