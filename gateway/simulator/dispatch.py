"""Turns one decoded Modbus request into the reply PDU of the slave it addresses, or into no reply.

Shared by the serial-line and TCP servers. pymodbus decodes the request and
encodes the reply (we never write our own Modbus codec); this module only
chooses which pymodbus PDU to send back.
"""

from __future__ import annotations

from collections.abc import Mapping

from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
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

from gateway.devprofile import Table
from gateway.simulator.slave import (
    ILLEGAL_DATA_VALUE,
    ILLEGAL_FUNCTION,
    SimSlave,
    SlaveException,
)

BROADCAST = 0  # Modbus over serial line §2.2: every slave executes a broadcast write and none replies

_MAX_READ = 125  # Modbus application protocol §6.3, §6.4
_MAX_WRITE = 123  # §6.12


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
    with a bad quantity or length (Modbus application protocol §7).
    """
    request = decoder.decode(pdu)
    if request is None:
        slave = slaves.get(unit)
        if slave is None or not pdu:
            return None
        slave.heard_from_master(now)
        code = ILLEGAL_DATA_VALUE if pdu[0] in decoder.list_function_codes() else ILLEGAL_FUNCTION
        return ExceptionResponse(pdu[0] & 0x7F, code, device_id=unit, transaction=transaction_id)
    request.dev_id = unit
    request.transaction_id = transaction_id
    return respond(slaves, request, now, broadcast=broadcast)


def respond(slaves: Mapping[int, SimSlave], request: ModbusPDU, now: float, *, broadcast: bool = True) -> ModbusPDU | None:
    """The reply to `request` at real monotonic time `now`; None when nobody on the line answers.

    A request for a unit that is not simulated gets no reply, as on a real bus.
    Unit 0 is the broadcast address only on a serial line (`broadcast`).
    """
    unit = request.dev_id
    if broadcast and unit == BROADCAST:
        if isinstance(request, (WriteSingleRegisterRequest, WriteMultipleRegistersRequest)):
            for each in slaves.values():
                try:
                    _serve(each, request, now)
                except SlaveException:
                    pass  # a broadcast has no reply to carry the exception
        return None
    slave = slaves.get(unit)
    if slave is None:
        return None
    try:
        reply = _serve(slave, request, now)
    except SlaveException as exc:
        reply = ExceptionResponse(request.function_code, exc.code, device_id=unit, transaction=request.transaction_id)
    reply.dev_id = unit
    reply.transaction_id = request.transaction_id
    return reply


def _serve(slave: SimSlave, request: ModbusPDU, now: float) -> ModbusPDU:
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


def _check_count(count: int, maximum: int) -> None:
    if not 1 <= count <= maximum:
        raise SlaveException(ILLEGAL_DATA_VALUE, f"quantity {count} outside 1..{maximum}")
