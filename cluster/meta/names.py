"""Validation of bucket names, object keys, chunk ids and erasure profiles (the service's boundary).

Bucket names follow S3's rules. Keys are UTF-8 of at most 1024 bytes, because a bucket is also a
directory tree: no NUL, no `.` or `..` segment, no empty segment (a leading `/` or `//`), though a
single trailing `/` is allowed (a directory marker). Every check raises InvalidName with a message
that says what is wrong and what is allowed.
"""
from __future__ import annotations

import re

from cluster.codec.rs import FRAGMENTS_MAX  # k + m: GF(2^8) Reed-Solomon

KEY_BYTES_MAX = 1024
CHUNK_ID_BYTES = 32
METADATA_BYTES_MAX = 8192  # user metadata, keys plus values
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


class InvalidName(ValueError):
    pass


def check_bucket(name: str) -> str:
    if not isinstance(name, str) or not _BUCKET.match(name):
        raise InvalidName(f"bad bucket name {name!r}: 3-63 characters of a-z, 0-9, '.' and '-', "
                          "starting and ending with a letter or digit")
    if ".." in name or _IPV4.match(name) or name.startswith("xn--") or name.endswith("-s3alias"):
        raise InvalidName(f"bad bucket name {name!r}: no '..', no IP address form, no 'xn--' prefix "
                          "or '-s3alias' suffix")
    return name


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidName("an object key must be a non-empty string")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidName(f"key {key[:64]!r} is not valid UTF-8 (lone surrogates)") from None
    if size > KEY_BYTES_MAX:
        raise InvalidName(f"key of {size} bytes: at most {KEY_BYTES_MAX} bytes of UTF-8")
    if "\x00" in key:
        raise InvalidName(f"key {key[:64]!r} contains NUL")
    segments = key.split("/")
    if segments[-1] == "":
        segments.pop()  # a trailing '/' marks a directory
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidName(f"key {key[:64]!r} has an empty, '.' or '..' path segment")
    return key


def check_chunk_id(chunk_id: bytes) -> bytes:
    if not isinstance(chunk_id, (bytes, bytearray)) or len(chunk_id) != CHUNK_ID_BYTES:
        raise InvalidName(f"a chunk id is {CHUNK_ID_BYTES} bytes (BLAKE3-256), got "
                          f"{len(chunk_id) if isinstance(chunk_id, (bytes, bytearray)) else type(chunk_id).__name__}")
    return bytes(chunk_id)


def check_profile(k: int, m: int) -> tuple[int, int]:
    if k < 1 or m < 0 or k + m > FRAGMENTS_MAX:
        raise InvalidName(f"erasure profile {k}+{m}: need k >= 1, m >= 0 and k + m <= {FRAGMENTS_MAX}")
    return k, m


def check_metadata(metadata: dict[str, str]) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > METADATA_BYTES_MAX:
        raise InvalidName(f"user metadata of {size} bytes: at most {METADATA_BYTES_MAX}")
