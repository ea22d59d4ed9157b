"""Modbus ASCII with ABL's '>' reply start, and requests sent twice (repeat), on real ptys.

The frames are the ones captured from an ABL eMH in evcc issue #32436
(modbus-register-maps.md §2): the gateway's request for unit 1 FC03 0x2E+5 and
the controller's reply, which starts with '>' where Modbus ASCII has ':'.
The pty peers here share no code with pymodbus: `LiteralResponder` answers
requests with literal reply frames, and the simulator test checks that our own
simulator's ASCII server speaks the same '>' and drops the first request of a
controller in "bus idle".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import select
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from gateway.devprofile import Framing, Table
from gateway.errors import DeviceTimeout, FrameError
from gateway.modbus_line import SerialLine
from gateway.modbus_transport import SERIAL_UNITS, ReplyReader, check_reply, new_framer, read_request
from gateway.profile_loader import builtin_profile_dir, load_profile
from gateway.registers import decode_reading
from gateway.settings import BusSettings
from gateway.simulator.ev import EvModel, EvTiming
from gateway.simulator.serial_server import PtyLink, serve_line
from gateway.simulator.slave import SimSlave, TimeScale
from tests.lines import running

# evcc issue #32436: what evcc sent an ABL eMH and what it answered (long status, registers 0x2E..0x32).
CAPTURED_REQUEST = b":0103002E0005C9\r\n"
CAPTURED_REPLY = b">01030A2EA1121503E803E803E83B\r\n"
CAPTURED_REGISTERS = [0x2EA1, 0x1215, 0x03E8, 0x03E8, 0x03E8]


def abl_bus(port: str) -> BusSettings:
    # ABL runs 38400 8E1; a pty refuses parity, so the simulated line is 8N1 (testing-notes.md).
    return BusSettings(name="abl", kind=Framing.ASCII, port=port, baudrate=38400, parity="N")


def captured_read():
    return read_request(1, Table.HOLDING, 0x2E, 5, SERIAL_UNITS)




# --- the pure path: our request bytes, the reply reader ---------------------------------


def test_our_request_is_the_captured_frame() -> None:
    assert new_framer(Framing.ASCII).buildFrame(captured_read()) == CAPTURED_REQUEST


@pytest.mark.parametrize("start", [b">", b":"])
def test_captured_reply_reads_with_either_start(start: bytes) -> None:
    request = captured_read()
    reply = ReplyReader(new_framer(Framing.ASCII), request).feed(start + CAPTURED_REPLY[1:])
    assert reply is not None
    assert check_reply(request, reply) == CAPTURED_REGISTERS


def test_captured_reply_assembles_from_single_bytes() -> None:
    request = captured_read()
    reader = ReplyReader(new_framer(Framing.ASCII), request)
    for byte in CAPTURED_REPLY[:-1]:
        assert reader.feed(bytes([byte])) is None
    reply = reader.feed(CAPTURED_REPLY[-1:])
    assert reply is not None and check_reply(request, reply) == CAPTURED_REGISTERS


@pytest.mark.parametrize(
    "spoilt",
    [
        CAPTURED_REPLY.replace(b"3B\r\n", b"3C\r\n"),  # wrong LRC
        CAPTURED_REPLY.replace(b"2EA1", b"2EA0"),  # one register digit flipped: the LRC no longer fits
        CAPTURED_REPLY.replace(b"0A2E", b"0B2E"),  # the byte count
        CAPTURED_REPLY.replace(b"2EA1", b"2EG1"),  # not a hex digit
    ],
)
def test_spoilt_reply_is_a_frame_error(spoilt: bytes) -> None:
    with pytest.raises(FrameError):
        ReplyReader(new_framer(Framing.ASCII), captured_read()).feed(spoilt)


@settings(max_examples=150, deadline=None)
@given(
    unit=st.integers(1, 247),
    address=st.integers(0, 0xFFFF - 125),
    values=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
    start=st.sampled_from([b">", b":"]),
    piece=st.integers(1, 64),
)
def test_any_registers_round_trip_with_either_start(unit: int, address: int, values: list[int], start: bytes, piece: int) -> None:
    framer = new_framer(Framing.ASCII)
    request = read_request(unit, Table.HOLDING, address, len(values), SERIAL_UNITS)
    # The request as a slave's framer reads it.
    _used, sent_unit, _tid, pdu = new_framer(Framing.ASCII).decode(framer.buildFrame(request))
    heard = DecodePDU(is_server=True).decode(pdu)
    assert heard is not None and (sent_unit, heard.function_code, heard.address, heard.count) == (unit, 3, address, len(values))
    # The reply, in pieces of any size, as the device starts it.
    response = ReadHoldingRegistersResponse(registers=values, dev_id=unit)
    frame = start + framer.buildFrame(response)[1:]
    reader = ReplyReader(framer, request)
    replies = [reader.feed(frame[i : i + piece]) for i in range(0, len(frame), piece)]
    assert all(r is None for r in replies[:-1])
    assert replies[-1] is not None and check_reply(request, replies[-1]) == values


# --- a real pty, an independent responder ------------------------------------------------




class LiteralResponder(threading.Thread):
    """A slave on the pty master that answers known request frames with literal reply frames, no codec at all.

    With `drop_first` it ignores the first request, as an ABL controller in "bus idle" (E3) does.
    """

    def __init__(self, fd: int, answers: dict[bytes, bytes], *, drop_first: bool = False) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.answers = answers
        self.drop_first = drop_first
        self.requests: list[bytes] = []
        self.halt = threading.Event()

    def run(self) -> None:
        buffer = b""
        while not self.halt.is_set():
            if not select.select([self.fd], [], [], 0.02)[0]:
                continue
            buffer += os.read(self.fd, 1024)
            while (end := buffer.find(b"\r\n")) >= 0:
                frame, buffer = buffer[: end + 2], buffer[end + 2 :]
                self.requests.append(frame)
                if self.drop_first and len(self.requests) == 1:
                    continue
                if (reply := self.answers.get(frame)) is not None:
                    os.write(self.fd, reply)


@contextlib.contextmanager
def literal_responder(pty_pair, *, drop_first: bool = False) -> Iterator[LiteralResponder]:
    peer = LiteralResponder(pty_pair[0], {CAPTURED_REQUEST: CAPTURED_REPLY}, drop_first=drop_first)
    peer.start()
    try:
        yield peer
    finally:
        peer.halt.set()
        peer.join(2.0)


async def test_ascii_read_through_a_pty_with_a_gt_reply(pty_pair) -> None:
    line = SerialLine(abl_bus(pty_pair[1]))
    with literal_responder(pty_pair) as peer:
        async with running(line):
            assert await line.read(1, Table.HOLDING, 0x2E, 5, timeout_s=0.5) == CAPTURED_REGISTERS
    assert peer.requests == [CAPTURED_REQUEST]
    assert (line.stats.requests, line.stats.timeouts, line.stats.frame_errors) == (1, 0, 0)


async def test_repeat_gets_past_a_dropped_first_request(pty_pair) -> None:
    line = SerialLine(abl_bus(pty_pair[1]))
    with literal_responder(pty_pair, drop_first=True) as peer:
        async with running(line):
            got = await line.read(1, Table.HOLDING, 0x2E, 5, timeout_s=0.2, repeat=2)
    assert got == CAPTURED_REGISTERS
    assert peer.requests == [CAPTURED_REQUEST, CAPTURED_REQUEST]
    # Every send is counted, the dropped one's timeout included.
    assert (line.stats.requests, line.stats.timeouts) == (2, 1)


async def test_without_repeat_the_dropped_request_times_out(pty_pair) -> None:
    line = SerialLine(abl_bus(pty_pair[1]))
    with literal_responder(pty_pair, drop_first=True) as peer:
        async with running(line):
            with pytest.raises(DeviceTimeout):
                await line.read(1, Table.HOLDING, 0x2E, 5, timeout_s=0.1)
            assert await line.read(1, Table.HOLDING, 0x2E, 5, timeout_s=0.5) == CAPTURED_REGISTERS
    assert len(peer.requests) == 2


async def test_every_send_answered_gives_the_last_answer(pty_pair) -> None:
    line = SerialLine(abl_bus(pty_pair[1]))
    with literal_responder(pty_pair) as peer:
        async with running(line):
            started = time.monotonic()
            assert await line.read(1, Table.HOLDING, 0x2E, 5, timeout_s=0.5, repeat=3) == CAPTURED_REGISTERS
            assert time.monotonic() - started < 0.5  # no send waited for a deadline
    assert peer.requests == [CAPTURED_REQUEST] * 3
    assert (line.stats.requests, line.stats.timeouts) == (3, 0)


async def test_repeat_must_be_a_positive_count(pty_pair) -> None:
    line = SerialLine(abl_bus(pty_pair[1]))
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="repeat"):
            await line.read(1, Table.HOLDING, 0, 1, timeout_s=0.5, repeat=bad)  # type: ignore[arg-type]


# --- our simulator speaking ABL -------------------------------------------------------------


@contextlib.asynccontextmanager
async def simulated_line(tmp_path: Path, slave: SimSlave) -> AsyncIterator[BusSettings]:
    """Our simulator's ASCII line server for `slave` as unit 1, on a pty linked in tmp_path."""
    bus = abl_bus(str(tmp_path / "ttyABL"))
    link = PtyLink(str(tmp_path / "ttyABL"))
    server = asyncio.create_task(serve_line(bus, link, {1: slave}, wire_delay=False))
    try:
        yield bus
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        link.close()


