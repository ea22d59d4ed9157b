"""Downloads and uploads over http, https and ftp, for UpdateFirmware and GetDiagnostics.

Thin I/O: http.client and ftplib are blocking, so each transfer runs in a worker thread
(asyncio.to_thread). An attempt has one deadline, kept on the event loop (the caller's
timeout, config.firmware.download_timeout_s); each socket operation also has its own
(STALL_S: a server that sends nothing for that long is dead). When the deadline passes
or the caller is cancelled (the daemon stops, the backend sent a new request), the
thread's sockets are shut down, which ends any blocking read or write in it at once, and
the caller waits for the thread to finish: no transfer outlives its attempt, and no two
attempts write the same file.

Every error of the libraries (refused connection, DNS, TLS, HTTP status, FTP reply, short
read, deadline) is translated once, here, into TransferError: the callers retry it and
report it, whatever it was. URLs are logged and reported with their password removed
(`redact`). The download is written next to its destination and renamed into place once
complete and flushed to disk: a destination file is always a whole transfer.

http(s): GET follows up to MAX_REDIRECTS redirects (firmware portals redirect to storage);
an upload is an HTTP PUT of the bytes (see gateway.diagnostics for why PUT). User and
password in the URL become Basic auth, and go only to the URL's own host. https checks the
server's certificate against the system's CAs. ftp: passive mode, binary, the URL's user
and password or anonymous.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ftplib
import http.client
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from gateway.errors import GatewayError
from gateway.store import run_to_the_end

STALL_S = 60.0  # the longest a connect, read or write may block before the attempt counts as failed
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
_GET_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PUT_REDIRECTS = frozenset({307, 308})  # the others would turn a PUT into a GET
# scheme://user:password@ (up to the last @ before the path: a password may hold one unencoded)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s/:@]*):[^\s/]*@", re.I)

T = TypeVar("T")


class TransferError(GatewayError):
    """One download or upload attempt failed; another may succeed. The text says why, without secrets."""


def redact(text: str, mask: str = "***") -> str:
    """A URL, or any text, with the password of every URL in it (scheme://user:password@host) replaced, for logs and reports."""
    return _URL_PASSWORD.sub(rf"\g<head>:{mask}@", text)


async def download(url: str, dest: Path, timeout_s: float) -> int:
    """Fetch `url` into `dest` (replaced whole, or not at all); returns its size. TransferError on failure."""
    return await _in_thread(lambda abort: _download(url, dest, abort, min(timeout_s, STALL_S)), timeout_s, redact(url))


async def upload(url: str, data: bytes, timeout_s: float) -> None:
    """Store `data` at `url` (HTTP PUT, or FTP STOR). TransferError on failure."""
    await _in_thread(lambda abort: _upload(url, data, abort, min(timeout_s, STALL_S)), timeout_s, redact(url))


# --- the thread and its deadline ---------------------------------------------------------


class _Abort:
    """Shared between the event loop and one transfer thread: shuts the thread's sockets down on demand."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.requested = False

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            if self.requested:
                raise TransferError("aborted")
            self._sockets.add(sock)

    def untrack(self, sock: socket.socket | None) -> None:
        """Before the thread closes a socket: its descriptor number may be reused at once after."""
        with self._lock:
            self._sockets.discard(sock)  # type: ignore[arg-type]

    def now(self) -> None:
        with self._lock:
            self.requested = True
            for sock in self._sockets:
                # The plain socket's shutdown, also for an SSLSocket (whose own would touch its TLS state
                # from this thread): the blocked recv or send in the transfer thread returns at once.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


async def _in_thread(work: Callable[[_Abort], T], timeout_s: float, what: str) -> T:
    abort = _Abort()
    thread = asyncio.ensure_future(asyncio.to_thread(_translated, work, abort, what))
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(thread)
    except TimeoutError:
        abort.now()
        await run_to_the_end(_finished(thread))
        raise TransferError(f"{what}: not done within {timeout_s:g} s") from None
    except asyncio.CancelledError:
        abort.now()
        await run_to_the_end(_finished(thread))
        raise


async def _finished(thread: asyncio.Future[T]) -> None:
    await asyncio.wait({thread})
    if not thread.cancelled():
        thread.exception()  # seen: the attempt is over and reported by its caller


def _translated(work: Callable[[_Abort], T], abort: _Abort, what: str) -> T:
    """Runs in the worker thread: every error the libraries raise becomes one TransferError."""
    try:
        return work(abort)
    except TransferError as exc:
        raise TransferError(f"{what}: {exc}") from None
    except (OSError, EOFError, ValueError, http.client.HTTPException, ftplib.Error) as exc:
        if abort.requested:
            raise TransferError(f"{what}: aborted") from None
        raise TransferError(f"{what}: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "the server stopped answering"
    if isinstance(exc, ftplib.Error):
        return f"FTP {str(exc).strip()}"
    if isinstance(exc, socket.gaierror):
        return f"host not found ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- the transfers (worker thread) -----------------------------------------------------


def _download(url: str, dest: Path, abort: _Abort, stall_s: float) -> int:
    part = dest.with_name(dest.name + ".part")
    try:
        with part.open("wb") as sink:
            if urlsplit(url).scheme.lower() == "ftp":
                _ftp_transfer(url, "RETR", lambda data: _copy(data, sink, abort), abort, stall_s)
            else:
                _http(url, "GET", None, sink, abort, stall_s)
            sink.flush()
            os.fsync(sink.fileno())
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)
    return dest.stat().st_size


def _upload(url: str, data: bytes, abort: _Abort, stall_s: float) -> None:
    if urlsplit(url).scheme.lower() == "ftp":
        _ftp_transfer(url, "STOR", lambda sock: sock.sendall(data), abort, stall_s)
    else:
        _http(url, "PUT", data, None, abort, stall_s)


def _http(url: str, method: str, body: bytes | None, sink: BinaryIO | None, abort: _Abort, stall_s: float) -> None:
    origin = urlsplit(url)
    redirects = _GET_REDIRECTS if method == "GET" else _PUT_REDIRECTS
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise TransferError(f"cannot fetch {parts.scheme or 'a relative'} URL over http")
        headers = {"User-Agent": "charger-gateway", "Connection": "close"}
        if parts.password is not None and parts.hostname == origin.hostname:
            token = base64.b64encode(f"{unquote(parts.username or '')}:{unquote(parts.password)}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        conn = _connection(parts, stall_s)
        try:
            conn.connect()
            assert conn.sock is not None
            abort.track(conn.sock)
            conn.request(method, _target(parts), body=body, headers=headers)
            response = conn.getresponse()
            if response.status in redirects and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location", ""))
                continue
            if not 200 <= response.status < 300:
                raise TransferError(f"HTTP {response.status} {response.reason}".rstrip())
            if sink is not None:
                _copy(response, sink, abort)
            return
        finally:
            abort.untrack(conn.sock)
            conn.close()
    raise TransferError(f"more than {MAX_REDIRECTS} redirects")


def _connection(parts: SplitResult, stall_s: float) -> http.client.HTTPConnection:
    if parts.hostname is None:
        raise TransferError("no host in the URL")
    if parts.scheme.lower() == "https":
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=stall_s, context=ssl.create_default_context())
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=stall_s)


def _target(parts: SplitResult) -> str:
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _copy(source: http.client.HTTPResponse | socket.socket, sink: BinaryIO, abort: _Abort) -> None:
    while True:
        chunk = source.read(CHUNK) if isinstance(source, http.client.HTTPResponse) else source.recv(CHUNK)
        if abort.requested:
            raise TransferError("aborted")
        if not chunk:
            return
        sink.write(chunk)


def _ftp_login(parts: SplitResult, abort: _Abort, stall_s: float) -> ftplib.FTP:
    if parts.hostname is None:
        raise TransferError("no host in the URL")
    ftp = ftplib.FTP(timeout=stall_s)
    ftp.connect(parts.hostname, parts.port or 21)
    assert ftp.sock is not None
    abort.track(ftp.sock)
    ftp.login(unquote(parts.username or "anonymous"), unquote(parts.password or "anonymous@"))
    ftp.set_pasv(True)
    return ftp


def _ftp_path(parts: SplitResult) -> str:
    # RFC 1738 §3.2.2: the URL path is relative to the login directory; it is sent as one path (dir/file).
    path = unquote(parts.path.lstrip("/"))
    if not path or path.endswith("/"):
        raise TransferError("the ftp URL names no file")
    return path


def _ftp_transfer(url: str, verb: str, move: Callable[[socket.socket], None], abort: _Abort, stall_s: float) -> None:
    """RETR or STOR one file in binary mode; `move` carries the bytes over the data connection."""
    parts = urlsplit(url)
    ftp = _ftp_login(parts, abort, stall_s)
    try:
        ftp.voidcmd("TYPE I")
        data = ftp.transfercmd(f"{verb} {_ftp_path(parts)}")
        abort.track(data)
        try:
            move(data)
        finally:
            abort.untrack(data)
            data.close()
        ftp.voidresp()  # 226: the whole file went across
        with contextlib.suppress(*ftplib.all_errors):
            ftp.quit()
    finally:
        abort.untrack(ftp.sock)
        ftp.close()
