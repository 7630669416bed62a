"""The cold tier end to end: real meta and data processes on 127.0.0.1, and moto's S3 server
process as the cloud bucket. Transition, recall (range reads fetch only their chunks), dedup of
identical chunks across buckets, re-heat, garbage collection of tier objects, an endpoint down,
corrupt remote bytes, and a crash (SIGKILL) at each step of a transition."""
import json
import os
import time

import blake3
import boto3
import grpc
import pytest

import cluster
from cluster.client import errors
from cluster.dev import LocalCluster
from cluster.faultpoints import CRASH_FILE_VARIABLE
from cluster.proto import data_pb2, data_pb2_grpc
from cluster.proto import meta_pb2 as pb
from tests.s3_server import S3Server
from tests.test_cli import cairn

CHUNK = 1 << 20  # the client's average chunk: objects of a few MiB have a few chunks


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    yield server
    server.stop()


def s3_client(server: S3Server):
    return boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def remote_keys(server: S3Server, bucket: str = "cold") -> set[str]:
    pages = s3_client(server).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


@pytest.fixture(scope="module")
def local(tmp_path_factory, s3):
    crash_file = str(tmp_path_factory.mktemp("crash") / "point")
    with pytest.MonkeyPatch.context() as patch:  # the processes, restarted ones too, inherit these
        patch.setenv("COLD_ACCESS_KEY_ID", "testing")
        patch.setenv("COLD_SECRET_ACCESS_KEY", "testing")
        patch.setenv(CRASH_FILE_VARIABLE, crash_file)
        local = LocalCluster(str(tmp_path_factory.mktemp("tier")), metas=3, datas=4, port_base=None,
                             meta_options=["--tick-seconds", "0.02", "--lifecycle-every-seconds", "0.5",
                                           "--garbage-grace-seconds", "1", "--read-resolution-seconds", "1",
                                           "--reheat-grace-seconds", "2"],
                             data_options=["--orphan-grace-seconds", "1", "--orphan-interval-seconds", "1"])
        local.crash_file = crash_file
        local.start()
        try:
            s3_client(s3).create_bucket(Bucket="cold")
            with cluster.connect(local.meta_addresses) as client:
                client.set_tier_target("cloud", s3.url, "cold", prefix="site-a", credentials="env:COLD")
            yield local
        finally:
            local.stop()


@pytest.fixture
def client(local):
    with cluster.connect(local.meta_addresses) as client:
        yield client


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def chunk_records(client, bucket: str, key: str) -> list:
    return client.chunks(list(dict.fromkeys(ref.id for ref in client.manifest(bucket, key).chunks)))


def all_cold(client, bucket: str, key: str) -> bool:
    return all(c.state == pb.COLD for c in chunk_records(client, bucket, key))


def data_status(local) -> list:
    out = []
    for member in local.members:
        if member.role == "data":
            with grpc.insecure_channel(member.addresses[0]) as channel:
                out.append(data_pb2_grpc.DataStub(channel).Status(data_pb2.StatusRequest(), timeout=10))
    return out


def new_bucket(client, name: str, **rule) -> None:
    client.create_bucket(name, k=2, m=2, inline_max_bytes=0)
    client.set_lifecycle(name, [pb.LifecycleRule(target="cloud", **{"after_created_seconds": 1, **rule})])


def test_objects_go_cold_once_per_chunk_and_read_back_verified(local, s3, client):
    shared = os.urandom(3 * CHUNK)
    for name in ("cams", "copies"):
        new_bucket(client, name)
        client.put(name, "same", shared)  # identical chunks in two buckets: one copy in the tier
    own = os.urandom(5 * CHUNK)
    client.put("cams", "own", own)
    wait_for(lambda: all(all_cold(client, b, k) for b, k in (("cams", "same"), ("copies", "same"), ("cams", "own"))),
             what="every chunk cold")
    ids = {ref.id for b, k in (("cams", "same"), ("cams", "own")) for ref in client.manifest(b, k).chunks}
    assert {f"site-a/chunks/{i.hex()}" for i in ids} <= remote_keys(s3)
    assert client.status().tier.cold_chunks["cloud"] >= len(ids)
    # the fragments of cold chunks are orphans: the data nodes delete them
    wait_for(lambda: sum(s.fragments for s in data_status(local)) == 0, what="fragments deleted")
    assert client.get("cams", "same") == shared and client.get("copies", "same") == shared
    assert client.get("cams", "own") == own
    # a range read recalls only the chunks it covers
    manifest = client.manifest("cams", "own")
    starts, offset = [], 0
    for ref in manifest.chunks:
        starts.append(offset)
        offset += ref.length
    before = sum(s.recalls for s in data_status(local))
    middle = starts[1] + 10
    assert client.get("cams", "own", start=middle, end=middle + 100) == own[middle:middle + 100]
    assert sum(s.recalls for s in data_status(local)) - before == 1
    status = client.status().tier
    assert status.buckets["cams"].cold_bytes >= len(own) and status.transitioned >= len(ids)


