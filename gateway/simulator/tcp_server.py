"""Simulated Modbus TCP chargers: one asyncio server per configured (host, port), loopback only.

pymodbus's FramerSocket cuts the MBAP frames and encodes the replies. Each
connection is served one request at a time, in order; several connections
may be open at once, as a real device allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Mapping

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse

from gateway.simulator.dispatch import respond_to_frame
from gateway.simulator.errors import SimulatorError
from gateway.simulator.slave import SimSlave

log = logging.getLogger(__name__)

# Modbus messaging on TCP/IP §3.1.3: the MBAP length counts the unit id and the
# PDU, and a PDU is at most 253 bytes.
_MBAP_HEADER = 7
_MAX_MBAP_LENGTH = 254


async def check_loopback(host: str) -> None:
    """Refuse a host that is not on this machine: the simulator must never answer for a real LAN device."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SimulatorError(f"TCP host {host!r} does not resolve: {exc}") from exc
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    if not addresses or not all(a.is_loopback for a in addresses):
        raise SimulatorError(
            f"TCP host {host!r} is not a loopback address ({', '.join(sorted(map(str, addresses)))}): "
            "the simulator only plays devices on this machine; edit the config to use 127.0.0.1"
        )


class TcpSimServer:
    """One listening Modbus TCP address: `open_tcp_server` binds it, `serve` answers until cancelled."""

    def __init__(self, server: asyncio.Server, connections: dict[asyncio.Task[None], asyncio.StreamWriter]) -> None:
        self._server = server
        self._connections = connections
        bound = server.sockets[0].getsockname()
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))

    async def serve(self) -> None:
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        self._server.close()
        # Python 3.11's wait_closed does not wait for open connections, and a
        # cancelled stream handler is logged as an error there: abort the
        # connections instead, so that each handler sees its peer gone and ends.
        for writer in self._connections.values():
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()


async def open_tcp_server(host: str, port: int, slaves: Mapping[int, SimSlave]) -> TcpSimServer:
    """Bind host:port (loopback only) for `slaves` (unit id -> slave); port 0 picks a free port."""
    await check_loopback(host)
    connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a stream callback always runs in a task
        connections[task] = writer
        try:
            await _serve_connection(reader, writer, slaves)
        finally:
            del connections[task]
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(handle, host, port, start_serving=False)
    except OSError as exc:
        raise SimulatorError(f"cannot listen on {host}:{port}: {exc}") from exc
    return TcpSimServer(server, connections)


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slaves: Mapping[int, SimSlave]) -> None:
    framer = FramerSocket(DecodePDU(is_server=True))
    peer = writer.get_extra_info("peername")
    buffer = b""
    while True:
        try:
            data = await reader.read(4096)
        except ConnectionError:
            return
        if not data:
            return
        buffer += data
        while len(buffer) >= _MBAP_HEADER + 1:
            protocol = int.from_bytes(buffer[2:4], "big")
            length = int.from_bytes(buffer[4:6], "big")
            if protocol != 0 or not 2 <= length <= _MAX_MBAP_LENGTH:
                # Not Modbus TCP: there is no way to find the next frame boundary.
                log.warning("TCP client %s sent a bad MBAP header %s: closing", peer, buffer[:7].hex())
                return
            used, unit, tid, pdu = framer.decode(buffer)
            if used == 0:
                break
            buffer = buffer[used:]
            reply = respond_to_frame(slaves, framer.decoder, unit, tid, pdu, time.monotonic(), broadcast=False)
            if reply is None and unit not in slaves:
                # A unit this address does not serve: answer as a Modbus TCP gateway whose
                # target is silent (Modbus application protocol §7, code 0x0B) rather than
                # leave the client hanging until its timeout.
                reply = ExceptionResponse(pdu[0] & 0x7F, ExcCodes.GATEWAY_NO_RESPONSE, device_id=unit, transaction=tid)
            if reply is None:
                continue  # the slave dropped the request unheard (SimSlave.accepts): the device sends nothing either
            writer.write(framer.buildFrame(reply))
            try:
                await writer.drain()
            except ConnectionError:
                return
