"""A big body cannot stall the server: an infer body larger than any valid request to its model is refused
before it is read or parsed, while other requests keep being answered and memory stays flat.

The bound for a JSON request to digits_resnet (input FP32 [-1, 1, 8, 8]) is max batch × 64 elements × 32 bytes
of number text + 64 KiB of header (service.body_limit); the 64 MiB uploads here are under the global
BNFOLD_MAX_BODY_BYTES (64 MiB), so only the per-model bound can refuse them early.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.load.serve_process import serve_process

UPLOADS = 4
BODY_BYTES = 64 * 1024 * 1024 - 1024
MAX_BATCH = 1024
LIVE_WITHIN_S = 1.0
DEADLINE_S = 20.0
RSS_GROWTH_BYTES = 200 * 1024 * 1024


def junk_floats_request(size: int) -> bytes:
    """A V2 JSON request of exactly `size` bytes whose data is a long list of float texts."""
    head = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,8,8],"data":['
    tail = b"0.5]}]}"
    number = b"0.123456789,"
    count, rest = divmod(size - len(head) - len(tail), len(number))
    return head + number * count + b" " * rest + tail


def upload(port: int, body: bytes, answers: list[bytes]) -> None:
    """POST `body` over a raw socket, sending it in the background, and keep the first bytes of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        head = "POST /v2/models/digits_resnet/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode())
        sender = threading.Thread(target=_send_quietly, args=(sock, body), daemon=True)
        sender.start()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        answers.append(answer)


def _send_quietly(sock: socket.socket, body: bytes) -> None:
    with contextlib.suppress(OSError):  # the server answers and closes before the whole body goes out
        sock.sendall(body)


def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def test_oversized_uploads_are_refused_unread_and_live_answers_meanwhile(zoo_repository: Path) -> None:
    body = junk_floats_request(BODY_BYTES)
    limit = MAX_BATCH * 64 * 32 + 64 * 1024
    with serve_process(zoo_repository, max_batch_size=str(MAX_BATCH)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        before = vm_hwm_bytes(server.process.pid)
        answers: list[bytes] = []
        threads = [threading.Thread(target=upload, args=(port, body, answers)) for _ in range(UPLOADS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        slowest = 0.0
        with httpx.Client(base_url=server.url, timeout=DEADLINE_S) as client:
            while any(thread.is_alive() for thread in threads) and time.monotonic() - started < DEADLINE_S:
                sent = time.monotonic()
                assert client.get("/v2/health/live").json() == {"live": True}
                slowest = max(slowest, time.monotonic() - sent)
        for thread in threads:
            thread.join(timeout=max(0.0, DEADLINE_S - (time.monotonic() - started)))
        growth = vm_hwm_bytes(server.process.pid) - before
    assert not any(thread.is_alive() for thread in threads), f"uploads unanswered after {DEADLINE_S} s"
    assert slowest < LIVE_WITHIN_S, f"/v2/health/live took {slowest:.2f} s during the uploads"
    assert growth < RSS_GROWTH_BYTES, f"server peak RSS grew by {growth / 2**20:.0f} MiB"
    expected = (
        f'{{"error":"request body of {BODY_BYTES} bytes or more is over the limit of {limit} bytes; no valid '
        f"request to model 'digits_resnet' is larger ({MAX_BATCH} samples of at most {64 * 32} bytes as JSON + "
        f'{64 * 1024} bytes of header); send a smaller batch"}}'
    ).encode()
    assert len(answers) == UPLOADS
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert answer.endswith(expected), answer[-400:]
