"""Modbus serial wire-time arithmetic, pure: how long frames occupy an RS-485 line.

A pseudo-terminal moves bytes instantly; a real line does not. The bus
scheduler uses these figures to plan a polling round, and the simulator delays
each reply by them so that a benchmark over a pty is honest.

References: Modbus over serial line specification and implementation guide
V1.02 (modbus.org), §2.5.1 (RTU) and §2.5.2 (ASCII).
"""

from __future__ import annotations

# §2.5.1: an RTU character is 11 bits: 1 start, 8 data, 1 parity (or a 2nd
# stop bit when there is no parity), 1 stop.
RTU_BITS_PER_CHAR = 11
# §2.5.2: an ASCII character is 10 bits: 1 start, 7 data, 1 parity (or a 2nd
# stop bit), 1 stop. Lines that carry ASCII frames in 8-bit characters pass
# their own figure.
ASCII_BITS_PER_CHAR = 10

# §2.5.1.1: above 19200 baud the inter-character (t1.5) and inter-frame (t3.5)
# timers are fixed, so that fast lines do not need microsecond timers.
_FIXED_TIMERS_ABOVE_BAUD = 19200
_FIXED_T15_S = 0.000750
_FIXED_T35_S = 0.001750

_READS = (3, 4)  # FC03 read holding registers, FC04 read input registers
_MAX_READ_COUNT = 125  # Modbus application protocol §6.3 / §6.4
_MAX_WRITE_COUNT = 123  # Modbus application protocol §6.12


def _check_baud(baud: int) -> None:
    if baud <= 0:
        raise ValueError(f"baud rate must be positive, got {baud}")


def char_time_s(baud: int, bits_per_char: int = RTU_BITS_PER_CHAR) -> float:
    """Seconds one character takes on the line (11 bits for RTU by default)."""
    _check_baud(baud)
    return bits_per_char / baud


def t15_s(baud: int) -> float:
    """The RTU inter-character timeout: 1.5 character times, 0.75 ms above 19200 baud (§2.5.1.1)."""
    _check_baud(baud)
    return _FIXED_T15_S if baud > _FIXED_TIMERS_ABOVE_BAUD else 1.5 * char_time_s(baud)


def t35_s(baud: int) -> float:
    """The RTU silent interval that ends a frame: 3.5 character times, 1.75 ms above 19200 baud (§2.5.1.1)."""
    _check_baud(baud)
    return _FIXED_T35_S if baud > _FIXED_TIMERS_ABOVE_BAUD else 3.5 * char_time_s(baud)


def _check_count(function_code: int, count: int) -> None:
    if function_code in _READS and not 1 <= count <= _MAX_READ_COUNT:
        raise ValueError(f"FC{function_code:02d} reads 1..{_MAX_READ_COUNT} registers, not {count}")
    if function_code == 16 and not 1 <= count <= _MAX_WRITE_COUNT:
        raise ValueError(f"FC16 writes 1..{_MAX_WRITE_COUNT} registers, not {count}")
    if function_code not in (*_READS, 6, 16):
        raise ValueError(f"no wire-size rule for function code {function_code}")


def rtu_request_bytes(function_code: int, count: int = 1) -> int:
    """Bytes of an RTU request frame: unit + PDU + CRC.

    FC03/FC04: unit, fc, address(2), count(2), crc(2) = 8.
    FC06: unit, fc, address(2), value(2), crc(2) = 8.
    FC16: unit, fc, address(2), count(2), byte count, 2*count, crc(2) = 9 + 2*count.
    """
    _check_count(function_code, count)
    return 9 + 2 * count if function_code == 16 else 8


def rtu_reply_bytes(function_code: int, count: int = 1) -> int:
    """Bytes of a normal RTU reply frame.

    FC03/FC04: unit, fc, byte count, 2*count, crc(2) = 5 + 2*count.
    FC06 echoes the request (8); FC16 answers address and count (8).
    An exception reply is always 5 bytes (unit, fc|0x80, code, crc(2)): see RTU_EXCEPTION_BYTES.
    """
    _check_count(function_code, count)
    return 5 + 2 * count if function_code in _READS else 8


RTU_EXCEPTION_BYTES = 5


def transaction_wire_s(baud: int, request_bytes: int, reply_bytes: int) -> float:
    """Seconds an RTU request and its reply hold the line, each followed by its t3.5 silence."""
    return (request_bytes + reply_bytes) * char_time_s(baud) + 2 * t35_s(baud)


def ascii_frame_chars(rtu_bytes: int) -> int:
    """Characters of the ASCII frame that carries the same message as an RTU frame of `rtu_bytes`.

    §2.5.2.1: ':' + two hex characters per byte of unit, PDU and LRC + CR LF.
    The RTU frame has the same unit and PDU, and 2 CRC bytes where ASCII has 1 LRC byte,
    so the ASCII frame is 1 + 2 * (rtu_bytes - 1) + 2 = 2 * rtu_bytes + 1 characters.
    """
    if rtu_bytes < 4:
        raise ValueError(f"an RTU frame has at least 4 bytes, not {rtu_bytes}")
    return 2 * rtu_bytes + 1


def ascii_transaction_wire_s(
    baud: int, request_chars: int, reply_chars: int, bits_per_char: int = ASCII_BITS_PER_CHAR
) -> float:
    """Seconds an ASCII request and its reply hold the line.

    ASCII frames are delimited by ':' and CR LF, not by silence (§2.5.2.1), so
    there is no t3.5 to add.
    """
    return (request_chars + reply_chars) * char_time_s(baud, bits_per_char)
