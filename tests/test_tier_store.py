"""The cold tier's bucket side (cluster/tier/): targets and their credentials, and chunks stored
under their content address in a real S3 server process (moto) on 127.0.0.1."""
import json
import os

import blake3
import boto3
import pytest

from cluster.tier.store import ColdStore, CorruptRemote, NotInTier, TierError, TierUnavailable, make_client
from cluster.tier.targets import TierConfigError, TierTarget, resolve_credentials
from tests.s3_server import FaultyProxy, S3Server

ENV = {"TIER_ACCESS_KEY_ID": "testing", "TIER_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def server():
    s3 = S3Server().start()
    yield s3
    s3.stop()


@pytest.fixture
def target(server, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    bucket = f"cold-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return TierTarget("cloud", server.url, bucket, prefix="cairn/site-a", credentials="env:TIER")


def chunk(n: int, size: int = 100_000) -> tuple[bytes, bytes]:
    data = os.urandom(size - n) + bytes([n])
    return blake3.blake3(data).digest(), data


def test_a_chunk_goes_up_once_under_its_content_address_and_reads_back_verified(target):
    store = ColdStore(target)
    chunk_id, data = chunk(1)
    assert not store.exists(chunk_id)
    assert store.put(chunk_id, data) is True
    assert store.put(chunk_id, data) is False and store.uploads == 1  # already there: not sent again
    assert ColdStore(target).put(chunk_id, data) is False             # nor by another store
    assert store.exists(chunk_id) and store.get(chunk_id) == data
    listed = store.client.list_objects_v2(Bucket=target.bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"cairn/site-a/chunks/{chunk_id.hex()}"]
    store.delete(chunk_id)
    store.delete(chunk_id)  # gone already: no error
    with pytest.raises(NotInTier):
        store.get(chunk_id)


def test_bytes_that_are_not_the_chunk_are_refused_both_ways(target):
    store = ColdStore(target)
    chunk_id, data = chunk(2)
    with pytest.raises(ValueError, match="BLAKE3"):
        store.put(chunk_id, data + b"x")
    store.put(chunk_id, data)
    # the bucket's copy rots (or someone overwrote it): detected, never returned
    store.client.put_object(Bucket=target.bucket, Key=target.chunk_key(chunk_id), Body=data[:-1] + b"?")
    with pytest.raises(CorruptRemote, match="nothing was returned"):
        store.get(chunk_id)
    # a rotten copy of the right length is not taken for the chunk: the next upload replaces it
    assert store.put(chunk_id, data) is True and store.get(chunk_id) == data


def test_an_endpoint_that_is_down_is_retried_with_backoff_then_reported(target):
    from cluster.dev import free_ports

    down = TierTarget("cloud", f"http://127.0.0.1:{free_ports(1)[0]}", target.bucket, credentials="env:TIER")
    waits = []
    store = ColdStore(down, attempts=4, sleep=waits.append)
    chunk_id, data = chunk(3)
    with pytest.raises(TierUnavailable, match="4 attempts"):
        store.put(chunk_id, data)
    assert len(waits) == 3 and waits[0] < waits[1] < waits[2]  # growing backoff
    assert store.uploads == 0


@pytest.fixture
def proxy(server):
    proxy = FaultyProxy(server.url)
    yield proxy
    proxy.stop()


def test_errors_and_slow_answers_from_the_bucket_are_retried_then_reported(target, proxy):
    through = TierTarget("cloud", proxy.url, target.bucket, credentials="env:TIER")
    waits = []
    store = ColdStore(through, attempts=4, sleep=waits.append, read_seconds=0.5)
    chunk_id, data = chunk(4)
    proxy.errors = [(503, "SlowDown"), (500, "InternalError")]  # the existence check fails twice
    assert store.put(chunk_id, data) is True and store.retries == 2
    proxy.delay = 0.1  # slow, but within the timeout
    assert store.get(chunk_id) == data
    proxy.delay = 1.0  # slower than the timeout every time
    with pytest.raises(TierUnavailable, match="4 attempts"):
        store.get(chunk_id)
    proxy.delay = 0.0
    proxy.errors = [(503, "ServiceUnavailable")] * 4
    with pytest.raises(TierUnavailable, match="ServiceUnavailable"):
        store.get(chunk_id)
    proxy.errors = [(403, "AccessDenied")]  # a refusal is not retried: retrying cannot help
    before = proxy.requests
    with pytest.raises(TierError, match="AccessDenied"):
        store.get(chunk_id)
    assert proxy.requests == before + 1
    assert store.get(chunk_id) == data


def test_targets_are_validated_and_hold_credentials_only_by_reference(tmp_path):
    good = TierTarget("cloud", "https://s3.example.com", "my-bucket", "a/b", "env:CLOUD")
    assert good.validate() is good and good.chunk_key(b"\x01" * 32) == "a/b/chunks/" + "01" * 32
    bad = [TierTarget("Cloud", "https://s3.example.com", "my-bucket"),
           TierTarget("cloud", "ftp://s3.example.com", "my-bucket"),
           TierTarget("cloud", "https://s3.example.com/path", "my-bucket"),
           TierTarget("cloud", "https://s3.example.com", "My_Bucket"),
           TierTarget("cloud", "https://s3.example.com", "my-bucket", prefix="a/../b"),
           TierTarget("cloud", "https://s3.example.com", "my-bucket", addressing="dns"),
           TierTarget("cloud", "https://s3.example.com", "my-bucket", credentials="AKIAEXAMPLE:secret")]
    for target in bad:
        with pytest.raises(TierConfigError):
            target.validate()
    assert resolve_credentials("env:X", {"X_ACCESS_KEY_ID": "a", "X_SECRET_ACCESS_KEY": "b"}) == ("a", "b")
    with pytest.raises(TierConfigError, match="X_SECRET_ACCESS_KEY"):
        resolve_credentials("env:X", {"X_ACCESS_KEY_ID": "a"})
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"access_key_id": "a", "secret_access_key": "b"}))
    keys.chmod(0o644)
    with pytest.raises(TierConfigError, match="chmod 600"):
        resolve_credentials(f"file:{keys}")
    keys.chmod(0o600)
    assert resolve_credentials(f"file:{keys}") == ("a", "b")
    assert resolve_credentials("") is None


def test_virtual_host_addressing_reaches_the_client_configuration(monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    client = make_client(TierTarget("cloud", "https://s3.example.com", "my-bucket", addressing="virtual",
                                    credentials="env:TIER"))
    assert client.meta.config.s3["addressing_style"] == "virtual"
