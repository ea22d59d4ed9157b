"""Turns one decoded Modbus request into the reply PDU of the slave it addresses, or into no reply.

Shared by the serial-line and TCP servers. pymodbus decodes the request and
encodes the reply (we never write our own Modbus codec); this module only
chooses which pymodbus PDU to send back. Registers: FC03, FC04, FC06, FC16;
coils, for a device whose profile has any: FC01, FC05. A slave may also drop
a request unheard (`SimSlave.accepts`): ABL's controller in "bus idle" does.
"""

from __future__ import annotations

from collections.abc import Mapping

from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    ReadDiscreteInputsRequest,
    WriteSingleCoilRequest,
    WriteSingleCoilResponse,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from gateway.devprofile import Profile, Table
from gateway.simulator.slave import (
    ILLEGAL_DATA_VALUE,
    ILLEGAL_FUNCTION,
    SimSlave,
    SlaveException,
)

BROADCAST = 0  # Modbus over serial line §2.2: every slave executes a broadcast write and none replies

_MAX_READ = 125  # Modbus application protocol §6.3, §6.4
_MAX_WRITE = 123  # §6.12
_MAX_COIL_READ = 2000  # §6.1
# §6.5: FC05 carries 0xFF00 (on) or 0x0000 (off); any other value is exception code 03.
_COIL_VALUES = (b"\xff\x00", b"\x00\x00")
_REGISTER_FUNCTIONS = frozenset({3, 4, 6, 16})
_COIL_FUNCTIONS = frozenset({1, 5})
_WRITES = (WriteSingleRegisterRequest, WriteMultipleRegistersRequest, WriteSingleCoilRequest)


def respond_to_frame(
    slaves: Mapping[int, SimSlave],
    decoder: DecodePDU,
    unit: int,
    transaction_id: int,
    pdu: bytes,
    now: float,
    *,
    broadcast: bool = True,
) -> ModbusPDU | None:
    """The reply to one request frame's PDU bytes, as cut out by a pymodbus framer.

    A PDU that pymodbus cannot decode still gets an answer from a simulated
    unit: code 01 for a function it does not know, code 03 for a known function
    with a bad quantity or length (Modbus application protocol §7), or an FC05
    value other than on/off (pymodbus reads any non-zero value as on).
    """
    request = decoder.decode(pdu)
    if request is None or (request.function_code == WriteSingleCoilRequest.function_code and pdu[3:5] not in _COIL_VALUES):
        slave = slaves.get(unit)
        if slave is None or not pdu or not slave.accepts(now):
            return None
        slave.heard_from_master(now)
        code = ILLEGAL_DATA_VALUE if pdu[0] in _functions(slave.profile) else ILLEGAL_FUNCTION
        return ExceptionResponse(pdu[0] & 0x7F, code, device_id=unit, transaction=transaction_id)
    request.dev_id = unit
    request.transaction_id = transaction_id
    return respond(slaves, request, now, broadcast=broadcast)


def respond(slaves: Mapping[int, SimSlave], request: ModbusPDU, now: float, *, broadcast: bool = True) -> ModbusPDU | None:
    """The reply to `request` at real monotonic time `now`; None when nobody on the line answers.

    A request for a unit that is not simulated gets no reply, as on a real bus,
    nor does one the slave drops unheard (`accepts`). Unit 0 is the broadcast
    address only on a serial line (`broadcast`).
    """
    unit = request.dev_id
    if broadcast and unit == BROADCAST:
        if isinstance(request, _WRITES):
            for each in slaves.values():
                try:
                    _serve(each, request, now)
                except SlaveException:
                    pass  # a broadcast has no reply to carry the exception
        return None
    slave = slaves.get(unit)
    if slave is None or not slave.accepts(now):
        return None
    try:
        reply = _serve(slave, request, now)
    except SlaveException as exc:
        reply = ExceptionResponse(request.function_code, exc.code, device_id=unit, transaction=request.transaction_id)
    reply.dev_id = unit
    reply.transaction_id = request.transaction_id
    return reply


def _serve(slave: SimSlave, request: ModbusPDU, now: float) -> ModbusPDU:
    # FC02 first: pymodbus makes it a subclass of FC01; no charger has discrete inputs.
    if _COIL_FUNCTIONS <= _functions(slave.profile) and not isinstance(request, ReadDiscreteInputsRequest):
        if isinstance(request, ReadCoilsRequest):
            _check_count(request.count, _MAX_COIL_READ)
            bits = slave.read(Table.COIL, request.address, request.count, now)
            return ReadCoilsResponse(bits=[bool(bit) for bit in bits])
        if isinstance(request, WriteSingleCoilRequest):
            on = bool(request.bits[0])
            slave.write_coil(request.address, on, now)
            return WriteSingleCoilResponse(address=request.address, bits=[on])
    # Input first: pymodbus makes the FC04 request class a subclass of the FC03 one.
    if isinstance(request, ReadInputRegistersRequest):
        _check_count(request.count, _MAX_READ)
        return ReadInputRegistersResponse(registers=slave.read(Table.INPUT, request.address, request.count, now))
    if isinstance(request, ReadHoldingRegistersRequest):
        _check_count(request.count, _MAX_READ)
        return ReadHoldingRegistersResponse(registers=slave.read(Table.HOLDING, request.address, request.count, now))
    if isinstance(request, WriteSingleRegisterRequest):
        slave.write(request.address, list(request.registers), now)
        return WriteSingleRegisterResponse(address=request.address, registers=list(request.registers))
    if isinstance(request, WriteMultipleRegistersRequest):
        registers = list(request.registers)
        _check_count(request.count, _MAX_WRITE)
        if len(registers) != request.count or request.byte_count != 2 * request.count:
            raise SlaveException(ILLEGAL_DATA_VALUE, "register count and byte count disagree")
        slave.write(request.address, registers, now)
        return WriteMultipleRegistersResponse(address=request.address, count=request.count)
    # A real charger supports only these function codes; anything else is §7 code 01.
    slave.heard_from_master(now)
    raise SlaveException(ILLEGAL_FUNCTION, f"function code {request.function_code} not supported")


def _functions(profile: Profile) -> frozenset[int]:
    """The function codes the device implements: coils only where its profile has any, else code 01 (§7)."""
    enable = profile.enable
    coils = (
        any(block.table is Table.COIL for block in profile.blocks)
        or any(spec.table is Table.COIL for spec in profile.values.values())
        or (enable is not None and enable.table is Table.COIL)
    )
    return _REGISTER_FUNCTIONS | _COIL_FUNCTIONS if coils else _REGISTER_FUNCTIONS


def _check_count(count: int, maximum: int) -> None:
    if not 1 <= count <= maximum:
        raise SlaveException(ILLEGAL_DATA_VALUE, f"quantity {count} outside 1..{maximum}")
