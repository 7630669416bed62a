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


def run_with_last_check(world, collector, meanwhile):
    """A first pass, then one past the grace in which `meanwhile()` happens just before the
    leader is asked once more (its second query of the pass: the last check before the delete)."""
    run(collector)
    world.now = 20.0
    original, asked = world.lookup, world.queries

    async def lookup(ids):
        if world.queries == asked + 1:
            meanwhile()
        return await original(ids)
    collector.placements = lookup
    run(collector)


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

    def commit():
        world.placements[B] = [7]
    run_with_last_check(world, collector, commit)
    assert (B, 0) in world.fragments


def test_a_node_without_an_id_judges_nothing_and_bad_settings_are_refused():
    world = World()
    assert run(world.collector(node_id=0)).fragments == 0
    with pytest.raises(ValueError):
        world.collector(grace=0)


def test_a_touch_or_a_put_starts_the_grace_afresh():
    world = World()
    collector = world.collector()
    run(collector)  # (B, 0) and (C, 2) unreferenced since 0
    world.now = 8.0
    assert collector.renew([(B, 0)]) == [True]  # a put in flight touches its fragment
    world.now = 12.0
    assert run(collector).deleted == 1
    assert (B, 0) in world.fragments and (C, 2) not in world.fragments
    world.now = 18.0
    assert run(collector).deleted == 1  # untouched for its whole grace since
    assert (B, 0) not in world.fragments


def test_a_touch_while_the_leader_is_asked_saves_the_fragment():
    """The touch lands between the collector's last look at the metadata and its delete."""
    world = World()
    collector = world.collector()

    def touch():
        assert collector.renew([(B, 0)]) == [True]
    run_with_last_check(world, collector, touch)
    assert (B, 0) in world.fragments and (C, 2) not in world.fragments


def test_a_fragment_being_deleted_is_not_held_for_a_touch_or_a_put():
    world = World()
    collector = world.collector()
    run(collector)
    world.now = 20.0
    answers = []

    async def delete(fragments):
        answers.append(collector.touch([(B, 0), (A, 0)], lambda c, i: (c, i) in world.fragments))
        world.fragments -= set(fragments)
    collector.delete = delete
    run(collector)
    assert answers == [[False, True]]  # (B, 0) claimed: the put that touched it fails before its commit
    assert collector.renew([(B, 0)]) == [True]  # once deleted, a new put of it is a new fragment


def test_a_touch_of_a_fragment_the_node_lacks_says_so():
    world = World()
    collector = world.collector()
    assert collector.touch([(A, 0), (A, 2)], lambda c, i: (c, i) in world.fragments) == [True, False]


def test_a_pass_cancelled_while_it_deletes_keeps_its_claims():
    """The node is stopping and its delete may still be running in a thread: a put of a claimed
    fragment must not be acknowledged meanwhile."""
    world = World()
    collector = world.collector()
    run(collector)
    world.now = 20.0

    async def main():
        started = asyncio.Event()

        async def slow_delete(fragments):
            started.set()
            await asyncio.sleep(10)
        collector.delete = slow_delete
        running = asyncio.ensure_future(collector.run_pass())
        await started.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    asyncio.run(main())
    assert collector.renew([(B, 0), (A, 0)]) == [False, True]
