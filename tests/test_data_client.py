"""The data plane's client socket, against a ZeroMQ peer that the test controls: requests past
the in-flight bound wait and go in order, a timeout or a cancelled caller frees its slot,
messages that the socket cannot take yet go once it can, close fails what is in flight, and a
batch's reply settles each of its calls (from a fresh client, on time, or with the batch's failure)."""
import asyncio
import threading

import pytest
import zmq

from cluster.data import wire
from cluster.data.wire import DataClient, DataError
from cluster.dev import free_ports

CHUNK = b"c" * 32


class Peer:
    """A ROUTER on a thread that keeps every request and answers only when told to."""

    def __init__(self, port: int, answer_all: bool = False):
        self.port = port
        self.answer_all = answer_all
        self.received: list[list[bytes]] = []
        self._to_answer = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def answer(self, count: int) -> None:
        with self._lock:
            self._to_answer += count

    def _run(self) -> None:
        socket = zmq.Context.instance().socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(f"tcp://127.0.0.1:{self.port}")
        answered = 0
        try:
            while not self._stop.is_set():
                if socket.poll(10):
                    self.received.append(socket.recv_multipart())
                with self._lock:
                    allowed = len(self.received) if self.answer_all else min(self._to_answer, len(self.received))
                while answered < allowed:
                    socket.send_multipart(self._reply(self.received[answered], answered))
                    answered += 1
        finally:
            socket.close(0)

    @staticmethod
    def _reply(request: list[bytes], number: int) -> list[bytes]:
        identity, request_id, op = request[:3]
        if op == wire.OP_GET_MANY:  # each fragment's index as its bytes; index 7 is missing
            indexes = [index for _, index, _, _ in wire.decode_get_many(request[3])]
            statuses = wire.encode_statuses([(wire.NOT_FOUND, "gone") if i == 7 else (wire.OK, "") for i in indexes])
            payloads = [b"" if i == 7 else b"index %d" % i for i in indexes]
            return [identity, request_id, bytes([wire.OK]), b"", statuses, *wire.join_payloads(payloads)]
        return [identity, request_id, bytes([wire.OK]), b"", b"bytes %d" % number]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


async def until(condition, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture
def peer():
    peer = Peer(free_ports(1)[0])
    yield peer
    peer.close()


def get(client: DataClient, index: int, timeout: float = 10.0):
    return client._call([wire.OP_GET, wire.encode_get(CHUNK, index)], timeout)


def test_calls_past_the_bound_wait_and_go_in_order(peer):
    async def main():
        client = DataClient(f"127.0.0.1:{peer.port}", in_flight_max=3)
        calls = [asyncio.ensure_future(get(client, i)) for i in range(10)]
        await until(lambda: len(peer.received) == 3)
        await asyncio.sleep(0.1)
        assert len(peer.received) == 3  # the other seven wait in the client
        peer.answer(1)
        await until(lambda: len(peer.received) == 4)
        peer.answer(9)
        replies = await asyncio.gather(*calls)
        assert [bytes(r[3].bytes) for r in replies] == [b"bytes %d" % n for n in range(10)]
        indexes = [wire.decode_get(frames[3])[1] for frames in peer.received]
        assert indexes == list(range(10))
        await client.close()
    asyncio.run(main())


def test_a_timeout_or_a_cancelled_caller_frees_its_slot(peer):
    async def main():
        client = DataClient(f"127.0.0.1:{peer.port}", in_flight_max=1)
        with pytest.raises(asyncio.TimeoutError):
            await get(client, 0, timeout=0.2)
        cancelled = asyncio.ensure_future(get(client, 1))
        await until(lambda: len(peer.received) == 2)
        cancelled.cancel()
        late = asyncio.ensure_future(get(client, 2))
        await until(lambda: len(peer.received) == 3)
        peer.answer(3)  # the first two replies find nobody waiting: ignored
        assert bytes((await late)[3].bytes) == b"bytes 2"
        assert not client._pending and not client._waiting
        await client.close()
    asyncio.run(main())


def test_messages_the_socket_cannot_take_yet_go_once_it_can():
    port = free_ports(1)[0]

    async def main():
        # nobody listens yet: ZeroMQ queues up to its high-water mark (1,000), the rest wait here
        client = DataClient(f"127.0.0.1:{port}", in_flight_max=1500)
        calls = [asyncio.ensure_future(get(client, i % 200)) for i in range(1500)]
        await until(lambda: len(client._pending) == 1500)
        assert len(client._unsent) >= 400
        peer = Peer(port, answer_all=True)
        try:
            replies = await asyncio.wait_for(asyncio.gather(*calls), 30)
            assert len(replies) == 1500 and not client._unsent
        finally:
            peer.close()
        await client.close()
    asyncio.run(main())


def test_close_fails_every_call_in_flight_or_waiting(peer):
    async def main():
        client = DataClient(f"127.0.0.1:{peer.port}", in_flight_max=2)
        calls = [asyncio.ensure_future(get(client, i)) for i in range(4)]
        batched = asyncio.ensure_future(client.get(CHUNK, 9, expect=100))
        await until(lambda: len(peer.received) == 2)
        await client.close()
        for call in (*calls, batched):
            with pytest.raises(DataError) as failed:
                await call
            assert failed.value.status == wire.UNAVAILABLE
        with pytest.raises(DataError):
            await get(client, 5)
    asyncio.run(main())


def test_a_client_closed_before_any_call_fails_its_calls():
    async def main():
        client = DataClient(f"127.0.0.1:{free_ports(1)[0]}")
        await client.close()
        with pytest.raises(DataError) as failed:
            await get(client, 0)
        assert failed.value.status == wire.UNAVAILABLE
    asyncio.run(main())


def test_a_batch_settles_each_of_its_calls_with_its_own_outcome(peer):
    async def main():
        client = DataClient(f"127.0.0.1:{peer.port}")  # a batch is its very first message
        calls = [client.get(CHUNK, index, expect=100) for index in (3, 7, 5)]
        await until(lambda: len(peer.received) == 1)
        assert peer.received[0][2] == wire.OP_GET_MANY and client.messages == 1
        peer.answer(1)
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert [bytes(done[0]), bytes(done[2])] == [b"index 3", b"index 5"]
        assert isinstance(done[1], DataError) and done[1].status == wire.NOT_FOUND
        late = [client.get(CHUNK, index, expect=100, timeout=0.2) for index in (1, 2)]
        for call in late:  # the peer does not answer: the batch times out, and so does each call
            with pytest.raises(asyncio.TimeoutError):
                await call
        assert not client._pending
        await client.close()
    asyncio.run(main())
