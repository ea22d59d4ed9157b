"""Modbus serial wire-time arithmetic (gateway.wiretime), against literal figures and pymodbus's own frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerAscii, FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from gateway.wiretime import (
    RTU_EXCEPTION_BYTES,
    ascii_frame_chars,
    ascii_transaction_wire_s,
    char_time_s,
    rtu_reply_bytes,
    rtu_request_bytes,
    t15_s,
    t35_s,
    transaction_wire_s,
)

RTU = FramerRTU(DecodePDU(is_server=False))
ASCII = FramerAscii(DecodePDU(is_server=False))


def test_char_time_is_11_bits() -> None:
    # Modbus over serial line §2.5.1: 1 start + 8 data + parity (or 2nd stop) + 1 stop.
    assert char_time_s(19200) == pytest.approx(0.000573, abs=1e-6)
    assert char_time_s(9600) == pytest.approx(11 / 9600)
    assert char_time_s(9600, bits_per_char=10) == pytest.approx(10 / 9600)


def test_silent_intervals_per_spec_2_5_1_1() -> None:
    assert t35_s(19200) == pytest.approx(0.002005, abs=1e-6)
    assert t35_s(9600) == pytest.approx(0.004010, abs=1e-6)
    assert t15_s(9600) == pytest.approx(1.5 * 11 / 9600)
    # Above 19200 baud the timers are fixed.
    assert t35_s(38400) == 0.00175
    assert t35_s(115200) == 0.00175
    assert t15_s(115200) == 0.00075


def test_frame_sizes() -> None:
    assert (rtu_request_bytes(4, 15), rtu_reply_bytes(4, 15)) == (8, 35)  # the Heidelberg input block
    assert (rtu_request_bytes(3, 5), rtu_reply_bytes(3, 5)) == (8, 15)
    assert (rtu_request_bytes(6), rtu_reply_bytes(6)) == (8, 8)
    assert (rtu_request_bytes(16, 1), rtu_reply_bytes(16, 1)) == (11, 8)
    assert (rtu_request_bytes(16, 4), rtu_reply_bytes(16, 4)) == (17, 8)


def test_transaction_wire_time() -> None:
    # Reading 15 input registers at 19200: 43 characters and two t3.5 silences.
    expected = 43 * 11 / 19200 + 2 * 3.5 * 11 / 19200
    assert transaction_wire_s(19200, 8, 35) == pytest.approx(expected)
    assert transaction_wire_s(19200, 8, 35) == pytest.approx(0.02864, abs=1e-5)
    assert transaction_wire_s(115200, 8, 8) == pytest.approx(16 * 11 / 115200 + 2 * 0.00175)


def test_ascii_frames() -> None:
    assert ascii_frame_chars(8) == 17  # ':' + 7 bytes in hex + CR LF for a FC03 request
    assert ascii_transaction_wire_s(9600, 17, 17) == pytest.approx(34 * 10 / 9600)
    assert ascii_transaction_wire_s(38400, 17, 17, bits_per_char=11) == pytest.approx(34 * 11 / 38400)


@pytest.mark.parametrize(
    "call",
    [
        lambda: rtu_request_bytes(4, 0),
        lambda: rtu_request_bytes(3, 126),
        lambda: rtu_reply_bytes(16, 124),
        lambda: rtu_request_bytes(1, 1),
        lambda: char_time_s(0),
        lambda: t35_s(-9600),
        lambda: ascii_frame_chars(3),
    ],
)
def test_bad_input_is_a_clear_error(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def _rtu_len(pdu: ModbusPDU) -> int:
    return len(RTU.buildFrame(pdu))


@given(st.integers(1, 125))
def test_read_sizes_match_pymodbus_frames(count: int) -> None:
    request = ReadInputRegistersRequest(address=0, count=count, dev_id=1)
    reply = ReadInputRegistersResponse(registers=[0xABCD] * count, dev_id=1)
    assert rtu_request_bytes(4, count) == _rtu_len(request)
    assert rtu_reply_bytes(4, count) == _rtu_len(reply)
    assert ascii_frame_chars(_rtu_len(reply)) == len(ASCII.buildFrame(reply))


@given(st.integers(1, 123))
def test_write_sizes_match_pymodbus_frames(count: int) -> None:
    request = WriteMultipleRegistersRequest(address=261, registers=[1] * count, dev_id=1)
    reply = WriteMultipleRegistersResponse(address=261, count=count, dev_id=1)
    assert rtu_request_bytes(16, count) == _rtu_len(request)
    assert rtu_reply_bytes(16, count) == _rtu_len(reply)
    assert ascii_frame_chars(_rtu_len(request)) == len(ASCII.buildFrame(request))
    single = WriteSingleRegisterRequest(address=261, registers=[60], dev_id=1)
    echo = WriteSingleRegisterResponse(address=261, registers=[60])
    assert rtu_request_bytes(6) == _rtu_len(single) == rtu_reply_bytes(6) == _rtu_len(echo)


def test_exception_reply_size() -> None:
    assert RTU_EXCEPTION_BYTES == _rtu_len(ExceptionResponse(4, 2, device_id=1))
