"""The control socket: how `charger-gateway status` and the technician's other commands reach the running daemon.

A Unix socket at config `control.socket` (systemd's RuntimeDirectory), mode 0660: the
service's user and the members of its group. Newline-delimited JSON, one request line
per connection, then the answer line
    {"ok": true, "result": ...}  or  {"ok": false, "error": "text", "kind": ...}
where `kind` says what the client can do about it: "request" (the request is wrong),
"device" (the slave answered wrongly or not at all), "unavailable" (the line cannot be
used now) or "internal". `events` with "follow" then streams {"event": {...}} lines until
the client closes.

Pure: parse_request (the protocol), build_status (the status structure from plain data,
alarms included) and find_device (which line, unit timing and timeout a diagnostic
Modbus request gets). Thin I/O: ControlServer, one task in the daemon's TaskGroup, and
`call`/`follow`, the client.

Never in the daemon's way: every client is its own task, with a deadline on its request
line and on every write; a follower that stops reading loses the oldest events
(event_log.FOLLOW_BACKLOG), then its connection. Modbus requests go through the line's
owner task at command priority, before routine polls, so they never collide with polling.
A socket that cannot be made is a warning, and the daemon runs on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import device_probe, history
from gateway.data_usage import budget_bytes, day_key, month_of
from gateway.devprofile import Framing, Profile, Table
from gateway.errors import DeviceError, GatewayError, LineUnavailable, StoreError
from gateway.event_log import RECENT
from gateway.modbus_line import Priority, line_key, meter_line_key
from gateway.modbus_transport import MAX_READ_COUNT, MAX_WRITE_COUNT, SERIAL_UNITS, TCP_UNITS
from gateway.settings import Config
from gateway.technician import BudgetView, ConnectorView, LineView, StatusInput, build_status

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = logging.getLogger("gateway.control_socket")

SOCKET_MODE = 0o660
MAX_REQUEST_BYTES = 64 * 1024
MAX_CLIENTS = 16  # more at once is a runaway script: refused, the daemon's memory is not theirs
REQUEST_TIMEOUT_S = 5.0  # a client that connects and says nothing is dropped after this
WRITE_TIMEOUT_S = 5.0  # a client that stops reading is dropped after this
RETRY_S = 30.0  # a socket that could not be made is tried again this often (quietly)
RECORDED_ALARMS_S = 86_400.0  # status shows the alarms the daemon recorded this long ago or later
DEFAULT_TIMEOUT_S = 1.0  # a diagnostic request to a unit no profile describes
TRIGGERS = ("StatusNotification", "MeterValues")


class RequestError(GatewayError):
    """A request the server cannot carry out as asked (malformed, unknown bus or connector)."""


class ControlSocketError(GatewayError):
    """The control socket cannot be made (its directory missing, no permission, another daemon on it)."""


class DaemonUnavailable(GatewayError):
    """Nothing answers on the control socket: the daemon is not running, or not to us."""


class RequestFailed(GatewayError):
    """The daemon answered the request with an error."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- the protocol (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class ModbusRequest:
    action: str  # read | write
    bus: str  # a bus name, or a line name as status shows it (lan/192.0.2.7:502)
    unit: int
    address: int
    count: int = 1
    values: tuple[int, ...] = ()
    table: Table = Table.HOLDING


@dataclass(frozen=True)
class TriggerRequest:
    message: str
    connector: int | None  # None: connector 0 and every connector


@dataclass(frozen=True)
class EventsRequest:
    last: int
    follow: bool


@dataclass(frozen=True)
class IdentifyRequest:
    pass


Request = StatusRequest | ModbusRequest | TriggerRequest | EventsRequest | IdentifyRequest


