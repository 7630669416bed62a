"""Re-reads every fragment of a store at a bounded rate and checks its CRC32C.

One pass walks the index in chunk-id order; each fragment is read and verified like a client read,
and a damaged or unreadable one is reported through `report(chunk_id, index, reason)` (the node
passes it on to the metadata leader, whose repair acts on it). The rate limit is a token bucket
over bytes read, so a pass over a full disk spreads over hours instead of starving clients. Time
and sleeping are injected so the simulator can run it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from cluster.data.store import FragmentCorrupt, FragmentNotFound, FragmentStore

DEFAULT_BYTES_PER_SECOND = 50 << 20


@dataclass
class PassResult:
    fragments: int = 0
    bytes: int = 0
    bad: list = field(default_factory=list)  # (chunk id, index, reason)


class Scrubber:
    def __init__(self, store: FragmentStore, report: Callable[[bytes, int, str], None],
                 bytes_per_second: float = DEFAULT_BYTES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if bytes_per_second <= 0:
            raise ValueError("the scrub rate must be positive")
        self.store, self.report = store, report
        self.bytes_per_second, self.clock, self.sleep = bytes_per_second, clock, sleep

    def run_pass(self, should_stop: Callable[[], bool] = lambda: False) -> PassResult:
        result = PassResult()
        started = self.clock()
        for chunk_id, index, location in list(self.store.fragments()):
            if should_stop():
                break
            try:
                self.store.get(chunk_id, index)
            except FragmentCorrupt as error:
                self._bad(result, chunk_id, index, str(error))
            except (OSError, EOFError) as error:
                self._bad(result, chunk_id, index, f"unreadable: {error}")
            except FragmentNotFound:
                continue  # deleted meanwhile
            result.fragments += 1
            result.bytes += location.record_bytes
            # the bucket: by now at most bytes_per_second * elapsed may have been read
            ahead = result.bytes / self.bytes_per_second - (self.clock() - started)
            if ahead > 0:
                self.sleep(ahead)
        return result

    def _bad(self, result: PassResult, chunk_id: bytes, index: int, reason: str) -> None:
        result.bad.append((chunk_id, index, reason))
        self.report(chunk_id, index, reason)
