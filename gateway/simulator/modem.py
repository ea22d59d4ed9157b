"""A simulated GPRS/LTE modem on a pseudo-terminal, answering the AT queries of gateway.modem.

`SimModem` is the pure part: one command line in, the bytes a Quectel or
SIMCom module would send back out (echo on, then the V.250 framing
"\\r\\n<information>\\r\\n\\r\\nOK\\r\\n"), with values and faults to set at any time.
`SimModemPort` puts it on a raw pty in the event loop: a monitor opens the
slave side by its path (/dev/pts/N, or a symlink such as a config's at_port).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from gateway.simulator.serial_server import PtyLink

log = logging.getLogger(__name__)


class Fault(enum.Enum):
    """What goes wrong with one command, set in SimModem.faults."""

    GARBAGE_BEFORE = "garbage-before"  # line noise between the echo and the answer
    GARBAGE_WITHIN = "garbage-within"  # line noise in the middle of the information line
    SILENT = "silent"  # no answer at all, not even the echo
    ERROR = "error"  # "ERROR"
    CME_ERROR = "cme-error"  # "+CME ERROR: <SimModem.cme_error>"
    HANG_UP = "hang-up"  # the port goes away on this command (a USB modem unplugged)


# How each spelling answers: SIMCom SIM800 gives AT+CCID a bare number,
# SIM7600 answers AT+ICCID (as AT+CICCID), Quectel AT+QCCID.
ICCID_FORMS = {"AT+CCID": "{}", "AT+ICCID": "+ICCID: {}", "AT+QCCID": "+QCCID: {}"}


@dataclass
class SimModem:
    """The modem's values and faults; `commands` records every command line it received."""

    rssi: int = 21  # -71 dBm
    ber: int = 99
    cs: int = 1  # +CREG <stat>: registered home
    ps: int = 1  # +CGREG <stat>
    n: int = 2  # the <n> the registration read commands report: 2 adds lac, ci and AcT
    lac: str = "00C3"
    cell_id: str = "0010ABCD"
    act: int = 7  # E-UTRAN
    operator: str = "Telekom.de"
    operator_format: int = 0  # long alphanumeric; 2 for numeric ("26201")
    iccid: str = "89490200001234567890"
    imsi: str = "262011234567890"
    iccid_commands: frozenset[str] = frozenset(ICCID_FORMS)  # the spellings this module knows; others get ERROR
    echo: bool = True
    cme_error: int = 10  # SIM not inserted
    garbage: bytes = b"\x00\xfe\xff\x1b\x93"
    urcs: tuple[str, ...] = ()  # unsolicited result codes mixed into every answer, e.g. ("RING", '+CMTI: "SM",3')
    faults: dict[str, Fault] = field(default_factory=dict)  # by command, upper case, e.g. {"AT+CSQ": Fault.SILENT}
    commands: list[str] = field(default_factory=list)

    def fault(self, line: bytes) -> Fault | None:
        return self.faults.get(_command(line))

    def respond(self, line: bytes) -> bytes:
        """What the modem sends for one command line (without its CR); b"" for silence."""
        command = _command(line)
        self.commands.append(command)
        fault = self.faults.get(command)
        if fault in (Fault.SILENT, Fault.HANG_UP):
            return b""
        info, final = self._answer(command)
        if fault is Fault.ERROR:
            info, final = None, "ERROR"
        elif fault is Fault.CME_ERROR:
            info, final = None, f"+CME ERROR: {self.cme_error}"
        out = line + b"\r" if self.echo else b""
        if fault is Fault.GARBAGE_BEFORE:
            out += self.garbage
        urcs = [f"\r\n{urc}\r\n".encode("ascii") for urc in self.urcs]
        out += b"".join(urcs[0::2])  # some before the answer, the others between it and OK
        if info is not None:
            data = info.encode("ascii")
            if fault is Fault.GARBAGE_WITHIN:
                data = data[: len(data) // 2] + self.garbage + data[len(data) // 2 :]
            out += b"\r\n" + data + b"\r\n"
        out += b"".join(urcs[1::2])
        return out + f"\r\n{final}\r\n".encode("ascii")

    def _answer(self, command: str) -> tuple[str | None, str]:
        """The information line (None: none) and the final result code."""
        if command == "AT":
            return None, "OK"
        if command == "AT+CSQ":
            return f"+CSQ: {self.rssi},{self.ber}", "OK"
        if command == "AT+CREG?":
            return self._registration("+CREG", self.cs), "OK"
        if command == "AT+CGREG?":
            return self._registration("+CGREG", self.ps), "OK"
        if command == "AT+COPS?":
            if not {self.cs, self.ps} & {1, 5}:
                return "+COPS: 0", "OK"
            return f'+COPS: 0,{self.operator_format},"{self.operator}",{self.act}', "OK"
        if command in self.iccid_commands and command in ICCID_FORMS:
            return ICCID_FORMS[command].format(self.iccid), "OK"
        if command == "AT+CIMI":
            return self.imsi, "OK"
        return None, "ERROR"

    def _registration(self, prefix: str, stat: int) -> str:
        # 3GPP TS 27.007 §7.2: location fields only with <n> 2 and up, and only while registered.
        if self.n >= 2 and stat in (1, 5):
            return f'{prefix}: {self.n},{stat},"{self.lac}","{self.cell_id}",{self.act}'
        return f"{prefix}: {self.n},{stat}"


def _command(line: bytes) -> str:
    return line.decode("latin-1").strip().upper()


class SimModemPort:
    """A SimModem on a raw pty, answering in the running event loop; `path` is what a monitor opens.

    With `link`, the pty's slave side is linked at that path (as the simulator
    does for RS-485 lines); otherwise `path` is the /dev/pts name. The slave side
    stays open here too, so the modem never reads EIO between two polls.
    """

    def __init__(self, modem: SimModem, link: str | None = None) -> None:
        self.modem = modem
        self.path = ""
        self._link = link
        self._master = -1
        self._release: Callable[[], None] | None = None
        self._pending = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        """Make the pty (and link) and start answering; SimulatorError if the link cannot be made."""
        if self._link is not None:
            pty = PtyLink(self._link)
            self._master, self.path, self._release = pty.master_fd, self._link, pty.close
        else:
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._master, self.path = master, os.ttyname(slave)

            def release() -> None:
                os.close(master)
                os.close(slave)

            self._release = release
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._master, self._on_readable)

    def close(self) -> None:
        """Stop answering and remove the pty (and link): to a monitor, the port is gone. Closing twice is harmless."""
        if self._release is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._master)
        release, self._release = self._release, None
        release()

    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("simulated modem at %s: reading the pty failed: %s", self.path, exc)
            self.close()
            return
        self._pending += data
        # ITU-T V.250 §5.2.1: a command line ends with S3 (CR); an LF after it is ignored.
        while (end := self._pending.find(b"\r")) >= 0:
            line = bytes(self._pending[:end]).strip(b"\n")
            del self._pending[: end + 1]
            if not line:
                continue
            if self.modem.fault(line) is Fault.HANG_UP:
                self.modem.respond(line)  # recorded
                self.close()
                return
            self._write(self.modem.respond(line))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view) :]
            except BlockingIOError:
                log.warning("simulated modem at %s: nobody reads the port, %d bytes dropped", self.path, len(view))
                return
