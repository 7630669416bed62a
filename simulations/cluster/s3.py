"""A cloud bucket for the cluster simulator: the part of boto3's S3 client that ColdStore calls
(head_object, put_object, get_object, delete_object), over a dict, failing as a real endpoint
does: down (connection errors), throttling and server errors (ClientError 503/500), and bytes
garbled on the way back. The stored objects themselves are never damaged: the tier has no
redundancy of its own in Cairn, a cloud bucket is trusted to keep what it acknowledged.

Calls are synchronous, as boto3's are; the simulator runs them inline (no latency).
"""
from __future__ import annotations

import base64
import hashlib
import io
import random
from collections import Counter

from botocore.exceptions import ClientError, EndpointConnectionError


class SimS3:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.objects: dict[tuple[str, str], bytes] = {}
        self.down = False
        self.error_rate = 0.0    # calls answered 503/500
        self.garble_rate = 0.0   # GETs whose bytes come back altered
        self.done = Counter()  # successful uploads, reads, deletes

    def heal(self) -> None:
        self.down, self.error_rate, self.garble_rate = False, 0.0, 0.0

    # ---- what ColdStore calls

    def head_object(self, Bucket: str, Key: str):
        self._fail("HeadObject")
        data = self.objects.get((Bucket, Key))
        if data is None:
            raise _error("404", 404, "HeadObject")
        return {"ContentLength": len(data), "ETag": f'"{hashlib.md5(data).hexdigest()}"'}

    def put_object(self, Bucket: str, Key: str, Body: bytes, ContentMD5: str | None = None):
        self._fail("PutObject")
        if ContentMD5 is not None and base64.b64encode(hashlib.md5(Body).digest()).decode() != ContentMD5:
            raise _error("BadDigest", 400, "PutObject")
        self.objects[(Bucket, Key)] = bytes(Body)
        self.done["tier uploads"] += 1
        return {}

    def get_object(self, Bucket: str, Key: str):
        self._fail("GetObject")
        data = self.objects.get((Bucket, Key))
        if data is None:
            raise _error("NoSuchKey", 404, "GetObject")
        if data and self.rng.random() < self.garble_rate:
            garbled = bytearray(data)
            garbled[self.rng.randrange(len(garbled))] ^= 1 << self.rng.randrange(8)
            data = bytes(garbled)
        self.done["tier reads"] += 1
        return {"Body": io.BytesIO(data)}

    def delete_object(self, Bucket: str, Key: str):
        self._fail("DeleteObject")
        if self.objects.pop((Bucket, Key), None) is not None:
            self.done["tier deletes"] += 1
        return {}

    def _fail(self, operation: str) -> None:
        if self.down:
            raise EndpointConnectionError(endpoint_url="http://s3.sim")
        if self.rng.random() < self.error_rate:
            code, status = self.rng.choice([("SlowDown", 503), ("InternalError", 500)])
            raise _error(code, status, operation)


def _error(code: str, status: int, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
