"""The durability planner: how often would a cluster of this shape lose data?

A Monte Carlo of disk and node failures and their repairs over many cluster-years. Fragments are
placed by the real placement code (cluster/meta/placement.py: failure domains, weighted by free
space) on a sample of chunks, and whether a set of failed disks and nodes loses data is decided
by the real repair planning (cluster/meta/repair.py: a chunk with more than m fragments lost is
beyond repair). A failed disk or node is declared dead after the detection delay and rebuilt at
the repair bandwidth, one at a time (the repair queue is cluster-wide and bandwidth-bound).

Next to it, the closed-form estimate: the birth-death Markov chain of the cluster's disks
(failures at (n-i)λ with i failed, one repair at a time at rate μ, data lost at m+1 failed), its
mean time to data loss solved exactly, times the chance that m+1 failed disks share a chunk. The
chain is exact when every chunk spans every disk (one group of k+m) and repair times are
exponential; the planner's check runs that case (`exponential_repair=True`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from cluster.meta import repair
from cluster.meta.placement import candidate, place
from cluster.proto import meta_pb2 as pb

SECONDS_PER_YEAR = 365.25 * 24 * 3600
Z95 = 1.96


@dataclass(frozen=True)
class Shape:
    nodes: int = 12
    disks_per_node: int = 4
    disk_bytes: float = 8e12
    racks: int = 3
    fill: float = 0.7           # fraction of the raw capacity holding fragments
    chunk_bytes: float = 4e6    # average chunk, for the number of chunks the data makes


@dataclass(frozen=True)
class Rates:
    disk_afr: float = 0.02              # disk failures per disk per year
    node_afr: float = 0.01              # whole-node failures (all its disks) per node per year
    repair_bytes_per_second: float = 200e6
    detect_seconds: float = 300.0       # a failure is repaired after it is declared dead


@dataclass
class Estimate:
    years: float
    losses: int
    degraded_seconds: float = 0.0       # time with at least one failure not yet repaired
    events: int = 0

    @property
    def loss_per_year(self) -> float:
        return self.losses / self.years

    def interval(self) -> tuple[float, float]:
        """95% interval of the yearly loss rate (Poisson; with no loss seen, 0 to 3/years)."""
        if self.losses == 0:
            return 0.0, 3.0 / self.years
        half = Z95 * math.sqrt(self.losses)
        return max(0.0, self.losses - half) / self.years, (self.losses + half) / self.years

    @property
    def degraded_hours_per_year(self) -> float:
        return self.degraded_seconds / 3600 / self.years


@dataclass
class Layout:
    """Sample chunks' fragments: per chunk, the node and the disk of each fragment."""
    k: int
    m: int
    nodes: list[int] = field(default_factory=list)
    chunks: list[pb.Chunk] = field(default_factory=list)
    disks: list[list[int]] = field(default_factory=list)  # per chunk, the disk index (0..D-1) of each fragment
    on_disk: dict[tuple[int, int], list[int]] = field(default_factory=dict)   # (node, disk) -> chunk numbers
    on_node: dict[int, list[int]] = field(default_factory=dict)


def lay_out(shape: Shape, k: int, m: int, sample_chunks: int, rng: random.Random) -> Layout:
    if k + m > shape.nodes:
        raise ValueError(f"a {k}+{m} profile needs at least {k + m} nodes, the shape has {shape.nodes}")
    nodes = [candidate(n, {"host": f"h{n}", "rack": f"r{n % shape.racks}"}, int(shape.disk_bytes * shape.disks_per_node))
             for n in range(1, shape.nodes + 1)]
    layout = Layout(k, m, [n.id for n in nodes])
    profile = pb.ErasureProfile(k=k, m=m)
    for number in range(sample_chunks):
        placed = place(nodes, k + m, rng)
        disks = [rng.randrange(shape.disks_per_node) for _ in placed]
        layout.chunks.append(pb.Chunk(profile=profile, nodes=placed))
        layout.disks.append(disks)
        for node, disk in zip(placed, disks):
            layout.on_disk.setdefault((node, disk), []).append(number)
            layout.on_node.setdefault(node, []).append(number)
    return layout


def loses_data(layout: Layout, dead_nodes: set[int], dead_disks: set[tuple[int, int]], touched: list[int]) -> bool:
    """Whether any of the `touched` chunks lost more than m fragments: the repair planner's verdict."""
    states = {n: pb.DEAD if n in dead_nodes else pb.UP for n in layout.nodes}
    damage = {}
    for number in touched:
        chunk = layout.chunks[number]
        lost = {i for i, (node, disk) in enumerate(zip(chunk.nodes, layout.disks[number])) if (node, disk) in dead_disks}
        if lost:
            damage[number.to_bytes(8, "big")] = lost
    found = repair.survey(((n.to_bytes(8, "big"), layout.chunks[n]) for n in touched), states, damage)
    return found.unrepairable > 0


