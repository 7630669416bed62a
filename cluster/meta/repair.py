"""Repair planning, run by the metadata leader. Pure: records in, orders out.

A fragment is lost when the node its chunk's placement names is DEAD or unknown, or when a damage
report (scrubber, client hash check) names it. A fragment on a DRAINING node is not lost, but it
moves the same way (rebuilt from any k, the draining node's own copy included, and written
elsewhere) until the node holds nothing. A chunk that lost fragments gets an order: rebuild
those indexes from any k others and write them to fresh nodes, chosen by the same placement rules
as a put (failure domains, free space), or back in place when the node is alive and no other
node can take it. Orders come most endangered first (m lost before m-1 ...); a chunk that lost
more than m is beyond repair and only counted.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cluster.proto import meta_pb2 as pb


@dataclass(frozen=True)
class Damaged:
    chunk_id: bytes
    chunk: pb.Chunk
    lost: tuple[int, ...]
    target: int | None = None  # a rebalancing move: the node that takes the fragment


@dataclass
class Survey:
    """What one pass over chunks found: counts by fragments lost, and the chunks to repair."""
    scanned: int = 0
    by_lost: Counter = field(default_factory=Counter)   # fragments lost -> chunks
    unrepairable: int = 0
    draining: int = 0                                    # fragments still on draining nodes
    load: Counter = field(default_factory=Counter)       # node -> fragment bytes placed on it
    queue: list[Damaged] = field(default_factory=list)   # this survey's orders (not summed by add)

    @property
    def repairs(self) -> int:
        """Repairable chunks that lost fragments, plus fragments to move off draining nodes."""
        return sum(count for lost, count in self.by_lost.items() if lost) - self.unrepairable + self.draining

    def add(self, other: "Survey") -> None:
        """Sums another slice's counts into this pass's."""
        self.scanned += other.scanned
        self.by_lost.update(other.by_lost)
        self.unrepairable += other.unrepairable
        self.draining += other.draining
        self.load.update(other.load)


def lost_fragments(chunk: pb.Chunk, states: dict[int, int], damaged: set[int]) -> tuple[int, ...]:
    return tuple(i for i, node in enumerate(chunk.nodes)
                 if states.get(node, pb.DEAD) == pb.DEAD or i in damaged)


def survey(chunks, states: dict[int, int], damage: dict[bytes, set[int]], moves: "Moves | None" = None) -> Survey:
    """`chunks`: (id, pb.Chunk) pairs; `states`: node id -> NodeState; `damage`: chunk id ->
    damaged fragment indexes; `moves`: a rebalancing plan to take moves from. COLD chunks (and
    unreferenced ones that were cold) have no fragments to lose."""
    found = Survey()
    for chunk_id, chunk in chunks:
        found.scanned += 1
        if chunk.state == pb.COLD or not chunk.nodes:
            continue
        for node in chunk.nodes:
            found.load[node] += chunk.length // max(1, chunk.profile.k)
        lost = lost_fragments(chunk, states, damage.get(chunk_id, set()))
        moving = tuple(i for i, node in enumerate(chunk.nodes) if states.get(node) == pb.DRAINING and i not in lost)
        found.by_lost[len(lost)] += 1
        found.draining += len(moving)
        if len(lost) > chunk.profile.m:
            found.unrepairable += 1
            continue
        # lost ones first; a drain moves at most m at a time (k must stay readable)
        move = (lost + moving)[:chunk.profile.m]
        if move:
            found.queue.append(Damaged(chunk_id, chunk, tuple(sorted(move))))
        elif moves is not None:
            taken = moves.take(chunk)
            if taken is not None:
                found.queue.append(Damaged(chunk_id, chunk, (taken[0],), target=taken[1]))
    return found


class Moves:
    """A rebalancing plan: bytes to move off nodes above the mean load by more than `band`, onto
    nodes below it by more than `band` (UP nodes only), taken chunk by chunk as a survey passes."""

    def __init__(self, load: Counter, states: dict[int, int], band: float):
        up = [n for n, state in states.items() if state == pb.UP]
        mean = sum(load[n] for n in up) / len(up) if up else 0
        self.excess = {n: load[n] - mean for n in up if load[n] > mean * (1 + band)}
        self.room = {n: mean - load[n] for n in up if load[n] < mean * (1 - band)}

    def __bool__(self) -> bool:
        return bool(self.excess and self.room)

    def take(self, chunk: pb.Chunk) -> tuple[int, int] | None:
        """(index, target) of one fragment of `chunk` to move, or None; books its bytes."""
        size = chunk.length // max(1, chunk.profile.k)
        for index, node in enumerate(chunk.nodes):
            if self.excess.get(node, 0) < size:
                continue
            targets = [n for n, room in self.room.items() if room >= size and n not in chunk.nodes]
            if not targets:
                return None
            target = max(targets, key=lambda n: (self.room[n], -n))
            self.excess[node] -= size
            self.room[target] -= size
            return index, target
        return None


def endangerment(d: Damaged, states: dict[int, int] | None = None) -> int:
    """How close the chunk is to loss: fragments truly lost (moves off draining nodes count as
    none), plus its fragments on SUSPECT nodes (not lost yet, but nodes that die together are
    declared dead up to a heartbeat apart: this ranks their shared chunks first from the start)."""
    if d.target is not None:
        return 0  # a rebalancing move
    if states is None:
        return len(d.lost)
    lost = sum(1 for i in d.lost if states.get(d.chunk.nodes[i]) != pb.DRAINING)
    return lost + sum(1 for i, node in enumerate(d.chunk.nodes) if i not in d.lost and states.get(node) == pb.SUSPECT)


def most_endangered_first(queue: list[Damaged], states: dict[int, int] | None = None) -> list[Damaged]:
    return sorted(queue, key=lambda d: (-endangerment(d, states), d.chunk_id))


def targets(chunk: pb.Chunk, lost: tuple[int, ...], fresh: list[int] | None, states: dict[int, int]) -> list[int]:
    """The placement after repair: `fresh` (a replacement placement, or None if no node could
    take the fragments), else each lost fragment back on its own node when that node is up."""
    if fresh is not None:
        return fresh
    if all(states.get(chunk.nodes[i]) == pb.UP for i in lost):
        return list(chunk.nodes)  # rewritten in place
    raise NoTarget(f"no node can take fragments {list(lost)}")


class NoTarget(Exception):
    pass
