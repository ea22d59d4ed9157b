"""The modem's AT replies, read: the pure core of gateway.modem. No I/O.

Parsers for the replies of the 3GPP TS 27.007 query commands (+CSQ, +CREG?,
+CGREG?, +COPS?, the ICCID commands, +CIMI), `ModemHealth` (what is known, with a
status line and JSON) and the decision when ICCID and IMSI are read again. Each
parser takes the raw bytes of one reply, echo, URCs and line noise included, and
returns a value or None; no input makes one raise.
"""

from __future__ import annotations

import enum
import errno
import os
import re
from dataclasses import dataclass, field
from typing import Any

# --- reply lines -----------------------------------------------------------------------

# ITU-T V.250 §5.7.1 and 3GPP TS 27.007 §9.2: the codes that end the answer to a command.
_FINAL = re.compile(r"OK|ERROR|\+CM[ES] ERROR:.*", re.ASCII)
_LINE_BREAK = re.compile(rb"[\r\n]")

# 3GPP TS 27.007 §9.2.1: the +CME ERROR codes a health poll meets, for the problem text.
CME_ERRORS = {
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    30: "no network service",
    100: "unknown",
}


def _is_noise(char: str) -> bool:
    # U+FFFD stands for a byte that was not UTF-8: line noise.
    return char.isspace() or not char.isprintable() or char == "\ufffd"


def _clean(text: str) -> str:
    """The line without the noise at its ends (bytes from a glitch on the UART before or after it)."""
    start, end = 0, len(text)
    while start < end and _is_noise(text[start]):
        start += 1
    while end > start and _is_noise(text[end - 1]):
        end -= 1
    return text[start:end]


def _lines(data: bytes, *, whole_only: bool = False) -> list[str]:
    """The non-empty lines of a reply. `whole_only` leaves out the bytes after the last line break (a line still arriving)."""
    parts = _LINE_BREAK.split(data)
    if whole_only:
        parts = parts[:-1]
    cleaned = (_clean(part.decode("utf-8", errors="replace")) for part in parts)
    return [line for line in cleaned if line]


def final_result(data: bytes) -> str | None:
    """The final result code ("OK", "ERROR", "+CME ERROR: 10") of a reply; None until one has arrived as a whole line."""
    for line in _lines(data, whole_only=True):
        if _FINAL.fullmatch(line):
            return line
    return None


def _information(data: bytes) -> list[str] | None:
    """The lines before the final result code when it is OK; None for ERROR, +CME ERROR or none at all.

    Echo and unsolicited result codes (RING, +CMTI, "+CREG: 1") are among the
    lines: each parser picks its own line by its form, so they need no removal.
    """
    lines: list[str] = []
    for line in _lines(data):
        if _FINAL.fullmatch(line):
            return lines if line == "OK" else None
        lines.append(line)
    return None


def describe_failure(reply: bytes) -> str:
    """Why a reply gave no value, for the problem text: its error code, or that it could not be read."""
    final = final_result(reply)
    if final is None or final == "OK":
        return "unreadable reply"
    if (match := re.fullmatch(r"\+CME ERROR: *([0-9]{1,4})", final, re.ASCII)) and int(match[1]) in CME_ERRORS:
        return f"{final} ({CME_ERRORS[int(match[1])]})"
    return final


# --- values ------------------------------------------------------------------------------


class AccessTech(enum.Enum):
    """<AcT> of +CREG, +CGREG and +COPS (3GPP TS 27.007 §7.3)."""

    GSM = 0
    GSM_COMPACT = 1
    UTRAN = 2
    EGPRS = 3
    HSDPA = 4
    HSUPA = 5
    HSPA = 6
    E_UTRAN = 7
    EC_GSM_IOT = 8
    NB_IOT = 9  # E-UTRAN (NB-S1 mode)
    E_UTRA_5GCN = 10
    NR_5GCN = 11
    NG_RAN = 12
    EN_DC = 13  # E-UTRA-NR dual connectivity

    @property
    def label(self) -> str:
        return _ACT_LABELS[self]


_ACT_LABELS = {
    AccessTech.GSM: "GSM",
    AccessTech.GSM_COMPACT: "GSM Compact",
    AccessTech.UTRAN: "UMTS",
    AccessTech.EGPRS: "EDGE",
    AccessTech.HSDPA: "HSDPA",
    AccessTech.HSUPA: "HSUPA",
    AccessTech.HSPA: "HSPA",
    AccessTech.E_UTRAN: "LTE",
    AccessTech.EC_GSM_IOT: "EC-GSM-IoT",
    AccessTech.NB_IOT: "NB-IoT",
    AccessTech.E_UTRA_5GCN: "LTE (5GC)",
    AccessTech.NR_5GCN: "NR (5GC)",
    AccessTech.NG_RAN: "NG-RAN",
    AccessTech.EN_DC: "LTE+NR",
}


