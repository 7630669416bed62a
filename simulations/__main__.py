"""python -m simulations raft|cluster --seeds N: runs seeded failure-injection simulations.

Each seed is one deterministic run: `raft` the metadata group alone (simulations/raft/run.py),
`cluster` the whole cluster with clients (simulations/cluster/run.py). The summary gives the
seeds run, the simulated time, the faults injected by kind and every violation; a failing seed
prints the command that replays it alone (`--trace` prints every operation and fault).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter


def _run_seeds(name: str, args, run_one, describe, replay, progress_every: int) -> int:
    """Runs the seeds `args` names; prints a line per violation with its replay command, a line
    per seed when asked, and the summary."""
    seeds = [args.seed] if args.seed is not None else list(range(args.start, args.start + args.seeds))
    faults, activity, simulated, operations, failures, started = Counter(), Counter(), 0.0, 0, [], time.monotonic()
    for count, seed in enumerate(seeds, 1):
        report = run_one(seed)
        faults.update(report.faults)
        activity.update(getattr(report, "activity", Counter()))
        simulated += report.simulated_seconds
        operations += report.operations
        if report.violation:
            failures.append(report)
            print(f"seed {seed}: VIOLATION {report.violation}", flush=True)
            print(f"  replay: {replay(seed)}", flush=True)
        elif args.seed is not None or args.verbose:
            print(f"seed {seed}: ok, {describe(report)}, trace {report.trace}", flush=True)
        if count % progress_every == 0:
            print(f"... {count} seeds, {len(failures)} failing", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    print(f"{name}: {len(seeds)} seeds in {elapsed:.1f} s, {simulated / 3600:.2f} simulated hours "
          f"({simulated / max(elapsed, 1e-9):.0f}x real time), {operations} client operations, "
          f"{len(failures)} violations")
    print("faults injected: " + (", ".join(f"{kind} {n}" for kind, n in sorted(faults.items())) or "none"))
    if activity:
        print("activity: " + ", ".join(f"{kind} {n}" for kind, n in sorted(activity.items())))
    return 1 if failures else 0


def raft_command(args) -> int:
    from simulations.raft.run import run_seed

    return _run_seeds("raft", args, lambda seed: run_seed(seed, args.seconds),
                      lambda r: f"{r.nodes} nodes, {r.operations} operations",
                      lambda seed: f"python -m simulations raft --seed {seed} --seconds {args.seconds}", 100)


def cluster_command(args) -> int:
    import logging

    from simulations.cluster.run import run_seed

    logging.basicConfig(level=logging.CRITICAL if not args.trace else logging.WARNING)
    scenario = f" --scenario {args.scenario}" if args.scenario else ""
    return _run_seeds("cluster", args,
                      lambda seed: run_seed(seed, args.seconds, verbose=args.trace, scenario=args.scenario),
                      lambda r: f"{r.shape}, {r.operations} operations, {r.simulated_seconds:.0f} simulated s",
                      lambda seed: f"python -m simulations cluster --seed {seed} --seconds {args.seconds:g}"
                                   f"{scenario} --trace", 20)


def durability_command(args) -> int:
    from simulations import durability as d

    try:
        k, m = (int(x) for x in args.profile.split("+"))
    except ValueError:
        raise SystemExit(f"bad --profile {args.profile!r}: K+M, e.g. 4+2") from None
    shape = d.Shape(args.nodes, args.disks, args.disk_tb * 1e12, args.racks, args.fill, args.chunk_mb * 1e6)
    rates = d.Rates(args.disk_afr, args.node_afr, args.repair_mb_per_s * 1e6, args.detect_seconds)
    for name, value in (("--nodes", args.nodes), ("--disks", args.disks), ("--racks", args.racks),
                        ("--years", args.years), ("--repair-mb-per-s", args.repair_mb_per_s)):
        if value <= 0:
            raise SystemExit(f"{name} must be positive")
    if not 0 < args.fill <= 1 or args.disk_afr < 0 or args.node_afr < 0:
        raise SystemExit("--fill must be in (0, 1], failure rates >= 0")
    if args.exact:
        print("one group, exponential repairs at 40 per year, no detection delay: Monte Carlo against the chain")
        for kk, mm, failures in d.EXACT_CASES:
            estimate, chain = d.exact_check(kk, mm, failures, args.years, args.seed)
            low, high = estimate.interval()
            print(f"{kk}+{mm}, {failures:g} failures/disk-year: {estimate.loss_per_year:.4g} losses/year "
                  f"[{low:.4g}, {high:.4g}] over {args.years:g} years; chain {chain:.4g}")
        return 0
    if not args.sweep and k + m > args.nodes:
        raise SystemExit(f"a {k}+{m} profile needs at least {k + m} nodes; --nodes is {args.nodes}")
    profiles = d.PROFILES if args.sweep else [(k, m)]
    bandwidths = d.SWEEP_MB_PER_S if args.sweep else [args.repair_mb_per_s]
    rows = d.plan(shape, rates, profiles, bandwidths, args.years, args.seed, args.sample_chunks,
                  progress=lambda text: print(text, file=sys.stderr, flush=True))
    title = (f"{args.nodes} nodes x {args.disks} disks of {args.disk_tb:g} TB in {args.racks} racks, "
             f"{args.fill:.0%} full; disk AFR {args.disk_afr:g}, node AFR {args.node_afr:g}; "
             f"{args.years:g} simulated years per row")
    print(title)
    print(d.table(rows))
    if args.plot:
        d.plot(rows, args.plot, title)
        print(f"plot: {args.plot}")
    return 0


def with_fixed_hash_seed(argv: list[str]) -> None:
    """Re-runs `python -m simulations ARGV` with PYTHONHASHSEED=0 unless it is set so, so a seed
    replays the same in any process (str and bytes hashes, and so set orders, are otherwise
    salted per process)."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, "-m", "simulations", *argv],
                  {**os.environ, "PYTHONHASHSEED": "0"})


