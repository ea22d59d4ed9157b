"""The bytes an uplink moves, counted at its TCP socket (Linux TCP_INFO, tcp(7)).

What the SIM operator bills is IP traffic. TCP_INFO counts the TCP payload, and the
TLS records, websocket frame headers and permessage-deflate output are all inside
that payload, so they are counted exactly, retransmissions included (tcpi_bytes_sent,
Linux 4.19; older kernels give tcpi_bytes_acked, which leaves retransmissions out).
The IP and TCP headers are not in the payload: they are estimated as the segment
count (tcpi_segs_out / tcpi_segs_in, which include SYN, FIN and bare ACKs) times
the header size: IPv4 20 + TCP 20 + timestamp option 12 = 52 bytes, IPv6 72.
Not counted at all: DNS lookups, and what the PPP or radio layer adds.

The meter holds a duplicate of the socket's descriptor, so the last counts can still
be read after the websocket library closed its socket (a failed TLS handshake, a
dropped link); closing the meter releases it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_HEADER_BYTES = {socket.AF_INET: 52, socket.AF_INET6: 72}
# Offsets in struct tcp_info (include/uapi/linux/tcp.h).
_BYTES_ACKED, _BYTES_RECEIVED, _SEGS_OUT_IN, _BYTES_SENT = 120, 128, 136, 200
_TCP_INFO_MAX = 512


@dataclass(frozen=True)
class Traffic:
    """Bytes on the wire (payload and estimated IP/TCP headers) in each direction."""

    sent: int = 0
    received: int = 0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.sent + other.sent, self.received + other.received)

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.sent - other.sent, self.received - other.received)

    @property
    def total(self) -> int:
        return self.sent + self.received


@dataclass(frozen=True)
class TcpCounters:
    """The kernel's running totals for one TCP connection."""

    payload_sent: int
    payload_received: int
    segments_out: int
    segments_in: int
    header_bytes: int  # per segment, by address family

    def on_the_wire(self) -> Traffic:
        return Traffic(
            self.payload_sent + self.segments_out * self.header_bytes,
            self.payload_received + self.segments_in * self.header_bytes,
        )


def read_counters(sock: socket.socket) -> TcpCounters | None:
    """The counters of a connected TCP socket; None where the kernel does not give them (before Linux 4.2)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_MAX)
    except OSError:
        return None
    if len(info) < _SEGS_OUT_IN + 8:
        return None
    received = struct.unpack_from("Q", info, _BYTES_RECEIVED)[0]
    segments_out, segments_in = struct.unpack_from("II", info, _SEGS_OUT_IN)
    sent_at = _BYTES_SENT if len(info) >= _BYTES_SENT + 8 else _BYTES_ACKED
    sent = struct.unpack_from("Q", info, sent_at)[0]
    return TcpCounters(sent, received, segments_out, segments_in, _HEADER_BYTES.get(sock.family, 52))


class SocketMeter:
    """Counts one connection's traffic in portions: `take()` gives what moved since the last take."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock.dup()
        self._taken = Traffic()

    def take(self) -> Traffic:
        if self._sock is None:
            return Traffic()
        counters = read_counters(self._sock)
        if counters is None:
            return Traffic()
        now = counters.on_the_wire()
        portion, self._taken = now - self._taken, now
        return portion

    def close(self) -> Traffic:
        """The last portion; the duplicate descriptor is released (the connection may then end)."""
        portion = self.take()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return portion