def _act(text: str) -> AccessTech | None:
    """An <AcT> field; None when empty or a value newer than this table (still a readable reply)."""
    try:
        return AccessTech(int(text))
    except ValueError:
        return None


class RegStatus(enum.Enum):
    """<stat> of +CREG (circuit switched) and +CGREG (packet switched), 3GPP TS 27.007 §7.2, §10.1.20."""

    NOT_REGISTERED = 0  # and not searching
    HOME = 1
    SEARCHING = 2
    DENIED = 3
    UNKNOWN = 4
    ROAMING = 5
    HOME_SMS_ONLY = 6
    ROAMING_SMS_ONLY = 7
    EMERGENCY_ONLY = 8
    HOME_CSFB_NOT_PREFERRED = 9
    ROAMING_CSFB_NOT_PREFERRED = 10

    @property
    def label(self) -> str:
        return _REG_LABELS[self]

    @property
    def registered(self) -> bool:
        return self in _REGISTERED


_REG_LABELS = {
    RegStatus.NOT_REGISTERED: "not registered",
    RegStatus.HOME: "registered home",
    RegStatus.SEARCHING: "searching",
    RegStatus.DENIED: "registration denied",
    RegStatus.UNKNOWN: "registration unknown",
    RegStatus.ROAMING: "registered roaming",
    RegStatus.HOME_SMS_ONLY: "registered home, SMS only",
    RegStatus.ROAMING_SMS_ONLY: "registered roaming, SMS only",
    RegStatus.EMERGENCY_ONLY: "emergency services only",
    RegStatus.HOME_CSFB_NOT_PREFERRED: "registered home, CSFB not preferred",
    RegStatus.ROAMING_CSFB_NOT_PREFERRED: "registered roaming, CSFB not preferred",
}
_REGISTERED = frozenset(status for status in RegStatus if status.value in (1, 5, 6, 7, 9, 10))


@dataclass(frozen=True)
class Signal:
    """+CSQ: received signal strength and bit error rate (3GPP TS 27.007 §8.5)."""

    rssi: int  # 0..31, 99 = not known
    ber: int  # 0..7 (RXQUAL, GSM only), 99 = not known

    @property
    def dbm(self) -> int | None:
        """0 is -113 dBm or less, 31 is -51 dBm or more, 2 dBm a step."""
        return None if self.rssi == 99 else -113 + 2 * self.rssi


@dataclass(frozen=True)
class Registration:
    """One domain's network registration, from +CREG? (CS) or +CGREG? (PS)."""

    status: RegStatus
    lac: str | None = None  # location or tracking area code, hex; only with <n> 2 and up
    cell_id: str | None = None  # hex
    act: AccessTech | None = None


class OperatorFormat(enum.Enum):
    """<format> of +COPS (3GPP TS 27.007 §7.3)."""

    LONG = 0  # long alphanumeric, e.g. "Telekom.de"
    SHORT = 1  # short alphanumeric
    NUMERIC = 2  # MCC and MNC, e.g. "26201"


@dataclass(frozen=True)
class Operator:
    """+COPS?: the selected operator; name None when there is none (the modem is not registered)."""

    mode: int  # 0 automatic, 1 manual, 2 deregistered, 4 manual then automatic
    name: str | None = None
    format: OperatorFormat | None = None
    act: AccessTech | None = None


# --- parsers -------------------------------------------------------------------------------
# Digit runs are bounded: int() of a few thousand digits of noise would raise.

_CSQ = re.compile(r"\+CSQ: *([0-9]{1,3}) *, *([0-9]{1,3})", re.ASCII)
_HEX_FIELD = re.compile(r'"?([0-9A-Fa-f]{1,10})"?', re.ASCII)
_COPS = re.compile(r'\+COPS: *([0-4])(?: *, *([0-2]) *, *"([^"]{0,64})"(?: *, *([0-9]{1,2}))?)?', re.ASCII)
_ICCID = re.compile(r'(?:\+(?:CCID|ICCID|QCCID): *)?"?([0-9]{19,20}|[0-9]{19}[Ff])"?', re.ASCII)
# 3GPP TS 23.003 §2.2: at most 15 digits (MCC 3, MNC 2-3, MSIN).
_IMSI = re.compile(r'(?:\+CIMI: *)?"?([0-9]{6,15})"?', re.ASCII)


