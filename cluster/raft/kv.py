"""A small replicated key-value store: the state machine that Raft's tests and benchmark use.

Commands: PUT key value, DELETE key, CAS key expected new (expected empty = absent). Reads do
not go through the log: the driver serves them after a ReadIndex round (linearizable) or
directly (stale), from `get`.
"""
from __future__ import annotations

import struct

PUT, DELETE, CAS = 1, 2, 3
_HEADER = struct.Struct(">BI")  # op, key length
OK, FAILED = b"\x01", b"\x00"
KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 1 << 20


def encode_put(key: bytes, value: bytes) -> bytes:
    _check(key, value)
    return _HEADER.pack(PUT, len(key)) + key + value


def encode_delete(key: bytes) -> bytes:
    _check(key, b"")
    return _HEADER.pack(DELETE, len(key)) + key


def encode_cas(key: bytes, expected: bytes | None, new: bytes) -> bytes:
    _check(key, new)
    expected_field = b"\x00" if expected is None else b"\x01" + struct.pack(">I", len(expected)) + expected
    return _HEADER.pack(CAS, len(key)) + key + expected_field + new


def _check(key: bytes, value: bytes) -> None:
    if not 0 < len(key) <= KEY_BYTES_MAX:
        raise ValueError(f"key must be 1..{KEY_BYTES_MAX} bytes, got {len(key)}")
    if len(value) > VALUE_BYTES_MAX:
        raise ValueError(f"value must be at most {VALUE_BYTES_MAX} bytes, got {len(value)}")


class KeyValueStore:
    def __init__(self):
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def apply(self, index: int, command: bytes) -> bytes:
        op, key_length = _HEADER.unpack_from(command)
        key = command[_HEADER.size:_HEADER.size + key_length]
        rest = command[_HEADER.size + key_length:]
        if op == PUT:
            self.data[key] = rest
            return OK
        if op == DELETE:
            return OK if self.data.pop(key, None) is not None else FAILED
        if op == CAS:
            return self._cas(key, rest)
        raise ValueError(f"unknown key-value command {op}")  # a replicated bug: stop loudly

    def _cas(self, key: bytes, rest: bytes) -> bytes:
        if rest[0] == 0:
            expected, new = None, rest[1:]
        else:
            (length,) = struct.unpack_from(">I", rest, 1)
            expected, new = rest[5:5 + length], rest[5 + length:]
        if self.data.get(key) != expected:
            return FAILED
        self.data[key] = new
        return OK

    def snapshot(self) -> bytes:
        return b"".join(struct.pack(">II", len(k), len(v)) + k + v for k, v in sorted(self.data.items()))

    def restore(self, data: bytes) -> None:
        self.data, position = {}, 0
        while position < len(data):
            key_length, value_length = struct.unpack_from(">II", data, position)
            position += 8
            self.data[data[position:position + key_length]] = data[position + key_length:position + key_length + value_length]
            position += key_length + value_length
