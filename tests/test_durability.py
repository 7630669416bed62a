"""The durability planner (simulations/durability.py): the Markov chain against its textbook
forms, the Monte Carlo against the chain where the chain is exact, and the command."""
import os
import random
import subprocess
import sys

import pytest

from simulations import durability as d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_chain_matches_the_textbook_forms():
    width, failure, repair = 5, 0.1, 50.0
    assert d.markov_mttdl(width, 0, failure, repair) == pytest.approx(1 / (width * failure))
    # one failure tolerated (RAID-5): ((2w - 1) λ + μ) / (w (w - 1) λ²)
    expected = ((2 * width - 1) * failure + repair) / (width * (width - 1) * failure ** 2)
    assert d.markov_mttdl(width, 1, failure, repair) == pytest.approx(expected)
    # more tolerance, faster repair: longer lives
    assert d.markov_mttdl(width, 2, failure, repair) > d.markov_mttdl(width, 1, failure, repair)
    assert d.markov_mttdl(width, 2, failure, 2 * repair) > d.markov_mttdl(width, 2, failure, repair)


@pytest.mark.parametrize("k,m", [(2, 1), (2, 2), (3, 2)])
def test_the_monte_carlo_agrees_with_the_chain_where_the_chain_is_exact(k, m):
    """One group: k+m nodes of one disk, every chunk on every disk, exponential repairs one at a
    time, no detection delay. Rates high enough to see thousands of losses."""
    failures_per_year = next(f for kk, mm, f in d.EXACT_CASES if (kk, mm) == (k, m))
    estimate, exact = d.exact_check(k, m, failures_per_year, 3000, seed=k * 10 + m)
    assert estimate.losses > 1000
    low, high = estimate.interval()
    assert low <= exact <= high, (estimate.loss_per_year, exact)


def test_losses_follow_the_planners_verdict_on_placements():
    shape = d.Shape(nodes=6, disks_per_node=2, racks=3)
    layout = d.lay_out(shape, 2, 1, 200, random.Random(3))
    assert all(len(set(chunk.nodes)) == 3 for chunk in layout.chunks)  # distinct nodes
    chunk = layout.chunks[0]
    one, two = chunk.nodes[0], chunk.nodes[1]
    touched = layout.on_node[two]
    assert not d.loses_data(layout, {one}, set(), touched)     # m = 1 lost: repairable
    assert d.loses_data(layout, {one, two}, set(), touched)    # two of its nodes: beyond repair
    # a disk, not a whole node: only the chunks with a fragment on that disk
    disk = (two, layout.disks[0][1])
    assert d.loses_data(layout, {one}, {disk}, layout.on_disk[disk])


def test_the_closed_form_falls_with_bandwidth_and_wider_profiles():
    shape, slow, fast = d.Shape(), d.Rates(repair_bytes_per_second=50e6), d.Rates(repair_bytes_per_second=400e6)
    assert d.markov_loss_per_year(shape, 4, 2, fast) < d.markov_loss_per_year(shape, 4, 2, slow)
    assert d.markov_loss_per_year(shape, 10, 4, slow) < d.markov_loss_per_year(shape, 4, 2, slow)


def test_the_command_prints_a_table_and_writes_a_plot(tmp_path):
    plot = tmp_path / "loss.png"
    out = subprocess.run([sys.executable, "-m", "simulations", "durability", "--sweep", "--nodes", "16", "--years", "300",
                          "--sample-chunks", "300", "--plot", str(plot)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "P(loss)/year (Markov)" in out.stdout and "10+4" in out.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exact = subprocess.run([sys.executable, "-m", "simulations", "durability", "--exact", "--years", "200"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert exact.returncode == 0 and exact.stdout.count("; chain ") == len(d.EXACT_CASES), exact.stdout
    bad = subprocess.run([sys.executable, "-m", "simulations", "durability", "--profile", "4-2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "K+M" in bad.stderr
