"""Modbus transactions below the line owner: request building, reply checking, byte links.

Two layers, websockets-style:

- a pure core: `read_request` / `write_request` / `write_coil_request` build
  pymodbus request PDUs from checked arguments, `ReplyReader` is fed the
  bytes that arrive and returns the reply once it is complete and belongs to
  the request, and `check_reply` turns it into registers (or coils) or a
  gateway error. No I/O, no clock.
- thin byte links: `SerialLink` (pyserial fd on the asyncio loop) and
  `TcpLink` (asyncio streams). They only move bytes; every pyserial/socket
  error becomes a `LineUnavailable` here, once.

Why pymodbus's framers and PDUs but not its async client (3.16.1): its
`TransactionManager.execute` waits `comm_params.timeout_connect`, one timeout
fixed per client, where each of our devices has its own; its framers drop a
frame with a bad CRC and a reply from another unit silently, so a garbled
reply can only surface as a timeout; nothing discards a late reply that
arrives between two requests on a serial line (RTU has no transaction id);
and it closes a TCP connection after retries+3 unanswered requests in a row,
so one dead unit behind a TCP gateway would cut off its neighbours. The
framing, CRC/LRC and PDU codecs are pymodbus's; only the transaction is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import termios
from collections.abc import Sequence

import serial
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerAscii, FramerBase, FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, WriteSingleCoilRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from gateway.devprofile import Framing, Table
from gateway.errors import DeviceException, FrameError, LineUnavailable

# Modbus application protocol V1.1b3 §6.3/§6.4 (register reads), §6.12 (FC16) and §6.1 (FC01 coil reads).
MAX_READ_COUNT = 125
MAX_WRITE_COUNT = 123
MAX_COIL_READ_COUNT = 2000
# Modbus over serial line V1.02 §2.2: 1..247 are slave addresses (0 is broadcast,
# which has no reply, 248..255 are reserved). Modbus TCP lets a gateway use all 0..255.
SERIAL_UNITS = range(1, 248)
TCP_UNITS = range(256)

# Modbus application protocol §7: what each exception code means, for the log.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

# Everything pymodbus's framers and decoders may raise on hostile bytes.
_DECODE_ERRORS = (ModbusException, ValueError, IndexError, struct.error)


def new_framer(framing: Framing) -> FramerBase:
    """The pymodbus framer for a line's framing, decoding replies (client side)."""
    decoder = DecodePDU(is_server=False)
    if framing is Framing.RTU:
        return FramerRTU(decoder)
    if framing is Framing.ASCII:
        return FramerAscii(decoder)
    return FramerSocket(decoder)


# --- requests ----------------------------------------------------------------


def _check_unit(unit: int, units: range) -> None:
    if not isinstance(unit, int) or unit not in units:
        raise ValueError(f"Modbus unit must be in {units.start}..{units.stop - 1}, not {unit!r}")


def _check_span(address: int, count: int, max_count: int, what: str = "register") -> None:
    if not isinstance(count, int) or not 1 <= count <= max_count:
        raise ValueError(f"{what} count must be in 1..{max_count}, not {count!r}")
    if not isinstance(address, int) or not 0 <= address or address + count > 0x10000:
        raise ValueError(f"{what}s {address!r}..+{count} do not fit in the 0..65535 address space")


def read_request(unit: int, table: Table, address: int, count: int, units: range) -> ModbusPDU:
    """FC04 (input), FC03 (holding) or FC01 (coil) request; ValueError for arguments Modbus cannot carry."""
    _check_unit(unit, units)
    if table is Table.COIL:
        _check_span(address, count, MAX_COIL_READ_COUNT, "coil")
        return ReadCoilsRequest(address=address, count=count, dev_id=unit)
    _check_span(address, count, MAX_READ_COUNT)
    if table is Table.INPUT:
        return ReadInputRegistersRequest(address=address, count=count, dev_id=unit)
    if table is Table.HOLDING:
        return ReadHoldingRegistersRequest(address=address, count=count, dev_id=unit)
    raise ValueError(f"not a Modbus table: {table!r}")


def write_request(unit: int, address: int, values: Sequence[int], multiple: bool, units: range) -> ModbusPDU:
    """FC16 (multiple) or FC06 (single) request; ValueError for arguments Modbus cannot carry."""
    _check_unit(unit, units)
    words = list(values)
    _check_span(address, len(words), MAX_WRITE_COUNT if multiple else 1)
    for word in words:
        if not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise ValueError(f"a register holds 0..65535, not {word!r}")
    if multiple:
        return WriteMultipleRegistersRequest(address=address, registers=words, dev_id=unit)
    return WriteSingleRegisterRequest(address=address, registers=words, dev_id=unit)


