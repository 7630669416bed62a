"""Placement: distinct nodes, failure domains spread as evenly as the cluster allows, weighted by
free space, deterministic in its seed, and replacements that keep the surviving fragments."""
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.meta.placement import Candidate, NotEnoughNodes, place


@st.composite
def clusters(draw):
    racks = draw(st.integers(1, 4))
    hosts = draw(st.integers(1, 8))
    nodes, next_id = [], 1
    for h in range(hosts):
        for _ in range(draw(st.integers(1, 3))):
            nodes.append(Candidate(next_id, f"h{h}", f"r{h % racks}", "z", draw(st.integers(0, 1000))))
            next_id += 1
    return nodes


@settings(max_examples=300, deadline=None)
@given(nodes=clusters(), count=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_fragments_go_to_distinct_nodes_spread_over_hosts(nodes, count, seed):
    if count > len(nodes):
        with pytest.raises(NotEnoughNodes):
            place(nodes, count, random.Random(seed))
        return
    chosen = place(nodes, count, random.Random(seed))
    assert len(chosen) == len(set(chosen)) == count
    by_id = {n.id: n for n in nodes}
    per_host = Counter(by_id[i].host for i in chosen)
    capacity = Counter(n.host for n in nodes)
    # never two on a host while another host still had a node free: loads differ by at most one,
    # except on hosts that ran out of nodes
    for host, load in per_host.items():
        for other in capacity:
            if per_host.get(other, 0) < capacity[other]:
                assert load <= per_host.get(other, 0) + 1, (host, other, per_host)
    assert place(nodes, count, random.Random(seed)) == chosen  # deterministic in the seed


@settings(max_examples=200, deadline=None)
@given(nodes=clusters(), seed=st.integers(0, 2**32), data=st.data())
def test_a_replacement_avoids_the_surviving_fragments(nodes, seed, data):
    if len(nodes) < 4:
        return
    taken = data.draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=len(nodes) - 2, unique=True))
    count = data.draw(st.integers(1, len(nodes) - len(taken)))
    chosen = place(nodes, count, random.Random(seed), taken)
    assert not set(chosen) & {n.id for n in taken} and len(set(chosen)) == count


def test_racks_are_spread_once_hosts_are():
    nodes = [Candidate(i, f"h{i}", f"r{i % 3}", "z", 100) for i in range(12)]
    for seed in range(50):
        chosen = place(nodes, 6, random.Random(seed))
        assert sorted(Counter(nodes[i].rack for i in chosen).values()) == [2, 2, 2]


def test_free_space_weights_the_choice_and_full_nodes_fill_slowly():
    nodes = [Candidate(1, "a", "", "", 900), Candidate(2, "b", "", "", 100), Candidate(3, "c", "", "", 0)]
    rng = random.Random(7)
    picks = Counter(place(nodes, 1, rng)[0] for _ in range(5000))
    assert picks[3] == 0
    assert 0.85 < picks[1] / 5000 < 0.95


def test_balance_over_many_placements():
    nodes = [Candidate(i, f"h{i}", "", "", 1000) for i in range(10)]
    rng = random.Random(1)
    load = Counter(i for _ in range(3000) for i in place(nodes, 6, rng))
    mean = sum(load.values()) / len(nodes)
    assert max(load.values()) < mean * 1.1 and min(load.values()) > mean * 0.9


@st.composite
def one_node_a_host(draw):
    """Clusters where the domain rules never separate nodes (the fast path of `place`)."""
    count = draw(st.integers(1, 12))
    rack = draw(st.sampled_from(["", "r1"]))
    return [Candidate(i + 1, f"h{i}", rack, "", draw(st.sampled_from([0, 1, 7, 1000, 1 << 42])))
            for i in range(count)]


