"""A TCP fault proxy on loopback: the bad network between the uplink and the backend, on demand.

`FaultProxy` sits between a client (the gateway's uplink) and a server (the
backend) and forwards bytes, so it serves ws:// and wss:// alike: TLS runs end
to end through it. Faults can be switched at any moment and apply to the
connections already open as well as to new ones:

- pass-through (the start, and what `restore()` returns to);
- `delay(rtt_s)`: every chunk is held for rtt_s / 2 in each direction. Each
  direction is a queue of (due time, chunk) pairs: a chunk is stamped when it
  arrives and released when its time comes, so many chunks are in flight at
  once, as on a long link, and throughput is not capped at one chunk per
  half round trip. Byte order is kept (one FIFO per direction);
- `blackhole()`: a GPRS dead zone. Connections stay open but nothing crosses
  in either direction, not even a FIN or a RST; new connections are accepted
  and swallowed too (their SYN "reached" the proxy but never the server). Only
  a missing answer or a websocket ping timeout can tell a client;
- `reset()`: every open connection is aborted with a RST on both sides
  (SO_LINGER 0), and new connections are reset right after accept;
- `restore()`: back to pass-through with no delay. Connections that were in
  the dead zone stay dead: they are dropped with a RST, as a NAT box or a
  server that forgot the flow answers the first packet that comes back.

`blackhole(source=...)` and `restore(source=...)` apply to the connections
from one client address only (127.0.0.2, say): one of two uplinks bound to
different loopback addresses loses its path while the other keeps it.
`client_hosts` lists the client address of every connection accepted.

The proxy listens on 127.0.0.1 only and connects only to a loopback address
(testing-notes.md: network tests stay on loopback). It stops itself, closing
every connection, when its `async with` block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import socket
import struct
import time
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

_LISTEN_HOST = "127.0.0.1"
_CHUNK = 64 * 1024
# Chunks held per direction: bounds memory under delay and pushes back on the
# sender (the reader waits) instead of buffering without limit.
_QUEUE_CHUNKS = 256
# SO_LINGER on, timeout 0: close() sends a RST instead of a FIN (socket(7)).
_LINGER_RST = struct.pack("ii", 1, 0)

_Chunk = tuple[float, bytes]  # (monotonic due time, data); b"" is the FIN


class Fault(enum.Enum):
    """What the proxy does to traffic beyond adding delay."""

    NONE = "none"
    BLACKHOLE = "blackhole"
    RESET = "reset"


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close the socket with a RST, not a FIN, and drop whatever is still buffered."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


class _Connection:
    """One client connection and, unless it was born in the dead zone, its connection to the target."""

    def __init__(self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = (reader, writer)
        self.host = str(writer.get_extra_info("peername")[0])
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.dead = proxy.fault_for(self.host) is Fault.BLACKHOLE  # once dead, it never forwards again
        self.task: asyncio.Task[None] | None = None

    def writers(self) -> list[asyncio.StreamWriter]:
        return [self.client[1]] + ([self.upstream[1]] if self.upstream else [])

    def abort(self) -> None:
        """RST both sides now and stop forwarding."""
        for writer in self.writers():
            _abort_with_rst(writer)
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        try:
            if not self.dead:
                try:
                    self.upstream = await asyncio.open_connection(self.proxy.target_host, self.proxy.target_port)
                except OSError:
                    # The target refused: the client gets a RST, as it would without the proxy.
                    _abort_with_rst(self.client[1])
                    return
            async with asyncio.TaskGroup() as tg:
                if self.upstream is None:
                    tg.create_task(self._swallow(self.client[0]))
                else:
                    tg.create_task(self._pipe(self.client[0], self.upstream[1], up=True))
                    tg.create_task(self._pipe(self.upstream[0], self.client[1], up=False))
        except* OSError:
            # One side reset or broke: the other side learns it the same way.
            for writer in self.writers():
                _abort_with_rst(writer)
        finally:
            for writer in self.writers():
                writer.close()
            self.proxy._connections.discard(self)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(_CHUNK):
            self.proxy.bytes_swallowed += len(data)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        queue: asyncio.Queue[_Chunk] = asyncio.Queue(_QUEUE_CHUNKS)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive(reader, queue))
            tg.create_task(self._deliver(queue, writer, up=up))

    async def _receive(self, reader: asyncio.StreamReader, queue: asyncio.Queue[_Chunk]) -> None:
        """Stamp each chunk with the time it may leave; the delay in force when it arrives is the one it gets."""
        while True:
            data = await reader.read(_CHUNK)
            if self.dead:
                self.proxy.bytes_swallowed += len(data)
                if not data:
                    return  # the FIN is lost in the dead zone too
                continue
            await queue.put((time.monotonic() + self.proxy.one_way_s, data))
            if not data:
                return

    async def _deliver(self, queue: asyncio.Queue[_Chunk], writer: asyncio.StreamWriter, *, up: bool) -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.dead:
                self.proxy.bytes_swallowed += len(data)  # in flight when the dead zone began: lost
                continue
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()  # half-close, in order after the data
                return
            writer.write(data)
            if up:
                self.proxy.bytes_up += len(data)
            else:
                self.proxy.bytes_down += len(data)
            await writer.drain()


class FaultProxy:
    """Async context manager: a loopback TCP proxy to (target_host, target_port) with switchable faults.

    Counters (bytes delivered, not merely read): `bytes_up` (client to target),
    `bytes_down` (target to client), `bytes_swallowed` (lost in the dead zone),
    `connections_accepted`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        try:
            loopback = ipaddress.ip_address(target_host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"FaultProxy only connects to a loopback IP address, not {target_host!r}")
        if not 0 < target_port < 65536:
            raise ValueError(f"target port {target_port} is not a TCP port")
        self.target_host = target_host
        self.target_port = target_port
        self.fault = Fault.NONE
        self.one_way_s = 0.0  # half the added round-trip time
        self.bytes_up = 0
        self.bytes_down = 0
        self.bytes_swallowed = 0
        self.connections_accepted = 0
        self.client_hosts: list[str] = []
        self._source_faults: dict[str, Fault] = {}  # faults of one client address, over the proxy-wide one
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: set[_Connection] = set()

    # --- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accepted, _LISTEN_HOST, 0)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = [c.task for c in self._connections if c.task is not None]
        for task in tasks:
            task.cancel()  # each connection closes both its sockets (a FIN) on the way out
        await asyncio.gather(*tasks, return_exceptions=True)
        # Last: from Python 3.12 on, wait_closed() also waits for the accepted connections to end.
        await server.wait_closed()

    def fault_for(self, host: str) -> Fault:
        return self._source_faults.get(host, self.fault)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        host = str(writer.get_extra_info("peername")[0])
        self.client_hosts.append(host)
        if self._server is None or self.fault_for(host) is Fault.RESET:
            _abort_with_rst(writer)
            return
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        conn.task = asyncio.get_running_loop().create_task(conn.run())

    # --- where to connect -----------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy is not started; use `async with`")
        return self._port

    def url_for(self, backend_url: str) -> str:
        """The same ws(s)://127.0.0.1:PORT/... URL with the target's port replaced by the proxy's."""
        parts = urlsplit(backend_url)
        if parts.scheme not in ("ws", "wss") or parts.hostname != self.target_host or parts.port != self.target_port:
            raise ValueError(f"{backend_url!r} is not a ws(s):// URL of {self.target_host}:{self.target_port}")
        return urlunsplit(parts._replace(netloc=f"{_LISTEN_HOST}:{self.port}"))

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # --- faults ---------------------------------------------------------------

    def delay(self, rtt_s: float) -> None:
        """Add rtt_s to the round trip (half each way), for chunks arriving from now on; faults stay as they are."""
        if not 0 <= rtt_s < 3600:
            raise ValueError(f"round-trip time {rtt_s} s is out of range")
        self.one_way_s = rtt_s / 2

    def blackhole(self, source: str | None = None) -> None:
        """Enter the dead zone: open connections go silent for good, new ones are accepted and swallowed.

        With `source`, only the connections from that client address."""
        if source is None:
            self.fault = Fault.BLACKHOLE
        else:
            self._source_faults[source] = Fault.BLACKHOLE
        for conn in self._connections:
            if source in (None, conn.host):
                conn.dead = True

    def reset(self) -> None:
        """RST every open connection, and every new one until `restore()`."""
        self.fault = Fault.RESET
        for conn in list(self._connections):
            conn.abort()

    def restore(self, source: str | None = None) -> None:
        """Pass-through with no delay; connections from the dead zone are dropped with a RST.

        With `source`, only that client address's fault ends (the delay stays)."""
        if source is None:
            self.fault = Fault.NONE
            self.one_way_s = 0.0
            self._source_faults.clear()
        else:
            self._source_faults.pop(source, None)
        for conn in list(self._connections):
            if conn.dead and source in (None, conn.host):
                conn.abort()
