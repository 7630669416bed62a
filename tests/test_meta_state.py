"""The metadata state machine against a plain model (hypothesis stateful), and its refusals."""
import os

import blake3
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cluster.meta import state as state_module
from cluster.meta.state import TIER_SETTLE_MS, MetaState, bucket_key
from cluster.proto import meta_pb2 as pb
from cluster.storage.disk import MemoryDisk

CHUNKS = {blake3.blake3(b"chunk-%d" % i).digest(): 100 + i for i in range(6)}
CHUNK_IDS = sorted(CHUNKS)
BUCKETS = ["alpha", "beta-1"]
KEYS = ["a", "a/b", "a/c/d", "e.txt"]


class Cluster:
    """A MetaState fed commands as Raft would: increasing indexes, op ids, leader time."""

    def __init__(self):
        self.state = MetaState(MemoryDisk())
        self.index = 0
        self.last = None
        self.base_ms = 1_000  # the leader's clock is base_ms + index

    def apply(self, op_id=None, **command):
        return self.apply_entry(pb.MetaCommand(op_id=op_id or os.urandom(16), **command))[0]

    def apply_entry(self, *commands):
        """One Raft entry carrying `commands`; their results."""
        self.index += 1
        for command in commands:
            command.now_ms = self.base_ms + self.index
        self.last = pb.MetaEntry(commands=commands).SerializeToString()
        return list(pb.MetaResults.FromString(self.state.apply(self.index, self.last)).results)

    def replay_last(self):
        self.index += 1
        return pb.MetaResults.FromString(self.state.apply(self.index, self.last)).results

    def put(self, bucket, key, chunk_ids):
        refs = [pb.ChunkRef(id=c, length=CHUNKS[c]) for c in chunk_ids]
        if not refs:
            data = b""
            manifest = pb.Manifest(head=pb.ObjectHead(size=0, blake3=blake3.blake3(data).digest()))
            return self.apply(commit_put=pb.CommitPut(bucket=bucket, key=key, manifest=manifest))
        try:
            exists, placements, _ = self.state.begin_put(bucket, [(r.id, r.length) for r in refs], b"seed")
        except Exception:  # noqa: BLE001 - the commit reports the same refusal
            placements = {}
        manifest = pb.Manifest(head=pb.ObjectHead(size=sum(r.length for r in refs), blake3=b"h" * 32), chunks=refs)
        return self.apply(commit_put=pb.CommitPut(
            bucket=bucket, key=key, manifest=manifest,
            placements=[pb.Placement(chunk=c, nodes=n) for c, n in placements.items()]))


def register_nodes(cluster, count=4):
    for n in range(count):
        node = pb.Node(address=f"10.0.0.{n}:7000", labels={"host": f"h{n}"},
                       disks=[pb.Disk(path="/d", capacity_bytes=1 << 40, free_bytes=1 << 40, healthy=True)])
        assert cluster.apply(register_node=pb.RegisterNode(node=node)).node_id == n + 1