def _int(doc: Mapping[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"{key} must be a whole number {low}..{high}, not {value!r}")
    return value


def parse_request(line: bytes) -> Request:
    """One request line -> a request; RequestError says what is wrong with it."""
    try:
        doc = json.loads(line.decode())
    except UnicodeDecodeError:
        raise RequestError("a request line is UTF-8 text") from None
    except ValueError as exc:
        raise RequestError(f"not a JSON request line: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("a request is a JSON object with an op")
    op = doc.get("op")
    if op == "status":
        return StatusRequest()
    if op == "identify":
        return IdentifyRequest()
    if op == "events":
        follow = doc.get("follow", False)
        if not isinstance(follow, bool):
            raise RequestError(f"follow must be true or false, not {follow!r}")
        return EventsRequest(_int(doc, "last", 0, RECENT.capacity, 20), follow)
    if op == "trigger":
        message, connector = doc.get("message", "StatusNotification"), doc.get("connector")
        if message not in TRIGGERS:
            raise RequestError(f"message must be one of {', '.join(TRIGGERS)}, not {message!r}")
        return TriggerRequest(message, None if connector is None else _int(doc, "connector", 0, 255))
    if op == "modbus":
        return _parse_modbus(doc)
    raise RequestError(f"unknown op {op!r}: one of status, modbus, trigger, events, identify")


def _parse_modbus(doc: Mapping[str, Any]) -> ModbusRequest:
    action, bus = doc.get("action"), doc.get("bus")
    if action not in ("read", "write"):
        raise RequestError(f"action must be read or write, not {action!r}")
    if not isinstance(bus, str) or not bus:
        raise RequestError(f"bus must be a bus name, not {bus!r}")
    unit, address = _int(doc, "unit", 0, 255), _int(doc, "address", 0, 0xFFFF)
    if action == "read":
        table = {"holding": Table.HOLDING, "input": Table.INPUT}.get(doc.get("table", "holding"))
        if table is None:
            raise RequestError(f"table must be holding or input, not {doc.get('table')!r}")
        count = _int(doc, "count", 1, MAX_READ_COUNT, 1)
        values: tuple[int, ...] = ()
    else:
        raw = doc.get("values")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_WRITE_COUNT:
            raise RequestError(f"values must be a list of 1..{MAX_WRITE_COUNT} register values")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0xFFFF for v in raw):
            raise RequestError(f"a register holds a whole number 0..65535: {raw!r}")
        values = tuple(raw)
        table, count = Table.HOLDING, len(values)
    if address + count > 0x10000:
        raise RequestError(f"registers {address}..+{count} do not fit in the 0..65535 address space")
    return ModbusRequest(action, bus, unit, address, count, values, table)


def success(result: object) -> dict[str, Any]:
    return {"ok": True, "result": result}


def failure(error: str, kind: str) -> dict[str, Any]:
    return {"ok": False, "error": error, "kind": kind}


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


# --- where a diagnostic request goes (pure) ------------------------------------------------


@dataclass(frozen=True)
class DeviceTarget:
    """The line a diagnostic request goes to, and the timing of the device it addresses."""

    line: str  # a key of the daemon's lines
    unit: int
    timeout_s: float
    gap_s: float
    repeat: int


def _devices(config: Config) -> list[tuple[str, str, int, Profile]]:
    """Every configured slave: (bus, line key, unit, profile), meters included."""
    out = [(c.bus, line_key(config, c), c.unit, config.profile_of(c)) for c in config.connectors]
    for c in config.connectors:
        if c.meter is not None and (profile := config.meter_profile_of(c)) is not None and (key := meter_line_key(config, c)):
            out.append((c.meter.bus, key, c.meter.unit, profile))
    return out


def find_device(config: Config, bus: str, unit: int) -> DeviceTarget:
    """Where a request for `unit` on `bus` goes: a serial bus by name; a TCP device by its line name, or by
    its bus name and the unit of the one configured device on that bus with it. RequestError otherwise."""
    devices = _devices(config)
    buses = {b.name: b for b in config.buses}
    tcp_lines = {key for _, key, _, _ in devices if key not in buses}
    if bus in buses and buses[bus].kind is not Framing.TCP:
        line, bus_name = bus, bus
        if unit not in SERIAL_UNITS:
            raise RequestError(f"unit {unit} is not a slave address on a serial line (1..247)")
    elif bus in buses:
        lines = sorted({key for b, key, u, _ in devices if b == bus and u == unit})
        if not lines:
            units = sorted({f"{u} ({key})" for b, key, u, _ in devices if b == bus})
            raise RequestError(f"bus {bus} is Modbus TCP: UNIT must be the unit of a device configured on it: {', '.join(units) or 'none'}")
        if len(lines) > 1:
            raise RequestError(f"bus {bus} has unit {unit} on several devices: name the line instead, one of {', '.join(lines)}")
        line, bus_name = lines[0], bus
    elif bus in tcp_lines:
        line, bus_name = bus, next(b for b, key, _, _ in devices if key == bus)
        if unit not in TCP_UNITS:
            raise RequestError(f"unit {unit} is not a Modbus TCP unit (0..255)")
    else:
        raise RequestError(f"no bus or line named {bus!r}: one of {', '.join(sorted(buses.keys() | tcp_lines))}")
    bus_settings = buses[bus_name]
    # The device's own timing where a profile describes it; else the most cautious of the line's profiles.
    profiles = [p for _, key, u, p in devices if key == line and u == unit] or [p for _, key, _, p in devices if key == line]
    timeout = bus_settings.request_timeout_s or max((p.request_timeout_s for p in profiles), default=DEFAULT_TIMEOUT_S)
    gap = max((p.inter_frame_delay_s for p in profiles), default=0.0)
    repeat = max((p.repeat for p in profiles), default=1)
    return DeviceTarget(line, unit, timeout, gap, repeat)


# --- the server (thin I/O in the daemon) ---------------------------------------------------------


async def _answers(path: Path) -> bool:
    """Whether something listens on the socket at `path` (another daemon); False for a stale one."""
    try:
        async with asyncio.timeout(2.0):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # it exists but is too busy to accept: alive all the same
    except OSError as exc:
        raise ControlSocketError(f"cannot tell whether another daemon uses {path}: {exc}") from None
    writer.close()
    return True


async def bind_control_socket(path: Path) -> tuple[socket.socket, int]:
    """The bound socket at `path`, mode 0660, ready to listen, and its inode; ControlSocketError when it cannot be made.

    A socket file left by a killed daemon is removed; one another daemon answers on is
    refused, and anything that is not a socket is left alone. The mode is set before
    listen(): until then a connect is refused, so the umask never opens it up.
    """
    if not path.parent.is_dir():
        raise ControlSocketError(f"the directory {path.parent} does not exist")
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket; left alone")
        if await _answers(path):
            raise ControlSocketError(f"another daemon answers on {path}: is charger-gateway running twice?")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.info("removed the stale control socket %s (left by a daemon that was killed)", path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
        inode = os.stat(path).st_ino
    except OSError as exc:
        sock.close()
        raise ControlSocketError(f"cannot make {path}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock, inode


class ControlServer:
    """The daemon's end of the control socket; `run` serves until cancelled and removes the socket then."""

    def __init__(self, daemon: Daemon, path: Path | None = None, *, retry_s: float = RETRY_S) -> None:
        self.daemon = daemon
        self.path = path or daemon.config.control.socket
        self.retry_s = retry_s
        self._started = time.monotonic()
        self._clients = 0
        self._known = device_probe.known_profiles(daemon.config.profiles)  # what a device that is not its model looks like

    async def run(self) -> None:
        """Serve until cancelled; then the socket goes, and every client's connection with it."""
        async with asyncio.TaskGroup() as clients:

            def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                clients.create_task(self._client(reader, writer), name="control client")

            server, inode = await self._listen(accept)
            try:
                await asyncio.get_running_loop().create_future()  # until cancelled
            finally:
                server.close()
                # Only our own socket: a daemon started after us may have replaced it.
                with contextlib.suppress(OSError):
                    if os.stat(self.path).st_ino == inode:
                        self.path.unlink()

    async def _listen(self, accept: Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]) -> tuple[asyncio.Server, int]:
        """Listen, or warn once and try again now and then: the daemon runs on without its socket meanwhile."""
        warned = False
        while True:
            try:
                sock, inode = await bind_control_socket(self.path)
                try:
                    server = await asyncio.start_unix_server(accept, sock=sock, limit=MAX_REQUEST_BYTES)
                except OSError as exc:
                    sock.close()
                    raise ControlSocketError(f"cannot listen on {self.path}: {exc}") from None
                log.info("control socket %s ready", self.path)
                return server, inode
            except ControlSocketError as exc:
                if not warned:
                    log.warning("control socket not made: %s. The daemon runs on without it (status and the other "
                                "technician's commands cannot reach it) and tries again every %g s", exc, self.retry_s)
                warned = True
            await asyncio.sleep(self.retry_s)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: one request, its answer (or stream); nothing a client does escapes this task."""
        try:
            if self._clients >= MAX_CLIENTS:
                await _send(writer, failure(f"busy: {MAX_CLIENTS} clients at once", "unavailable"))
                return
            self._clients += 1
            try:
                await self._serve(reader, writer)
            finally:
                self._clients -= 1
        except (ConnectionError, TimeoutError) as exc:
            log.debug("control socket: client gone: %r", exc)
        except Exception:  # a bug in a request's handling must not take the daemon down
            log.exception("control socket: request failed")
            with contextlib.suppress(ConnectionError, TimeoutError):
                await _send(writer, failure("internal error; see the daemon's log", "internal"))
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                line = await reader.readline()
        except ValueError:  # longer than the stream's limit
            await _send(writer, failure(f"request line longer than {MAX_REQUEST_BYTES} bytes", "request"))
            return
        if not line.strip():
            return  # connected and left, or an empty line
        try:
            request = parse_request(line)
            if isinstance(request, EventsRequest):
                await self._events(request, reader, writer)
                return
            answer = success(await self._answer(request))
        except RequestError as exc:
            answer = failure(str(exc), "request")
        except LineUnavailable as exc:
            answer = failure(str(exc), "unavailable")
        except DeviceError as exc:
            answer = failure(str(exc), "device")
        await _send(writer, answer)

    async def _answer(self, request: Request) -> object:
        if isinstance(request, StatusRequest):
            return build_status(await self.status_input())
        if isinstance(request, ModbusRequest):
            return await self.modbus(request)
        if isinstance(request, TriggerRequest):
            return self.trigger(request)
        if isinstance(request, IdentifyRequest):
            return await self.identify()
        raise RequestError(f"no handler for {request!r}")

    async def _events(self, request: EventsRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Subscribed before the backlog is taken, with no await between: nothing falls in the gap.
        with RECENT.follow() as queue:
            await _send(writer, success([e.to_json() for e in RECENT.recent(request.last)]))
            if not request.follow:
                return
            stream = asyncio.create_task(_stream(queue, writer))
            closed = asyncio.create_task(reader.read(1))  # the client closes (or says anything): the follow ends
            try:
                await asyncio.wait({stream, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stream, closed):
                    task.cancel()
                await asyncio.gather(stream, closed, return_exceptions=True)
            if stream.done() and not stream.cancelled() and (exc := stream.exception()) is not None:
                raise exc

    # --- the operations -----------------------------------------------------------------

    async def status_input(self) -> StatusInput:
        d = self.daemon
        wall, store_problem, pending = d.clock.wall(), None, None
        budgets: list[BudgetView] = []
        recorded: list[history.RecordedAlarm] = []
        try:
            pending = await d.store.pending()
            if d.clock.wall_is_valid():
                month = month_of(day_key(wall))
                for u in d.config.uplinks:
                    if (budget := budget_bytes(u.monthly_budget_mb)) is not None:
                        budgets.append(BudgetView(u.name, month, (await d.store.month_usage(u.name, month)).total, budget))
            recorded = await asyncio.to_thread(history.read_recorded_alarms, d.config.storage.path, wall - RECORDED_ALARMS_S)
        except (StoreError, sqlite3.Error) as exc:
            store_problem = str(exc)
        pollers = {p.settings.id: p for p in d.pollers}
        connectors = [
            ConnectorView(
                c, line_key(d.config, c), d.statuses.get(c.id),
                p.online if (p := pollers.get(c.id)) else None, p.last_reading if p else None,
                d.connectors[c.id].transaction if c.id in d.connectors else None,
            )
            for c in d.config.connectors
        ]
        return StatusInput(
            info=d.config.charge_point, uptime_s=time.monotonic() - self._started, wall=wall, clock_valid=d.clock.wall_is_valid(),
            uplink=d.uplink.status(), modems={name: m.health for name, m in d.modems.items()}, monotonic=time.monotonic(),
            budgets=budgets, connectors=connectors,
            lines=[LineView(name, line.available, line.stats) for name, line in sorted(d.lines.items())],
            pending=pending, uncommitted=d.uncommitted, store_problem=store_problem, recorded=recorded,
        )

    async def modbus(self, request: ModbusRequest) -> dict[str, Any]:
        t = find_device(self.daemon.config, request.bus, request.unit)
        line = self.daemon.lines[t.line]
        try:
            if request.action == "read":
                values = await line.read(
                    t.unit, request.table, request.address, request.count,
                    timeout_s=t.timeout_s, gap_s=t.gap_s, priority=Priority.COMMAND, repeat=t.repeat,
                )
            else:
                # The audit trail: what a technician changed on a slave, and where.
                log.warning("technician writes holding %d = %s on %s unit %d", request.address, list(request.values), t.line, t.unit,
                            extra={"bus": t.line, "unit": t.unit})
                await line.write(
                    t.unit, request.address, request.values, multiple=len(request.values) > 1,
                    timeout_s=t.timeout_s, gap_s=t.gap_s, priority=Priority.COMMAND, repeat=t.repeat,
                )
                values = list(request.values)
        except ValueError as exc:  # what Modbus cannot carry (modbus_transport's checks)
            raise RequestError(str(exc)) from None
        return {"line": t.line, "unit": t.unit, "table": request.table.value, "address": request.address, "values": values}

    def trigger(self, request: TriggerRequest) -> dict[str, Any]:
        d = self.daemon
        known = {c.id for c in d.config.connectors}
        if request.connector is not None and request.connector not in known | {0}:
            raise RequestError(f"no connector {request.connector}: 0 (the charge point) or one of {', '.join(map(str, sorted(known)))}")
        log.info("technician asks for %s of %s", request.message, "every connector" if request.connector is None else f"connector {request.connector}")
        d.trigger(request.message, request.connector)
        return {"message": request.message, "connector": request.connector, "connected": d.uplink.connected.is_set()}

    async def identify(self) -> list[dict[str, Any]]:
        """Every configured slave (and meter) read through its line and judged by its profile's identify checks."""
        d = self.daemon
        jobs = []
        for c in d.config.connectors:
            jobs.append(self._identify_one(c.id, "charger", c.bus, c.unit, d.config.profile_of(c), line_key(d.config, c)))
            if c.meter is not None and (profile := d.config.meter_profile_of(c)) is not None and (key := meter_line_key(d.config, c)):
                jobs.append(self._identify_one(c.id, "meter", c.meter.bus, c.meter.unit, profile, key))
        return list(await asyncio.gather(*jobs))

    async def _identify_one(self, connector: int, role: str, bus: str, unit: int, profile: Profile, line_name: str) -> dict[str, Any]:
        verdict = await device_probe.probe(
            self.daemon.lines[line_name], self.daemon.config.bus(bus), profile, unit, self._known, priority=Priority.COMMAND
        )
        return {"connector": connector, "role": role, "bus": bus, "line": line_name, "unit": unit, "profile": profile.name} | verdict.to_json()


async def _send(writer: asyncio.StreamWriter, message: Mapping[str, Any]) -> None:
    writer.write(encode(message))
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await writer.drain()


async def _stream(queue: asyncio.Queue[Any], writer: asyncio.StreamWriter) -> None:
    while True:
        event = await queue.get()
        await _send(writer, {"event": event.to_json()})


# --- the client (the technician's commands) ---------------------------------------------------------


@contextlib.asynccontextmanager
async def _connection(path: Path, request: Mapping[str, Any]) -> AsyncIterator[asyncio.StreamReader]:
    try:
        async with asyncio.timeout(5.0):
            reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 24)
    except FileNotFoundError:
        raise DaemonUnavailable(f"no control socket at {path}") from None
    except ConnectionRefusedError:
        raise DaemonUnavailable(f"nothing listens on {path} (a socket left by a daemon that stopped?)") from None
    except PermissionError:
        raise DaemonUnavailable(f"permission denied on {path}: run as root or as a member of the daemon's group") from None
    except TimeoutError:
        raise DaemonUnavailable(f"the daemon does not accept connections on {path}") from None
    except OSError as exc:
        raise DaemonUnavailable(f"cannot connect to {path}: {exc.strerror or exc}") from None
    try:
        writer.write(encode(request))
        await writer.drain()
        yield reader
    finally:
        writer.close()


def _decode(line: bytes, path: Path) -> dict[str, Any]:
    if not line:
        raise DaemonUnavailable(f"the daemon closed the connection on {path} without an answer")
    try:
        message = json.loads(line)
    except ValueError:
        raise DaemonUnavailable(f"not an answer from the daemon on {path}: {line[:80]!r}") from None
    if not isinstance(message, dict):
        raise DaemonUnavailable(f"not an answer from the daemon on {path}: {line[:80]!r}")
    return message


def _result(message: dict[str, Any]) -> Any:
    if message.get("ok") is not True:
        raise RequestFailed(str(message.get("error", "no reason given")), str(message.get("kind", "internal")))
    return message.get("result")


async def call(path: Path, request: Mapping[str, Any], timeout_s: float = 30.0) -> Any:
    """One request and its result; DaemonUnavailable when nothing answers, RequestFailed when the daemon says no."""
    try:
        async with asyncio.timeout(timeout_s), _connection(path, request) as reader:
            return _result(_decode(await reader.readline(), path))
    except TimeoutError:
        raise DaemonUnavailable(f"the daemon did not answer within {timeout_s:.0f} s on {path}") from None


async def follow(path: Path, request: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The backlog of an `events` request, then each event as it comes, until the daemon goes or the caller stops."""
    async with _connection(path, request) as reader:
        async with asyncio.timeout(30.0):
            backlog = _result(_decode(await reader.readline(), path))
        for event in backlog:
            yield event
        while request.get("follow"):
            message = _decode(await reader.readline(), path)
            if isinstance(message.get("event"), dict):
                yield message["event"]