def monte_carlo(shape: Shape, k: int, m: int, rates: Rates, years: float, rng: random.Random,
                sample_chunks: int = 5000, exponential_repair: bool = False) -> Estimate:
    """Failures as Poisson processes per disk and per node, repairs queued one at a time; a
    data loss ends that cluster's life (it starts again, fresh, from the next instant)."""
    layout = lay_out(shape, k, m, sample_chunks, rng)
    disk_rate = rates.disk_afr / SECONDS_PER_YEAR
    node_rate = rates.node_afr / SECONDS_PER_YEAR
    units = [("disk", (n, d)) for n in range(1, shape.nodes + 1) for d in range(shape.disks_per_node)]
    units += [("node", n) for n in range(1, shape.nodes + 1)]
    weights = [disk_rate] * (shape.nodes * shape.disks_per_node) + [node_rate] * shape.nodes
    total_rate = sum(weights)
    if total_rate <= 0:
        return Estimate(years, 0)
    disk_repair = rates.detect_seconds + shape.disk_bytes * shape.fill / rates.repair_bytes_per_second
    node_repair = rates.detect_seconds + shape.disk_bytes * shape.fill * shape.disks_per_node / rates.repair_bytes_per_second
    horizon, now = years * SECONDS_PER_YEAR, 0.0
    estimate = Estimate(years, 0)
    failed: dict[tuple, float] = {}  # unit -> when its repair is done
    queue_free_at = 0.0
    while True:
        now += rng.expovariate(total_rate)
        if now >= horizon:
            break
        for unit in [u for u, done in failed.items() if done <= now]:
            del failed[unit]  # repaired by now
        kind, unit = rng.choices(units, weights)[0]
        if (kind, unit) in failed or (kind == "disk" and ("node", unit[0]) in failed):
            continue  # already down
        estimate.events += 1
        base = disk_repair if kind == "disk" else node_repair
        duration = rng.expovariate(1 / base) if exponential_repair else base
        # the queue runs until every failure so far is repaired: degraded until then
        estimate.degraded_seconds += max(now, queue_free_at) + duration - max(now, queue_free_at)
        queue_free_at = max(now, queue_free_at) + duration
        failed[(kind, unit)] = queue_free_at
        dead_nodes = {u for kd, u in failed if kd == "node"}
        dead_disks = {u for kd, u in failed if kd == "disk"}
        touched = layout.on_node.get(unit, []) if kind == "node" else layout.on_disk.get(unit, [])
        if len(failed) > m and loses_data(layout, dead_nodes, dead_disks, touched):
            estimate.losses += 1
            estimate.degraded_seconds -= queue_free_at - now  # a new cluster, whole, from here
            failed.clear()
            queue_free_at = now
    return estimate


def markov_mttdl(width: int, m: int, failure_rate: float, repair_rate: float) -> float:
    """Mean time to data loss of one group of `width` units from all healthy: failures at
    (width - i) * failure_rate with i failed, one repair at a time at repair_rate, loss at m+1.
    Solved exactly (first-step equations of the birth-death chain)."""
    # T_i: expected time to absorption from i failed. With a_i = (width - i) λ, b_i = μ (i >= 1):
    # T_i = 1/(a_i+b_i) + a_i/(a_i+b_i) T_{i+1} + b_i/(a_i+b_i) T_{i-1}, T_{m+1} = 0.
    # Write T_i = c_i + d_i T_{i+1} going up from i = 0, then back-substitute from T_{m+1} = 0.
    c, d = [], []
    for i in range(m + 1):
        a = (width - i) * failure_rate
        b = repair_rate if i > 0 else 0.0
        if i == 0:
            c_i, d_i = 1 / a, 1.0
        else:
            denominator = a + b - b * d[i - 1]
            c_i = (1 + b * c[i - 1]) / denominator
            d_i = a / denominator
        c.append(c_i)
        d.append(d_i)
    t = 0.0
    for i in range(m, -1, -1):
        t = c[i] + d[i] * t
    return t


def markov_loss_per_year(shape: Shape, k: int, m: int, rates: Rates) -> float:
    """The closed-form estimate for a cluster: its disks as one birth-death chain (a node
    failure counted as one more disk failure), data lost when m+1 failures overlap and some
    chunk has a fragment on each of them. With as many chunks as a real cluster holds, almost
    every set of m+1 disks shares one: that chance is 1 - exp(-chunks * C(k+m, m+1) / C(disks, m+1))."""
    width, disks = k + m, shape.nodes * shape.disks_per_node
    chunks = disks * shape.disk_bytes * shape.fill / (shape.chunk_bytes / k * width)
    shared = 1 - math.exp(-chunks * math.comb(width, m + 1) / math.comb(disks, m + 1))
    repair_seconds = rates.detect_seconds + shape.disk_bytes * shape.fill / rates.repair_bytes_per_second
    mttdl_years = markov_mttdl(disks, m, rates.disk_afr + rates.node_afr, SECONDS_PER_YEAR / repair_seconds)
    return shared / mttdl_years


