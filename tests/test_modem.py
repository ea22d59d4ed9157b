"""Modem health: the AT reply parsers and ModemHealth (pure), then ModemMonitor against a simulated modem on a real pty."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.modem import ModemMonitor
from gateway.modem_replies import (
    AccessTech,
    ModemHealth,
    Operator,
    OperatorFormat,
    PollResult,
    Registration,
    RegStatus,
    Signal,
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
from gateway.settings import BackendSettings, ChargePointInfo, Config, ModemSettings, StorageSettings, UplinkSettings
from gateway.simulator import SimulatorError, run_simulation
from gateway.simulator.modem import Fault, SimModem, SimModemPort

PARSERS = (parse_csq, parse_creg, parse_cgreg, parse_cops, parse_iccid, parse_imsi)
# What a health poll may send: queries only, nothing that changes the modem's state.
QUERIES = {"AT+CSQ", "AT+CREG?", "AT+CGREG?", "AT+COPS?", "AT+CCID", "AT+ICCID", "AT+QCCID", "AT+CIMI"}
TIMEOUT_S = 0.2


def reply(*lines: str, echo: str = "", final: str = "OK") -> bytes:
    """A reply as a module frames it: echo, then each line and the final result code between CR LFs."""
    out = (echo + "\r") if echo else ""
    return (out + "".join(f"\r\n{line}\r\n" for line in (*lines, final))).encode()


# --- parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("rssi", "dbm"), [(0, -113), (1, -111), (20, -73), (31, -51), (99, None)])
def test_csq_gives_dbm_by_27_007_table(rssi: int, dbm: int | None) -> None:
    signal = parse_csq(reply(f"+CSQ: {rssi},99", echo="AT+CSQ"))
    assert signal == Signal(rssi, 99)
    assert signal.dbm == dbm


@pytest.mark.parametrize(
    "data",
    [
        reply("+CSQ: 32,0"),  # rssi beyond the table
        reply("+CSQ: 20,8"),  # ber beyond RXQUAL 7
        reply("+CSQ: 20"),
        reply("+CSQ: 2\ufffd1,99"),
        reply("+CSQ: 21,99", final="ERROR"),
        reply(final="+CME ERROR: 10"),
        b"AT+CSQ\r\r\n+CSQ: 21,99\r\n",  # no final result code
        reply("+CSQ: 99999999999999999999,99"),
    ],
)
def test_csq_without_a_good_answer_is_none(data: bytes) -> None:
    assert parse_csq(data) is None


def test_csq_tolerates_echo_urcs_and_noise_around_lines() -> None:
    data = b'AT+CSQ\r\x00\xff\r\nRING\r\n\r\n\x13+CSQ: 17,3\xfe\r\n\r\n+CMTI: "SM",3\r\n\r\nOK\r\n'
    assert parse_csq(data) == Signal(17, 3)


def test_creg_read_form_n0_and_n2() -> None:
    assert parse_creg(reply("+CREG: 0,1", echo="AT+CREG?")) == Registration(RegStatus.HOME)
    assert parse_creg(reply('+CREG: 2,5,"00C3","0010abcd",7')) == Registration(RegStatus.ROAMING, "00C3", "0010ABCD", AccessTech.E_UTRAN)
    # GPRS: +CGREG adds <rac> after <AcT> (27.007 §10.1.20)
    assert parse_cgreg(reply('+CGREG: 2,1,"1A2B","01C2",3,"01"')) == Registration(RegStatus.HOME, "1A2B", "01C2", AccessTech.EGPRS)
    assert parse_cgreg(reply("+CGREG: 2,2")) == Registration(RegStatus.SEARCHING)
    assert parse_creg(reply("+CREG: 2,1,,,0")) == Registration(RegStatus.HOME, act=AccessTech.GSM)


@pytest.mark.parametrize(
    ("stat", "status", "registered"),
    [
        (0, "not registered", False),
        (1, "registered home", True),
        (2, "searching", False),
        (3, "registration denied", False),
        (4, "registration unknown", False),
        (5, "registered roaming", True),
    ],
)
def test_registration_states(stat: int, status: str, registered: bool) -> None:
    found = parse_cgreg(reply(f"+CGREG: 0,{stat}"))
    assert found is not None and found.status.label == status and found.status.registered is registered


def test_registration_urcs_are_not_taken_for_the_answer() -> None:
    # "+CREG: <stat>" (n=1) and "+CREG: <stat>,"<lac>",..." (n=2) are unsolicited; the read form starts "<n>,<stat>".
    data = b'AT+CREG?\r\r\n+CREG: 1\r\n\r\n+CREG: 5,"00C3","0010ABCD",7\r\n\r\n+CREG: 0,3\r\n\r\nOK\r\n'
    assert parse_creg(data) == Registration(RegStatus.DENIED)
    assert parse_creg(reply("+CREG: 1")) is None
    assert parse_cgreg(reply("+CREG: 0,1")) is None  # the other domain's line


@pytest.mark.parametrize(
    "line",
    ["+CREG: 0,11", "+CREG: 9,1", '+CREG: 2,1,"00\ufffdC3","0010ABCD",7', '+CREG: 2,1,"00C3","0010ABCD",x', "+CREG: ,1", "+CREG: 0,1\ufffd5"],
)
def test_registration_noise_or_out_of_range_is_none(line: str) -> None:
    assert parse_creg(reply(line)) is None


def test_an_act_newer_than_the_table_still_gives_the_registration() -> None:
    assert parse_creg(reply('+CREG: 2,1,"00C3","0010ABCD",42')) == Registration(RegStatus.HOME, "00C3", "0010ABCD", None)


def test_cops_formats() -> None:
    assert parse_cops(reply('+COPS: 0,0,"Telekom.de",7', echo="AT+COPS?")) == Operator(0, "Telekom.de", OperatorFormat.LONG, AccessTech.E_UTRAN)
    assert parse_cops(reply('+COPS: 1,2,"26202",2')) == Operator(1, "26202", OperatorFormat.NUMERIC, AccessTech.UTRAN)
    assert parse_cops(reply('+COPS: 0,1,"vodafone"')) == Operator(0, "vodafone", OperatorFormat.SHORT, None)
    assert parse_cops(reply("+COPS: 0")) == Operator(0)  # not registered: no operator
    assert parse_cops(reply('+COPS: 0,2,"Telekom",7')) is None  # numeric format, not a number
    assert parse_cops(reply('+COPS: 0,0,"Tele\ufffdkom",7')) is None
    assert parse_cops(reply('+COPS: 0,0,"Telekom.de",7', final="ERROR")) is None


@pytest.mark.parametrize(
    ("line", "iccid"),
    [
        ("+CCID: 89490200001234567890", "89490200001234567890"),  # u-blox
        ("+ICCID: 8949020000123456789", "8949020000123456789"),  # SIMCom SIM7600
        ("+QCCID: 8949020000123456789F", "8949020000123456789"),  # Quectel: the F filler nibble is not a digit
        ("89860316244593771234", "89860316244593771234"),  # SIMCom SIM800: bare
        ('+CCID: "89490200001234567890"', "89490200001234567890"),
        ("+CCID: 894902000012345678", None),  # 18 digits
        ("+CCID: 894902000012345678901", None),  # 21 digits
        ("+CCID: 89490200001234567890F", None),
        ("262011234567890", None),  # an IMSI is not an ICCID
    ],
)
def test_iccid_spellings(line: str, iccid: str | None) -> None:
    assert parse_iccid(reply(line, echo="AT+CCID")) == iccid


def test_imsi() -> None:
    assert parse_imsi(reply("262011234567890", echo="AT+CIMI")) == "262011234567890"
    assert parse_imsi(reply("RING", "262011234567890")) == "262011234567890"
    assert parse_imsi(reply("2620112345678901")) is None  # 16 digits
    assert parse_imsi(reply("89490200001234567890")) is None
    assert parse_imsi(reply(final="+CME ERROR: 10")) is None


def test_final_result_waits_for_the_whole_line() -> None:
    assert final_result(b"AT+CSQ\r\r\n+CSQ: 21,99\r\n\r\nOK") is None
    assert final_result(b"AT+CSQ\r\r\n+CSQ: 21,99\r\n\r\nOK\r\n") == "OK"
    assert final_result(b"\r\n+CME ERROR: 1") is None  # could still become 10, 11...
    assert final_result(b"\r\n+CME ERROR: 10\r\n") == "+CME ERROR: 10"
    assert final_result(b"\xffERROR\r\n") == "ERROR"  # noise before it on the line
    assert final_result(b"AT+COPS?\r") is None  # the echo is no result


def test_describe_failure() -> None:
    assert describe_failure(reply(final="+CME ERROR: 10")) == "+CME ERROR: 10 (SIM not inserted)"
    assert describe_failure(reply(final="+CME ERROR: 7")) == "+CME ERROR: 7"
    assert describe_failure(reply(final="ERROR")) == "ERROR"
    assert describe_failure(reply("+CSQ: x")) == "unreadable reply"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_no_bytes_make_a_parser_raise(data: bytes) -> None:
    for parse in PARSERS:
        parse(data)
    final_result(data)
    describe_failure(data)


# Pieces of real answers in any order, with noise: reaches the parsers' inner branches far more often than random bytes.
FRAGMENTS = st.lists(
    st.sampled_from(
        [
            b"+CSQ: ",
            b"+CREG: ",
            b"+CGREG: ",
            b"+COPS: ",
            b"+QCCID: ",
            b"+CIMI: ",
            b"0",
            b"1",
            b"2",
            b"99",
            b"7",
            b"12345",
            b"8949020000123456789",
            b"F",
            b",",
            b'"',
            b"00C3",
            b" ",
            b"\r\n",
            b"\r",
            b"OK",
            b"ERROR",
            b"+CME ERROR: ",
            b"\xff",
            b"\xc3",
        ]
    )
    | st.binary(max_size=3),
    max_size=40,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(FRAGMENTS)
def test_no_mix_of_answer_pieces_makes_a_parser_raise(data: bytes) -> None:
    for parse in PARSERS:
        parse(data)
    describe_failure(data)


# Lines a modem may mix into an answer: URCs, and noise that holds no line break.
NOISE_LINE = st.one_of(
    st.sampled_from(["RING", "+CREG: 1", '+CMTI: "SM",3', "+CGREG: 0", "NO CARRIER"]),
    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").decode("latin-1")).filter(lambda s: "OK" not in s and "ERROR" not in s),
)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 31) | st.just(99), st.integers(0, 7) | st.just(99), st.lists(NOISE_LINE, max_size=3), st.lists(NOISE_LINE, max_size=3))
def test_csq_is_found_among_urcs_and_noise(rssi: int, ber: int, before: list[str], after: list[str]) -> None:
    assert parse_csq(reply(*before, f"+CSQ: {rssi},{ber}", *after, echo="AT+CSQ")) == Signal(rssi, ber)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10), st.lists(NOISE_LINE, max_size=3))
def test_registration_is_found_among_urcs_and_noise(stat: int, noise: list[str]) -> None:
    assert parse_cgreg(reply(*noise, f'+CGREG: 2,{stat},"00C3","0010ABCD",7', echo="AT+CGREG?")) == Registration(
        RegStatus(stat), "00C3", "0010ABCD", AccessTech.E_UTRAN
    )


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"'), min_size=1, max_size=30))
def test_any_printable_operator_name_is_read(name: str) -> None:
    found = parse_cops(reply(f'+COPS: 0,0,"{name}",0'))
    assert found is not None and found.name == name


# --- health --------------------------------------------------------------------------------

GOOD = PollResult(
    signal=Signal(21, 99),
    cs=Registration(RegStatus.HOME),
    ps=Registration(RegStatus.HOME, "00C3", "0010ABCD", AccessTech.E_UTRAN),
    operator=Operator(0, "Telekom.de", OperatorFormat.LONG, AccessTech.E_UTRAN),
    iccid="89490200001234567890",
    imsi="262011234567890",
)


def test_a_poll_with_problems_keeps_the_last_good_values() -> None:
    first = ModemHealth().merged(GOOD, now=100.0)
    assert first.problem is None and first.ok_at == 100.0
    second = first.merged(PollResult(ps=Registration(RegStatus.SEARCHING), problems=["AT+CSQ: no answer within 3 s"]), now=400.0)
    assert second.signal == Signal(21, 99) and second.iccid == first.iccid
    assert second.ps == Registration(RegStatus.SEARCHING)  # what it did read is new
    assert second.ok_at == 100.0 and second.problem == "AT+CSQ: no answer within 3 s"
    assert second.merged(PollResult(signal=Signal(99, 99)), now=700.0).problem is None


def test_summary_and_json() -> None:
    health = ModemHealth().merged(GOOD, now=100.0)
    assert health.summary() == "-71 dBm, registered home (PS), Telekom.de, LTE, ICCID 89490200001234567890, IMSI 262011234567890"
    roaming = ModemHealth(signal=Signal(99, 99), cs=Registration(RegStatus.HOME), ps=Registration(RegStatus.DENIED), problem="AT+COPS?: ERROR")
    assert roaming.summary() == "signal unknown, registration denied (PS), registered home (CS), problem: AT+COPS?: ERROR"
    assert ModemHealth().summary() == "not polled yet"
    data = health.to_json(now=130.0)
    assert data["signal"] == {"dbm": -71, "csq": 21, "ber": None}
    assert data["ps"] == {"status": "registered home", "stat": 1, "registered": True, "lac": "00C3", "cell_id": "0010ABCD", "access_technology": "LTE"}
    assert data["operator"] == {"name": "Telekom.de", "format": "long", "mode": 0}
    assert (data["ok_age_s"], data["problem"], data["iccid"], data["imsi"]) == (30.0, None, GOOD.iccid, GOOD.imsi)


def test_boot_notification_fields_fit_ci_string_20() -> None:
    assert ModemHealth().boot_notification_fields() == {}
    fields = ModemHealth().merged(GOOD, now=0.0).boot_notification_fields()
    assert fields == {"iccid": "89490200001234567890", "imsi": "262011234567890"}
    assert all(len(v) <= 20 for v in fields.values())


def test_ids_are_read_again_when_unknown_due_or_the_registration_drops() -> None:
    known = ModemHealth().merged(GOOD, now=0.0)
    home, searching = Registration(RegStatus.HOME), Registration(RegStatus.SEARCHING)
    assert ids_due(ModemHealth(), home, home, 3, every=12)  # never read
    assert ids_due(known, home, home, None, every=12)  # last read failed, or the port went away
    assert not ids_due(known, home, home, 11, every=12)
    assert ids_due(known, home, home, 12, every=12)
    assert ids_due(known, home, searching, 1, every=12)  # PS dropped: the SIM may be out
    assert not ids_due(known, home, None, 1, every=12)  # no answer is no drop


def test_port_problem_texts() -> None:
    assert port_problem("/dev/ttyUSB2", serial.SerialException(2, "could not open port /dev/ttyUSB2: ...")) == "AT port /dev/ttyUSB2: No such file or directory"
    assert (
        port_problem("/dev/ttyUSB2", serial.SerialException(11, "Could not exclusively lock port"))
        == "AT port /dev/ttyUSB2: in use by another program (locked)"
    )
    assert port_problem("/dev/ttyUSB2", ValueError("bad baud rate")) == "AT port /dev/ttyUSB2: bad baud rate"


# --- the simulated modem (pure) -----------------------------------------------------------


def test_sim_modem_frames_like_a_module() -> None:
    modem = SimModem()
    assert modem.respond(b"AT+CSQ") == b"AT+CSQ\r\r\n+CSQ: 21,99\r\n\r\nOK\r\n"
    assert modem.respond(b"at+creg?") == b'at+creg?\r\r\n+CREG: 2,1,"00C3","0010ABCD",7\r\n\r\nOK\r\n'
    assert modem.respond(b"ATZ") == b"ATZ\r\r\nERROR\r\n"
    modem.iccid_commands = frozenset({"AT+QCCID"})
    assert modem.respond(b"AT+CCID").endswith(b"\r\nERROR\r\n")
    modem.faults["AT+CIMI"] = Fault.CME_ERROR
    assert modem.respond(b"AT+CIMI") == b"AT+CIMI\r\r\n+CME ERROR: 10\r\n"
    modem.faults["AT+CIMI"] = Fault.SILENT
    assert modem.respond(b"AT+CIMI") == b""
    assert modem.commands == ["AT+CSQ", "AT+CREG?", "ATZ", "AT+CCID", "AT+CIMI", "AT+CIMI"]


# --- ModemMonitor against the simulated modem on a pty ------------------------------------


def monitor(path: str | Path, *, reread_ids_every: int = 12) -> ModemMonitor:
    return ModemMonitor(ModemSettings(str(path), command_timeout_s=TIMEOUT_S), reread_ids_every=reread_ids_every)


@pytest.mark.parametrize("echo", [True, False])
async def test_a_poll_reads_everything_with_queries_only_and_lets_the_port_go(echo: bool) -> None:
    modem = SimModem(echo=echo)
    async with SimModemPort(modem) as port:
        health = await monitor(port.path).poll_once()
        assert health.problem is None and health.ok_at is not None
        assert health.summary() == "-71 dBm, registered home (PS), Telekom.de, LTE, ICCID 89490200001234567890, IMSI 262011234567890"
        assert health.boot_notification_fields() == {"iccid": modem.iccid, "imsi": modem.imsi}
        assert set(modem.commands) <= QUERIES
        # Closed after the poll: a technician's terminal can take it, exclusively.
        serial.Serial(port.path, exclusive=True).close()


async def test_garbage_and_urcs_around_answers_are_tolerated() -> None:
    modem = SimModem(urcs=("RING", "+CREG: 1", '+CMTI: "SM",3'))
    modem.faults = {command: Fault.GARBAGE_BEFORE for command in QUERIES}
    async with SimModemPort(modem) as port:
        health = await monitor(port.path).poll_once()
    assert health.problem is None
    assert (health.signal, health.iccid, health.imsi) == (Signal(21, 99), modem.iccid, modem.imsi)


async def test_garbage_within_an_answer_is_a_problem_and_the_last_good_value_stays() -> None:
    modem = SimModem()
    async with SimModemPort(modem) as port:
        watch = monitor(port.path)
        await watch.poll_once()
        modem.rssi = 5
        modem.faults["AT+CSQ"] = Fault.GARBAGE_WITHIN
        health = await watch.poll_once()
        assert health.problem == "AT+CSQ: unreadable reply"
        assert health.signal == Signal(21, 99) and health.operator is not None and health.operator.name == "Telekom.de"
        del modem.faults["AT+CSQ"]
        health = await watch.poll_once()
        assert health.problem is None and health.signal == Signal(5, 99)


async def test_a_command_that_times_out_does_not_stop_the_next() -> None:
    modem = SimModem(ps=2)
    modem.faults["AT+CREG?"] = Fault.SILENT
    async with SimModemPort(modem) as port:
        started = time.monotonic()
        health = await monitor(port.path).poll_once()
        elapsed = time.monotonic() - started
    assert health.problem == f"AT+CREG?: no answer within {TIMEOUT_S:g} s"
    assert health.cs is None and health.ps == Registration(RegStatus.SEARCHING)
    assert health.signal == Signal(21, 99) and health.imsi == modem.imsi
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 0.5


async def test_error_answers_are_problems_with_their_meaning() -> None:
    modem = SimModem()
    modem.faults = {"AT+CIMI": Fault.CME_ERROR, "AT+COPS?": Fault.ERROR}
    async with SimModemPort(modem) as port:
        health = await monitor(port.path).poll_once()
    assert health.problem == "AT+COPS?: ERROR; AT+CIMI: +CME ERROR: 10 (SIM not inserted)"
    assert health.imsi is None and health.iccid == modem.iccid


async def test_the_iccid_spelling_that_works_is_remembered() -> None:
    modem = SimModem(iccid="8949020000123456789F", iccid_commands=frozenset({"AT+QCCID"}))
    async with SimModemPort(modem) as port:
        watch = monitor(port.path, reread_ids_every=1)
        health = await watch.poll_once()
        assert health.iccid == "8949020000123456789" and health.problem is None
        tried = [c for c in modem.commands if "CCID" in c]
        assert tried == ["AT+CCID", "AT+ICCID", "AT+QCCID"]
        modem.commands.clear()
        await watch.poll_once()
        assert [c for c in modem.commands if "CCID" in c] == ["AT+QCCID"]
        modem.iccid_commands = frozenset()
        health = await watch.poll_once()
        assert health.problem == "ICCID: AT+QCCID: ERROR, AT+CCID: ERROR, AT+ICCID: ERROR"
        assert health.iccid == "8949020000123456789"


async def test_ids_are_not_read_at_every_poll() -> None:
    modem = SimModem()
    async with SimModemPort(modem) as port:
        watch = monitor(port.path, reread_ids_every=3)
        for _ in range(4):
            await watch.poll_once()
        assert modem.commands.count("AT+CIMI") == 2  # polls 1 and 4
        modem.ps = 2  # registration lost: the SIM may have been swapped
        await watch.poll_once()
        assert modem.commands.count("AT+CIMI") == 3


async def test_a_missing_port_is_a_problem_text_not_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "ttyUSB2"
    health = await monitor(path).poll_once()
    assert health.problem == f"AT port {path}: No such file or directory"
    assert health.summary() == f"problem: AT port {path}: No such file or directory"
    assert health.ok_at is None


async def test_a_port_held_by_someone_else_is_left_alone() -> None:
    async with SimModemPort(SimModem()) as port:
        with serial.Serial(port.path, exclusive=True):
            health = await monitor(port.path).poll_once()
        assert health.problem == f"AT port {port.path}: in use by another program (locked)"
        assert port.modem.commands == []


async def test_a_port_vanishing_between_polls_keeps_the_values_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "dev" / "ttyUSB2"
    modem = SimModem()
    watch = monitor(path)
    async with SimModemPort(modem, str(path)):
        await watch.poll_once()
    assert not path.exists()  # unplugged: the link is gone
    health = await watch.poll_once()
    assert health.problem == f"AT port {path}: No such file or directory"
    assert health.signal == Signal(21, 99) and health.iccid == modem.iccid
    replugged = SimModem(iccid="89490200009999999999")  # another modem (or SIM) in its place
    async with SimModemPort(replugged, str(path)):
        health = await watch.poll_once()
    assert health.problem is None and health.iccid == "89490200009999999999"


async def test_a_port_vanishing_mid_poll_is_a_problem_and_what_was_read_counts() -> None:
    modem = SimModem(rssi=10)
    modem.faults["AT+CGREG?"] = Fault.HANG_UP
    async with SimModemPort(modem) as port:
        health = await monitor(port.path).poll_once()
    assert health.problem == f"AT port {port.path}: lost ([Errno 5] Input/output error)"
    assert health.signal == Signal(10, 99) and health.cs == Registration(RegStatus.HOME, "00C3", "0010ABCD", AccessTech.E_UTRAN)
    assert health.ps is None and modem.commands == ["AT+CSQ", "AT+CREG?", "AT+CGREG?"]


async def test_run_polls_on_and_logs_a_problem_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    modem = SimModem()
    modem.faults["AT+COPS?"] = Fault.SILENT
    async with SimModemPort(modem) as port:
        watch = ModemMonitor(ModemSettings(port.path, poll_interval_s=0.01, command_timeout_s=0.05))
        with caplog.at_level(logging.INFO, logger="gateway.modem"):
            async with asyncio.TaskGroup() as group:
                task = group.create_task(watch.run())
                await _until(lambda: modem.commands.count("AT+CSQ") >= 3)
                modem.faults.clear()
                polls = modem.commands.count("AT+CSQ")
                await _until(lambda: modem.commands.count("AT+CSQ") >= polls + 3)
                task.cancel()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"modem {port.path}: AT+COPS?: no answer within 0.05 s"]
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 1
    assert watch.health.problem is None and watch.health.operator is not None


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# --- charger-gateway simulate plays the configured modems --------------------------------


def _config(tmp_path: Path, *uplinks: UplinkSettings) -> Config:
    return Config(
        source=tmp_path / "gateway.yaml",
        charge_point=ChargePointInfo("TEST-CP", "Test", "Cluster"),
        backend=BackendSettings(url="ws://127.0.0.1:9/ocpp"),
        buses=(),
        connectors=(),
        storage=StorageSettings(tmp_path / "gateway.db"),
        uplinks=uplinks,
    )


async def test_the_simulator_plays_a_modem_at_each_uplinks_at_port(tmp_path: Path) -> None:
    at_port = tmp_path / "dev" / "ttyUSB2"
    config = _config(tmp_path, UplinkSettings("wired", interface="eth0"), UplinkSettings("gprs", interface="ppp0", modem=ModemSettings(str(at_port))))
    ready = asyncio.Event()
    task = asyncio.create_task(run_simulation(config, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        health = await monitor(at_port).poll_once()
        assert health.problem is None and health.iccid is not None and health.imsi is not None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not os.path.lexists(at_port)


async def test_the_simulator_refuses_two_modems_on_one_port(tmp_path: Path) -> None:
    at_port = str(tmp_path / "ttyUSB2")
    config = _config(tmp_path, UplinkSettings("a", modem=ModemSettings(at_port)), UplinkSettings("b", modem=ModemSettings(at_port)))
    with pytest.raises(SimulatorError, match="uplink b: modem AT port .* is also the port of uplink a"):
        await run_simulation(config)
