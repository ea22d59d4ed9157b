"""Real file servers on loopback for the firmware and diagnostics tests: stdlib HTTP and pyftpdlib FTP.

Each runs in a thread of its own on 127.0.0.1, port chosen by the kernel; the test reads what
was uploaded and sets what is served. Nothing here is a mock: the gateway talks to them over TCP.
`Backend` is the uplink's notify as the firmware and diagnostics runners see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway.store import Store

with warnings.catch_warnings():  # pyftpdlib 2 still imports asyncore/asynchat, deprecated in Python 3.11
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

FTP_USER, FTP_PASSWORD = "gw", "ftp-s3cret"


@dataclass
class HttpFiles:
    """What the HTTP server serves (GET path -> bytes) and what it was sent (PUT path -> bytes)."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location (302)
    uploads: dict[str, bytes] = field(default_factory=dict)
    upload_status: int = 201
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Authorization

    def url(self, path: str, credentials: str = "") -> str:
        return f"http://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}{path}"


def _handler(state: HttpFiles) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
            return None

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            state.requests.append(("GET", self.path, self.headers.get("Authorization")))
            if self.path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self) -> None:  # noqa: N802
            state.requests.append(("PUT", self.path, self.headers.get("Authorization")))
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if 200 <= state.upload_status < 300:
                state.uploads[self.path] = body
            self.send_response(state.upload_status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@contextlib.contextmanager
def http_files() -> Iterator[HttpFiles]:
    state = HttpFiles()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class FtpFiles:
    root: Path  # the FTP user's home: files put here are served, uploads land here
    port: int

    def url(self, path: str, password: str = FTP_PASSWORD) -> str:
        return f"ftp://{FTP_USER}:{password}@127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def ftp_files(root: Path) -> Iterator[FtpFiles]:
    root.mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, str(root), perm="elradfmw")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "passive_ports": None})
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.05, "handle_exit": False}, daemon=True)
    thread.start()
    try:
        yield FtpFiles(root, port)
    finally:
        server.close_all()
        thread.join(timeout=5)


@dataclass
class Backend:
    """The uplink's notify, as the runner sees it: records each notification; answers at once unless told not to."""

    answer: bool = True
    sent: list[tuple[str, str]] = field(default_factory=list)
    unanswered: list[asyncio.Future[None]] = field(default_factory=list)

    def __call__(self, action: str, payload: dict[str, Any]) -> asyncio.Future[None]:
        self.sent.append((action, payload["status"]))
        delivered = asyncio.get_running_loop().create_future()
        if self.answer:
            delivered.set_result(None)
        else:
            self.unanswered.append(delivered)
        return delivered

    def statuses(self, action: str = "FirmwareStatusNotification") -> list[str]:
        return [status for a, status in self.sent if a == action]


async def until(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what or 'the condition'}") from None


async def kept_once_reported(store: Store, key: str, reported: Callable[[dict], object], timeout: float = 5.0) -> dict:
    """The state kept under `key`, once it says the backend answered: it is saved just after the backend has the
    notice, so a test that sees the notice arrive must wait for that save too."""
    async with asyncio.timeout(timeout):
        while True:
            state = await store.load_state(key)
            if isinstance(state, dict) and reported(state):
                return state
            await asyncio.sleep(0.01)