EXACT_CASES = [(2, 1, 4.0), (2, 2, 8.0), (3, 2, 8.0)]  # k, m, failures per disk-year
EXACT_REPAIRS_PER_YEAR = 40.0


def exact_check(k: int, m: int, failures_per_year: float, years: float, seed: int,
                repairs_per_year: float = EXACT_REPAIRS_PER_YEAR) -> tuple[Estimate, float]:
    """The Monte Carlo where the chain is exact: one group (k+m nodes of one disk, every chunk on
    every disk), exponential repairs one at a time, no detection delay. Returns the estimate
    and the chain's loss rate per year."""
    width = k + m
    shape = Shape(nodes=width, disks_per_node=1, disk_bytes=1e9, racks=width, fill=1.0)
    rates = Rates(disk_afr=failures_per_year, node_afr=0.0,
                  repair_bytes_per_second=1e9 / (SECONDS_PER_YEAR / repairs_per_year), detect_seconds=0.0)
    estimate = monte_carlo(shape, k, m, rates, years, random.Random(seed), sample_chunks=20, exponential_repair=True)
    return estimate, 1 / markov_mttdl(width, m, failures_per_year, repairs_per_year)


PROFILES = [(4, 2), (6, 3), (8, 3), (10, 4)]
SWEEP_MB_PER_S = [25, 50, 100, 200, 400, 800]


@dataclass
class Row:
    k: int
    m: int
    repair_mb_per_s: float
    estimate: Estimate
    markov_per_year: float

    def cells(self) -> list[str]:
        low, high = self.estimate.interval()
        return [f"{self.k}+{self.m}", f"{self.repair_mb_per_s:g}", f"{_probability(self.estimate.loss_per_year):.3g}",
                f"[{_probability(low):.2g}, {_probability(high):.2g}]", f"{_probability(self.markov_per_year):.3g}",
                f"{self.estimate.degraded_hours_per_year:.1f}"]


HEADER = ["profile", "repair MB/s", "P(loss)/year (Monte Carlo)", "95% interval", "P(loss)/year (Markov)",
          "hours degraded/year"]


def _probability(rate_per_year: float) -> float:
    return 1 - math.exp(-rate_per_year)


def plan(shape: Shape, rates: Rates, profiles, bandwidths, years: float, seed: int, sample_chunks: int,
         progress=lambda text: None) -> list[Row]:
    rows = []
    for k, m in profiles:
        if k + m > shape.nodes:
            progress(f"{k}+{m} skipped: it needs {k + m} nodes, the shape has {shape.nodes}")
            continue
        for mb_per_s in bandwidths:
            progress(f"{k}+{m} at {mb_per_s:g} MB/s ...")
            these = Rates(rates.disk_afr, rates.node_afr, mb_per_s * 1e6, rates.detect_seconds)
            estimate = monte_carlo(shape, k, m, these, years, random.Random(seed), sample_chunks)
            rows.append(Row(k, m, mb_per_s, estimate, markov_loss_per_year(shape, k, m, these)))
    return rows


def table(rows: list[Row]) -> str:
    lines = [HEADER] + [row.cells() for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines)


def plot(rows: list[Row], path: str, title: str) -> None:
    """P(loss)/year against repair bandwidth, a line per profile (Markov), Monte Carlo points
    with their intervals where it saw losses. Needs matplotlib (pip install 'cairn[plot]')."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit(f"--plot needs matplotlib: pip install 'cairn[plot]' ({error})") from None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for k, m in dict.fromkeys((r.k, r.m) for r in rows):
        mine = [r for r in rows if (r.k, r.m) == (k, m)]
        x = [r.repair_mb_per_s for r in mine]
        line, = axes.plot(x, [max(_probability(r.markov_per_year), 1e-300) for r in mine], label=f"{k}+{m} Markov")
        seen = [r for r in mine if r.estimate.losses]
        if seen:
            axes.errorbar([r.repair_mb_per_s for r in seen], [_probability(r.estimate.loss_per_year) for r in seen],
                          yerr=[[_probability(r.estimate.loss_per_year) - _probability(r.estimate.interval()[0])
                                 for r in seen],
                                [_probability(r.estimate.interval()[1]) - _probability(r.estimate.loss_per_year)
                                 for r in seen]],
                          fmt="o", color=line.get_color(), label=f"{k}+{m} Monte Carlo")
    axes.set_xscale("log")
    axes.set_yscale("log")
    bandwidths = sorted({r.repair_mb_per_s for r in rows})
    axes.set_xticks(bandwidths, [f"{b:g}" for b in bandwidths])
    axes.minorticks_off()
    axes.set_xlabel("repair bandwidth (MB/s, cluster-wide)")
    axes.set_ylabel("probability of losing data per year")
    axes.set_title(title.replace("; ", "\n", 1), fontsize=8)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
