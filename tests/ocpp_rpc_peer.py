"""The independent strict OCPP 1.6J backend for interop tests: npm ocpp-rpc in strictMode.

`OcppRpcBackend` runs tests/interop/csms.js under Node as a subprocess and reads
the JSON lines it prints (see the header of csms.js for every record type). Its
OCPP side is code nobody here wrote, which validates every message in both
directions against the official OCPP 1.6 JSON schemas, so a test that passes
against it proves more than one that passes against our own backend.

What ocpp-rpc 2.2.1 strict mode does (read from its lib/client.js, and pinned by
tests/test_ocpp_rpc_peer.py):

- an invalid CALL from the charge point: event 'strictValidationFailure'
  (outbound=false, isCall=true), the handler is NOT run, and a CALLERROR goes
  back whose code comes from the failed JSON-schema keyword ("required" ->
  OccurrenceConstraintViolation, "type" -> TypeConstraintViolation, ...);
- an invalid CALLRESULT from the charge point to a backend call: the same
  event (outbound=false, isCall=false), and the call fails with that code;
- frames that are not OCPP-J at all: event 'badMessage', and a CALLERROR
  (RpcFrameworkError ...) when the frame looked like a CALL;
- an invalid call or result of our own is refused before it leaves
  (outbound=true); ``skip_validation=True`` sends a call as is.

Requires the npm dependencies: ``npm ci --prefix tests/interop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

INTEROP_DIR = Path(__file__).resolve().parent / "interop"
CSMS_JS = INTEROP_DIR / "csms.js"
INSTALL_HINT = "npm ci --prefix tests/interop"

Record = dict[str, Any]

# How long csms.js gets to close its connections and exit after stdin closes
# before it is sent SIGTERM, then SIGKILL.
_EXIT_GRACE_S = 5.0
_STDERR_KEEP = 64 * 1024


class InteropSetupError(RuntimeError):
    """Node or the npm packages of tests/interop are missing: the peer cannot start."""


class CsmsExited(RuntimeError):
    """csms.js ended while a test still needed it."""


class OcppCallError(Exception):
    """A backend-to-charge-point call failed: the CALLERROR (or timeout, or strict refusal) it got."""

    def __init__(self, code: str, description: str, details: Any = None) -> None:
        self.code = code
        self.description = description
        self.details = details
        super().__init__(f"{code}: {description}")


class OcppRpcBackend:
    """Async context manager around ``node tests/interop/csms.js``, the strict OCPP 1.6J peer."""

    def __init__(
        self,
        port: int = 0,
        *,
        password: str | None = None,
        heartbeat_interval: int = 300,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_ca: Path | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        self._requested_port = port
        self._password = password
        self._heartbeat_interval = heartbeat_interval
        self._tls_cert = tls_cert
        self._tls_key = tls_key
        self._tls_ca = tls_ca
        self._start_timeout = start_timeout
        self.records: list[Record] = []
        self._changed = asyncio.Condition()
        self._proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._stderr = bytearray()
        self._exited = False
        self._ids = itertools.count(1)
        self._port: int | None = None

    # --- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        node = shutil.which("node")
        if node is None:
            raise InteropSetupError("node (Node.js >= 20) is not on PATH; it runs the strict OCPP peer")
        if not (INTEROP_DIR / "node_modules" / "ocpp-rpc" / "package.json").is_file():
            raise InteropSetupError(
                f"npm package ocpp-rpc is not installed in {INTEROP_DIR}; run `{INSTALL_HINT}` first"
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CSMS_")}
        if self._password is not None:
            env["CSMS_PASSWORD"] = self._password
        if self._tls_cert is not None and self._tls_key is not None:
            env["CSMS_TLS_CERT"] = str(self._tls_cert)
            env["CSMS_TLS_KEY"] = str(self._tls_key)
            if self._tls_ca is not None:
                env["CSMS_TLS_CA"] = str(self._tls_ca)
        self._proc = await asyncio.create_subprocess_exec(
            node,
            str(CSMS_JS),
            str(self._requested_port),
            str(self._heartbeat_interval),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_stdout(self._proc.stdout)),
            asyncio.create_task(self._read_stderr(self._proc.stderr)),
        ]
        try:
            listening = await self.wait_for(lambda r: r["type"] == "listening", self._start_timeout)
        except BaseException:
            await self._stop()
            raise
        self._port = int(listening["port"])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            # EOF on stdin asks csms.js to close every connection (code 1001) and exit 0.
            assert proc.stdin is not None
            with contextlib.suppress(ConnectionError):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), _EXIT_GRACE_S)
            except TimeoutError:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), _EXIT_GRACE_S)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        for reader in self._readers:
            await reader

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                record = {"type": "stdout", "text": text}
            if not isinstance(record, dict) or "type" not in record:
                record = {"type": "stdout", "text": text}
            record["received"] = time.monotonic()  # when this side read it: spacing of calls, not wall time
            async with self._changed:
                self.records.append(record)
                self._changed.notify_all()
        async with self._changed:
            self._exited = True
            self._changed.notify_all()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(4096):
            self._stderr += chunk
            del self._stderr[:-_STDERR_KEEP]

    @property
    def stderr(self) -> str:
        """What csms.js wrote to stderr (the last 64 KiB)."""
        return self._stderr.decode("utf-8", errors="replace")

    # --- where to connect -----------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("OcppRpcBackend is not started; use `async with`")
        return self._port

    @property
    def url(self) -> str:
        """Backend URL without the identity; a charge point appends ``/<identity>``."""
        scheme = "wss" if self._tls_cert is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ocpp"

    # --- what happened --------------------------------------------------------

    def of_type(self, kind: str, identity: str | None = None) -> list[Record]:
        """Every record of one type ("connect", "result", ...), optionally for one charge point."""
        return [r for r in self.records if r["type"] == kind and (identity is None or r.get("identity") == identity)]

    def calls(self, method: str | None = None, identity: str | None = None) -> list[Record]:
        """Every CALL the charge point(s) sent, valid or not, in arrival order."""
        return [r for r in self.of_type("call", identity) if method is None or r["method"] == method]

    @property
    def violations(self) -> list[Record]:
        """Every strict-validation failure, whichever side caused it (see each record's ``outbound``)."""
        return self.of_type("violation")

    @property
    def bad_messages(self) -> list[Record]:
        """Frames that were not OCPP-J at all."""
        return self.of_type("bad-message")

    def assert_clean(self) -> None:
        """Fail if a charge point sent anything the OCPP 1.6 schemas or OCPP-J framing refuse."""
        theirs = [v for v in self.violations if not v["outbound"]] + self.bad_messages
        if theirs:
            raise AssertionError("the charge point broke OCPP 1.6J:\n" + "\n".join(json.dumps(r) for r in theirs))

    async def wait_for(self, predicate: Callable[[Record], bool], timeout: float = 10.0) -> Record:
        """The first record (seen already or still to come) for which ``predicate`` is true."""
        checked = 0
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    for record in self.records[checked:]:
                        if predicate(record):
                            return record
                    checked = len(self.records)
                    if self._exited:
                        raise CsmsExited(f"csms.js exited (code {self._proc.returncode if self._proc else None}); "
                                         f"stderr:\n{self.stderr}")
                    await self._changed.wait()
        except TimeoutError:
            tail = "\n".join(json.dumps(r)[:300] for r in self.records[-10:])
            raise TimeoutError(f"no matching csms.js record within {timeout} s; last records:\n{tail}") from None

    async def wait_for_calls(
        self, method: str, count: int = 1, identity: str | None = None, timeout: float = 10.0
    ) -> list[Record]:
        """Wait until the charge point has sent ``count`` CALLs of ``method``; return them all."""
        seen: list[Record] = []

        def enough(record: Record) -> bool:
            if record["type"] == "call" and record["method"] == method and identity in (None, record["identity"]):
                seen.append(record)
            return len(seen) >= count

        await self.wait_for(enough, timeout)
        return seen

    # --- commands to csms.js ---------------------------------------------------

    async def _command(self, command: Record, answer_types: tuple[str, ...], timeout: float) -> Record:
        if self._proc is None or self._proc.stdin is None or self._proc.returncode is not None:
            raise CsmsExited(f"csms.js is not running; stderr:\n{self.stderr}")
        command_id = next(self._ids)
        self._proc.stdin.write(json.dumps({**command, "id": command_id}).encode() + b"\n")
        await self._proc.stdin.drain()
        answer = await self.wait_for(
            lambda r: r["type"] in (*answer_types, "command-error") and r.get("id") == command_id, timeout
        )
        if answer["type"] == "command-error":
            raise RuntimeError(f"csms.js refused {command}: {answer['message']}")
        return answer

    async def call(
        self,
        identity: str,
        method: str,
        params: Record,
        *,
        skip_validation: bool = False,
        timeout: float = 10.0,
    ) -> Record:
        """Send a CALL to a connected charge point and return its CALLRESULT payload.

        Raises OcppCallError on a CALLERROR, on a result that fails strict
        validation, on a timeout ("Timeout"), or when the charge point is not
        connected ("NotConnected").
        """
        answer = await self._command(
            {
                "cmd": "call",
                "identity": identity,
                "method": method,
                "params": params,
                "skipValidation": skip_validation,
                "timeoutMs": int(timeout * 1000),
            },
            ("call-result", "call-error"),
            timeout + 5.0,
        )
        if answer["type"] == "call-error":
            error = answer["error"]
            raise OcppCallError(error["code"], error.get("message", ""), error.get("details"))
        result: Record = answer["result"]
        return result

    async def close_connection(self, identity: str, code: int = 1000, *, force: bool = False) -> None:
        """Drop a charge point's websocket (force: without a close handshake), to test reconnects."""
        await self._command({"cmd": "close", "identity": identity, "code": code, "force": force}, ("ack",), 10.0)

    async def configure(
        self,
        *,
        boot_status: str | None = None,
        heartbeat_interval: int | None = None,
        id_tag_status: str | None = None,
        refuse: dict[str, int] | None = None,
        password_hex: str | None = None,
    ) -> None:
        """Change how later BootNotification / Authorize / Start- and StopTransaction are answered.

        refuse={"MeterValues": 2} answers the next two MeterValues with a CALLERROR InternalError.
        password_hex: the Basic-auth password required from now on (the bytes of an AuthorizationKey).
        """
        settings = {
            "bootStatus": boot_status, "heartbeatInterval": heartbeat_interval, "idTagStatus": id_tag_status,
            "refuse": refuse, "passwordHex": password_hex,
        }
        await self._command(
            {"cmd": "configure", **{k: v for k, v in settings.items() if v is not None}}, ("ack",), 10.0
        )
