"""A simulated RS-485 line on a pseudo-terminal: several slave units answering one master.

The line is a pty whose slave side is linked at the bus's configured port path,
so the daemon opens it exactly as it would open /dev/ttyS1. Requests are
served strictly one at a time (RS-485 is half duplex); a frame for a unit that
is not simulated, or with a bad CRC, gets no reply, as on a real bus.

pymodbus cuts and checks the frames (FramerRTU / FramerAscii) and encodes the
replies; this module only keeps time: frame boundaries by silence, and each
reply held back by its wire time when wire_delay is on. On an ASCII line a
device whose profile says so starts its replies with its own character in
place of ':' (ABL: '>', evcc issue #32436).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tty
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pymodbus.framer import FramerAscii, FramerBase, FramerRTU
from pymodbus.pdu import DecodePDU

from gateway.devprofile import Framing
from gateway.settings import BusSettings
from gateway.simulator.dispatch import respond_to_frame
from gateway.simulator.errors import SimulatorError
from gateway.simulator.slave import SimSlave
from gateway.wiretime import ascii_transaction_wire_s, t35_s, transaction_wire_s

log = logging.getLogger(__name__)

# A pty and the event loop add scheduling jitter far beyond 3.5 characters,
# so a partial RTU frame is kept at least this long before it counts as broken.
_MIN_RTU_GAP_S = 0.020
# Modbus over serial line §2.5.2.1: in ASCII mode up to 1 s may pass between
# characters of one frame before the receiver gives the frame up.
_ASCII_GAP_S = 1.0


@dataclass(frozen=True)
class RequestFrame:
    """One request cut out of the line: the PDU bytes and the size it had on the wire."""

    unit: int
    pdu: bytes
    wire_size: int  # bytes (RTU) or characters (ASCII) of the whole frame
    at: float  # monotonic time its last byte arrived


class FrameAssembler:
    """Bytes from the line in, whole request frames out; pure, fed with arrival times.

    Modbus over serial line §2.5.1.1: a silent interval ends a frame, so bytes
    left over from before a silence (a truncated frame, line noise) are dropped
    when new bytes arrive after it, and cannot corrupt the next request.
    """

    def __init__(self, framer: FramerBase, gap_s: float) -> None:
        self._framer = framer
        self._gap_s = gap_s
        self._buffer = b""
        self._last_at = float("-inf")

    def feed(self, data: bytes, at: float) -> list[RequestFrame]:
        if at - self._last_at > self._gap_s:
            self._buffer = b""
        self._last_at = at
        self._buffer += data
        frames: list[RequestFrame] = []
        while self._buffer:
            used, unit, _tid, pdu = self._framer.decode(self._buffer)
            if used == 0:
                break  # incomplete: wait for more bytes, or for the silence that drops them
            self._buffer = self._buffer[used:]
            if pdu:
                frames.append(RequestFrame(unit, pdu, _wire_size(self._framer, pdu), at))
        return frames


def _wire_size(framer: FramerBase, pdu: bytes) -> int:
    if isinstance(framer, FramerAscii):
        return 1 + 2 * (1 + len(pdu) + 1) + 2  # ':' unit PDU LRC in hex, CR LF
    return 1 + len(pdu) + 2  # unit, PDU, CRC


class PtyLink:
    """A raw pty with its slave side linked at `path`; the link is removed again by close()."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_symlink():
            raise SimulatorError(f"{path} exists and is not a symlink: refusing to replace it with a simulated line")
        self.master_fd, self._slave_fd = os.openpty()
        try:
            # The line discipline lives on the slave side: raw, so that no byte
            # of a binary RTU frame is taken for a control character. The
            # simulator keeps this end open so that the master side never reads
            # EIO between two clients.
            tty.setraw(self._slave_fd)
            os.set_blocking(self.master_fd, False)
            self.tty_name = os.ttyname(self._slave_fd)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Link under a temporary name and rename over: a daemon that opens the
            # port meanwhile finds either the old line or the new one, never none.
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.tty_name)
            os.replace(tmp, self.path)
        except OSError as exc:
            self._close_fds()
            raise SimulatorError(f"cannot link a simulated line at {path}: {exc}") from exc
        except BaseException:
            self._close_fds()
            raise

    def close(self) -> None:
        """Close the pty and remove the link, unless something else has replaced it meanwhile."""
        try:
            if self.path.is_symlink() and os.readlink(self.path) == self.tty_name:
                self.path.unlink()
        finally:
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self.master_fd, self._slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass  # already closed


