"""Chunks in a cloud bucket, each under its content address (TierTarget.chunk_key).

A chunk is uploaded once: if an object with the same length and MD5 (its ETag) is already at
its key (the same chunk, from another bucket or an earlier attempt), nothing is sent. Every read
is checked against the chunk's BLAKE3 name and corrupt bytes raise, never return. Transient
failures (connection errors, timeouts, 5xx, throttling) are retried with exponential backoff; a
missing object, a refused request or exhausted retries raise typed errors that say what to do.

Calls block (boto3); callers run them off their event loop.
"""
from __future__ import annotations

import base64
import hashlib
import random
import time
from typing import Callable

import blake3

from cluster.tier.targets import TierTarget, resolve_credentials

ATTEMPTS = 5
BACKOFF_SECONDS = (0.1, 5.0)
CONNECT_SECONDS = 5.0
READ_SECONDS = 60.0
CHUNK_BYTES_MAX = 64 << 20
TRANSIENT_CODES = {"500", "502", "503", "504", "RequestTimeout", "SlowDown", "Throttling", "InternalError",
                   "ServiceUnavailable", "RequestTimeTooSkewed"}


class TierError(Exception):
    pass


class TierUnavailable(TierError):
    """The bucket did not answer, or kept failing, after every retry."""


class NotInTier(TierError):
    """No object for this chunk in the bucket."""


class CorruptRemote(TierError):
    """The bucket's bytes do not match the chunk's BLAKE3: they are never returned."""


def make_client(target: TierTarget, read_seconds: float = READ_SECONDS):
    """A boto3 S3 client for the target (path-style or virtual-host addressing)."""
    import boto3
    from botocore.config import Config

    credentials = resolve_credentials(target.credentials)
    keys = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]} if credentials else {}
    config = Config(s3={"addressing_style": target.addressing}, connect_timeout=CONNECT_SECONDS,
                    read_timeout=read_seconds,
                    retries={"mode": "standard", "total_max_attempts": 1})  # one try per call: our own retries, below
    return boto3.client("s3", endpoint_url=target.url, region_name=target.region, config=config, **keys)


class ColdStore:
    def __init__(self, target: TierTarget, client=None, attempts: int = ATTEMPTS,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None,
                 read_seconds: float = READ_SECONDS):
        """`read_seconds`: an answer slower than this counts as a failed attempt."""
        self.target = target.validate()
        self.client = client if client is not None else make_client(target, read_seconds)
        self.attempts, self._sleep = attempts, sleep
        self._rng = rng or random.Random()
        self.uploads = 0       # objects actually sent
        self.retries = 0

    def put(self, chunk_id: bytes, data, verified: bool = False) -> bool:
        """Stores a chunk (bytes or bytearray), checked against its name first unless the caller
        has just done so (`verified`); False if the bucket had it already."""
        if len(data) > CHUNK_BYTES_MAX:
            raise ValueError(f"a chunk of {len(data)} bytes; at most {CHUNK_BYTES_MAX}")
        if not verified and blake3.blake3(data).digest() != chunk_id:
            raise ValueError(f"these bytes are not chunk {chunk_id.hex()[:16]} (BLAKE3 differs)")
        key = self.target.chunk_key(chunk_id)
        md5 = hashlib.md5(data).digest()
        there = self._head(key)
        # there already, the same bytes (a single-part object's ETag is its MD5): not sent again;
        # anything else at that address (another length, a rotten copy) is overwritten
        if there is not None and there.get("ContentLength") == len(data) and \
                there.get("ETag", "").strip('"').lower() == md5.hex():
            return False
        digest = base64.b64encode(md5).decode()  # the bucket checks what it got
        self._call(lambda: self.client.put_object(Bucket=self.target.bucket, Key=key, Body=data, ContentMD5=digest), key)
        self.uploads += 1
        return True

    def get(self, chunk_id: bytes) -> bytes:
        """The chunk's bytes, verified against its name."""
        key = self.target.chunk_key(chunk_id)
        # the body is read inside the retried call: a connection cut mid-body is tried again
        data = self._call(lambda: self.client.get_object(Bucket=self.target.bucket, Key=key)["Body"]
                          .read(CHUNK_BYTES_MAX + 1), key)
        if blake3.blake3(data).digest() != chunk_id:
            raise CorruptRemote(f"{self._where(key)} does not match chunk {chunk_id.hex()[:16]}: "
                                "nothing was returned; read it from its fragments or upload it again")
        return data

    def exists(self, chunk_id: bytes) -> bool:
        return self._head(self.target.chunk_key(chunk_id)) is not None

    def delete(self, chunk_id: bytes, not_after: float | None = None) -> None:
        """Removes the chunk's object (no error if it is already gone). No attempt starts after
        `not_after` (wall-clock seconds): a delete must not land long after it was ordered."""
        key = self.target.chunk_key(chunk_id)
        self._call(lambda: self.client.delete_object(Bucket=self.target.bucket, Key=key), key, not_after)

    def _head(self, key: str) -> dict | None:
        try:
            return self._call(lambda: self.client.head_object(Bucket=self.target.bucket, Key=key), key)
        except NotInTier:
            return None

    def _call(self, request, key: str, not_after: float | None = None):
        from botocore.exceptions import BotoCoreError, ClientError

        delay, last = BACKOFF_SECONDS[0], None
        for attempt in range(self.attempts):
            if not_after is not None and time.time() > not_after:
                raise TierUnavailable(f"{self._where(key)}: too late to try again (last: {last})")
            try:
                return request()
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in ("404", "NoSuchKey", "NotFound"):
                    raise NotInTier(f"{self._where(key)} does not exist") from None
                if code not in TRANSIENT_CODES and not (status and status >= 500):
                    raise TierError(f"{self._where(key)}: {code} {error}") from None
                last = f"{code} (HTTP {status})"
            except BotoCoreError as error:  # connection refused, timeouts, DNS
                last = f"{type(error).__name__}: {error}"
            if attempt + 1 < self.attempts:
                self.retries += 1
                self._sleep(delay * self._rng.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_SECONDS[1])
        raise TierUnavailable(f"{self._where(key)}: no success after {self.attempts} attempts (last: {last}); "
                              f"check that the endpoint {self.target.url} is up")

    def _where(self, key: str) -> str:
        return f"tier {self.target.name}: s3://{self.target.bucket}/{key}"
