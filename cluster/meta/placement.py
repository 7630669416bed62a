"""Where the k+m fragments of a chunk go: pure and deterministic given the nodes and a seed.

Rules, in priority order, for each fragment in turn:
1. a node not already holding a fragment of the chunk;
2. on the host with the fewest fragments so far (so never two on a host while another host has
   room), then the rack with the fewest, then the zone with the fewest;
3. among the nodes tied on that, one drawn at random weighted by free bytes, so fuller nodes
   fill more slowly.
Nodes that are not up (suspect, dead, draining) or have no free space are not candidates; the
caller filters them (see `candidates`).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass


class NotEnoughNodes(Exception):
    pass


@dataclass(frozen=True, eq=False)  # identity equality: list.remove stays cheap
class Candidate:
    id: int
    host: str
    rack: str
    zone: str
    free: int


def candidate(node_id: int, labels: dict[str, str], free: int) -> Candidate:
    """A node's failure domains, from its labels; a node without a host label is its own host."""
    host = labels.get("host") or f"node-{node_id}"
    return Candidate(node_id, host, labels.get("rack", ""), labels.get("zone", ""), free)


def place(nodes: list[Candidate], count: int, rng: random.Random, taken: list[Candidate] = ()) -> list[int]:
    """Chooses `count` nodes for new fragments, given the ones already `taken` by this chunk."""
    used = {n.id for n in taken}
    free = [n for n in nodes if n.id not in used]
    if len(free) < count:
        raise NotEnoughNodes(f"{count} fragments need {count} more usable data nodes; {len(free)} are available")
    # When every node is its own host in one rack and zone (the usual small cluster), rule 2 ties
    # every free node at every pick, so the picks are successive weighted draws from all of them.
    if _all_tie(free, taken):
        return _race(free, count, rng)
    hosts: dict[str, int] = {}
    racks: dict[str, int] = {}
    zones: dict[str, int] = {}
    for n in taken:
        _count(n, hosts, racks, zones)
    chosen = []
    for _ in range(count):
        ties = _least_loaded(free, hosts, racks, zones)
        pick = _weighted(ties, sum(n.free for n in ties), rng)
        chosen.append(pick.id)
        free.remove(pick)
        _count(pick, hosts, racks, zones)
    return chosen


def place_many(nodes: list[Candidate], count: int, chunks: int, rng: random.Random) -> list[list[int]]:
    """`place` for each of `chunks` new chunks in turn, with the same draws; the nodes are
    looked at once for all of them (a BeginPut places many chunks on the same nodes)."""
    if len(nodes) < count or not _all_tie(nodes, ()):
        return [place(nodes, count, rng) for _ in range(chunks)]
    return [_race(nodes, count, rng) for _ in range(chunks)]


def _race(free: list[Candidate], count: int, rng: random.Random) -> list[int]:
    """`count` successive draws without replacement, each weighted by free bytes, in one pass:
    every node draws an exponential time at the rate of its weight and the first `count` to
    finish are the picks, in order (the first of any set to finish is each one's with
    probability weight/total, and the rest go on racing). Nodes of no weight come last, in a
    uniform order, as `_weighted` picks them only when nothing else is left."""
    draw, log = rng.random, math.log
    keys = [(0, -log(1.0 - draw()) / n.free, position) if n.free > 0 else (1, -log(1.0 - draw()), position)
            for position, n in enumerate(free)]
    keys.sort()
    return [free[position].id for _, _, position in keys[:count]]


def _all_tie(free: list[Candidate], taken) -> bool:
    everyone = free + list(taken)
    return len({n.host for n in everyone}) == len(everyone) and len({(n.rack, n.zone) for n in everyone}) == 1


def _least_loaded(free: list[Candidate], hosts: dict, racks: dict, zones: dict) -> list[Candidate]:
    loads = [(hosts.get(n.host, 0), racks.get(n.rack, 0), zones.get(n.zone, 0)) for n in free]
    best = min(loads)
    return [n for n, load in zip(free, loads) if load == best]


def _count(n: Candidate, hosts: dict, racks: dict, zones: dict) -> None:
    hosts[n.host] = hosts.get(n.host, 0) + 1
    racks[n.rack] = racks.get(n.rack, 0) + 1
    zones[n.zone] = zones.get(n.zone, 0) + 1


def _weighted(ties: list[Candidate], total: int, rng: random.Random) -> Candidate:
    if len(ties) == 1:
        return ties[0]
    if total <= 0:
        return ties[rng.randrange(len(ties))]
    point = rng.random() * total
    for n in ties:
        point -= n.free
        if point < 0:
            return n
    return ties[-1]
