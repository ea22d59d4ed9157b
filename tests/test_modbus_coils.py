"""Coils (FC01 read, FC05 write) and repeated requests, against modbus-tk on loopback and our simulator.

modbus-tk's TcpServer is a Modbus implementation that shares no code with
pymodbus (testing-notes.md); it answers on 127.0.0.1 only. Phoenix Contact's
EV controllers enable charging through a coil (modbus-register-maps.md §3).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modbus_tk import defines as tk
from modbus_tk import hooks, modbus_tcp
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.bit_message import ReadCoilsResponse, WriteSingleCoilResponse

from gateway.devprofile import Framing, Table
from gateway.errors import DeviceException, DeviceTimeout, FrameError
from gateway.modbus_line import TcpEndpoint
from gateway.modbus_transport import (
    MAX_COIL_READ_COUNT,
    SERIAL_UNITS,
    TCP_UNITS,
    ReplyReader,
    check_reply,
    describe,
    new_framer,
    read_request,
    write_coil_request,
)
from gateway.profile_loader import builtin_profile_dir, load_profile
from gateway.simulator.dispatch import respond_to_frame
from gateway.simulator.ev import EvModel, EvTiming
from gateway.simulator.slave import SimSlave, TimeScale
from gateway.simulator.tcp_server import open_tcp_server
from tests.lines import running
from tests.loopback import free_port

# modbus-tk 1.1.5 still calls threading.Event.isSet().
pytestmark = pytest.mark.filterwarnings("ignore:isSet:DeprecationWarning")

COILS = [1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1]  # 20 coils at 0..19




@contextlib.asynccontextmanager
async def tk_server() -> AsyncIterator[tuple[TcpEndpoint, object]]:
    """modbus-tk serving unit 1 (20 coils, 10 holding registers) on a free loopback port; a line to it."""
    port = free_port()
    server = modbus_tcp.TcpServer(port=port, address="127.0.0.1", error_on_missing_slave=False)
    slave = server.add_slave(1)
    slave.add_block("coils", tk.COILS, 0, len(COILS))
    slave.set_values("coils", 0, COILS)
    slave.add_block("holding", tk.HOLDING_REGISTERS, 0, 10)
    server.start()
    try:
        async with asyncio.timeout(3.0):  # the server binds in its own thread
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    await asyncio.sleep(0.02)
        line = TcpEndpoint("tcp/tk", "127.0.0.1", port, reopen_min_s=0.05, reopen_max_s=0.2)
        async with running(line):
            yield line, slave
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.contextmanager
def hooked(name: str, hook) -> Iterator[None]:
    hooks.install_hook(name, hook)
    try:
        yield
    finally:
        hooks.uninstall_hook(name, hook)


# --- against modbus-tk -------------------------------------------------------------------------


async def test_read_coils_of_any_count() -> None:
    async with tk_server() as (line, _):
        for address, count in ((0, 20), (0, 3), (2, 8), (1, 17), (19, 1)):
            assert await line.read(1, Table.COIL, address, count, timeout_s=0.5) == COILS[address : address + count]


async def test_write_a_coil_and_read_it_back() -> None:
    async with tk_server() as (line, slave):
        await line.write_coil(1, 4, True, timeout_s=0.5)
        await line.write_coil(1, 0, False, timeout_s=0.5)
        assert slave.get_values("coils", 0, 5) == (0, 0, 1, 1, 1)
        assert await line.read(1, Table.COIL, 0, 5, timeout_s=0.5) == [0, 0, 1, 1, 1]
    assert line.stats.requests == 3


async def test_coil_outside_the_block_is_a_device_exception() -> None:
    async with tk_server() as (line, _):
        with pytest.raises(DeviceException) as caught:
            await line.read(1, Table.COIL, 15, 10, timeout_s=0.5)
        assert caught.value.code == 2  # ILLEGAL DATA ADDRESS, Modbus application protocol §7
        with pytest.raises(DeviceException) as caught:
            await line.write_coil(1, 20, True, timeout_s=0.5)
        assert caught.value.code == 2
        assert await line.read(1, Table.COIL, 0, 2, timeout_s=0.5) == COILS[:2]  # the connection goes on
    assert line.stats.exceptions == 2


async def test_repeat_on_tcp_sends_each_time_and_keeps_the_last_answer() -> None:
    async with tk_server() as (line, slave):
        sends = 0

        def count_and_change(args: tuple) -> None:
            nonlocal sends
            sends += 1
            args[0].set_values("holding", 0, [100 + sends])  # each send reads a different value

        with hooked("modbus.Slave.handle_read_holding_registers_request", count_and_change):
            assert await line.read(1, Table.HOLDING, 0, 1, timeout_s=0.5, repeat=2) == [102]
        assert sends == 2

        coil_writes = 0

        def count_writes(args: tuple) -> None:
            nonlocal coil_writes
            coil_writes += 1

        with hooked("modbus.Slave.handle_write_single_coil_request", count_writes):
            await line.write_coil(1, 1, True, timeout_s=0.5, repeat=2)
        assert coil_writes == 2 and slave.get_values("coils", 1, 1) == (1,)
    assert line.stats.requests == 4


async def test_repeat_discards_an_earlier_exception() -> None:
    async with tk_server() as (line, _):
        seen: list[bytes] = []

        def busy_first(args: tuple) -> bytes | None:
            seen.append(bytes(args[1]))
            return b"\x81\x06" if len(seen) == 1 else None  # the first FC01 gets "server device busy"

        with hooked("modbus.Slave.handle_request", busy_first):
            assert await line.read(1, Table.COIL, 0, 4, timeout_s=0.5, repeat=2) == COILS[:4]
            with pytest.raises(DeviceException) as caught:  # without repeat the busy answer is the answer
                seen.clear()
                await line.read(1, Table.COIL, 0, 4, timeout_s=0.5)
        assert caught.value.code == 6
    assert (line.stats.requests, line.stats.exceptions) == (3, 2)


# --- against our simulator's TCP server ----------------------------------------------------------


def sim_slave(profile: str, unit: int, *, idle_since_s: float = 0.0) -> SimSlave:
    """The real simulated slave of a shipped profile; `idle_since_s`: the bus has been quiet that long (ABL bus idle)."""
    now = time.monotonic()
    ev = EvModel(random.Random(5), timing=EvTiming(idle_s=(600, 600), session_kwh=(30, 30)), start_energy_wh=0)
    loaded = load_profile(builtin_profile_dir() / f"{profile}.yaml")
    return SimSlave(connector=1, unit=unit, profile=loaded, ev=ev, clock=TimeScale(now), now=now - idle_since_s)


@contextlib.asynccontextmanager
async def simulated(slaves: dict[int, SimSlave]) -> AsyncIterator[TcpEndpoint]:
    server = await open_tcp_server("127.0.0.1", 0, slaves)
    serving = asyncio.create_task(server.serve())
    host, port = server.address
    line = TcpEndpoint("tcp/sim", host, port, reopen_min_s=0.05, reopen_max_s=0.2)
    try:
        async with running(line):
            yield line
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def test_simulator_serves_coils() -> None:
    """Phoenix EM-CP-PP-ETH (unit 180): enable coil 400, read back by FC01; a Heidelberg has no coils."""
    phoenix = sim_slave("phoenix-em-cp-pp-eth", 180)
    async with simulated({180: phoenix, 1: sim_slave("heidelberg-energy-control", 1)}) as line:
        await line.write_coil(180, 400, False, timeout_s=0.5)
        assert await line.read(180, Table.COIL, 400, 1, timeout_s=0.5) == [0]
        assert not phoenix.enabled and phoenix.offered_a == 0  # the enable coil gates the offer
        await line.write_coil(180, 400, True, timeout_s=0.5)
        assert await line.read(180, Table.COIL, 400, 1, timeout_s=0.5) == [1]
        with pytest.raises(DeviceException) as caught:  # past the coils the profile has
            await line.read(180, Table.COIL, 400, 3, timeout_s=0.5)
        assert caught.value.code == 2
        with pytest.raises(DeviceException) as caught:  # a device without coils does not know FC01
            await line.read(1, Table.COIL, 0, 1, timeout_s=0.5)
        assert caught.value.code == 1
        with pytest.raises(DeviceException) as caught:  # nobody at unit 7 behind this address
            await line.write_coil(7, 0, True, timeout_s=0.5)
        assert caught.value.code == 0x0B


async def test_simulator_drops_a_request_silently_and_repeat_gets_past_it() -> None:
    """Two ABL boxes whose bus has been idle: each drops the first frame it hears (reference §2)."""
    idle = {unit: sim_slave("abl-emh", unit, idle_since_s=5.0) for unit in (1, 2)}
    async with simulated(idle) as line:
        with pytest.raises(DeviceTimeout):  # no reply at all, not an exception for a missing unit
            await line.read(1, Table.HOLDING, 0x2E, 5, timeout_s=0.1)
        status = await line.read(2, Table.HOLDING, 0x2E, 5, timeout_s=0.1, repeat=2)
        assert status[0] >> 8 == 0x2E  # the register's echo byte: the second send was answered
    assert (line.stats.requests, line.stats.timeouts) == (3, 2)


async def test_gateway_switches_the_simulated_phoenix_enable_coil() -> None:
    """The real simulated slave with the shipped Phoenix EV-ETH profile: charging is enabled by coil 400 (FC05)."""
    profile = load_profile(builtin_profile_dir() / "phoenix-ev-eth.yaml")
    assert profile.enable is not None and profile.enable.table is Table.COIL
    coil = profile.enable.address
    now = time.monotonic()
    ev = EvModel(random.Random(5), timing=EvTiming(idle_s=(0, 0), session_kwh=(30, 30)), start_energy_wh=0)
    slave = SimSlave(connector=1, unit=255, profile=profile, ev=ev, clock=TimeScale(now), now=now)
    async with simulated({255: slave}) as line:
        for on in (True, False, True):
            await line.write_coil(255, coil, on, timeout_s=0.5)
            assert await line.read(255, Table.COIL, coil, 1, timeout_s=0.5) == [int(on)]
        with pytest.raises(DeviceException) as caught:  # no coil there
            await line.write_coil(255, coil + 1, True, timeout_s=0.5)
        assert caught.value.code == 2


def test_simulator_refuses_a_coil_value_other_than_on_or_off() -> None:
    slave = sim_slave("phoenix-em-cp-pp-eth", 180)
    decoder = DecodePDU(is_server=True)
    coil = b"\x01\x90"  # 400
    for value in (b"\x12\x34", b"\x00\x01"):  # Modbus application protocol §6.5: FF00 or 0000, else code 03
        reply = respond_to_frame({180: slave}, decoder, 180, 0, b"\x05" + coil + value, time.monotonic())
        assert reply is not None and reply.function_code == 0x85 and reply.exception_code == 3
        assert slave.enabled  # unchanged: the box starts enabled
    reply = respond_to_frame({180: slave}, decoder, 180, 0, b"\x05" + coil + b"\x00\x00", time.monotonic())
    assert reply is not None and reply.function_code == 5 and not slave.enabled


# --- the pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: read_request(1, Table.COIL, 0, 0, SERIAL_UNITS),
        lambda: read_request(1, Table.COIL, 0, MAX_COIL_READ_COUNT + 1, SERIAL_UNITS),
        lambda: read_request(1, Table.COIL, 65000, 1000, SERIAL_UNITS),
        lambda: read_request(0, Table.COIL, 0, 1, SERIAL_UNITS),
        lambda: write_coil_request(1, 65536, True, SERIAL_UNITS),
        lambda: write_coil_request(1, 0, 1, SERIAL_UNITS),  # a bool, not a register value
        lambda: write_coil_request(256, 0, True, TCP_UNITS),
    ],
)
def test_bad_coil_arguments_are_refused_before_the_wire(build) -> None:
    with pytest.raises(ValueError):
        build()


def test_coil_requests_on_the_wire() -> None:
    rtu = new_framer(Framing.RTU)
    read = read_request(3, Table.COIL, 0x10, MAX_COIL_READ_COUNT, SERIAL_UNITS)
    assert rtu.buildFrame(read)[:6] == bytes([3, 1, 0x00, 0x10, 0x07, 0xD0])  # §6.1: FC01, address, quantity
    assert describe(read) == "unit 3 FC01 @16+2000"
    on = write_coil_request(3, 7, True, SERIAL_UNITS)
    off = write_coil_request(3, 7, False, SERIAL_UNITS)
    assert rtu.buildFrame(on)[:6] == bytes([3, 5, 0, 7, 0xFF, 0x00])  # §6.5: FF00 = on
    assert rtu.buildFrame(off)[:6] == bytes([3, 5, 0, 7, 0x00, 0x00])
    assert (describe(on), describe(off)) == ("unit 3 FC05 @7=on", "unit 3 FC05 @7=off")


@pytest.mark.parametrize("framing", [Framing.RTU, Framing.ASCII, Framing.TCP])
@settings(max_examples=100, deadline=None)
@given(bits=st.lists(st.integers(0, 1), min_size=1, max_size=MAX_COIL_READ_COUNT))
def test_coils_come_back_exactly_as_many_as_asked(framing: Framing, bits: list[int]) -> None:
    """pymodbus unpacks whole bytes; the padding of the last byte is cut off."""
    framer = new_framer(framing)
    request = read_request(1, Table.COIL, 0, len(bits), TCP_UNITS if framing is Framing.TCP else SERIAL_UNITS)
    reply = ReadCoilsResponse(bits=[bool(b) for b in bits], dev_id=1)
    got = ReplyReader(framer, request).feed(framer.buildFrame(reply))
    assert got is not None and check_reply(request, got) == bits


def test_coil_reply_checks() -> None:
    framer = new_framer(Framing.RTU)
    request = read_request(1, Table.COIL, 0, 9, SERIAL_UNITS)  # two bytes of coils
    short = ReplyReader(framer, request).feed(framer.buildFrame(ReadCoilsResponse(bits=[True] * 8, dev_id=1)))
    assert short is not None
    with pytest.raises(FrameError, match="1 bytes of coils"):
        check_reply(request, short)

    write = write_coil_request(1, 4, True, SERIAL_UNITS)
    for echo in (WriteSingleCoilResponse(address=4, bits=[False], dev_id=1), WriteSingleCoilResponse(address=5, bits=[True], dev_id=1)):
        got = ReplyReader(framer, write).feed(framer.buildFrame(echo))
        assert got is not None
        with pytest.raises(FrameError, match="echo"):
            check_reply(write, got)
    good = ReplyReader(framer, write).feed(framer.buildFrame(WriteSingleCoilResponse(address=4, bits=[True], dev_id=1)))
    assert good is not None and check_reply(write, good) == []
