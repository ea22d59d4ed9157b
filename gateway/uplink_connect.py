"""The connection side of an uplink: a socket bound to the chosen interface or source address, the OCPP
websocket over it (for gateway.uplink and the selftest's BootNotification alike), and the failback probe.

The socket is made here rather than by the websocket library so that it can be
bound before it connects (SO_BINDTODEVICE: the route of that interface, whatever
the default route says; or bind() to a source address), and so that its bytes
can be counted (gateway.traffic). SO_BINDTODEVICE needs no privilege since Linux
5.7; on older kernels give the service CAP_NET_RAW or use a source address.
The name lookup is not bound: it goes where the resolver's configuration sends it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect

from gateway.ocpp_link import WEBSOCKET_LOG
from gateway.settings import UplinkSettings
from gateway.traffic import SocketMeter, Traffic
from gateway.uplink_security import describe_tls_failure

SYS_NET = Path("/sys/class/net")
OCPP_SUBPROTOCOL = "ocpp1.6"


def interface_usable(uplink: UplinkSettings, sys_net: Path = SYS_NET) -> bool:
    """False when the uplink's interface is missing or down (a cable pulled, pppd not dialled in)."""
    if uplink.interface is None:
        return True
    try:
        state = (sys_net / uplink.interface / "operstate").read_text().strip()
    except OSError:
        return False
    return state in ("up", "unknown")  # "unknown": lo, ppp and tun devices report no carrier state


def host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "wss" else 80)


async def open_socket(host: str, port: int, uplink: UplinkSettings, timeout_s: float) -> socket.socket:
    """A TCP connection to host:port through `uplink`; OSError or TimeoutError when it cannot be made."""
    loop = asyncio.get_running_loop()
    family = socket.AF_UNSPEC
    if uplink.source_address is not None:
        family = socket.AF_INET6 if ipaddress.ip_address(uplink.source_address).version == 6 else socket.AF_INET
    async with asyncio.timeout(timeout_s):
        addresses = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        if not addresses:
            raise OSError(f"{host} has no address of the uplink's family")
        last: OSError | None = None
        for af, kind, proto, _, address in addresses:
            sock = socket.socket(af, kind, proto)
            try:
                sock.setblocking(False)
                if uplink.interface is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, uplink.interface.encode())
                if uplink.source_address is not None:
                    sock.bind((uplink.source_address, 0))
                await loop.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
            except BaseException:
                sock.close()
                raise
        assert last is not None
        raise last


async def connect_websocket(
    url: str, sock: socket.socket, tls: ssl.SSLContext | None, headers: Mapping[str, str], *, compression: bool, timeout_s: float
) -> ClientConnection:
    """The OCPP 1.6J websocket to `url` over `sock` (from open_socket); websockets' errors as they come.

    `headers`: the Basic-auth header, or none. The TLS and websocket handshakes get `timeout_s`.
    Whether this returns or raises, the event loop's transport owns `sock` and closes it: closing
    it as well would free its descriptor number while the transport still holds it registered.
    The caller checks that the backend agreed to OCPP_SUBPROTOCOL (ClientConnection.subprotocol).
    """
    return await connect(
        url,
        sock=sock,
        ssl=tls,
        server_hostname=host_and_port(url)[0] if tls is not None else None,
        subprotocols=[websockets.Subprotocol(OCPP_SUBPROTOCOL)],
        additional_headers=headers,
        compression="deflate" if compression else None,
        ping_interval=None,  # the uplink's own keepalive pings only when the link is quiet (Uplink._keepalive)
        open_timeout=timeout_s,
        # A close handshake cannot cross a dead GPRS link; do not wait the default 10 s for one.
        close_timeout=2,
        logger=WEBSOCKET_LOG,
    )


Recorder = Callable[[str, Traffic], Awaitable[None]]


async def probe(url: str, uplink: UplinkSettings, tls: ssl.SSLContext | None, timeout_s: float, record: Recorder) -> str | None:
    """Can the backend be reached through `uplink`? None when yes, else why not.

    A TCP connection, and with wss the TLS handshake too (the backend checked as for the real
    link), then closed. No websocket: a backend would take a second connection with our
    identity for a reconnect and drop the link in use. A plain-ws lab backend is only
    reached at TCP level.
    """
    host, port = host_and_port(url)
    try:
        sock = await open_socket(host, port, uplink, timeout_s)
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    meter = SocketMeter(sock)
    try:
        if tls is None:
            sock.close()
            return None
        # From here the event loop's transport owns the socket and closes it, also when the handshake fails.
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock, ssl=tls, server_hostname=host)
        transport.close()
        return None
    except ssl.SSLError as exc:
        return describe_tls_failure(exc)
    except (OSError, TimeoutError) as exc:
        return f"TLS handshake: {type(exc).__name__}: {exc}"
    finally:
        await record(uplink.name, meter.close())
