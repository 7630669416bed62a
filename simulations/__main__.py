"""python -m simulations raft --seeds N: runs seeded failure-injection simulations.

Each seed is one deterministic run (see simulations/raft/run.py). The summary gives the seeds
run, the simulated time, the faults injected by kind and every violation; a failing seed prints
the command that replays it alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter


def raft_command(args) -> int:
    from simulations.raft.run import run_seed

    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    faults, simulated, failures, started = Counter(), 0.0, [], time.monotonic()
    for count, seed in enumerate(seeds, 1):
        report = run_seed(seed, args.seconds)
        faults.update(report.faults)
        simulated += report.simulated_seconds
        if report.violation:
            failures.append(report)
            print(f"seed {seed}: VIOLATION {report.violation}", flush=True)
            print(f"  replay: python -m simulations raft --seed {seed} --seconds {args.seconds}", flush=True)
        elif args.seed is not None or args.verbose:
            print(f"seed {seed}: ok, {report.nodes} nodes, {report.operations} operations, trace {report.trace}")
        if count % 100 == 0:
            print(f"... {count} seeds, {len(failures)} failing", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    print(f"raft: {len(list(seeds))} seeds in {elapsed:.1f} s, {simulated / 3600:.2f} simulated hours, "
          f"{len(failures)} violations")
    print("faults injected: " + (", ".join(f"{kind} {n}" for kind, n in sorted(faults.items())) or "none"))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    raft = commands.add_parser("raft", help="the Raft metadata group under faults")
    raft.add_argument("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
    raft.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    raft.add_argument("--seed", type=int, help="run this one seed only, with details")
    raft.add_argument("--seconds", type=float, default=5.0, help="simulated seconds of faults per seed")
    raft.add_argument("--verbose", action="store_true", help="a line for every seed")
    raft.set_defaults(run=raft_command)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
