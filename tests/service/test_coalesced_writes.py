"""The coalescing transport on a real loopback socket pair: a response head waits for the write that follows it
(then both leave in one write), or for the end of the event-loop step; other bytes pass at once."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bnfold.service.coalesced_writes import CoalescingTransport

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
