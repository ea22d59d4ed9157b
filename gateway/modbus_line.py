"""The Modbus bus layer: one owner task per RS-485 line and per Modbus TCP endpoint.

Exactly one task (`ModbusLine.run`) holds a serial port or TCP connection
(EVerest's SerialCommHub model; STYLE.md §3). Pollers and backend commands
call `read` / `write` / `write_coil`, which put a request in the line's
priority queue and wait for its result; the owner runs the requests strictly
one at a time, commands before routine polls, each after its inter-frame
silence and under its own deadline. There is no lock to fight over and no retry inside the
line, so one dead slave costs its timeout per request and nothing more
(unlike several tasks sharing a client behind a lock: pymodbus #1606, #1784,
#2432). Retrying is the caller's policy. What is not a retry: a device whose
profile says `repeat` gets each request that many times back to back, and
only the last answer counts (ABL eMH, see `_execute`).

All lines and TCP endpoints of a config run side by side in the daemon's
asyncio.TaskGroup; `build_lines` makes them, `line_key` says which one a
connector uses.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import enum
import itertools
import logging
import math
from collections.abc import Sequence
from typing import Protocol

from pymodbus.pdu import ModbusPDU

from gateway.backoff import Backoff
from gateway.devprofile import Framing, Profile, ReadBlock, Table
from gateway.errors import (
    ConfigError,
    ConfigIssue,
    DeviceError,
    DeviceException,
    DeviceTimeout,
    FrameError,
    LineUnavailable,
)
from gateway.modbus_transport import (
    SERIAL_UNITS,
    TCP_UNITS,
    ReplyReader,
    SerialLink,
    TcpLink,
    check_reply,
    describe,
    new_framer,
    read_request,
    write_coil_request,
    write_request,
)
from gateway.settings import BusSettings, Config, ConnectorSettings
from gateway.wiretime import char_time_s, t35_s

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    """Queue order on a line: lower goes first, FIFO within a priority."""

    COMMAND = 0  # backend commands, control writes
    POLL = 1  # routine reads


@dataclasses.dataclass
class LineStats:
    """Counters of one line since it was made, for the benchmark and the technician's status."""

    # Every send counts, a repeated request's earlier sends included: these describe the wire.
    requests: int = 0  # transactions put on the wire
    timeouts: int = 0  # DeviceTimeout
    frame_errors: int = 0  # FrameError
    exceptions: int = 0  # DeviceException (the slave answered with an exception code)
    busy_s: float = 0.0  # time the line spent on transactions, inter-frame silence included


@dataclasses.dataclass(order=True)
class _Request:
    priority: Priority
    seq: int  # FIFO within a priority; also keeps a requeued request in its place
    pdu: ModbusPDU = dataclasses.field(compare=False)
    timeout_s: float = dataclasses.field(compare=False)
    gap_s: float = dataclasses.field(compare=False)
    repeat: int = dataclasses.field(compare=False)  # sends of the same request; the last answer counts
    future: asyncio.Future[list[int]] = dataclasses.field(compare=False)


class _Link(Protocol):
    """What the owner needs of an open port or connection (modbus_transport.SerialLink, TcpLink)."""

    @property
    def usable(self) -> bool: ...

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes: ...

    def discard_input(self) -> None: ...

    def close(self) -> None: ...