def parse_csq(reply: bytes) -> Signal | None:
    """AT+CSQ -> "+CSQ: <rssi>,<ber>"."""
    for line in _information(reply) or ():
        if (match := _CSQ.fullmatch(line)) is not None:
            rssi, ber = int(match[1]), int(match[2])
            if (rssi <= 31 or rssi == 99) and (ber <= 7 or ber == 99):
                return Signal(rssi, ber)
    return None


def _parse_registration(reply: bytes, prefix: str) -> Registration | None:
    """The read form "<prefix>: <n>,<stat>[,<lac>,<ci>[,<AcT>...]]" (3GPP TS 27.007 §7.2, §10.1.20).

    An unsolicited "+CREG: <stat>" has one field, and "+CREG: <stat>,"<lac>",..."
    a quoted second one; the read form starts with two plain numbers.
    """
    for line in _information(reply) or ():
        if not line.startswith(prefix + ":"):
            continue
        fields = [f.strip() for f in line[len(prefix) + 1 :].split(",")]
        if len(fields) < 2 or not all(re.fullmatch(r"[0-9]{1,2}", f, re.ASCII) for f in fields[:2]) or int(fields[0]) > 5:
            continue
        try:
            status = RegStatus(int(fields[1]))
        except ValueError:
            continue
        located: list[str | None] = []
        for text in fields[2:4]:
            if text in ("", '""'):
                located.append(None)
            elif (match := _HEX_FIELD.fullmatch(text)) is not None:
                located.append(match[1].upper())
            else:
                break  # noise in a field: not this line
        else:
            located += [None] * (2 - len(located))
            act_field = fields[4] if len(fields) > 4 else ""
            if act_field and not re.fullmatch(r"[0-9]{1,2}", act_field, re.ASCII):
                continue
            return Registration(status, located[0], located[1], _act(act_field) if act_field else None)
    return None


def parse_creg(reply: bytes) -> Registration | None:
    """AT+CREG? -> circuit-switched registration."""
    return _parse_registration(reply, "+CREG")


def parse_cgreg(reply: bytes) -> Registration | None:
    """AT+CGREG? -> packet-switched (GPRS) registration: the one the data link needs."""
    return _parse_registration(reply, "+CGREG")


def parse_cops(reply: bytes) -> Operator | None:
    """AT+COPS? -> "+COPS: <mode>[,<format>,"<oper>"[,<AcT>]]"."""
    for line in _information(reply) or ():
        if (match := _COPS.fullmatch(line)) is None:
            continue
        mode = int(match[1])
        if match[2] is None:
            return Operator(mode)
        form, name = OperatorFormat(int(match[2])), match[3]
        if not name.isprintable() or "\ufffd" in name:
            continue  # noise inside the name
        if form is OperatorFormat.NUMERIC and not re.fullmatch(r"[0-9]{5,6}", name, re.ASCII):
            continue
        return Operator(mode, name or None, form, _act(match[4]) if match[4] else None)
    return None


def parse_iccid(reply: bytes) -> str | None:
    """AT+CCID / AT+ICCID / AT+QCCID -> the SIM's ICCID, 19 or 20 digits (ITU-T E.118).

    A 19-digit ICCID fills the 10 bytes of EF_ICCID with an F nibble; some modems
    show it ("...F"), it is not part of the number.
    """
    for line in _information(reply) or ():
        if (match := _ICCID.fullmatch(line)) is not None:
            return match[1].rstrip("Ff")
    return None


def parse_imsi(reply: bytes) -> str | None:
    """AT+CIMI -> the IMSI, a bare number of up to 15 digits."""
    for line in _information(reply) or ():
        if (match := _IMSI.fullmatch(line)) is not None:
            return match[1]
    return None


# --- what is known ----------------------------------------------------------------------------