def write_coil_request(unit: int, address: int, on: bool, units: range) -> ModbusPDU:
    """FC05 request (Modbus application protocol §6.5: 0xFF00 on, 0x0000 off); ValueError for bad arguments."""
    _check_unit(unit, units)
    _check_span(address, 1, 1, "coil")
    if not isinstance(on, bool):
        raise ValueError(f"a coil is switched on or off (a bool), not {on!r}")
    return WriteSingleCoilRequest(address=address, bits=[on], dev_id=unit)


def describe(request: ModbusPDU) -> str:
    """Short human form of a request for error messages, e.g. 'unit 3 FC04 @100+17', 'unit 1 FC05 @0=on'."""
    where = f"unit {request.dev_id} FC{request.function_code:02d} @{request.address}"
    if request.function_code == WriteSingleCoilRequest.function_code:
        return f"{where}={'on' if request.bits and request.bits[0] else 'off'}"
    return f"{where}+{request.count}"


# --- replies -----------------------------------------------------------------


class ReplyReader:
    """Assembles the reply to one request from the bytes that arrive, and checks that it answers it.

    feed() returns the reply PDU once it is complete, None while more bytes
    are needed, and raises FrameError for bytes that cannot be a reply (bad
    CRC/LRC, noise, undecodable PDU, another function). A well-formed frame
    from another unit on a serial line, or with another transaction id on TCP,
    is set aside and the wait goes on: Modbus over serial line §2.4.1 keeps
    the response timeout running after a reply from an unexpected slave, and
    on TCP it is the late answer to an earlier request.

    On an ASCII line a reply may start with '>' instead of ':': ABL's eMH
    controllers answer so (evcc issue #32436: request ":0103002E0005C9",
    reply ">01030A2EA1...3B"). pymodbus's FramerAscii knows only ':', so '>' is
    read as ':' before the framer sees the bytes. That is safe because '>'
    never occurs inside a valid ASCII frame (hex digits, then CR LF, Modbus
    over serial line §2.5.2.1); LRC and framing stay pymodbus's.
    """

    def __init__(self, framer: FramerBase, request: ModbusPDU) -> None:
        self._framer = framer
        self._request = request
        self._by_tid = isinstance(framer, FramerSocket)
        self._ascii = isinstance(framer, FramerAscii)
        self._buffer = b""
        self.stray: str | None = None  # what was set aside, for the error raised at the deadline

    @property
    def pending(self) -> int:
        """Bytes received that do not make a frame yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> ModbusPDU | None:
        self._buffer += data.replace(b">", b":") if self._ascii else data
        request = self._request
        while self._buffer:
            try:
                used, unit, tid, payload = self._framer.decode(self._buffer)
            except _DECODE_ERRORS as exc:
                raise FrameError(f"{describe(request)}: undecodable reply {self._buffer.hex(' ')}: {exc}") from exc
            if not payload:
                if used:
                    # The framer threw these bytes away: a CRC/LRC mismatch or noise.
                    raise FrameError(f"{describe(request)}: garbled reply {self._buffer[:used].hex(' ')}")
                return None
            self._buffer = self._buffer[used:]
            if self._by_tid and tid != request.transaction_id:
                self.stray = f"a reply to transaction {tid}"
                continue
            if unit != request.dev_id:
                if self._by_tid:
                    raise FrameError(f"{describe(request)}: the reply names unit {unit}")
                self.stray = f"a frame from unit {unit}"
                continue
            try:
                reply = self._framer.decoder.decode(payload)
            except _DECODE_ERRORS as exc:  # DecodePDU catches these itself today; a later release may not
                raise FrameError(f"{describe(request)}: undecodable reply PDU {payload.hex(' ')}: {exc}") from exc
            if reply is None:
                raise FrameError(f"{describe(request)}: undecodable reply PDU {payload.hex(' ')}")
            if reply.function_code & 0x7F != request.function_code:
                raise FrameError(f"{describe(request)}: the reply is for function {reply.function_code & 0x7F}")
            reply.dev_id = unit
            reply.transaction_id = tid
            return reply
        return None


def check_reply(request: ModbusPDU, reply: ModbusPDU) -> list[int]:
    """The registers (or coils, one 0/1 each) a reply carries, [] for a write; raises DeviceException or FrameError."""
    if reply.isError():
        code = reply.exception_code
        name = EXCEPTION_NAMES.get(code, "unknown code")
        raise DeviceException(code, f"{describe(request)}: Modbus exception {code} ({name})")
    fc = request.function_code
    if fc in (3, 4):
        if len(reply.registers) != request.count:
            raise FrameError(f"{describe(request)}: the reply carries {len(reply.registers)} registers")
        return list(reply.registers)
    if fc == 1:
        # §6.1: the coils come packed 8 to a byte, the last byte padded; pymodbus unpacks whole bytes.
        if len(reply.bits) != 8 * ((request.count + 7) // 8):
            raise FrameError(f"{describe(request)}: the reply carries {len(reply.bits) // 8} bytes of coils")
        return [int(bit) for bit in reply.bits[: request.count]]
    if fc == 5 and (reply.address, list(reply.bits[:1])) != (request.address, list(request.bits)):
        raise FrameError(f"{describe(request)}: FC05 echo {reply.address}={list(reply.bits[:1])} differs")
    if fc == 6 and (reply.address, list(reply.registers)) != (request.address, list(request.registers)):
        raise FrameError(f"{describe(request)}: FC06 echo {reply.address}={list(reply.registers)} differs")
    if fc == 16 and (reply.address, reply.count) != (request.address, request.count):
        raise FrameError(f"{describe(request)}: FC16 reply names {reply.address}+{reply.count}")
    return []


# --- byte links ----------------------------------------------------------------


class SerialLink:
    """One open serial port on the running asyncio loop: send bytes, receive what arrives, discard input."""

    def __init__(self, port: serial.Serial) -> None:
        self._port = port
        self._fd = port.fileno()
        self._loop = asyncio.get_running_loop()
        self._rx = bytearray()
        self._arrived = asyncio.Event()
        self._error: str | None = None  # why the port broke; set once, then every call raises it
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    def open(cls, path: str, baudrate: int, bytesize: int, parity: str, stopbits: int) -> SerialLink:
        """Open and configure the port, locked against a second owner; LineUnavailable if it cannot be."""
        try:
            port = serial.Serial(
                port=path, baudrate=baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits,
                timeout=0, write_timeout=0, exclusive=True,
            )
        except (serial.SerialException, OSError, termios.error, ValueError) as exc:
            # termios.error: a pty refuses parity E/O (testing-notes.md, pyserial #196).
            raise LineUnavailable(f"cannot open {path} ({baudrate} {bytesize}{parity}{stopbits}): {exc}") from exc
        return cls(port)

    @property
    def usable(self) -> bool:
        return self._error is None

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = f"{self._port.port}: {exc}"
            self._loop.remove_reader(self._fd)
        self._arrived.set()

    def _on_readable(self) -> None:
        try:
            data = self._port.read(self._port.in_waiting or 1)
        except (serial.SerialException, OSError) as exc:  # the adapter was unplugged, the pty closed
            self._fail(exc)
            return
        if data:
            self._rx += data
            self._arrived.set()

    async def receive(self) -> bytes:
        """Wait for at least one byte and return everything that has arrived."""
        while not self._rx:
            if self._error is not None:
                raise LineUnavailable(self._error)
            self._arrived.clear()
            await self._arrived.wait()
        data = bytes(self._rx)
        self._rx.clear()
        return data

    def discard_input(self) -> None:
        """Drop every byte received so far, read or still in the driver (a late reply from a slow slave)."""
        self._rx.clear()
        if self._error is None:
            try:
                self._port.reset_input_buffer()
            except (serial.SerialException, OSError, termios.error) as exc:
                self._fail(exc)

    async def send(self, data: bytes) -> None:
        if self._error is not None:
            raise LineUnavailable(self._error)
        view = memoryview(data)
        while view:
            try:
                sent = self._port.write(view) or 0
            except (serial.SerialException, OSError) as exc:
                self._fail(exc)
                raise LineUnavailable(f"{self._port.port}: {exc}") from exc
            view = view[sent:]
            if view:  # the driver's buffer is full: wait until it takes more
                writable = self._loop.create_future()
                self._loop.add_writer(self._fd, writable.set_result, None)
                try:
                    await writable
                finally:
                    self._loop.remove_writer(self._fd)

    def close(self) -> None:
        if self._error is None:
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(serial.SerialException, OSError, termios.error):
            self._port.close()


class TcpLink:
    """One Modbus TCP connection: send bytes, receive what arrives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str) -> None:
        self._reader = reader
        self._writer = writer
        self._where = where

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> TcpLink:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError as exc:
            raise LineUnavailable(f"cannot connect to {where}: no answer within {timeout_s} s") from exc
        except OSError as exc:
            raise LineUnavailable(f"cannot connect to {where}: {exc}") from exc
        return cls(reader, writer, where)

    @property
    def usable(self) -> bool:
        """False once the peer closed: many devices drop idle connections, reconnect before the next request."""
        return not self._reader.at_eof() and not self._writer.is_closing()

    async def receive(self) -> bytes:
        try:
            data = await self._reader.read(4096)
        except OSError as exc:
            raise LineUnavailable(f"{self._where}: {exc}") from exc
        if not data:
            raise LineUnavailable(f"{self._where}: connection closed by the device")
        return data

    def discard_input(self) -> None:
        """Nothing to do: TCP replies carry the transaction id, so ReplyReader skips late ones."""

    async def send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise LineUnavailable(f"{self._where}: {exc}") from exc

    def close(self) -> None:
        self._writer.close()