@settings(max_examples=300, deadline=None)
@given(nodes=one_node_a_host(), seed=st.integers(0, 2**32), data=st.data())
def test_the_fast_path_picks_distinct_free_nodes_deterministically(nodes, seed, data):
    from cluster.meta import placement

    taken = data.draw(st.lists(st.sampled_from(nodes), max_size=len(nodes) - 1, unique=True))
    free = [n for n in nodes if n not in taken]
    count = data.draw(st.integers(1, len(free)))
    assert placement._all_tie(free, taken)
    chosen = place(nodes, count, random.Random(seed), taken)
    assert len(set(chosen)) == count and set(chosen) <= {n.id for n in free}
    assert place(nodes, count, random.Random(seed), taken) == chosen
    # a node with free space always comes before one without
    weights = {n.id: n.free for n in nodes}
    assert chosen == sorted(chosen, key=lambda i: weights[i] == 0)


def _exact_orders(weights: dict[int, int], count: int) -> dict[tuple, float]:
    """The probability of every ordered pick under rule 3: successive draws weighted by free
    space, uniform among the nodes left when none of them has any."""
    orders = {}

    def walk(prefix: tuple, probability: float) -> None:
        if len(prefix) == count:
            orders[prefix] = probability
            return
        left = [i for i in weights if i not in prefix]
        total = sum(weights[i] for i in left)
        for i in left:
            share = weights[i] / total if total else 1 / len(left)
            if share:
                walk(prefix + (i,), probability * share)
    walk((), 1.0)
    return orders


@pytest.mark.parametrize("weights, count", [({1: 1, 2: 2, 3: 7, 4: 0}, 3), ({1: 5, 2: 0, 3: 0}, 3),
                                             ({i: 1 << 42 for i in range(1, 7)}, 2)])
def test_both_paths_draw_the_orders_of_rule_3(weights, count):
    """The fast path (all nodes tied) and the counted path (mocked to run) both draw each ordered
    pick as often as successive weighted draws would: within 0.02 in total variation over
    20,000 seeded placements each."""
    from unittest import mock

    from cluster.meta import placement

    nodes = [Candidate(i, f"h{i}", "", "", w) for i, w in weights.items()]
    exact = _exact_orders(weights, count)
    trials = 20_000
    for fast in (True, False):
        with mock.patch.object(placement, "_all_tie", return_value=fast):
            rng = random.Random(11)
            seen = Counter(tuple(place(nodes, count, rng)) for _ in range(trials))
        assert set(seen) <= set(exact)
        distance = sum(abs(seen[order] / trials - p) for order, p in exact.items()) / 2
        assert distance < 0.02, (fast, distance)


def test_the_fast_path_is_not_taken_when_domains_differ():
    from cluster.meta.placement import _all_tie

    assert not _all_tie([Candidate(1, "h", "", "", 1), Candidate(2, "h", "", "", 1)], [])
    assert not _all_tie([Candidate(1, "a", "r1", "", 1), Candidate(2, "b", "r2", "", 1)], [])
    assert not _all_tie([Candidate(1, "a", "", "", 1)], [Candidate(2, "a", "", "", 1)])


@settings(max_examples=300, deadline=None)
@given(nodes=st.one_of(clusters(), one_node_a_host()), count=st.integers(1, 8), chunks=st.integers(1, 6),
       seed=st.integers(0, 2**32))
def test_placing_many_chunks_draws_as_placing_each_in_turn(nodes, count, chunks, seed):
    """place_many (a BeginPut's chunks) looks at the nodes once; its placements are those of
    `place` called once per chunk with the same generator, or it refuses as `place` does."""
    from cluster.meta.placement import place_many

    one_by_one = random.Random(seed)
    try:
        expected = [place(nodes, count, one_by_one) for _ in range(chunks)]
    except NotEnoughNodes:
        with pytest.raises(NotEnoughNodes):
            place_many(nodes, count, chunks, random.Random(seed))
        return
    assert place_many(nodes, count, chunks, random.Random(seed)) == expected
