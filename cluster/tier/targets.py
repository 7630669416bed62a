"""A tier target: a named S3 endpoint, the bucket and prefix chunks go under, and a reference to
its credentials. The credentials themselves are never part of a target (nor of the metadata that
stores targets): `env:NAME` reads NAME_ACCESS_KEY_ID and NAME_SECRET_ACCESS_KEY from the
environment of the process that talks to the bucket, `file:PATH` reads a JSON file
{"access_key_id": ..., "secret_access_key": ...} that only its owner may read.
"""
from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from urllib.parse import urlparse

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")     # S3's rules, in short
PREFIX = re.compile(r"^[A-Za-z0-9._/-]{0,256}$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
ADDRESSING = ("path", "virtual")


class TierConfigError(ValueError):
    """A target or its credentials are not usable; the message says what to fix."""


@dataclass(frozen=True)
class TierTarget:
    name: str
    url: str                  # http(s)://host[:port] of the S3 endpoint
    bucket: str
    prefix: str = ""
    credentials: str = ""     # "env:NAME" or "file:PATH"; never the keys themselves
    addressing: str = "path"  # "path": URL/bucket/key; "virtual": bucket.host/key
    region: str = "us-east-1"

    def validate(self) -> "TierTarget":
        if not NAME.match(self.name):
            raise TierConfigError(f"bad tier name {self.name!r}: 1-63 of a-z, 0-9 and '-'")
        url = urlparse(self.url)
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
            raise TierConfigError(f"bad endpoint {self.url!r}: http(s)://host[:port]")
        if not BUCKET.match(self.bucket) or ".." in self.bucket:
            raise TierConfigError(f"bad bucket name {self.bucket!r}: 3-63 of a-z, 0-9, '.' and '-'")
        if not PREFIX.match(self.prefix) or ".." in self.prefix.split("/"):
            raise TierConfigError(f"bad prefix {self.prefix!r}: letters, digits, '._-/', no '..'")
        if self.addressing not in ADDRESSING:
            raise TierConfigError(f"bad addressing {self.addressing!r}: path or virtual")
        if self.credentials and not self.credentials.startswith(("env:", "file:")):
            raise TierConfigError("credentials are given by reference only: env:NAME or file:PATH "
                                  "(keys in plain text are never stored)")
        if self.credentials.startswith("env:") and not ENV_NAME.match(self.credentials[4:]):
            raise TierConfigError(f"bad environment name in {self.credentials!r}: A-Z, 0-9 and '_'")
        return self

    def chunk_key(self, chunk_id: bytes) -> str:
        """Where a chunk lives in the bucket: <prefix>/chunks/<BLAKE3 hex>."""
        if len(chunk_id) != 32:
            raise ValueError("a chunk id is 32 bytes")
        prefix = self.prefix.strip("/")
        return f"{prefix}/chunks/{chunk_id.hex()}" if prefix else f"chunks/{chunk_id.hex()}"


def resolve_credentials(reference: str, environ=None) -> tuple[str, str] | None:
    """(access key id, secret key) that `reference` points at; None for no reference (the SDK's
    own chain then applies: its environment variables, instance roles)."""
    environ = os.environ if environ is None else environ
    if not reference:
        return None
    if reference.startswith("env:"):
        name = reference[4:]
        key_id, secret = environ.get(f"{name}_ACCESS_KEY_ID"), environ.get(f"{name}_SECRET_ACCESS_KEY")
        if not key_id or not secret:
            raise TierConfigError(f"credentials {reference}: set {name}_ACCESS_KEY_ID and {name}_SECRET_ACCESS_KEY")
        return key_id, secret
    if reference.startswith("file:"):
        path = reference[5:]
        try:
            mode = os.stat(path).st_mode
            with open(path) as f:
                text = f.read()
        except OSError as error:
            raise TierConfigError(f"credentials file {path}: {error.strerror or error}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TierConfigError(f"credentials file {path} can be read by others: chmod 600 it")
        try:
            data = json.loads(text)
            return str(data["access_key_id"]), str(data["secret_access_key"])
        except (ValueError, KeyError, TypeError):
            raise TierConfigError(f"credentials file {path}: JSON with access_key_id and secret_access_key") from None
    raise TierConfigError("credentials are given by reference only: env:NAME or file:PATH")