def test_a_read_reheats_when_the_rule_says_so_and_the_tier_copy_is_deleted(local, s3, client):
    # unread for 10 s: cold; a read brings it back, and it stays until unread for 10 s again
    new_bucket(client, "warm", reheat_on_read=True, after_created_seconds=0, after_read_seconds=10)
    data = os.urandom(2 * CHUNK)
    client.put("warm", "frame", data)
    wait_for(lambda: all_cold(client, "warm", "frame"), what="chunks cold")
    keys = {f"site-a/chunks/{ref.id.hex()}" for ref in client.manifest("warm", "frame").chunks}
    assert keys <= remote_keys(s3)
    assert client.get("warm", "frame") == data  # recalled; the rule brings it back
    wait_for(lambda: all(c.state == pb.HOT and len(c.nodes) == 4 for c in chunk_records(client, "warm", "frame")),
             what="chunks hot again")
    wait_for(lambda: not keys & remote_keys(s3), what="tier copies deleted")
    assert client.get("warm", "frame") == data
    time.sleep(2)  # lifecycle passes run every 0.5 s: read lately, it stays hot
    assert all(c.state == pb.HOT for c in chunk_records(client, "warm", "frame"))


def test_restore_brings_a_prefix_back_and_deleted_cold_objects_leave_the_tier(local, s3, client):
    new_bucket(client, "archive")
    objects = {f"run-1/{n}": os.urandom(CHUNK + n) for n in range(3)}
    objects["run-2/x"] = os.urandom(CHUNK)
    for key, data in objects.items():
        client.put("archive", key, data)
    wait_for(lambda: all(all_cold(client, "archive", k) for k in objects), what="chunks cold")
    client.set_lifecycle("archive", [])  # else the next pass sends them back
    seen = []
    restored = client.restore("archive", "run-1/", progress=seen.append)
    assert restored == sum(len(objects[k]) for k in objects if k.startswith("run-1/")) == sum(seen)
    assert not any(all_cold(client, "archive", k) for k in objects if k.startswith("run-1/"))
    assert all_cold(client, "archive", "run-2/x")
    for key, data in objects.items():
        assert client.get("archive", key) == data
    gone = {f"site-a/chunks/{ref.id.hex()}" for ref in client.manifest("archive", "run-2/x").chunks}
    client.delete("archive", "run-2/x")
    wait_for(lambda: not gone & remote_keys(s3), timeout=90, what="a deleted cold object's chunks leave the tier")


def test_an_endpoint_down_keeps_the_hot_copy_and_recalls_fail_clearly(local, s3, client, tmp_path):
    flaky = S3Server()  # not started yet: the endpoint is down
    client.set_tier_target("flaky", flaky.url, "cold", credentials="env:COLD")
    client.create_bucket("far", k=2, m=2, inline_max_bytes=0)
    client.set_lifecycle("far", [pb.LifecycleRule(target="flaky", after_created_seconds=1)])
    data = os.urandom(2 * CHUNK)
    client.put("far", "x", data)
    wait_for(lambda: client.status().tier.failures > 0, what="a transition failed")
    assert not any(c.state == pb.COLD for c in chunk_records(client, "far", "x"))
    assert client.get("far", "x") == data  # the hot copy is untouched
    try:
        flaky.start()
        s3_client(flaky).create_bucket(Bucket="cold")
        wait_for(lambda: all_cold(client, "far", "x"), what="cold once the endpoint is up")
        assert client.get("far", "x") == data
    finally:
        flaky.stop()
    with pytest.raises(errors.TierUnavailable, match="could not be recalled from tier 'flaky'"):
        client.get("far", "x")


