"""Runs a simulator's CI budget of seeds as two `python -m simulations` processes, one per core:
the seeds are independent, and a budget run in one process left a core idle for minutes."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES = 2


def run_seed_budget(simulator: str, seeds: int, timeout: float = 900) -> None:
    """Fails with the simulator's output (its replay commands) unless every seed held."""
    share = -(-seeds // PROCESSES)
    starts = range(0, seeds, share)
    processes = [subprocess.Popen([sys.executable, "-m", "simulations", simulator, "--seeds",
                                   str(min(share, seeds - start)), "--start", str(start)],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env={**os.environ, "PYTHONHASHSEED": "0"})
                 for start in starts]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for process in processes:
            process.kill()
    for process, start, output in zip(processes, starts, outputs):
        count = min(share, seeds - start)
        assert process.returncode == 0, output
        assert f"{simulator}: {count} seeds" in output and " 0 violations" in output, output
