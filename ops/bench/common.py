"""Shared pieces of the benchmarks: side-by-side timing, result rows, the table and the JSON.

Every benchmark measures Cairn and its references in the same run, alternating between them
round after round (the machines are shared and noisy), and reports medians. Times are thread
CPU seconds unless a benchmark says otherwise, so a busy neighbour slows the wall clock but not
the figure. Results are rows {"metric", "value", "unit", "ref", "ref_value", "ratio"}; ratio > 1
means Cairn is better, and metric names stay stable across runs.
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable


def bench_parser(doc: str, dir_help: str | None = None, quick_help: str = "reduced run, about a minute"):
    """The flags every benchmark takes: --quick, --json PATH, and --dir where it keeps data."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", metavar="PATH", help="write the result rows as JSON")
    if dir_help:
        parser.add_argument("--dir", help=f"{dir_help} (default: a temp dir)")
    return parser


def row(metric: str, value: float, unit: str, ref: str, ref_value: float, higher_is_better: bool = True) -> dict:
    if higher_is_better:
        ratio = value / ref_value if ref_value else float("inf")
    else:
        ratio = ref_value / value if value else float("inf")
    return {"metric": metric, "value": round(value, 4), "unit": unit, "ref": ref,
            "ref_value": round(ref_value, 4), "ratio": round(ratio, 3)}


def rates_side_by_side(work: dict[str, Callable[[], object]], bytes_per_call: int, rounds: int,
                       sample_seconds: float) -> dict[str, float]:
    """Median GB/s (of bytes_per_call) per named callable, sampled in alternation."""
    calls = {name: _calibrate(fn, sample_seconds) for name, fn in work.items()}
    samples: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(rounds):
        for name, fn in work.items():
            start = time.thread_time()
            for _ in range(calls[name]):
                fn()
            elapsed = max(time.thread_time() - start, 1e-9)
            samples[name].append(bytes_per_call * calls[name] / elapsed / 1e9)
    return {name: statistics.median(values) for name, values in samples.items()}


def _calibrate(fn: Callable[[], object], sample_seconds: float) -> int:
    calls = 1
    while True:
        start = time.thread_time()
        for _ in range(calls):
            fn()
        elapsed = time.thread_time() - start
        if elapsed > sample_seconds / 4 or calls > 1 << 20:
            return max(1, int(calls * sample_seconds / max(elapsed, 1e-9)))
        calls *= 2


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all the machine's cores have spent busy so far (/proc/stat: everything but
    idle and I/O wait)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """Where the CPU went over a stretch of wall time, in cores: this process, each group of other
    processes (its sum and its busiest member) and the whole machine. `start()`, then `stop()`."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups

    def _sample(self) -> tuple:
        return (time.perf_counter(), time.process_time(), machine_busy_seconds(),
                {name: [cpu_seconds(pid) for pid in pids] for name, pids in self.groups.items()})

    def start(self) -> None:
        self._begin = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        seconds = max(end[0] - self._begin[0], 1e-9)
        cores = {"self": (end[1] - self._begin[1]) / seconds, "machine": (end[2] - self._begin[2]) / seconds}
        for name, after in end[3].items():
            used = [(a - b) / seconds for a, b in zip(after, self._begin[3][name])]
            cores[name], cores[f"{name}_busiest"] = sum(used), max(used, default=0.0)
        return cores


async def in_flight_run(count: int, in_flight: int, one) -> float:
    """Seconds for `await one(n)` over n < count, at most `in_flight` at a time: that many workers
    take the next number as each finishes. (Not a task per item behind a semaphore: thousands of
    waiting tasks cost the measuring process garbage-collector passes and scheduling.)"""
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:
            await one(number)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(in_flight, count))))
    return time.perf_counter() - started


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    header = f"{'metric':<34} {'cairn':>10} {'unit':<5} {'reference':<14} {'ref':>10} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['metric']:<34} {r['value']:>10.2f} {r['unit']:<5} {r['ref']:<14} {r['ref_value']:>10.2f} {r['ratio']:>7.2f}")


def write_json(path: str | None, rows: list[dict]) -> None:
    if path:
        with open(path, "w") as out:
            json.dump(rows, out, indent=1)


def pip_install(*packages: str) -> None:
    """Installs reference packages into this interpreter (benchmarks bring their own)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *packages], check=True)


class PeakResident:
    """Samples the resident memory of some processes in a thread: `peak` is the largest any of
    them reached (bytes), so a benchmark can report what its servers needed."""

    def __init__(self, pids: list[int], every_seconds: float = 1.0):
        import threading

        self.pids, self.every_seconds, self.peak = list(pids), every_seconds, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakResident":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_seconds):
            for pid in self.pids:
                try:
                    with open(f"/proc/{pid}/status") as f:
                        self.peak = max(self.peak, int(f.read().split("VmRSS:")[1].split()[0]) << 10)
                except (OSError, IndexError, ValueError):
                    pass  # gone: nothing to sample


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def drop_cache_tree(directory: str) -> None:
    """Evicts every file under `directory` from the page cache (both systems read from disk)."""
    for parent, _, files in os.walk(directory):
        for name in files:
            try:
                fd = os.open(os.path.join(parent, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