class _Reopen(Exception):
    """The link can no longer be trusted (closed by the peer, out of step): the owner reopens it."""

    def __init__(self, reason: str, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered  # the device did send something: no need to back off


class _Failed(Exception):
    """One send of a request failed on the device's side (no reply, exception, garbled reply)."""

    def __init__(self, error: DeviceError, out_of_step: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.out_of_step = out_of_step  # TCP bytes left unread or unmatched: the stream cannot be trusted


class ModbusLine(abc.ABC):
    """One serial bus or one TCP endpoint, served by its owner task `run()`."""

    def __init__(
        self,
        name: str,
        framing: Framing,
        units: range,
        *,
        min_gap_s: float,
        char_s: float,
        reopen_min_s: float,
        reopen_max_s: float,
    ) -> None:
        self.name = name
        self.framing = framing
        self._units = units
        self._framer = new_framer(framing)
        self._min_gap_s = min_gap_s  # t3.5 on serial lines
        self._char_s = char_s  # wire time of one character; 0 on TCP
        self._backoff = Backoff(reopen_min_s, reopen_max_s)
        self._queue: asyncio.PriorityQueue[_Request] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._tids = itertools.count()
        self._stats = LineStats()
        # Why the line is unavailable; requests fail at once meanwhile. None before the
        # first run() too, so callers may queue while the daemon's TaskGroup starts up.
        self._down: str | None = None
        self._open = False
        self._running = False
        self._quiet_since = 0.0  # loop time the line last fell silent
        self._closing = False  # finish() was called: no new transaction starts
        self._idle = asyncio.Event()  # clear while a transaction is on the wire
        self._idle.set()

    # --- the callers' side ---------------------------------------------------

    @property
    def stats(self) -> LineStats:
        """A snapshot of the counters."""
        return dataclasses.replace(self._stats)

    @property
    def available(self) -> bool:
        """True while the port or connection is open."""
        return self._open

    async def read(
        self,
        unit: int,
        table: Table,
        address: int,
        count: int,
        *,
        timeout_s: float,
        gap_s: float = 0.0,
        priority: Priority = Priority.POLL,
        repeat: int = 1,
    ) -> list[int]:
        """Read `count` registers of `table` from `address` (FC04 input, FC03 holding), or coils (FC01, 0/1 each)."""
        pdu = read_request(unit, table, address, count, self._units)
        return await self._submit(pdu, timeout_s, gap_s, priority, repeat)

    async def write(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        multiple: bool,
        timeout_s: float,
        gap_s: float = 0.0,
        priority: Priority = Priority.COMMAND,
        repeat: int = 1,
    ) -> None:
        """Write registers from `address`: FC16 if `multiple`, else FC06 (exactly one value)."""
        await self._submit(write_request(unit, address, values, multiple, self._units), timeout_s, gap_s, priority, repeat)

    async def write_coil(
        self,
        unit: int,
        address: int,
        on: bool,
        *,
        timeout_s: float,
        gap_s: float = 0.0,
        priority: Priority = Priority.COMMAND,
        repeat: int = 1,
    ) -> None:
        """Switch the coil at `address` on or off (FC05)."""
        await self._submit(write_coil_request(unit, address, on, self._units), timeout_s, gap_s, priority, repeat)

    async def _submit(self, pdu: ModbusPDU, timeout_s: float, gap_s: float, priority: Priority, repeat: int) -> list[int]:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")
        if not (math.isfinite(gap_s) and gap_s >= 0):
            raise ValueError(f"gap_s must be a non-negative number of seconds, not {gap_s!r}")
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be a whole number of sends, at least 1, not {repeat!r}")
        if self._down is not None or self._closing:
            raise LineUnavailable(f"line {self.name}: {'stopping' if self._closing else self._down}")
        request = _Request(
            Priority(priority), next(self._seq), pdu, timeout_s, gap_s, repeat, asyncio.get_running_loop().create_future()
        )
        self._queue.put_nowait(request)
        # Cancelling the caller cancels the future: a queued request is then skipped,
        # one on the wire is finished by the owner and its answer dropped.
        return await request.future

    async def finish(self) -> None:
        """Let the transaction on the wire end, and start no other (SIGTERM). A frame cut off midway
        would leave the slaves of the line mid-answer, and a write half-applied."""
        self._closing = True
        self._fail_all("stopping")
        await self._idle.wait()

    # --- the owner task --------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> _Link:
        """Open the port or connection; LineUnavailable if it cannot be."""

    async def run(self) -> None:
        """Own the line until cancelled: open it, serve requests one at a time, reopen after failures."""
        if self._running:
            raise RuntimeError(f"line {self.name} already has an owner task")
        self._running = True
        self._down = None
        try:
            while True:
                try:
                    link = await self._connect()
                except LineUnavailable as exc:
                    self._went_down(str(exc))
                    await asyncio.sleep(next(self._backoff))
                    continue
                self._came_up()
                try:
                    proven = await self._serve(link)
                except Exception:  # a bug: keep serving the other devices, but say so
                    log.exception("line %s: unexpected error, reopening", self.name, extra={"bus": self.name})
                    proven = False
                finally:
                    self._open = False
                    link.close()
                if not proven:  # a peer that accepts and drops at once must not be hammered
                    await asyncio.sleep(next(self._backoff))
        finally:
            self._running = False
            self._open = False
            self._down = "stopped"
            self._fail_all("stopped")

    def _went_down(self, reason: str) -> None:
        # Logged once per outage, not once per attempt (Home Assistant coordinator style).
        if self._down is None:
            log.warning("line %s unavailable: %s", self.name, reason, extra={"bus": self.name})
        else:
            log.debug("line %s still unavailable: %s", self.name, reason)
        self._down = reason
        self._fail_all(reason)

    def _came_up(self) -> None:
        if self._down is not None:
            log.info("line %s recovered", self.name, extra={"bus": self.name})
        self._down = None
        self._open = True
        self._quiet_since = asyncio.get_running_loop().time()

    def _fail_all(self, reason: str) -> None:
        """Fail every waiting caller at once rather than leave it hanging on a line that is gone."""
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.future.done():
                request.future.set_exception(LineUnavailable(f"line {self.name}: {reason}"))

    async def _serve(self, link: _Link) -> bool:
        """Run queued requests on `link` until it breaks; True if a device answered on it."""
        proven = False
        while True:
            request = await self._queue.get()
            if request.future.done():  # the caller was cancelled while the request waited
                continue
            if not link.usable:
                self._queue.put_nowait(request)  # same priority and seq: it keeps its place
                log.debug("line %s: link closed, reopening", self.name)
                return proven
            if self._closing:
                self._deliver(request, LineUnavailable(f"line {self.name}: stopping"))
                continue
            self._idle.clear()
            try:
                answered = await self._execute(link, request)
            except _Reopen as exc:
                log.debug("line %s: %s, reopening", self.name, exc)
                return proven or exc.answered
            finally:
                self._idle.set()
            if answered:
                proven = True
                self._backoff.reset()

    async def _execute(self, link: _Link, request: _Request) -> bool:
        """One request, sent `repeat` times; delivers the last outcome to the caller. True if the device answered.

        Why send the same request again and keep only the last answer: an ABL
        eMH controller in "bus idle" (state E3) wakes on a frame and drops it,
        so evcc's get()/set() send every request twice and use the second
        answer (modbus-register-maps.md §2). The earlier sends' outcomes
        (reply, timeout, exception, garbled frame) are therefore discarded.
        """
        answered = False
        try:
            for send in range(request.repeat):
                if send and request.future.done():  # the caller gave up: sending again helps nobody
                    return answered
                last = send == request.repeat - 1
                try:
                    result = await self._transact(link, request)
                except LineUnavailable as exc:
                    self._deliver(request, exc)
                    raise _Reopen(str(exc), answered) from exc
                except _Failed as failed:
                    error = failed.error
                    self._count(error)
                    answered = answered or not isinstance(error, DeviceTimeout)
                    if failed.out_of_step:
                        # A TCP stream out of step cannot carry the next send either.
                        self._deliver(request, error)
                        raise _Reopen(f"stream out of step after: {error}", answered) from error
                    if last:
                        self._deliver(request, error)
                    continue
                answered = True
                if last:
                    self._deliver(request, result)
        except _Reopen:
            raise
        except BaseException as exc:  # the owner was cancelled, or a bug: the caller must not hang
            why = "stopped" if isinstance(exc, asyncio.CancelledError) else f"transaction aborted: {exc!r}"
            self._deliver(request, LineUnavailable(f"line {self.name}: {why}"))
            raise
        return answered

    async def _transact(self, link: _Link, request: _Request) -> list[int]:
        """One send of the request and its reply, after the inter-frame silence and under its own deadline.

        Raises LineUnavailable when the link broke and _Failed for what the device did (or did not) answer.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        pdu = request.pdu
        if self.framing is Framing.TCP:
            # A fresh MBAP transaction id on every send, repeats included, so that a late
            # answer to an earlier send is told apart from this one's (1..65535).
            pdu.transaction_id = next(self._tids) % 0xFFFF + 1
        frame = self._framer.buildFrame(pdu)
        reader = ReplyReader(self._framer, pdu)
        try:
            # The silence before the request: the device's inter-frame delay, at least
            # t3.5 on a serial line (Modbus over serial line §2.5.1.1).
            ready = self._quiet_since + max(request.gap_s, self._min_gap_s)
            while (wait := ready - loop.time()) > 0:
                await asyncio.sleep(wait)
            # A late reply to an earlier request must not pass for the answer to this one.
            link.discard_input()
            self._stats.requests += 1
            on_wire_s = len(frame) * self._char_s
            try:
                async with asyncio.timeout(on_wire_s + request.timeout_s) as deadline:
                    await link.send(frame)
                    # The response timeout runs from the end of the request on the wire.
                    deadline.reschedule(loop.time() + on_wire_s + request.timeout_s)
                    while (reply := reader.feed(await link.receive())) is None:
                        pass
                return check_reply(pdu, reply)
            except TimeoutError:
                raise self._no_reply(request, reader) from None
        except LineUnavailable:
            raise
        except DeviceError as exc:
            out_of_step = self.framing is Framing.TCP and (isinstance(exc, FrameError) or reader.pending > 0)
            raise _Failed(exc, out_of_step) from exc
        finally:
            self._quiet_since = loop.time()
            self._stats.busy_s += self._quiet_since - started

    def _no_reply(self, request: _Request, reader: ReplyReader) -> DeviceError:
        what = f"{describe(request.pdu)} on line {self.name}: no reply within {request.timeout_s} s"
        if reader.stray is not None:
            return FrameError(f"{what}, only {reader.stray}")
        if reader.pending:
            return DeviceTimeout(f"{what} ({reader.pending} bytes of an incomplete reply)")
        return DeviceTimeout(what)

    def _count(self, exc: DeviceError) -> None:
        if isinstance(exc, DeviceTimeout):
            self._stats.timeouts += 1
        elif isinstance(exc, FrameError):
            self._stats.frame_errors += 1
        elif isinstance(exc, DeviceException):
            self._stats.exceptions += 1

    @staticmethod
    def _deliver(request: _Request, outcome: list[int] | BaseException) -> None:
        if request.future.done():  # the caller gave up; the transaction was still finished
            return
        if isinstance(outcome, BaseException):
            request.future.set_exception(outcome)
        else:
            request.future.set_result(outcome)


async def read_profile(
    line: ModbusLine, profile: Profile, unit: int, *, timeout_s: float, gap_s: float | None = None, priority: Priority = Priority.POLL
) -> dict[ReadBlock, list[int]]:
    """Every block of a profile, each from its own unit where it names one (Alfen: the station's, 200),
    with the profile's repeats; `gap_s` defaults to the profile's inter-frame delay."""
    gap = profile.inter_frame_delay_s if gap_s is None else gap_s
    return {
        block: await line.read(
            unit if block.unit is None else block.unit, block.table, block.address, block.count,
            timeout_s=timeout_s, gap_s=gap, priority=priority, repeat=profile.repeat,
        )
        for block in profile.blocks
    }


class SerialLine(ModbusLine):
    """An RS-485 bus, RTU or ASCII framing, with the port settings of the config (parity included)."""

    def __init__(self, bus: BusSettings, *, reopen_min_s: float = 1.0, reopen_max_s: float = 30.0) -> None:
        if bus.kind not in (Framing.RTU, Framing.ASCII):
            raise ValueError(f"bus {bus.name}: a serial line needs kind rtu or ascii, not {bus.kind.value}")
        if not bus.port:
            raise ValueError(f"bus {bus.name}: a serial line needs a port")
        # Start bit + data bits + parity bit + stop bits: the real character time, which
        # extends each deadline by the time the request itself takes on the wire.
        bits = 1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits
        super().__init__(
            bus.name,
            bus.kind,
            SERIAL_UNITS,
            min_gap_s=t35_s(bus.baudrate),
            char_s=char_time_s(bus.baudrate, bits),
            reopen_min_s=reopen_min_s,
            reopen_max_s=reopen_max_s,
        )
        self.bus = bus

    async def _connect(self) -> SerialLink:
        b = self.bus
        assert b.port is not None  # checked in __init__
        return SerialLink.open(b.port, b.baudrate, b.bytesize, b.parity, b.stopbits)


class TcpEndpoint(ModbusLine):
    """One Modbus TCP server (host, port): a device or a TCP-to-RTU gateway, one transaction at a time.

    Cheap gateways choke on pipelined requests, so even TCP waits for each reply.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = 5.0,
        reopen_min_s: float = 1.0,
        reopen_max_s: float = 30.0,
    ) -> None:
        super().__init__(
            name, Framing.TCP, TCP_UNITS,
            min_gap_s=0.0, char_s=0.0, reopen_min_s=reopen_min_s, reopen_max_s=reopen_max_s,
        )
        self.host = host
        self.port = port
        self._connect_timeout_s = connect_timeout_s

    async def _connect(self) -> TcpLink:
        return await TcpLink.open(self.host, self.port, self._connect_timeout_s)


def line_key(config: Config, connector: ConnectorSettings) -> str:
    """The line a connector's slave is on: the bus name, or "bus/host:port" on a TCP bus."""
    return _key(config, connector.bus, connector.host, connector.port)


def meter_line_key(config: Config, connector: ConnectorSettings) -> str | None:
    """The line a connector's own meter is on (None: it has none); it may be another bus than the charger's."""
    m = connector.meter
    return None if m is None else _key(config, m.bus, m.host, m.port)


def _key(config: Config, bus_name: str, host: str | None, port: int) -> str:
    if config.bus(bus_name).kind is not Framing.TCP:
        return bus_name
    host = host or ""
    return f"{bus_name}/[{host}]:{port}" if ":" in host else f"{bus_name}/{host}:{port}"


def build_lines(config: Config) -> dict[str, ModbusLine]:
    """Every line of the config, by line_key: one per serial bus, one per TCP endpoint in use (meters' too)."""
    issues: list[ConfigIssue] = []
    lines: dict[str, ModbusLine] = {}

    def issue(path: str, message: str) -> None:
        issues.append(ConfigIssue(str(config.source), None, path, message))
    for i, bus in enumerate(config.buses):
        if bus.kind is Framing.TCP:
            continue
        if not bus.port:
            issue(f"buses[{i}].port", f"serial bus {bus.name} needs a port")
            continue
        lines[bus.name] = SerialLine(bus)
    known = {b.name for b in config.buses}
    devices = [(f"connectors[{i}]", c.bus, c.host, c.port) for i, c in enumerate(config.connectors)]
    devices += [(f"connectors[{i}].meter", m.bus, m.host, m.port) for i, c in enumerate(config.connectors) if (m := c.meter)]
    for path, bus_name, host, port in devices:
        if bus_name not in known:
            issue(f"{path}.bus", f"no bus named {bus_name}")
            continue
        if config.bus(bus_name).kind is not Framing.TCP:
            continue
        if not host:
            issue(f"{path}.host", "a tcp bus needs a host")
            continue
        key = _key(config, bus_name, host, port)
        if key not in lines:
            lines[key] = TcpEndpoint(key, host, port)
    if issues:
        raise ConfigError(issues)
    return lines
