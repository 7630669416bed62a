"""The client's exceptions: one type per thing a caller may want to handle, each with a message
that says what to do. Every one is a CairnError."""
from __future__ import annotations

from cluster.proto import meta_pb2 as pb


class CairnError(Exception):
    pass


class ClusterUnavailable(CairnError):
    """No metadata leader answered in time: check that a majority of meta nodes is up."""


class NoSuchBucket(CairnError):
    pass


class NoSuchKey(CairnError):
    pass


class BucketExists(CairnError):
    pass


class BucketNotEmpty(CairnError):
    pass


class InvalidArgument(CairnError, ValueError):
    """A name, size, range or option the cluster refuses: fix the request."""


class QuotaExceeded(CairnError):
    pass


class NotEnoughNodes(CairnError):
    """Fewer usable data nodes than the bucket's k+m: start more nodes or use a smaller profile."""


class NotEnoughFragmentsError(CairnError):
    """Fewer than k fragments of a chunk could be read intact: the data is unavailable or lost."""


class PutExpired(CairnError):
    """A put outlived what the data nodes keep of its uncommitted fragments (their orphan grace)
    and lost some; nothing was committed: put the object again."""


class TierUnavailable(CairnError):
    """A cold chunk could not be recalled from its tier (endpoint down, object missing)."""


class CorruptObject(CairnError):
    """Bytes that do not match their BLAKE3 name; they were not returned."""


class Refused(CairnError):
    """Any other refusal by the metadata service; `code` is its meta.proto Code."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{pb.Code.Name(code)}: {message}")
        self.code = code


_BY_CODE = {
    pb.NO_SUCH_BUCKET: (NoSuchBucket, "create it first (cairn bucket create NAME)"),
    pb.NO_SUCH_KEY: (NoSuchKey, ""),
    pb.BUCKET_EXISTS: (BucketExists, ""),
    pb.BUCKET_NOT_EMPTY: (BucketNotEmpty, "delete its objects first"),
    pb.INVALID_ARGUMENT: (InvalidArgument, ""),
    pb.QUOTA_EXCEEDED: (QuotaExceeded, "delete objects or raise the bucket's quota"),
    pb.NOT_ENOUGH_NODES: (NotEnoughNodes, "start more data nodes or use a bucket with a smaller profile"),
}


def raise_for(reply: pb.MetaReply) -> None:
    """Raises the exception that matches a reply's code (nothing for OK)."""
    if reply.code == pb.OK:
        return
    kind, advice = _BY_CODE.get(reply.code, (None, ""))
    message = reply.message + (f" ({advice})" if advice else "")
    if kind is None:
        raise Refused(reply.code, message)
    raise kind(message)