def _seeded(commands, name: str, help_text: str, seeds: int, seconds: float) -> argparse.ArgumentParser:
    """A command that runs seeds: which ones, how long each, how much to print."""
    command = commands.add_parser(name, help=help_text)
    command.add_argument("--seeds", type=int, default=seeds, help=f"how many seeds to run (default {seeds})")
    command.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    command.add_argument("--seed", type=int, help="run this one seed only, with details")
    command.add_argument("--seconds", type=float, default=seconds, help="simulated seconds of faults per seed")
    command.add_argument("--verbose", action="store_true", help="a line for every seed")
    return command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    raft = _seeded(commands, "raft", "the Raft metadata group under faults", 100, 5.0)
    raft.set_defaults(run=raft_command)
    whole = _seeded(commands, "cluster", "the whole cluster (meta, data, clients) under faults", 20, 60.0)
    whole.add_argument("--trace", action="store_true", help="print every operation and fault as it happens")
    from simulations.cluster.run import SCENARIOS

    whole.add_argument("--scenario", choices=sorted(SCENARIOS),
                       help="scripted faults in place of the seeded ones")
    whole.set_defaults(run=cluster_command)
    durable = commands.add_parser("durability", help="how often a cluster of this shape would lose data")
    durable.add_argument("--nodes", type=int, default=12)
    durable.add_argument("--disks", type=int, default=4, help="disks per node")
    durable.add_argument("--disk-tb", type=float, default=8.0)
    durable.add_argument("--racks", type=int, default=3, help="failure domains the nodes spread over")
    durable.add_argument("--fill", type=float, default=0.7, help="fraction of the capacity in use")
    durable.add_argument("--chunk-mb", type=float, default=4.0, help="average chunk size")
    durable.add_argument("--profile", default="4+2", help="erasure profile K+M")
    durable.add_argument("--disk-afr", type=float, default=0.02, help="disk failures per disk-year")
    durable.add_argument("--node-afr", type=float, default=0.01, help="node failures per node-year")
    durable.add_argument("--repair-mb-per-s", type=float, default=200.0, help="cluster-wide repair bandwidth")
    durable.add_argument("--detect-seconds", type=float, default=300.0, help="delay before a failure is repaired")
    durable.add_argument("--years", type=float, default=100_000, help="simulated cluster-years per row")
    durable.add_argument("--sample-chunks", type=int, default=5000, help="chunks placed for the Monte Carlo")
    durable.add_argument("--seed", type=int, default=1)
    durable.add_argument("--sweep", action="store_true", help="profiles 4+2, 6+3, 8+3, 10+4 x repair bandwidths")
    durable.add_argument("--plot", metavar="FILE.png", help="write P(loss) against repair bandwidth")
    durable.add_argument("--exact", action="store_true",
                         help="check the Monte Carlo against the chain where the chain is exact")
    durable.set_defaults(run=durability_command)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    with_fixed_hash_seed(sys.argv[1:])
    sys.exit(main())
