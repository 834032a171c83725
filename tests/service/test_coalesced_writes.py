"""The coalescing transports on a real loopback socket pair. HTTP/1.1's: a response head waits for the write
that follows it (then both leave in one write), or for the end of the event-loop step; other bytes pass at once.
HTTP/2's: everything written in one event-loop step leaves as one write at its end, in order."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bnfold.service.coalesced_writes import CoalescingTransport, StepCoalescingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


def _pending(peer: socket.socket) -> bytes:
    """What the peer can read now without waiting."""
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


async def _raw_pair() -> tuple[asyncio.Transport, socket.socket]:
    """A real transport over one end of a socket pair, and the other end (non-blocking) to read what it wrote."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    assert isinstance(transport, asyncio.Transport)
    return transport, peer


async def _pair() -> tuple[CoalescingTransport, socket.socket]:
    transport, peer = await _raw_pair()
    return CoalescingTransport(transport, asyncio.get_running_loop()), peer


async def _one_step() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0.01)


def test_a_head_leaves_with_the_body_that_follows_it() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        transport, peer = await _pair()
        transport.write(HEAD)
        before = _pending(peer)
        transport.write(b"{}")
        await _one_step()
        after = _pending(peer)
        transport.close()
        peer.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert before == b""  # held: nothing was written yet
    assert after == HEAD + b"{}"


def test_a_head_alone_is_written_at_the_end_of_the_step() -> None:
    async def scenario() -> bytes:
        transport, peer = await _pair()
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await _one_step()
        got = _pending(peer)
        transport.close()
        peer.close()
        return got

    assert asyncio.run(scenario()) == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize("data", [b"{}", b"5\r\nhello\r\n", bytearray(b"HTTP/1.1 200 OK\r\n\r\n")])
def test_other_writes_pass_at_once(data: bytes | bytearray) -> None:
    async def scenario() -> bytes:
        transport, peer = await _pair()
        transport.write(data)
        got = _pending(peer)  # written by this call (loopback: readable at once)
        transport.close()
        peer.close()
        return got

    assert asyncio.run(scenario()) == bytes(data)


def test_close_writes_a_held_head_first_and_abort_drops_it() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        transport, peer = await _pair()
        transport.write(HEAD)
        assert transport.get_write_buffer_size() == len(HEAD)
        transport.close()
        await _one_step()
        closed = _pending(peer)
        peer.close()
        aborted_transport, aborted_peer = await _pair()
        aborted_transport.write(HEAD)
        aborted_transport.abort()
        await _one_step()
        aborted = _pending(aborted_peer)
        aborted_peer.close()
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert closed == HEAD
    assert aborted == b""


async def _step_pair() -> tuple[StepCoalescingTransport, socket.socket, asyncio.Transport]:
    transport, peer = await _raw_pair()
    return StepCoalescingTransport(transport, asyncio.get_running_loop()), peer, transport


def test_the_writes_of_one_step_leave_together_in_order_at_its_end() -> None:
    """Three pieces of one step (an HTTP/2 response's HEADERS, DATA and trailers) are one socket write when
    the step ends; a write in the next step is another."""

    async def scenario() -> tuple[bytes, bytes, bytes]:
        transport, peer, raw = await _step_pair()
        writes: list[bytes] = []
        write = raw.write
        raw.write = lambda data: (writes.append(bytes(data)), write(data))[1]  # type: ignore[method-assign]
        for piece in (b"headers|", bytearray(b"data|"), memoryview(b"trailers")):
            transport.write(piece)
        during = _pending(peer)
        await _one_step()
        first = _pending(peer)
        transport.write(b"next")
        await _one_step()
        second = _pending(peer)
        transport.close()
        peer.close()
        return during, first + b"/" + second, b"/".join(writes)

    during, received, written = asyncio.run(scenario())
    assert during == b""
    assert received == b"headers|data|trailers/next"
    assert written == b"headers|data|trailers/next"  # two socket writes


def test_close_writes_what_the_step_gathered() -> None:
    async def scenario() -> bytes:
        transport, peer, _ = await _step_pair()
        transport.write(b"goaway")
        transport.close()
        await _one_step()
        got = _pending(peer)
        peer.close()
        return got

    assert asyncio.run(scenario()) == b"goaway"
