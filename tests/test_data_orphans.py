"""The orphan collector: unreferenced fragments go only after the grace period and a last check."""
import asyncio

import pytest

from cluster.data.orphans import OrphanCollector

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


class World:
    def __init__(self):
        self.now = 0.0
        self.fragments = {(A, 0), (A, 1), (B, 0), (C, 2)}
        self.placements = {A: [7, 7, 9], C: [1, 2, 3]}  # B: never committed; C: placed elsewhere
        self.queries = 0

    async def lookup(self, ids):
        self.queries += 1
        return {i: self.placements.get(i) for i in ids}

    async def delete(self, fragments):
        self.fragments -= set(fragments)

    def collector(self, node_id=7, grace=10.0):
        return OrphanCollector(lambda: node_id, lambda: sorted(self.fragments), self.lookup, self.delete,
                               lambda: self.now, grace)


def run(collector):
    return asyncio.run(collector.run_pass())


def test_orphans_go_after_the_grace_period_and_referenced_fragments_stay():
    world = World()
    collector = world.collector()
    first = run(collector)
    assert first.unreferenced == 2 and first.deleted == 0  # (B, 0) and (C, 2): not ours
    world.now = 5.0
    assert run(collector).deleted == 0
    world.now = 10.0
    assert run(collector).deleted == 2
    assert world.fragments == {(A, 0), (A, 1)}


def test_a_put_that_commits_within_the_grace_period_keeps_its_fragment():
    world = World()
    collector = world.collector()
    run(collector)
    world.placements[B] = [7]  # the put committed
    world.now = 20.0
    run(collector)
    assert (B, 0) in world.fragments and (C, 2) not in world.fragments


def test_the_last_check_saves_a_fragment_referenced_just_before_the_delete():
    world = World()
    collector = world.collector()
    run(collector)
    world.now = 20.0
    original = world.lookup

    async def commit_on_the_second_query(ids):
        if world.queries == 2:
            world.placements[B] = [7]
        return await original(ids)
    world.lookup = commit_on_the_second_query
    collector.placements = commit_on_the_second_query
    run(collector)
    assert (B, 0) in world.fragments


def test_a_node_without_an_id_judges_nothing_and_bad_settings_are_refused():
    world = World()
    assert run(world.collector(node_id=0)).fragments == 0
    with pytest.raises(ValueError):
        world.collector(grace=0)
