"""Fragments to and from data nodes: the erasure-coded half of the write and read paths.

Store: code a chunk into k+m fragments and send each to its node; a fragment whose node fails
goes to a replacement node that the leader picks (the ones that went through stay).

Read: ask for the k data fragments (the code is systematic: no decoding when they all come);
when some are late by the hedge delay, or fail, ask parity for as many as are missing; decode
from the first k that arrive and check the chunk against its BLAKE3 name. A chunk that does not
match is never returned: every fragment is fetched and each left out in turn until one set of k
agrees, and the one that lied is reported to the leader as damage. A fragment that its node says
it does not have is reported too (in the background, once per client), so that repair restores
it: nothing else notices a fragment missing from a node that is up.

Transports and the clock come in as arguments (`connect(address)` returns an object with the
DataClient's `put`/`get`/`close`), so the cluster simulator drives this same code.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Callable

import blake3
import grpc

from cluster import faultpoints
from cluster.client.errors import CorruptObject, NotEnoughFragmentsError, TierUnavailable, raise_for
from cluster.client.meta import MetaClient
from cluster.codec import CodecError, ReedSolomon, crc32c
from cluster.data.orphans import DEFAULT_GRACE_SECONDS
from cluster.data.wire import NOT_FOUND, UNAVAILABLE, DataClient, DataError
from cluster.proto import data_pb2, data_pb2_grpc
from cluster.proto import meta_pb2 as pb
from cluster.rpc.endpoints import insecure_channel

REPLACE_ATTEMPTS = 3
SAME_NODES_PAUSE_SECONDS = 0.5  # before a retry on the same nodes, times the attempt
HEDGE_SECONDS = 0.25  # a data fragment this late gets a parity fragment asked for in its place
THREAD_ENCODE_BYTES = 256 << 10
SUSPECT_SECONDS = 10.0  # a node that failed or was late is read from last for this long
# a fragment call slower than this is treated as a failed node (ZeroMQ queues for a dead peer
# instead of failing): a base, plus the time its bytes take at a slow link's rate
FRAGMENT_SECONDS_BASE = 2.0
FRAGMENT_BYTES_PER_SECOND_MIN = 10e6
NODE_FAILURES = (DataError, OSError, asyncio.TimeoutError, KeyError)  # a node's failure, not a bug
RECALL_NODES_TRIED = 3  # data nodes asked, one after the other, for a cold chunk
RECALL_SECONDS = 120.0
MISSING_REMEMBERED_MAX = 10_000  # missing fragments reported by this client, not reported again
MISSING_PER_REPORT = 1000
_RECALL_OPTIONS = [("grpc.max_receive_message_length", 72 << 20)]


def fragment_timeout(size: int) -> float:
    return FRAGMENT_SECONDS_BASE + size / FRAGMENT_BYTES_PER_SECOND_MIN


class Fragments:
    def __init__(self, meta: MetaClient, connect: Callable[[str], DataClient] = DataClient,
                 hedge_seconds: float = HEDGE_SECONDS, clock: Callable[[], float] = time.monotonic,
                 offload=asyncio.to_thread, control: Callable[[str], object] | None = None):
        """`offload(function, *args)` runs CPU work off the event loop (the simulator runs it
        inline: a real thread would race its virtual clock); `control(address)` opens a channel
        to a data node's gRPC API, for recalls of cold chunks."""
        self.meta = meta
        self._connect = connect
        self._open_control = control or (lambda address: insecure_channel(address, options=_RECALL_OPTIONS))
        self.hedge_seconds = hedge_seconds
        self.clock = clock
        self._offload = offload
        self._suspect_until: dict[int, float] = {}  # node id -> until when reads go elsewhere first
        self._clients: dict[str, DataClient] = {}
        self._control: dict[str, grpc.aio.Channel] = {}  # data nodes' gRPC, for recalls
        self._nodes: dict[int, pb.Node] = {}
        self.nodes_version = 0  # of the whole table in _nodes (0: none read yet)
        self._refreshing: asyncio.Future | None = None  # the node list read on its way
        self._codecs: dict[tuple[int, int], ReedSolomon] = {}
        self.sent = 0        # fragments stored, for dedup checks and progress
        self.hedged = 0      # parity fragments asked for because a data fragment was late
        self.damaged = 0     # fragments that decoded to the wrong chunk, reported
        self._missing: set[tuple[bytes, int, int]] = set()  # (chunk, index, node) reported or queued
        self._unreported: list[tuple[bytes, int, int]] = []  # queued, in order
        self._reporting: asyncio.Future | None = None  # the missing fragments' report on its way

    async def close(self) -> None:
        for work in (self._refreshing, self._reporting):  # background work: not needed now
            if work is not None:
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        for channel in self._control.values():
            await channel.close()
        self._control.clear()

    def learn(self, nodes) -> None:
        """Takes node records from the leader (SUSPECT and DEAD nodes are read from last while
        their record says so: `_read_last`)."""
        for node in nodes:
            self._nodes[node.id] = node

    def learn_from_read(self, nodes, version: int) -> None:
        """Takes the node records that came with a read (GetObject sends them only when the
        client's `nodes_version` is not the table's `version`) and reads the whole table again
        in the background, so that later reads come without records. Until that read lands the
        table counts as out of date (version 0), whatever else happens meanwhile: a read's
        records may be older than the table read, or the table read may fail. (A reply without
        records, or with version 0 from a leader that keeps none, changes nothing.)"""
        self.learn(nodes)
        if nodes and version and version != self.nodes_version:
            self.nodes_version = 0
            self._start_refresh()

    def codec(self, k: int, m: int) -> ReedSolomon:
        codec = self._codecs.get((k, m))
        if codec is None:
            codec = self._codecs[(k, m)] = ReedSolomon(k, m)
        return codec

    # ---- store

    async def store(self, chunk_id: bytes, data, nodes: list[int], profile: pb.ErasureProfile,
                    slots: asyncio.Semaphore) -> list[int]:
        """Stores the chunk's k+m fragments; returns the nodes that hold them (replacements in)."""
        codec = self.codec(profile.k, profile.m)
        if len(data) >= THREAD_ENCODE_BYTES:  # the native code releases the GIL: use the other core
            fragments = await self._offload(codec.encode_chunk, data)
        else:  # a thread hop costs more than the encoding
            fragments = codec.encode_chunk(data)
        nodes, pending = list(nodes), list(range(len(nodes)))
        for attempt in range(REPLACE_ATTEMPTS + 1):
            failed = await self._send_all(chunk_id, nodes, pending, fragments, slots)
            if not failed:
                return nodes
            if attempt == REPLACE_ATTEMPTS:
                break
            reply = await self.meta.call(pb.MetaOp(replace=pb.Replace(
                chunk=chunk_id, profile=profile, nodes=nodes, failed=sorted(failed), seed=os.urandom(16))))
            pending = sorted(failed)
            if reply.code == pb.NOT_ENOUGH_NODES:
                # no spare node (a cluster of exactly k+m nodes): a node that was only slow for
                # once (a timeout under load) gets its fragment again, after a pause
                await asyncio.sleep(SAME_NODES_PAUSE_SECONDS * (attempt + 1))
                continue
            raise_for(reply)
            nodes = list(reply.replace.nodes)
            await self.refresh()
        raise NotEnoughFragmentsError(f"could not store fragments {sorted(failed)} of chunk "
                                      f"{chunk_id.hex()[:16]} in {REPLACE_ATTEMPTS + 1} tries (on replacement "
                                      "nodes where the cluster had any); check the data nodes (cairn status)")

    # ---- read

    async def read(self, chunk_id: bytes, length: int, chunk: pb.Chunk, last: tuple[int, ...] = (),
                   asked: list[int] | None = None, out=None):
        """The chunk's bytes, verified against its name: a new buffer, or written into `out` (a
        writable buffer of `length` bytes, returned; on failure it may hold unverified bytes).
        Fragments in `last` are asked for only if the others cannot do (a repair's lost ones).
        The indexes fetched go into `asked`."""
        asked = [] if asked is None else asked
        if chunk.state == pb.COLD:
            data = await self.recall(chunk_id, length, chunk.tier)
            if out is None:
                return data
            memoryview(out).cast("B")[:] = data
            return out
        k, m = chunk.profile.k, chunk.profile.m
        if len(chunk.nodes) != k + m:
            raise NotEnoughFragmentsError(f"chunk {chunk_id.hex()[:16]} has {len(chunk.nodes)} placements, "
                                          f"not {k + m}")
        codec = self.codec(k, m)
        have, bad = await self._fetch_k(chunk_id, length, chunk, tuple(dict.fromkeys(last)), asked)
        if len(have) >= k:
            data = self._verified(codec, chunk_id, length, have, out)
            if data is not None:
                return data
            # decoded, but not to the chunk's name: one fragment is wrong in a way its CRC could
            # not show. Read them all and leave each out in turn.
            rest = [i for i in range(k + m) if i not in have and i not in bad]
            asked.extend(rest)
            await self._fetch(chunk_id, length, chunk, rest, have, bad)
            for left_out in sorted(have):
                data = self._verified(codec, chunk_id, length, {i: f for i, f in have.items() if i != left_out}, out)
                if data is not None:
                    await self._report(chunk_id, left_out, chunk.nodes[left_out])
                    return data
            raise CorruptObject(f"chunk {chunk_id.hex()[:16]}: no {k} of its fragments decode to its BLAKE3; "
                                "nothing was returned")
        raise NotEnoughFragmentsError(f"chunk {chunk_id.hex()[:16]}: fewer than {k} of its {k + m} fragments "
                                      f"could be read intact (unreadable: {sorted(bad)}); check the data nodes")

    async def recall(self, chunk_id: bytes, length: int, tier: str) -> bytes:
        """A cold chunk's bytes, which a data node gets from the tier; verified here too."""
        if not any(n.state == pb.UP and n.address for n in self._nodes.values()):
            await self.refresh()
        nodes = sorted((n for n in self._nodes.values() if n.state == pb.UP and n.address),
                       key=lambda n: blake3.blake3(chunk_id + n.id.to_bytes(8, "big")).digest())
        last = "no data node is up"
        for node in nodes[:RECALL_NODES_TRIED]:  # the same node first for the same chunk
            channel = self._control.get(node.address)
            if channel is None:
                channel = self._control[node.address] = self._open_control(node.address)
            try:
                reply = await data_pb2_grpc.DataStub(channel).Recall(
                    data_pb2.RecallRequest(chunk=chunk_id, length=length, target=tier), timeout=RECALL_SECONDS)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.DATA_LOSS:
                    raise CorruptObject(f"chunk {chunk_id.hex()[:16]}: {error.details()}") from None
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    raise TierUnavailable(f"cold chunk {chunk_id.hex()[:16]}: {error.details()} "
                                          f"(was it deleted from tier {tier!r} outside Cairn?)") from None
                last = f"node {node.id}: {error.code().name} {error.details()}"
                continue
            if len(reply.data) != length or blake3.blake3(reply.data).digest() != chunk_id:
                raise CorruptObject(f"cold chunk {chunk_id.hex()[:16]} came back from node {node.id} altered; "
                                    "nothing was returned")
            return reply.data  # (readers take views of it: no copy)
        raise TierUnavailable(f"cold chunk {chunk_id.hex()[:16]} could not be recalled from tier {tier!r} "
                              f"({last}); check that its endpoint is up and the data nodes hold its credentials")

    async def _fetch_k(self, chunk_id: bytes, length: int, chunk: pb.Chunk, last: tuple[int, ...], asked: list[int]):
        """Fragments until k are in hand: data first (parity in place of suspect nodes), more
        parity for the ones that fail or are late by the hedge delay; `last` at the very end,
        in its order. Each fetch is a future whose landing decides what to ask for next."""
        k, m = chunk.profile.k, chunk.profile.m
        now = self.clock()
        suspect = {i for i in range(k + m) if self._read_last(chunk.nodes[i], now)} - set(last)
        order = [i for i in range(k + m) if i not in suspect and i not in last] + sorted(suspect) + list(last)
        fetch = _KFetch(self, chunk_id, length, chunk, order[k:])
        for index in order[:k]:
            fetch.start(index)
        try:
            if not fetch.finished():
                fetch.arm_hedge()
                await fetch.enough
        finally:
            fetch.stop()
        asked.extend(fetch.calls)
        self._suspect(chunk.nodes[i] for i in fetch.bad)
        if fetch.error is not None:
            raise fetch.error
        return fetch.have, fetch.bad

    def _read_last(self, node_id: int, now: float) -> bool:
        """Whether fragments on the node are asked for after the others: it failed or was late
        for this client lately, or the leader's record of it says SUSPECT or DEAD."""
        node = self._nodes.get(node_id)
        return self._suspect_until.get(node_id, 0) > now or (node is not None and node.state in (pb.SUSPECT, pb.DEAD))

    def _suspect(self, node_ids) -> None:
        until = self.clock() + SUSPECT_SECONDS
        for node_id in node_ids:
            self._suspect_until[node_id] = until

    def _get_soon(self, chunk_id: bytes, length: int, chunk: pb.Chunk, index: int) -> asyncio.Future:
        """A future of fragment `index`; no task is made for it when its node's connection is open."""
        size = self.codec(chunk.profile.k, chunk.profile.m).fragment_size(length)
        if faultpoints.hit("fragment.get"):  # the node fails this read: parity instead
            return _failed("fault point: fragment get failed")
        return self._on_node(chunk.nodes[index],
                             lambda client: client.get(chunk_id, index, timeout=fragment_timeout(size), expect=size))

    def _on_node(self, node_id: int, call: Callable[[DataClient], object]) -> asyncio.Future:
        """`call(client)` on the node's data client, as a future: at once when the connection is
        open, else in a task that looks the node up and connects first."""
        node = self._nodes.get(node_id)
        client = self._clients.get(node.data_address) if node is not None else None
        if client is None:
            return asyncio.ensure_future(self._connected(node_id, call))
        return asyncio.ensure_future(call(client))  # (a real client's future as it is; a coroutine in a task)

    async def _connected(self, node_id: int, call: Callable[[DataClient], object]):
        return await call(await self._client(node_id))

    async def _fetch(self, chunk_id: bytes, length: int, chunk: pb.Chunk, indexes, have: dict, bad: set) -> None:
        """Every fragment in `indexes`, each filed into `have` or `bad`."""
        calls = [self._get_soon(chunk_id, length, chunk, i) for i in indexes]
        await asyncio.gather(*calls, return_exceptions=True)
        for index, call in zip(indexes, calls):
            error = self._file(chunk_id, chunk, index, call, have, bad)
            if error is not None:
                raise error

    def _file(self, chunk_id: bytes, chunk: pb.Chunk, index: int, call: asyncio.Future, have: dict,
              bad: set) -> BaseException | None:
        """Files a finished fetch: its bytes into `have`, or its index into `bad` when its node
        failed it (down, missing, or corrupt: the node checks its CRC32C). Any other error is a
        bug, returned for the reader to raise."""
        error = call.exception()
        if error is None:
            have[index] = call.result()
            self._suspect_until.pop(chunk.nodes[index], None)  # (the leader's word stands: _read_last)
        elif isinstance(error, NODE_FAILURES):
            bad.add(index)
            if isinstance(error, DataError) and error.status == NOT_FOUND:
                self._report_missing(chunk_id, index, chunk.nodes[index])
        else:
            return error
        return None

    def _report_missing(self, chunk_id: bytes, index: int, node: int) -> None:
        """Queues a report of a fragment its node does not have (the leader keeps it only if the
        chunk's placement still names that node: an older manifest's is ignored)."""
        key = (chunk_id, index, node)
        if key in self._missing:
            return
        if len(self._missing) >= MISSING_REMEMBERED_MAX:  # forget the reported ones (again: harmless)
            self._missing = set(self._unreported)
            if len(self._missing) >= MISSING_REMEMBERED_MAX:
                return  # the leader is not taking reports: this one waits for a later read
        self._missing.add(key)
        self._unreported.append(key)
        if self._reporting is None:
            self._reporting = asyncio.ensure_future(self._send_missing())

    async def _send_missing(self) -> None:
        """Sends what is queued, in reports of up to MISSING_PER_REPORT. When one fails, every
        unsent report is forgotten, so that a later read that finds the fragment missing again
        queues it again and starts a new sender."""
        try:
            while self._unreported:
                waiting = self._unreported[:MISSING_PER_REPORT]
                damage = [pb.Damage(chunk=c, index=i, node=n, reason="missing on its node (client read)")
                          for c, i, n in waiting]
                try:
                    reply = await self.meta.command(report_damage=pb.ReportDamage(damage=damage))
                except Exception:  # noqa: BLE001 - the read went on without it
                    reply = None
                if reply is None or reply.code != pb.OK:
                    self._missing.difference_update(self._unreported)
                    self._unreported.clear()
                    return
                del self._unreported[:len(waiting)]
        finally:
            self._reporting = None

    @staticmethod
    def _verified(codec: ReedSolomon, chunk_id: bytes, length: int, fragments, out=None):
        try:
            data = codec.decode_chunk(fragments, length, out)
        except CodecError:  # too few, or a fragment of the wrong size
            return None
        return data if blake3.blake3(data).digest() == chunk_id else None

    async def _report(self, chunk_id: bytes, index: int, node: int) -> None:
        self.damaged += 1
        try:
            await self.meta.command(report_damage=pb.ReportDamage(damage=[pb.Damage(
                chunk=chunk_id, index=index, node=node, reason="decodes to the wrong BLAKE3 (client read)")]))
        except Exception:  # noqa: BLE001 - the read succeeded; the scrubber finds it again
            pass

    async def _send_all(self, chunk_id: bytes, nodes: list[int], indexes: list[int], fragments, slots) -> list[int]:
        """Sends fragment i to nodes[i] for each i in `indexes`, each holding one of `slots` while
        on its way; the indexes whose node failed, in order. Each send is a future, not a task."""
        calls: dict[int, asyncio.Future] = {}
        try:
            for index in indexes:
                await slots.acquire()  # (at once while a slot is free)
                call = calls[index] = self._put_soon(nodes[index], chunk_id, index, fragments[index])
                call.add_done_callback(lambda _: slots.release())
            await asyncio.wait(calls.values())
        except BaseException:
            for call in calls.values():
                call.cancel()
            raise
        failed = []
        for index, call in calls.items():
            error = call.exception()
            if isinstance(error, NODE_FAILURES):
                failed.append(index)
            elif error is not None:
                raise error  # not a node's failure: a bug
        return failed

    async def send(self, node_id: int, chunk_id: bytes, index: int, fragment) -> None:
        """Stores one fragment on one node."""
        await self._put_soon(node_id, chunk_id, index, fragment)

    def _put_soon(self, node_id: int, chunk_id: bytes, index: int, fragment) -> asyncio.Future:
        """A future of one fragment stored on one node; no task is made for it when the node's
        connection is open."""
        if faultpoints.hit("fragment.put"):  # the node fails this put: a replacement takes it
            return _failed("fault point: fragment put failed")
        crc, timeout = crc32c(fragment), fragment_timeout(len(fragment))
        call = self._on_node(node_id, lambda client: client.put(chunk_id, index, fragment, crc, timeout=timeout))
        call.add_done_callback(self._count_sent)
        return call

    def _count_sent(self, call: asyncio.Future) -> None:
        if not call.cancelled() and call.exception() is None:
            self.sent += 1

    async def touch(self, node_id: int, fragments: list[tuple[bytes, int]]) -> list[bool]:
        """Restarts the orphan grace of fragments on one node; whether each is held there."""
        return await self._on_node(node_id, lambda client: client.touch(fragments, timeout=FRAGMENT_SECONDS_BASE))

    def orphan_grace(self, node_id: int) -> float:
        """How long the node keeps a fragment no committed chunk places (its record's word, or
        the default when the record has none)."""
        node = self._nodes.get(node_id)
        return node.orphan_grace_seconds if node is not None and node.orphan_grace_seconds > 0 \
            else DEFAULT_GRACE_SECONDS

    # ---- nodes

    async def refresh(self) -> None:
        """Reads the node list again. Callers that come while a read is on its way share it: the
        first fragments of 64 concurrent puts asked the leader for the list 384 times."""
        await asyncio.shield(self._start_refresh())

    def _start_refresh(self) -> asyncio.Future:
        """The read of the node table on its way, started if none is."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_nodes())
            self._refreshing.add_done_callback(self._refreshed)
        return self._refreshing

    async def _read_nodes(self) -> None:
        reply = await self.meta.call(pb.MetaOp(list_nodes=pb.ListNodes()))
        raise_for(reply)
        self._nodes = {}
        self.learn(reply.list_nodes.nodes)
        self.nodes_version = reply.list_nodes.nodes_version

    def _refreshed(self, read: asyncio.Future) -> None:
        self._refreshing = None
        if not read.cancelled():
            read.exception()  # its waiters have it; retrieved here too, in case all were cancelled

    async def _client(self, node_id: int) -> DataClient:
        if node_id not in self._nodes:
            await self.refresh()
        address = self._nodes[node_id].data_address
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._connect(address)
        return client


def _failed(text: str) -> asyncio.Future:
    """A call that a fault point failed as its node would have (UNAVAILABLE)."""
    failed = asyncio.get_running_loop().create_future()
    failed.set_exception(DataError(UNAVAILABLE, text))
    return failed


class _KFetch:
    """One chunk's fragment fetches until k are in hand (see Fragments._fetch_k): every landing
    records its fragment or failure, asks for as many untried ones as no running fetch can
    supply, and resolves `enough` once k are in or nothing runs. The hedge timer restarts at
    each landing; when it fires, parity is asked for every fragment still missing (once)."""

    def __init__(self, fragments: Fragments, chunk_id: bytes, length: int, chunk: pb.Chunk, untried: list[int]):
        self.fragments, self.chunk_id, self.length, self.chunk = fragments, chunk_id, length, chunk
        self.k = chunk.profile.k
        self.untried = untried
        self.calls: dict[int, asyncio.Future] = {}
        self.outstanding: set[int] = set()  # started and not landed (a call may be done before its landing runs)
        self.have: dict[int, object] = {}
        self.bad: set[int] = set()
        self.error: BaseException | None = None  # not a node's failure: a bug, raised to the reader
        self.loop = asyncio.get_running_loop()
        self.enough = self.loop.create_future()
        self._hedge: asyncio.TimerHandle | None = None
        self._hedged = False

    def start(self, index: int) -> None:
        call = self.calls[index] = self.fragments._get_soon(self.chunk_id, self.length, self.chunk, index)
        self.outstanding.add(index)
        call.add_done_callback(lambda done: self._landed(index, done))

    def finished(self) -> bool:
        return len(self.have) >= self.k or self.error is not None or not self.outstanding

    def arm_hedge(self) -> None:
        if not self._hedged:
            if self._hedge is not None:
                self._hedge.cancel()
            self._hedge = self.loop.call_later(self.fragments.hedge_seconds, self._late)

    def _landed(self, index: int, call: asyncio.Future) -> None:
        self.outstanding.discard(index)
        if self.enough.done() or call.cancelled():
            return
        self.error = self.fragments._file(self.chunk_id, self.chunk, index, call, self.have, self.bad)
        self._ask(self.k - len(self.have) - len(self.outstanding))
        if self.finished():
            self.enough.set_result(None)
        else:
            self.arm_hedge()

    def _late(self) -> None:
        """The hedge delay passed with nothing new: parity for the late ones."""
        if self.enough.done():
            return
        self._hedged = True
        short = self.k - len(self.have)
        self.fragments.hedged += min(short, len(self.untried))
        self.fragments._suspect(self.chunk.nodes[i] for i in self.outstanding)
        self._ask(short)

    def _ask(self, short: int) -> None:
        for _ in range(min(max(0, short), len(self.untried))):
            self.start(self.untried.pop(0))

    def stop(self) -> None:
        if self._hedge is not None:
            self._hedge.cancel()
        for call in self.calls.values():
            call.cancel()