async def exchange(fd: int, request: bytes, within: float) -> bytes:
    """Write a request frame to the line and collect what comes back until CR LF or the deadline."""
    os.write(fd, request)
    received = b""
    deadline = time.monotonic() + within
    while not received.endswith(b"\r\n") and (left := deadline - time.monotonic()) > 0:
        if await asyncio.to_thread(select.select, [fd], [], [], min(left, 0.05)):
            with contextlib.suppress(BlockingIOError):
                received += os.read(fd, 1024)
    return received


@pytest.mark.parametrize("reply_start", [">", ":"])
async def test_gateway_polls_the_simulated_abl_emh_profile(tmp_path: Path, reply_start: str) -> None:
    """The real simulated slave with the shipped ABL profile: '>' replies (or ':' from a box that keeps to
    the standard), the first frame after bus idle dropped, the captured request answered."""
    shipped = load_profile(builtin_profile_dir() / "abl-emh.yaml")
    assert (shipped.line.ascii_reply_start, shipped.repeat) == (">", 2)
    profile = dataclasses.replace(shipped, line=dataclasses.replace(shipped.line, ascii_reply_start=reply_start))
    started = time.monotonic()
    ev = EvModel(random.Random(3), timing=EvTiming(idle_s=(0, 0), session_kwh=(30, 30)), start_energy_wh=0)
    # Last addressed long ago: the controller sits in bus idle and drops the next frame.
    slave = SimSlave(connector=1, unit=1, profile=profile, ev=ev, clock=TimeScale(started), now=started - 10.0)
    async with simulated_line(tmp_path, slave) as bus:
        fd = os.open(bus.port or "", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            assert await exchange(fd, CAPTURED_REQUEST, 0.2) == b""
            raw = await exchange(fd, CAPTURED_REQUEST, 1.0)
        finally:
            os.close(fd)
        assert raw.startswith(reply_start.encode() + b"01030A2E") and raw.endswith(b"\r\n")  # 10 bytes, echo 0x2E
        await asyncio.sleep(1.1)  # bus idle again
        line = SerialLine(bus)
        async with running(line):
            blocks = {
                block: await line.read(1, block.table, block.address, block.count, timeout_s=0.2, repeat=profile.repeat)
                for block in profile.blocks
            }
    reading = decode_reading(profile, blocks)
    assert reading.state is not None
    # Each block sent twice; only the first send after the idle went unanswered.
    assert (line.stats.requests, line.stats.timeouts, line.stats.frame_errors) == (2 * len(profile.blocks), 1, 0)
