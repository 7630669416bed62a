"""The leader's cold-tier duty (cluster/meta/tiering.py) over a real MetaState: what a lifecycle
pass selects and tallies, read times, re-heats on read and restore. Orders are not sent here
(no batch may start); tests/test_tier_cluster.py runs them over real processes."""
from types import SimpleNamespace

import pytest

from cluster.meta import tiering
from cluster.proto import meta_pb2 as pb
from tests.test_meta_state import CHUNK_IDS, CHUNKS, Cluster, commit, register_nodes


class Service:
    """What Tiering uses of MetaService: the state, leadership, the clock, proposals."""

    def __init__(self, cluster: Cluster):
        self.state = cluster.state
        self.driver = SimpleNamespace(is_leader=True)
        self.now = 100.0  # wall seconds; the state's clock is about 1 s
        self.proposed = []
        self.wake = SimpleNamespace(set=lambda: None)

    def clock(self) -> float:
        return self.now

    def propose_and_forget(self, **command) -> None:
        self.proposed.append(command)


@pytest.fixture
def setup(monkeypatch):
    monkeypatch.setattr(tiering, "BATCHES_IN_FLIGHT", 0)  # queue, never send
    cluster = Cluster()
    register_nodes(cluster)
    assert cluster.apply(create_bucket=pb.CreateBucket(name="data", profile=pb.ErasureProfile(k=2, m=1))).code == pb.OK
    target = pb.TierTarget(name="cloud", url="http://127.0.0.1:9000", bucket="cold-bucket", credentials="env:C")
    assert cluster.apply(set_tier_target=pb.SetTierTarget(target=target)).code == pb.OK
    for number, key in enumerate(("logs/a", "keep/b")):
        chunk = CHUNK_IDS[number]
        ref = pb.ChunkRef(id=chunk, length=CHUNKS[chunk])
        assert commit(cluster, [ref], [pb.Placement(chunk=chunk, nodes=[1, 2, 3])], key=key).code == pb.OK
    service = Service(cluster)
    return cluster, service, tiering.Tiering(service, channel_to=None, clock=lambda: service.now, lifecycle_every=60)


def rules(cluster, *rules):
    assert cluster.apply(set_lifecycle=pb.SetLifecycle(bucket="data", rules=list(rules))).code == pb.OK


def test_a_pass_queues_the_hot_chunks_a_rule_selects_and_tallies_each_bucket(setup):
    cluster, service, tier = setup
    rules(cluster, pb.LifecycleRule(prefix="logs/", after_created_seconds=1, target="cloud"))
    tier.round()
    assert tier.stats.passes == 1 and tier.stats.transitions_pending == 1
    assert [(kind, chunk) for kind, chunk in tier._queue] == [(tiering.UPLOAD, CHUNK_IDS[0])]
    assert tier.stats.buckets["data"].hot_bytes == CHUNKS[CHUNK_IDS[0]] + CHUNKS[CHUNK_IDS[1]]
    tier.round()
    assert tier.stats.passes == 1  # the next pass waits lifecycle_every
    tier.rules_changed()
    assert cluster.apply(transition_chunk=pb.TransitionChunk(chunk=CHUNK_IDS[0], target="cloud",
                                                             expect=[1, 2, 3])).code == pb.OK
    tier._queue.clear()
    tier.round()  # a cold chunk is tallied, not queued again
    assert tier.stats.passes == 2 and tier.stats.transitions_pending == 0
    assert tier.stats.buckets["data"].cold_bytes == CHUNKS[CHUNK_IDS[0]]
    assert tier.current_stats().cold_chunks == {"cloud": 1}


def test_reads_are_recorded_once_per_resolution_and_reheat_where_a_rule_says(setup):
    cluster, service, tier = setup
    rules(cluster, pb.LifecycleRule(prefix="logs/", after_read_seconds=60, target="cloud", reheat_on_read=True))
    manifest = cluster.state.get_object("data", "logs/a")
    chunks = [(CHUNK_IDS[0], cluster.state.chunk(CHUNK_IDS[0]))]
    tier.note_read("data", "logs/a", manifest, chunks)
    tier.round()
    assert not [c for c in service.proposed if "touch_objects" in c]  # read within the resolution of the write
    service.now += tiering.READ_RESOLUTION_SECONDS
    tier.note_read("data", "logs/a", manifest, chunks)
    tier.round()
    [touch] = [c["touch_objects"] for c in service.proposed if "touch_objects" in c]
    assert [(t.bucket, t.key, t.version) for t in touch.objects] == [("data", "logs/a", manifest.head.version)]
    cluster.base_ms = int(service.now * 1000) - cluster.index - 1  # applied at the leader's time
    assert cluster.apply(touch_objects=touch).code == pb.OK
    service.proposed.clear()
    tier.note_read("data", "logs/a", cluster.state.get_object("data", "logs/a"), [])
    tier.round()
    assert not [c for c in service.proposed if "touch_objects" in c]  # read within the resolution
    assert cluster.apply(transition_chunk=pb.TransitionChunk(chunk=CHUNK_IDS[0], target="cloud",
                                                             expect=[1, 2, 3])).code == pb.OK
    cold = cluster.state.chunk(CHUNK_IDS[0])
    tier.note_read("data", "keep/b", manifest, [(CHUNK_IDS[0], cold)])  # no reheat rule for keep/
    reheats = lambda: [chunk for kind, chunk in tier._queue if kind == tiering.REHEAT]  # noqa: E731
    assert tier.stats.recalls == 1 and reheats() == []
    tier.note_read("data", "logs/a", manifest, [(CHUNK_IDS[0], cold)])
    assert tier.stats.recalls == 2 and reheats() == [CHUNK_IDS[0]]


def test_restore_queues_the_cold_chunks_of_a_page_and_says_how_many_are_left(setup):
    cluster, service, tier = setup
    assert cluster.apply(transition_chunk=pb.TransitionChunk(chunk=CHUNK_IDS[0], target="cloud",
                                                             expect=[1, 2, 3])).code == pb.OK
    reply = tier.restore(pb.Restore(bucket="data", prefix="", max_keys=1))
    assert (reply.objects, reply.chunks, reply.cold, reply.next) == (1, 1, 0, "keep/b")  # keys in order
    reply = tier.restore(pb.Restore(bucket="data", start_after=reply.next))
    assert (reply.objects, reply.cold, reply.cold_bytes, reply.next) == (1, 1, CHUNKS[CHUNK_IDS[0]], "")
    assert list(tier._queue) == [(tiering.REHEAT, CHUNK_IDS[0])]
    tier.service.driver.is_leader = False
    tier.round()  # a follower forgets its queue
    assert not tier._queue