async def serve_line(
    bus: BusSettings, link: PtyLink, slaves: Mapping[int, SimSlave], *, wire_delay: bool, turnaround: bool = False
) -> None:
    """Answer the master on one line until cancelled. `slaves` maps unit id -> slave.

    With `turnaround`, a request that starts sooner than the addressed slave's
    inter-frame delay (from its profile) after the last reply on the line goes
    unheard: the boxes need that pause to turn their RS-485 transceivers round
    (evcc#2227, wbec#5). A master that does not keep the profile's gap times out.
    """
    if bus.kind is Framing.ASCII:
        framer: FramerBase = FramerAscii(DecodePDU(is_server=True))
        gap_s = _ASCII_GAP_S
        # Characters as this line carries them: start + data + parity + stop bits.
        bits = 1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits

        def wire_s(request: int, reply: int) -> float:
            return ascii_transaction_wire_s(bus.baudrate, request, reply, bits)

    else:
        framer = FramerRTU(DecodePDU(is_server=True))
        gap_s = max(t35_s(bus.baudrate), _MIN_RTU_GAP_S)

        def wire_s(request: int, reply: int) -> float:
            return transaction_wire_s(bus.baudrate, request, reply)

    assembler = FrameAssembler(framer, gap_s)
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    failure: list[OSError] = []

    def on_readable() -> None:
        try:
            data = os.read(link.master_fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            loop.remove_reader(link.master_fd)
            failure.append(exc)
            data = b""
        chunks.put_nowait((time.monotonic(), data))

    loop.add_reader(link.master_fd, on_readable)
    quiet_since = float("-inf")  # when the last reply was complete on the line
    try:
        while True:
            at, data = await chunks.get()
            if failure:
                raise SimulatorError(f"line {bus.name}: reading the pty failed: {failure[0]}")
            for frame in assembler.feed(data, at):
                addressee = slaves.get(frame.unit)
                if turnaround and addressee is not None and frame.at - quiet_since < addressee.profile.inter_frame_delay_s:
                    log.debug("line %s: unit %d did not hear a request %.1f ms after the last reply", bus.name, frame.unit, 1e3 * (frame.at - quiet_since))
                    continue
                reply = respond_to_frame(slaves, framer.decoder, frame.unit, 0, frame.pdu, time.monotonic())
                if reply is None:
                    continue
                out = framer.buildFrame(reply)
                if bus.kind is Framing.ASCII and addressee is not None:
                    out = addressee.profile.line.ascii_reply_start.encode("ascii") + out[1:]
                if wire_delay:
                    # The master wrote its request at `at`; on a real line the reply is
                    # complete only after both frames and their silences have passed.
                    await asyncio.sleep(max(0.0, frame.at + wire_s(frame.wire_size, len(out)) - time.monotonic()))
                _write(link, bus.name, out)
                quiet_since = time.monotonic()
    finally:
        loop.remove_reader(link.master_fd)


def _write(link: PtyLink, line: str, frame: bytes) -> None:
    """Put a reply on the line. When nobody reads the line and the pty buffer is full, the reply is lost, as on a bus."""
    view = memoryview(frame)
    while view:
        try:
            view = view[os.write(link.master_fd, view) :]
        except BlockingIOError:
            log.warning("line %s: nobody reads the line, %d reply bytes dropped", line, len(view))
            return