class MetaMachine(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.cluster = Cluster()
        register_nodes(self.cluster)
        self.buckets = {}   # name -> versioning
        self.objects = {}   # (bucket, key) -> [versions]; a version: tuple of chunk ids, or None (marker)
        self.forgotten = set()

    def refs(self):
        counts = {}
        for versions in self.objects.values():
            for version in versions:
                for chunk_id in version or ():
                    counts[chunk_id] = counts.get(chunk_id, 0) + 1
        return counts

    @rule(name=st.sampled_from(BUCKETS), versioning=st.booleans())
    def create_bucket(self, name, versioning):
        result = self.cluster.apply(create_bucket=pb.CreateBucket(
            name=name, profile=pb.ErasureProfile(k=2, m=1), inline_max_bytes=0, versioning=versioning))
        if name in self.buckets:
            assert result.code == pb.BUCKET_EXISTS
        else:
            assert result.code == pb.OK, result
            self.buckets[name] = versioning

    @rule(bucket=st.sampled_from(BUCKETS), key=st.sampled_from(KEYS),
          chunks=st.lists(st.sampled_from(CHUNK_IDS), max_size=4))
    def put(self, bucket, key, chunks):
        result = self.cluster.put(bucket, key, chunks)
        if bucket not in self.buckets:
            assert result.code == pb.NO_SUCH_BUCKET
            return
        assert result.code == pb.OK, result
        versions = self.objects.setdefault((bucket, key), [])
        if not self.buckets[bucket]:
            versions.clear()
        versions.append(tuple(chunks))

    @rule(bucket=st.sampled_from(BUCKETS), key=st.sampled_from(KEYS))
    def delete(self, bucket, key):
        result = self.cluster.apply(delete_object=pb.DeleteObject(bucket=bucket, key=key))
        versions = self.objects.get((bucket, key))
        if bucket not in self.buckets:
            assert result.code == pb.NO_SUCH_BUCKET
        elif not versions or versions[-1] is None:
            assert result.code == pb.NO_SUCH_KEY
        else:
            assert result.code == pb.OK, result
            if self.buckets[bucket]:
                versions.append(None)
            else:
                del self.objects[(bucket, key)]

    @rule(source=st.sampled_from(KEYS), destination=st.sampled_from(KEYS),
          buckets=st.tuples(st.sampled_from(BUCKETS), st.sampled_from(BUCKETS)))
    def copy(self, source, destination, buckets):
        result = self.cluster.apply(copy_object=pb.CopyObject(
            bucket=buckets[1], key=destination, source_bucket=buckets[0], source_key=source))
        versions = self.objects.get((buckets[0], source))
        if buckets[1] not in self.buckets or buckets[0] not in self.buckets:
            assert result.code == pb.NO_SUCH_BUCKET
        elif not versions or versions[-1] is None:
            assert result.code == pb.NO_SUCH_KEY
        else:
            assert result.code == pb.OK, result
            chunks = versions[-1]
            target_versions = self.objects.setdefault((buckets[1], destination), [])
            if not self.buckets[buckets[1]]:
                target_versions.clear()
            target_versions.append(chunks)

    @rule(name=st.sampled_from(BUCKETS))
    def delete_bucket(self, name):
        result = self.cluster.apply(delete_bucket=pb.DeleteBucket(name=name))
        if name not in self.buckets:
            assert result.code == pb.NO_SUCH_BUCKET
        elif any(b == name for b, _ in self.objects):
            assert result.code == pb.BUCKET_NOT_EMPTY
        else:
            assert result.code == pb.OK
            del self.buckets[name]

    @rule()
    def collect_garbage(self):
        garbage = self.cluster.state.garbage(1 << 62)
        assert self.cluster.apply(forget_chunks=pb.ForgetChunks(chunks=garbage)).code == pb.OK
        self.forgotten |= set(garbage)

    @precondition(lambda self: self.cluster.last is not None)
    @rule()
    def retry_the_last_command(self):
        before = dict(self.cluster.state.disk.scan(b"B", b"O"))
        self.cluster.replay_last()  # same op id: its remembered result, no second application
        assert dict(self.cluster.state.disk.scan(b"B", b"O")) == before

    @rule()
    def snapshot_and_restore(self):
        fresh = MetaState(MemoryDisk())
        fresh.restore(self.cluster.state.snapshot())
        assert fresh.applied == self.cluster.state.applied
        self.cluster.state = fresh

    @invariant()
    def reference_counts_are_exact(self):
        expected = self.refs()
        stored = {}
        for key, value in self.cluster.state.disk.scan(b"C", b"D"):
            chunk = pb.Chunk.FromString(value)
            stored[key[1:]] = chunk.refs
            assert (chunk.state == pb.DELETING) == (chunk.refs == 0)
        assert {c: n for c, n in stored.items() if n} == expected
        garbage = set(self.cluster.state.garbage(1 << 62))
        assert garbage == {c for c, n in stored.items() if n == 0}

    @invariant()
    def namespace_matches(self):
        for name in BUCKETS:
            if name not in self.buckets:
                assert self.cluster.state.disk.get(bucket_key(name)) is None
                continue
            live = sorted(k for (b, k), v in self.objects.items() if b == name and v and v[-1] is not None)
            entries, _, _ = self.cluster.state.list_objects(name, max_keys=1000)
            assert [k for k, _ in entries] == live
            bucket = self.cluster.state.bucket(name)
            assert bucket.objects == len(live)
            assert bucket.bytes == sum(sum(CHUNKS[c] for c in self.objects[(name, k)][-1]) for k in live)


TestMetaMachine = MetaMachine.TestCase
TestMetaMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


# ---- refusals change nothing

@pytest.fixture
def cluster():
    c = Cluster()
    register_nodes(c)
    assert c.apply(create_bucket=pb.CreateBucket(name="data", profile=pb.ErasureProfile(k=2, m=1),
                                                 inline_max_bytes=64)).code == pb.OK
    return c


def snapshot_of(cluster):
    return dict(cluster.state.disk.scan(b"B", b"P"))  # the data, not the remembered results


@pytest.mark.parametrize("name", ["ab", "A-bucket", "a..b", "192.168.0.1", "-ab", "ab-", "a" * 64, "xn--ab", "a_b"])
def test_bad_bucket_names_are_refused(cluster, name):
    result = cluster.apply(create_bucket=pb.CreateBucket(name=name, profile=pb.ErasureProfile(k=2, m=1)))
    assert result.code == pb.INVALID_ARGUMENT and "bucket name" in result.message


@pytest.mark.parametrize("key", ["", "a/../b", "./a", "a//b", "/a", "a\x00b", "é" * 513])
def test_bad_keys_are_refused_and_change_nothing(cluster, key):
    before = snapshot_of(cluster)
    result = cluster.put("data", key, CHUNK_IDS[:1])
    assert result.code == pb.INVALID_ARGUMENT
    assert snapshot_of(cluster) == before


def test_a_directory_marker_key_is_allowed(cluster):
    assert cluster.put("data", "photos/", []).code == pb.OK


def commit(cluster, chunks, placements, size=None, key="k"):
    manifest = pb.Manifest(head=pb.ObjectHead(size=size if size is not None else sum(c.length for c in chunks),
                                              blake3=b"h" * 32), chunks=chunks)
    return cluster.apply(commit_put=pb.CommitPut(bucket="data", key=key, manifest=manifest, placements=placements))


def test_bad_commits_are_refused_and_change_nothing(cluster):
    chunk = CHUNK_IDS[0]
    ref = pb.ChunkRef(id=chunk, length=CHUNKS[chunk])
    good = pb.Placement(chunk=chunk, nodes=[1, 2, 3])
    before = snapshot_of(cluster)
    cases = [
        (commit(cluster, [ref], []), pb.MISSING_CHUNKS),
        (commit(cluster, [ref], [pb.Placement(chunk=chunk, nodes=[1, 1, 2])]), pb.BAD_PLACEMENT),
        (commit(cluster, [ref], [pb.Placement(chunk=chunk, nodes=[1, 2, 99])]), pb.BAD_PLACEMENT),
        (commit(cluster, [ref], [pb.Placement(chunk=chunk, nodes=[1, 2])]), pb.BAD_PLACEMENT),
        (commit(cluster, [ref], [good], size=5), pb.INVALID_ARGUMENT),
        (commit(cluster, [pb.ChunkRef(id=b"short", length=3)], []), pb.INVALID_ARGUMENT),
        (commit(cluster, [ref, pb.ChunkRef(id=CHUNK_IDS[1], length=1)], [good]), pb.MISSING_CHUNKS),
    ]
    for result, code in cases:
        assert result.code == code, result
    assert cases[0][0].missing == [chunk]
    assert snapshot_of(cluster) == before
    assert commit(cluster, [ref], [good]).code == pb.OK
    # now known: a commit claiming another length for it is refused
    assert commit(cluster, [pb.ChunkRef(id=chunk, length=1)], [], key="other").code == pb.CHUNK_MISMATCH


def test_inline_objects_are_checked(cluster):
    data = b"tiny object"
    good = pb.Manifest(head=pb.ObjectHead(size=len(data), blake3=blake3.blake3(data).digest()), inline_data=data)
    assert cluster.apply(commit_put=pb.CommitPut(bucket="data", key="t", manifest=good)).code == pb.OK
    assert cluster.state.get_object("data", "t").inline_data == data
    bad = pb.Manifest(head=pb.ObjectHead(size=len(data), blake3=b"x" * 32), inline_data=data)
    assert cluster.apply(commit_put=pb.CommitPut(bucket="data", key="u", manifest=bad)).code == pb.INVALID_ARGUMENT
    big = b"z" * 65
    too_big = pb.Manifest(head=pb.ObjectHead(size=65, blake3=blake3.blake3(big).digest()), inline_data=big)
    assert cluster.apply(commit_put=pb.CommitPut(bucket="data", key="v", manifest=too_big)).code == pb.INVALID_ARGUMENT


def test_quotas(cluster):
    assert cluster.apply(create_bucket=pb.CreateBucket(name="small", profile=pb.ErasureProfile(k=2, m=1),
                                                       quota_objects=1, quota_bytes=150)).code == pb.OK
    assert cluster.put("small", "one", CHUNK_IDS[:1]).code == pb.OK
    assert cluster.put("small", "two", CHUNK_IDS[1:2]).code == pb.QUOTA_EXCEEDED
    assert cluster.put("small", "one", CHUNK_IDS[:2]).code == pb.QUOTA_EXCEEDED  # 100 + 101 bytes
    assert cluster.put("small", "one", CHUNK_IDS[1:2]).code == pb.OK  # an overwrite within quota


def test_a_retried_commit_applies_once(cluster):
    op_id = os.urandom(16)
    chunk = CHUNK_IDS[0]
    placement = pb.Placement(chunk=chunk, nodes=[1, 2, 3])
    manifest = pb.Manifest(head=pb.ObjectHead(size=CHUNKS[chunk], blake3=b"h" * 32),
                           chunks=[pb.ChunkRef(id=chunk, length=CHUNKS[chunk])])
    command = dict(commit_put=pb.CommitPut(bucket="data", key="k", manifest=manifest, placements=[placement]))
    first = cluster.apply(op_id=op_id, **command)
    second = cluster.apply(op_id=op_id, **command)
    assert first == second and first.code == pb.OK
    assert cluster.state.chunk(chunk).refs == 1


def test_a_restart_skips_entries_already_applied(tmp_path):
    from cluster.storage.disk import RocksDisk

    disk = RocksDisk(str(tmp_path / "meta"))
    state = MetaState(disk)
    command = pb.MetaCommand(op_id=b"1" * 16, create_bucket=pb.CreateBucket(name="abc", profile=pb.ErasureProfile(k=1)))
    entry = pb.MetaEntry(commands=[command]).SerializeToString()
    assert pb.MetaResults.FromString(state.apply(1, entry)).results[0].code == pb.OK
    disk.close()
    state = MetaState(RocksDisk(str(tmp_path / "meta")))
    assert state.applied == 1
    assert state.apply(1, entry) == b""
    assert [b.name for b in state.buckets()] == ["abc"]
    state.disk.close()


def test_rocksdb_checkpoint_snapshots_round_trip(tmp_path, cluster):
    from cluster.storage.disk import RocksDisk

    assert cluster.put("data", "x/y", CHUNK_IDS[:3]).code == pb.OK
    source = MetaState(RocksDisk(str(tmp_path / "a")))
    source.restore(cluster.state.snapshot())
    target = MetaState(RocksDisk(str(tmp_path / "b")))
    target.restore(source.snapshot())  # a checkpoint of RocksDB, unpacked into another
    assert target.applied == cluster.state.applied
    assert [k for k, _ in target.list_objects("data")[0]] == ["x/y"]
    assert target.chunk(CHUNK_IDS[0]).refs == 1
    source.disk.close()
    target.disk.close()


def test_listing_with_delimiter_and_pages(cluster):
    keys = ["a/1", "a/2", "b", "c/d/e", "c/f", "d"]
    for key in keys:
        assert cluster.put("data", key, []).code == pb.OK
    entries, prefixes, next_key = cluster.state.list_objects("data", delimiter="/")
    assert [k for k, _ in entries] == ["b", "d"] and prefixes == ["a/", "c/"] and next_key == ""
    entries, prefixes, _ = cluster.state.list_objects("data", prefix="c/", delimiter="/")
    assert [k for k, _ in entries] == ["c/f"] and prefixes == ["c/d/"]
    seen, token = [], ""
    while True:
        entries, prefixes, token = cluster.state.list_objects("data", start_after=token, max_keys=2)
        seen += [k for k, _ in entries]
        if not token:
            break
    assert seen == keys
    pages, token = [], ""
    while True:
        entries, prefixes, token = cluster.state.list_objects("data", delimiter="/", start_after=token, max_keys=1)
        pages.append([k for k, _ in entries] + prefixes)
        if not token:
            break
    assert pages == [["a/"], ["b"], ["c/"], ["d"]]


def test_commands_in_one_entry_see_each_other(cluster):
    chunk = CHUNK_IDS[0]
    manifest = pb.Manifest(head=pb.ObjectHead(size=CHUNKS[chunk], blake3=b"h" * 32),
                           chunks=[pb.ChunkRef(id=chunk, length=CHUNKS[chunk])])
    node = pb.Node(address="10.9.9.9:7000")
    results = cluster.apply_entry(
        pb.MetaCommand(op_id=b"a" * 16, create_bucket=pb.CreateBucket(name="fresh", profile=pb.ErasureProfile(k=2, m=1))),
        pb.MetaCommand(op_id=b"b" * 16, commit_put=pb.CommitPut(bucket="fresh", key="x", manifest=manifest,
                                                                placements=[pb.Placement(chunk=chunk, nodes=[1, 2, 3])])),
        pb.MetaCommand(op_id=b"c" * 16, commit_put=pb.CommitPut(bucket="fresh", key="x", manifest=manifest)),
        pb.MetaCommand(op_id=b"d" * 16, delete_bucket=pb.DeleteBucket(name="fresh")),
        pb.MetaCommand(op_id=b"e" * 16, register_node=pb.RegisterNode(node=node)),
        pb.MetaCommand(op_id=b"f" * 16, register_node=pb.RegisterNode(node=node)),
        pb.MetaCommand(op_id=b"g" * 16, commit_put=pb.CommitPut(bucket="fresh", key="bad/../key", manifest=manifest)))
    assert [r.code for r in results] == [pb.OK, pb.OK, pb.OK, pb.BUCKET_NOT_EMPTY, pb.OK, pb.OK, pb.INVALID_ARGUMENT]
    assert results[1].head.version != results[2].head.version  # one entry, distinct versions
    assert (results[4].node_id, results[5].node_id) == (5, 6)  # registering without an id: new disks
    assert cluster.state.node(5).state == pb.DEAD  # what the address held before is gone
    assert cluster.state.chunk(chunk).refs == 1  # the overwrite dropped the first version's reference
    assert cluster.state.bucket("fresh").objects == 1


def test_damage_reports_are_kept_only_for_the_node_the_placement_names(cluster):
    chunk = CHUNK_IDS[0]
    assert commit(cluster, [pb.ChunkRef(id=chunk, length=CHUNKS[chunk])], [pb.Placement(chunk=chunk, nodes=[1, 2, 3])]).code == pb.OK
    report = pb.ReportDamage(damage=[pb.Damage(chunk=chunk, index=1, node=2, reason="crc mismatch"),
                                     pb.Damage(chunk=chunk, index=1, node=3, reason="stale report"),
                                     pb.Damage(chunk=CHUNK_IDS[5], index=0, node=1, reason="unknown chunk")])
    assert cluster.apply(report_damage=report).code == pb.OK
    assert [(d.index, d.node, d.reason) for d in cluster.state.damage()] == [(1, 2, "crc mismatch")]


def test_a_forgotten_chunk_takes_its_damage_reports_with_it(cluster):
    chunk = CHUNK_IDS[0]
    assert commit(cluster, [pb.ChunkRef(id=chunk, length=CHUNKS[chunk])], [pb.Placement(chunk=chunk, nodes=[1, 2, 3])]).code == pb.OK
    assert cluster.apply(report_damage=pb.ReportDamage(damage=[pb.Damage(chunk=chunk, index=1, node=2)])).code == pb.OK
    assert cluster.apply(delete_object=pb.DeleteObject(bucket="data", key="k")).code == pb.OK
    assert cluster.apply(forget_chunks=pb.ForgetChunks(chunks=[chunk])).code == pb.OK
    assert cluster.state.chunk(chunk) is None and cluster.state.damage() == []


def test_a_page_that_ends_on_a_directory_marker_continues_inside_it(cluster):
    for key in ("photos/", "photos/a", "photos/b", "photos/c/d"):
        assert cluster.put("data", key, []).code == pb.OK
    pages, token = [], ""
    while True:
        entries, prefixes, token = cluster.state.list_objects("data", prefix="photos/", delimiter="/",
                                                             start_after=token, max_keys=1)
        pages.append([k for k, _ in entries] + prefixes)
        if not token:
            break
    assert pages == [["photos/"], ["photos/a"], ["photos/b"], ["photos/c/"]]


def test_a_node_back_with_new_disks_is_a_new_node_and_the_old_one_is_dead(cluster):
    assert cluster.apply(register_node=pb.RegisterNode(node=pb.Node(id=2, address="10.0.0.1:7000"))).node_id == 2
    # the same address without its id file (a lost disk): a new node; node 2's fragments are gone
    assert cluster.apply(register_node=pb.RegisterNode(node=pb.Node(address="10.0.0.1:7000"))).node_id == 5
    assert {n.id: n.state for n in cluster.state.nodes()} == {1: pb.UP, 2: pb.DEAD, 3: pb.UP, 4: pb.UP, 5: pb.UP}


def test_a_node_registering_with_its_own_id_is_never_given_away(cluster):
    assert cluster.apply(register_node=pb.RegisterNode(node=pb.Node(id=40, address="10.4.4.4:1"))).node_id == 40
    assert cluster.apply(register_node=pb.RegisterNode(node=pb.Node(address="10.5.5.5:1"))).node_id == 41


def test_tier_targets_lifecycle_rules_and_transitions(cluster):
    target = pb.TierTarget(name="cloud", url="http://127.0.0.1:9000", bucket="cold-bucket", prefix="site",
                           credentials="env:CLOUD")
    assert cluster.apply(set_tier_target=pb.SetTierTarget(target=target)).code == pb.OK
    assert [(t.name, t.addressing) for t in cluster.state.tier_targets()] == [("cloud", "path")]
    refused = cluster.apply(set_tier_target=pb.SetTierTarget(target=pb.TierTarget(
        name="other", url="http://127.0.0.1:9000", bucket="cold-bucket", credentials="AKIAEXAMPLE:secret")))
    assert refused.code == pb.INVALID_ARGUMENT and "by reference" in refused.message
    assert [t.name for t in cluster.state.tier_targets()] == ["cloud"]

    rule = pb.LifecycleRule(prefix="logs/", after_created_seconds=86_400, target="cloud")
    assert cluster.apply(set_lifecycle=pb.SetLifecycle(bucket="data", rules=[rule])).code == pb.OK
    assert cluster.state.bucket("data").lifecycle[0].target == "cloud"
    for bad in (pb.LifecycleRule(target="nowhere", after_read_seconds=60), pb.LifecycleRule(target="cloud")):
        assert cluster.apply(set_lifecycle=pb.SetLifecycle(bucket="data", rules=[bad])).code == pb.INVALID_ARGUMENT
    remove = pb.SetTierTarget(target=pb.TierTarget(name="cloud"), remove=True)
    assert "lifecycle" in cluster.apply(set_tier_target=remove).message  # a rule uses it
    assert cluster.apply(set_lifecycle=pb.SetLifecycle(bucket="data")).code == pb.OK

    chunk = CHUNK_IDS[0]
    assert commit(cluster, [pb.ChunkRef(id=chunk, length=CHUNKS[chunk])], [pb.Placement(chunk=chunk, nodes=[1, 2, 3])]).code == pb.OK
    moved = pb.TransitionChunk(chunk=chunk, target="cloud", expect=[1, 2, 4])
    assert "unchanged" in cluster.apply(transition_chunk=moved).message  # not where expected
    assert cluster.state.chunk(chunk).state == pb.HOT
    assert cluster.apply(transition_chunk=pb.TransitionChunk(chunk=chunk, target="cloud", expect=[1, 2, 3])).code == pb.OK
    cold = cluster.state.chunk(chunk)
    assert (cold.state, cold.tier, list(cold.nodes)) == (pb.COLD, "cloud", [])
    assert "cold chunks" in cluster.apply(set_tier_target=remove).message  # it holds one
    assert cluster.apply(delete_object=pb.DeleteObject(bucket="data", key="k")).code == pb.OK
    assert cluster.apply(forget_chunks=pb.ForgetChunks(chunks=[chunk])).code == pb.OK
    assert cluster.state.tier_garbage() == [("cloud", chunk, 0, 0)]  # its copy in the tier goes next
    assert "waiting to be deleted" in cluster.apply(set_tier_target=remove).message
    deleted = pb.TierDeleted(target="cloud", chunks=[chunk])
    assert cluster.apply(tier_deleted=deleted).code == pb.OK
    [(_, _, settle, _)] = cluster.state.tier_garbage()
    assert settle > 0  # deleted; the entry stays until no late delete can race a new upload
    # the same chunk, put again, cannot go cold while a late delete could remove its upload
    assert commit(cluster, [pb.ChunkRef(id=chunk, length=CHUNKS[chunk])], [pb.Placement(chunk=chunk, nodes=[1, 2, 3])]).code == pb.OK
    again = pb.TransitionChunk(chunk=chunk, target="cloud", expect=[1, 2, 3])
    assert "being deleted" in cluster.apply(transition_chunk=again).message
    final = pb.TierDeleted(target="cloud", chunks=[chunk], final=True)
    assert cluster.apply(tier_deleted=final).code == pb.OK and cluster.state.tier_garbage() != []  # too early
    cluster.base_ms += TIER_SETTLE_MS
    assert cluster.apply(tier_deleted=final).code == pb.OK and cluster.state.tier_garbage() == []
    assert cluster.apply(transition_chunk=again).code == pb.OK and cluster.state.chunk(chunk).state == pb.COLD
    assert cluster.apply(delete_object=pb.DeleteObject(bucket="data", key="k")).code == pb.OK
    assert cluster.apply(forget_chunks=pb.ForgetChunks(chunks=[chunk])).code == pb.OK
    assert cluster.apply(tier_deleted=deleted).code == pb.OK
    cluster.base_ms += TIER_SETTLE_MS
    assert cluster.apply(tier_deleted=final).code == pb.OK
    assert cluster.apply(set_tier_target=remove).code == pb.OK and cluster.state.tier_targets() == []


def test_an_upload_that_never_went_cold_is_tier_garbage_once_its_chunk_is_forgotten(cluster):
    target = pb.TierTarget(name="cloud", url="http://127.0.0.1:9000", bucket="cold-bucket", credentials="env:CLOUD")
    assert cluster.apply(set_tier_target=pb.SetTierTarget(target=target)).code == pb.OK
    chunks = CHUNK_IDS[:2]
    for number, chunk in enumerate(chunks):
        assert commit(cluster, [pb.ChunkRef(id=chunk, length=CHUNKS[chunk])], [pb.Placement(chunk=chunk, nodes=[1, 2, 3])],
                      key=f"k{number}").code == pb.OK
    assert cluster.apply(tier_intent=pb.TierIntent(target="nowhere", chunks=chunks)).code == pb.INVALID_ARGUMENT
    gone = os.urandom(32)
    assert list(cluster.apply(tier_intent=pb.TierIntent(target="cloud", chunks=[*chunks, gone])).missing) == [gone]
    moved = pb.TierTarget(name="cloud", url="http://10.9.9.9:9000", bucket="elsewhere", credentials="env:CLOUD")
    assert "cannot change" in cluster.apply(set_tier_target=pb.SetTierTarget(target=moved)).message
    moved.bucket = "cold-bucket"  # a new endpoint for the same bucket is fine
    assert cluster.apply(set_tier_target=pb.SetTierTarget(target=moved)).code == pb.OK
    remove = pb.SetTierTarget(target=pb.TierTarget(name="cloud"), remove=True)
    assert "cold chunks" in cluster.apply(set_tier_target=remove).message  # uploads may be in the bucket
    # the first goes cold: its intent is done; the second's answer never came
    assert cluster.apply(transition_chunk=pb.TransitionChunk(chunk=chunks[0], target="cloud", expect=[1, 2, 3])).code == pb.OK
    for number, chunk in enumerate(chunks):
        assert cluster.apply(delete_object=pb.DeleteObject(bucket="data", key=f"k{number}")).code == pb.OK
    assert cluster.apply(forget_chunks=pb.ForgetChunks(chunks=chunks)).code == pb.OK
    assert sorted(c for _, c, _, _ in cluster.state.tier_garbage()) == sorted(chunks)  # both objects go
    assert list(cluster.state.disk.scan(b"U", b"V")) == []


def test_a_reheated_chunk_is_hot_on_its_new_nodes_and_its_tier_copy_is_garbage(cluster):
    target = pb.TierTarget(name="cloud", url="http://127.0.0.1:9000", bucket="cold-bucket", credentials="env:CLOUD")
    assert cluster.apply(set_tier_target=pb.SetTierTarget(target=target)).code == pb.OK
    chunk = CHUNK_IDS[0]
    assert commit(cluster, [pb.ChunkRef(id=chunk, length=CHUNKS[chunk])], [pb.Placement(chunk=chunk, nodes=[1, 2, 3])]).code == pb.OK
    reheat = pb.ReheatChunk(chunk=chunk, nodes=[2, 3, 4], grace_ms=60_000)
    assert "not cold" in cluster.apply(reheat_chunk=reheat).message
    assert cluster.apply(transition_chunk=pb.TransitionChunk(chunk=chunk, target="cloud", expect=[1, 2, 3])).code == pb.OK
    assert cluster.state.cold_counts() == {"cloud": 1}
    assert cluster.apply(reheat_chunk=pb.ReheatChunk(chunk=chunk, nodes=[2, 3])).code == pb.BAD_PLACEMENT
    assert cluster.apply(reheat_chunk=reheat).code == pb.OK
    hot = cluster.state.chunk(chunk)
    assert (hot.state, hot.tier, list(hot.nodes)) == (pb.HOT, "", [2, 3, 4])
    assert cluster.state.cold_counts() == {"cloud": 0}
    # the tier copy goes, after readers that still hold the COLD record have had time to finish
    assert cluster.state.tier_garbage() == [("cloud", chunk, 0, cluster.base_ms + cluster.index + 60_000)]
    assert "not cold" in cluster.apply(reheat_chunk=reheat).message  # a repeat changes nothing


def test_reads_are_recorded_on_the_current_version_only(cluster):
    assert cluster.put("data", "k", [CHUNK_IDS[0]]).code == pb.OK
    head = pb.ObjectHead.FromString(cluster.state.list_objects("data")[0][0][1])
    assert head.read_ms == 0
    stale = pb.Touch(bucket="data", key="k", version=head.version + 1)
    assert cluster.apply(touch_objects=pb.TouchObjects(objects=[stale, pb.Touch(bucket="data", key="gone")])).code == pb.OK
    assert pb.ObjectHead.FromString(cluster.state.list_objects("data")[0][0][1]).read_ms == 0
    touch = pb.Touch(bucket="data", key="k", version=head.version)
    assert cluster.apply(touch_objects=pb.TouchObjects(objects=[touch])).code == pb.OK
    read = pb.ObjectHead.FromString(cluster.state.list_objects("data")[0][0][1])
    assert read.read_ms == cluster.base_ms + cluster.index and read.version == head.version
    too_many = pb.TouchObjects(objects=[touch] * (state_module.TOUCHES_MAX + 1))
    assert cluster.apply(touch_objects=too_many).code == pb.INVALID_ARGUMENT


def test_node_records_held_in_memory_follow_every_node_change_and_a_restore(cluster):
    def record(node_id):
        raw = cluster.state.node_record(node_id)
        return pb.Node.FromString(raw) if raw is not None else None

    assert record(2).state == pb.UP and record(99) is None
    assert cluster.apply(mark_node=pb.MarkNode(id=2, state=pb.SUSPECT)).code == pb.OK
    assert record(2).state == pb.SUSPECT
    disks = [pb.Disk(path="/d", capacity_bytes=100, free_bytes=7, healthy=True)]
    assert cluster.apply(node_report=pb.NodeReport(id=2, disks=disks, state=pb.UP)).code == pb.OK
    assert record(2).state == pb.UP and record(2).disks[0].free_bytes == 7
    assert cluster.apply(register_node=pb.RegisterNode(node=pb.Node(address="10.9.9.9:1"))).node_id == 5
    assert record(5).address == "10.9.9.9:1"
    assert all(cluster.state.node_record(n.id) == n.SerializeToString() for n in cluster.state.nodes())

    other = MetaState(MemoryDisk())  # a snapshot restore brings its own nodes
    assert other.node_record(2) is None
    other.restore(cluster.state.snapshot())
    assert pb.Node.FromString(other.node_record(5)).address == "10.9.9.9:1"


def test_the_node_table_version_follows_what_readers_route_by_and_nothing_else(cluster):
    """A client holding the table of the current version gets no node records with its reads:
    the version must change with any node's state or addresses, and not with its capacity."""
    seen = [cluster.state.nodes_version()]
    disks = [pb.Disk(path="/d", capacity_bytes=100, free_bytes=7, healthy=True)]
    assert cluster.apply(node_report=pb.NodeReport(id=2, disks=disks, state=pb.UP)).code == pb.OK
    assert cluster.state.nodes_version() == seen[-1]  # capacity only
    changes = [dict(mark_node=pb.MarkNode(id=2, state=pb.SUSPECT)),
               dict(node_report=pb.NodeReport(id=2, disks=disks, state=pb.UP)),
               dict(mark_node=pb.MarkNode(id=3, state=pb.DEAD)),
               dict(register_node=pb.RegisterNode(node=pb.Node(id=1, address="10.0.0.0:7000",
                                                               data_address="10.0.0.0:7100"))),
               dict(register_node=pb.RegisterNode(node=pb.Node(address="10.9.9.9:1")))]
    for change in changes:
        assert cluster.apply(**change).code == pb.OK
        seen.append(cluster.state.nodes_version())
    assert seen[2] == seen[0]  # back to the same table: the same version
    assert len({seen[0], seen[1], *seen[3:]}) == len(seen) - 1 and 0 not in seen
    other = MetaState(MemoryDisk())  # every replica computes the same version from the same table
    assert other.nodes_version() != 0
    other.restore(cluster.state.snapshot())
    assert other.nodes_version() == seen[-1]


def test_a_begin_put_places_each_new_chunk_once_in_order_of_first_use(cluster):
    """A chunk named twice in one BeginPut gets one placement; a stored one gets none."""
    stored, first, second = CHUNK_IDS[0], CHUNK_IDS[1], CHUNK_IDS[2]
    assert cluster.put("data", "held", [stored]).code == pb.OK
    chunks = [(c, CHUNKS[c]) for c in (first, stored, second, first, second)]
    exists, placements, bucket = cluster.state.begin_put("data", chunks, b"seed")
    assert exists == [False, True, False, False, False]
    assert list(placements) == [first, second] and bucket.name == "data"
    for nodes in placements.values():
        assert len(set(nodes)) == len(nodes) == bucket.profile.k + bucket.profile.m
    assert cluster.state.begin_put("data", chunks, b"seed")[1] == placements  # the seed decides