def test_corrupt_remote_bytes_are_detected_and_never_returned(local, s3, client):
    new_bucket(client, "fragile")
    data = os.urandom(CHUNK // 2)
    client.put("fragile", "y", data)
    wait_for(lambda: all_cold(client, "fragile", "y"), what="chunk cold")
    ref = client.manifest("fragile", "y").chunks[0]  # random bytes: one chunk or, rarely, more
    garbled = bytearray(data[:ref.length])
    garbled[100] ^= 1
    s3_client(s3).put_object(Bucket="cold", Key=f"site-a/chunks/{ref.id.hex()}", Body=bytes(garbled))
    with pytest.raises(errors.CorruptObject, match="does not match"):
        client.get("fragile", "y")


@pytest.mark.parametrize("point", ["tier.before_upload", "tier.after_upload", "tier.before_transition",
                                   "tier.after_transition", "orphans.before_delete"])
def test_a_crash_at_each_step_of_a_transition_leaves_a_readable_copy(local, s3, client, point):
    bucket = "crash-" + point.replace(".", "-").replace("_", "-")
    client.create_bucket(bucket, k=2, m=2, inline_max_bytes=0)
    data = os.urandom(CHUNK + 12345)
    client.put(bucket, "obj", data)
    alive = {(m.role, m.number) for m in local.running()}
    with open(local.crash_file, "w") as f:
        f.write(point)
    client.set_lifecycle(bucket, [pb.LifecycleRule(target="cloud", after_created_seconds=1)])
    died = wait_for(lambda: alive - {(m.role, m.number) for m in local.running()}, what=f"a crash at {point}")
    assert client.get(bucket, "obj") == data  # the hot copy, or a verified cold one: never neither
    for role, number in died:
        local.restart(role, number)
    local.wait_ready()
    wait_for(lambda: all_cold(client, bucket, "obj"), timeout=90, what="the transition completes after the crash")
    keys = {f"site-a/chunks/{ref.id.hex()}" for ref in client.manifest(bucket, "obj").chunks}
    assert keys <= remote_keys(s3)
    assert client.get(bucket, "obj") == data
    assert blake3.blake3(client.get(bucket, "obj")).digest() == client.head(bucket, "obj").blake3


def test_the_tier_commands(local, s3, client):
    meta = ["--meta", ",".join(local.meta_addresses)]
    tiers = json.loads(cairn("--json", "tier", "ls", *meta).stdout)
    assert {t["name"] for t in tiers} >= {"cloud"} and all("testing" not in json.dumps(t) for t in tiers)
    refused = cairn("tier", "add", "leaky", "--url", s3.url, "--bucket", "cold", "--credentials", "AKIA:secret",
                    *meta, check=False)
    assert refused.returncode == 1 and "by reference" in refused.stderr
    client.create_bucket("cli", k=2, m=2, inline_max_bytes=0)
    cairn("bucket", "lifecycle", "set", "cli", "--rule", "target=cloud,prefix=old/,after-created=1s", *meta)
    assert cairn("bucket", "lifecycle", "show", "cli", *meta).stdout.strip() == "target=cloud,prefix=old/,after-created=1s"
    bad = cairn("bucket", "lifecycle", "set", "cli", "--rule", "target=cloud", *meta, check=False)
    assert bad.returncode == 2 and "after-created=DURATION" in bad.stderr
    data = os.urandom(CHUNK)
    client.put("cli", "old/a", data)
    wait_for(lambda: all_cold(client, "cli", "old/a"), what="cold")
    cairn("bucket", "lifecycle", "set", "cli", "--clear", *meta)
    status = json.loads(cairn("--json", "status", *meta).stdout)["tier"]
    assert status["cold_chunks"]["cloud"] >= 1 and status["transitioned"] >= 1
    restored = json.loads(cairn("--json", "restore", "cli/old/", *meta).stdout)
    assert restored == {"restored_bytes": len(data)}
    assert not all_cold(client, "cli", "old/a") and client.get("cli", "old/a") == data
