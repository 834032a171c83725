"""A tiny DNS server on loopback that answers A queries for one name, standing in for Docker's embedded DNS.

In docker compose, nginx asks Docker's DNS (127.0.0.11) for the service name `api` and gets one address per
replica. This server does the same on 127.0.0.1 for the load-balancer test: it answers an A query for
`name` with every address in `addresses` (changeable while running, as `--scale` changes the replica set),
an empty answer for other record types of that name, and NXDOMAIN for any other name.

Wire format (RFC 1035 §4): a 12-byte header (id, flags, 4 counts), the question (length-prefixed labels,
type, class), then answers (name as a pointer 0xC00C to the question, type, class, TTL, length, data).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Sequence

TYPE_A = 1
CLASS_IN = 1
RCODE_NXDOMAIN = 3
HEADER = struct.Struct("!HHHHHH")


def _read_question(packet: bytes) -> tuple[str, int, int]:
    """Return (name, end offset of the question, query type) of a one-question query."""
    labels, offset = [], HEADER.size
    while packet[offset] != 0:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii").lower())
        offset += 1 + length
    query_type = struct.unpack_from("!H", packet, offset + 1)[0]
    return ".".join(labels), offset + 5, query_type


def build_answer(query: bytes, name: str, addresses: Sequence[str], ttl: int = 1) -> bytes:
    """The response to `query`: A records of `addresses` if it asks for `name`'s A record."""
    query_id, query_flags = struct.unpack_from("!HH", query)
    asked, question_end, query_type = _read_question(query)
    known = asked == name.lower()
    records = [
        struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, ttl, 4) + socket.inet_aton(address)
        for address in (addresses if known and query_type == TYPE_A else ())
    ]
    flags = 0x8080 | (query_flags & 0x0100) | (0 if known else RCODE_NXDOMAIN)  # QR, RA, copy RD
    header = HEADER.pack(query_id, flags, 1, len(records), 0, 0)
    return header + query[HEADER.size : question_end] + b"".join(records)


class LoopbackDns:
    """Serve `name` → `addresses` over UDP on 127.0.0.1 from a daemon thread until `close()`."""

    def __init__(self, name: str, addresses: Sequence[str]) -> None:
        self.name = name
        self.addresses = list(addresses)
        self.queries = 0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self._socket.getsockname()[1]
        return port

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                query, client = self._socket.recvfrom(512)
            except TimeoutError:
                continue
            self.queries += 1
            self._socket.sendto(build_answer(query, self.name, self.addresses), client)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
        self._socket.close()
