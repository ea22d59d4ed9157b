"""The GPRS/LTE modem's health, read from its AT port: signal, registration, operator, ICCID and IMSI.

`ModemMonitor` is the thin I/O around gateway.modem_replies (the parsers and
`ModemHealth`): it opens the AT port for one poll at a time.

Why the AT port is left alone between polls: ModemManager (mmcli) or a
technician's terminal may need it, and the PPP data link runs on another port
that is never opened here. Only query commands are sent: nothing that changes
the modem's state (no ATZ, AT&F, AT+CFUN, ATH, not even ATE0: echo is
tolerated instead of turned off).
"""

from __future__ import annotations

import asyncio
import logging
import termios
import time
from collections.abc import Callable
from typing import TypeVar

import serial

from gateway.errors import LineUnavailable
from gateway.modbus_transport import SerialLink
from gateway.modem_replies import (
    ModemHealth,
    PollResult,
    describe_failure,
    final_result,
    ids_due,
    parse_cgreg,
    parse_cops,
    parse_creg,
    parse_csq,
    parse_iccid,
    parse_imsi,
    port_problem,
)
from gateway.settings import ModemSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

# --- the port -----------------------------------------------------------------------------------

# Tried in this order until one gives the ICCID; the one that did is tried first afterwards.
ICCID_COMMANDS = ("AT+CCID", "AT+ICCID", "AT+QCCID")
# A reply this long is noise on the line, not an answer to a query; stop reading it.
_MAX_REPLY = 4096


class ModemMonitor:
    """Polls one modem's AT port every poll_interval_s; `health` is what is known.

    Serial I/O runs on the event loop (the project's SerialLink, pyserial's fd
    with add_reader), not in a thread: a cancelled poll closes the port at once,
    where a thread blocked in read() would hold it until its timeout.
    """

    def __init__(self, settings: ModemSettings, *, reread_ids_every: int = 12) -> None:
        self.settings = settings
        self.reread_ids_every = reread_ids_every
        self._health = ModemHealth()
        self._iccid_command: str | None = None  # the spelling this modem answered
        self._polls_since_ids: int | None = None  # None: read them at the next poll
        self._lock = asyncio.Lock()  # a poll_once() during a poll of run() waits for it, instead of finding the port locked
        self.polled = asyncio.Event()  # set once the first poll is over, whatever it found

    @property
    def health(self) -> ModemHealth:
        return self._health

    async def run(self) -> None:
        """Poll now and then every poll_interval_s until cancelled; modem trouble shows in `health`, never as an exception."""
        while True:
            started = time.monotonic()
            await self.poll_once()
            await asyncio.sleep(max(0.0, started + self.settings.poll_interval_s - time.monotonic()))

    async def poll_once(self) -> ModemHealth:
        """Open the AT port, ask, close it; the health after this poll."""
        async with self._lock:
            before = self._health
            result = await self._poll()
            self._health = after = before.merged(result, time.monotonic())
            self.polled.set()
        port = self.settings.at_port
        if after.problem != before.problem:
            if after.problem is None:
                log.info("modem %s: recovered: %s", port, after.summary())
            else:
                log.warning("modem %s: %s", port, after.problem)
        if after.registration_text() != before.registration_text():
            log.info("modem %s: %s", port, after.summary())
        return after

    async def _poll(self) -> PollResult:
        path = self.settings.at_port
        try:
            # exclusive: flock, so that a second poller of this port (a second
            # daemon by mistake) fails to open instead of reading our answers.
            port = serial.Serial(port=path, baudrate=self.settings.baudrate, bytesize=8, parity="N", stopbits=1, timeout=0, write_timeout=0, exclusive=True)
        except (serial.SerialException, OSError, termios.error, ValueError) as exc:
            self._polls_since_ids = None  # the modem may come back re-enumerated, with another SIM
            return PollResult(problems=[port_problem(path, exc)])
        link = SerialLink(port)
        result = PollResult()
        try:
            await self._query(link, result)
        except LineUnavailable as exc:  # unplugged mid-poll: what was read before stays
            self._polls_since_ids = None
            result.problems.append(f"AT port {path}: lost ({str(exc).removeprefix(f'{path}: ')})")
        finally:
            link.close()
        return result

    async def _query(self, link: SerialLink, result: PollResult) -> None:
        result.signal = await self._ask(link, "AT+CSQ", parse_csq, result.problems)
        result.cs = await self._ask(link, "AT+CREG?", parse_creg, result.problems)
        result.ps = await self._ask(link, "AT+CGREG?", parse_cgreg, result.problems)
        result.operator = await self._ask(link, "AT+COPS?", parse_cops, result.problems)
        if self._polls_since_ids is not None:
            self._polls_since_ids += 1
        if not ids_due(self._health, result.cs, result.ps, self._polls_since_ids, self.reread_ids_every):
            return
        result.iccid = await self._read_iccid(link, result.problems)
        result.imsi = await self._ask(link, "AT+CIMI", parse_imsi, result.problems)
        self._polls_since_ids = 0 if result.iccid is not None and result.imsi is not None else None

    async def _ask(self, link: SerialLink, command: str, parse: Callable[[bytes], T | None], problems: list[str]) -> T | None:
        reply = await self._command(link, command)
        value = None if reply is None else parse(reply)
        if value is None:
            problems.append(f"{command}: {self._why(reply)}")
        return value

    async def _read_iccid(self, link: SerialLink, problems: list[str]) -> str | None:
        order = sorted(ICCID_COMMANDS, key=lambda command: command != self._iccid_command)
        failures: list[str] = []
        for command in order:
            reply = await self._command(link, command)
            if reply is not None and (iccid := parse_iccid(reply)) is not None:
                self._iccid_command = command
                return iccid
            failures.append(f"{command}: {self._why(reply)}")
        problems.append(f"ICCID: {', '.join(failures)}")
        return None

    def _why(self, reply: bytes | None) -> str:
        return f"no answer within {self.settings.command_timeout_s:g} s" if reply is None else describe_failure(reply)

    async def _command(self, link: SerialLink, command: str) -> bytes | None:
        """Send one command and read its reply up to the final result code; None when that does not come in time."""
        link.discard_input()  # URCs, or the late answer to a command that timed out
        reply = bytearray()
        try:
            async with asyncio.timeout(self.settings.command_timeout_s):
                await link.send(command.encode("ascii") + b"\r")
                while final_result(bytes(reply)) is None and len(reply) <= _MAX_REPLY:
                    reply += await link.receive()
        except TimeoutError:
            log.debug("modem %s: %s: no final result code in %r", self.settings.at_port, command, bytes(reply))
            return None
        return bytes(reply)