@dataclass
class PollResult:
    """What one poll read; None where it got no usable answer (the last good value stays)."""

    signal: Signal | None = None
    cs: Registration | None = None
    ps: Registration | None = None
    operator: Operator | None = None
    iccid: str | None = None
    imsi: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModemHealth:
    """The modem as last seen: every value is the last good one read; `problem` tells what the last poll missed."""

    signal: Signal | None = None
    cs: Registration | None = None  # circuit switched, AT+CREG?
    ps: Registration | None = None  # packet switched (GPRS), AT+CGREG?: what the data link needs
    operator: Operator | None = None
    iccid: str | None = None
    imsi: str | None = None
    ok_at: float | None = None  # monotonic time of the last poll without a problem
    problem: str | None = None  # the last poll's trouble; None when it read everything

    @property
    def access_technology(self) -> AccessTech | None:
        for known in (self.operator, self.ps, self.cs):
            if known is not None and known.act is not None:
                return known.act
        return None

    def merged(self, result: PollResult, now: float) -> ModemHealth:
        """This health updated by one poll at monotonic `now`: new values where it read them, the old ones elsewhere."""
        return ModemHealth(
            signal=result.signal or self.signal,
            cs=result.cs or self.cs,
            ps=result.ps or self.ps,
            operator=result.operator or self.operator,
            iccid=result.iccid or self.iccid,
            imsi=result.imsi or self.imsi,
            ok_at=self.ok_at if result.problems else now,
            problem="; ".join(result.problems) or None,
        )

    def registration_text(self) -> str | None:
        """E.g. "registered home (PS)"; CS is added when it differs, as data needs PS and calls or SMS need CS."""
        parts = [f"{reg.status.label} ({domain})" for domain, reg in (("PS", self.ps), ("CS", self.cs)) if reg is not None]
        if self.ps is not None and self.cs is not None and self.ps.status is self.cs.status:
            parts = parts[:1]
        return ", ".join(parts) or None

    def summary(self) -> str:
        """One line for a status screen, e.g. "-71 dBm, registered home (PS), Telekom.de, LTE, ICCID 8949..., IMSI 262...".

        Values are the last good ones; a problem of the last poll comes at the end.
        """
        parts: list[str] = []
        if self.signal is not None:
            parts.append("signal unknown" if self.signal.dbm is None else f"{self.signal.dbm} dBm")
        if (registration := self.registration_text()) is not None:
            parts.append(registration)
        if self.operator is not None:
            parts.append(self.operator.name or "no operator")
        if (act := self.access_technology) is not None:
            parts.append(act.label)
        if self.iccid is not None:
            parts.append(f"ICCID {self.iccid}")
        if self.imsi is not None:
            parts.append(f"IMSI {self.imsi}")
        if self.problem is not None:
            parts.append(f"problem: {self.problem}")
        return ", ".join(parts) or "not polled yet"

    def to_json(self, now: float) -> dict[str, Any]:
        """A plain dict for status output; `now` is monotonic, the time of the last good poll is given as its age."""
        signal, operator, act = self.signal, self.operator, self.access_technology
        return {
            "signal": None if signal is None else {"dbm": signal.dbm, "csq": signal.rssi, "ber": None if signal.ber == 99 else signal.ber},
            "cs": _registration_json(self.cs),
            "ps": _registration_json(self.ps),
            "operator": None
            if operator is None
            else {"name": operator.name, "format": None if operator.format is None else operator.format.name.lower(), "mode": operator.mode},
            "access_technology": None if act is None else act.label,
            "iccid": self.iccid,
            "imsi": self.imsi,
            "ok_age_s": None if self.ok_at is None else round(now - self.ok_at, 1),
            "problem": self.problem,
            "summary": self.summary(),
        }

    def boot_notification_fields(self) -> dict[str, str]:
        """The known ones of `iccid` and `imsi`, to add to a BootNotification.req payload (OCPP 1.6: CiString20Type each)."""
        return {key: value for key, value in (("iccid", self.iccid), ("imsi", self.imsi)) if value is not None and len(value) <= 20}


def _registration_json(reg: Registration | None) -> dict[str, Any] | None:
    if reg is None:
        return None
    return {
        "status": reg.status.label,
        "stat": reg.status.value,
        "registered": reg.status.registered,
        "lac": reg.lac,
        "cell_id": reg.cell_id,
        "access_technology": None if reg.act is None else reg.act.label,
    }


def ids_due(known: ModemHealth, cs: Registration | None, ps: Registration | None, polls_since_ids: int | None, every: int) -> bool:
    """Whether this poll reads ICCID and IMSI, given the registration it just read.

    They change only with the SIM, and a SIM swap takes the SIM out: the modem
    loses its registration, or (USB modules) the port goes away. So they are
    read when not known, when the last read failed or the port was lost
    (`polls_since_ids` None), when a domain that was registered is no longer,
    and every `every` polls anyway for what that misses (hot-swap between two polls).
    """
    if known.iccid is None or known.imsi is None or polls_since_ids is None or polls_since_ids >= every:
        return True
    return any(
        before is not None and before.status.registered and after is not None and not after.status.registered
        for before, after in ((known.cs, cs), (known.ps, ps))
    )


def port_problem(path: str, exc: BaseException) -> str:
    """The problem text for a port that cannot be opened, e.g. "AT port /dev/ttyUSB2: No such file or directory"."""
    code = getattr(exc, "errno", None)
    if code in (errno.EAGAIN, errno.EWOULDBLOCK):
        reason = "in use by another program (locked)"  # pyserial's flock(LOCK_EX | LOCK_NB) failed
    elif isinstance(code, int):
        reason = os.strerror(code)
    else:
        reason = str(exc)
    return f"AT port {path}: {reason}"
