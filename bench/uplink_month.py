"""The month of bench/uplink_bytes.py, pure: sessions, each link's wire operations, payloads and the header model.

No I/O here: the timeline is made from a seed, and `schedule` decides, by the
simulated clock alone, when each CALL, ping and reconnect of one link happens
(strictly one CALL in flight, a round trip of RTT_S each); bench/uplink_bytes.py
plays these operations on real connections and counts their bytes.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from gateway import ocpp_messages
from gateway.clock import Clock
from gateway.reading import Reading
from gateway.session import Transaction, TransactionStarted, TransactionStopped
from gateway.settings import ChargePointInfo

MONTH_DAYS = 30
CONNECTORS = tuple(range(1, 17))
SESSIONS_PER_DAY = 8
SLOT_S = 86400 // SESSIONS_PER_DAY  # one session in each 3-hour slot of a connector's day
SAMPLE_S = 60  # MeterValueSampleInterval
HEARTBEAT_S = 300  # HeartbeatInterval, in the BootNotification answer to (a) and (b) alike
POWER_W = 11000.0
ID_TAG = "FreeCharging"  # free charging: every plug-in starts a transaction with this idTag
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import")
START_AFTER_S, FLOW_AFTER_S = 2.0, 4.0  # after the plug-in: StartTransaction, then energy flows (Charging)
MONTH_START = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
CLOCK = Clock()

# MODEL of the IP/TCP headers (IPv4 20 + TCP 20 + timestamp option 12 = 52 bytes a segment):
RTT_S = 0.5  # a GPRS round trip, in simulated time
DELAYED_ACK_S = 0.04  # Linux's shortest delayed-ACK time
MSS = 1448  # MTU 1500 less the headers
HEADER_B = 52
SYN_B = 60  # SYN and SYN-ACK also carry MSS, SACK-permitted and window scale
FLIGHTS = 3  # TLS 1.3 + upgrade: ClientHello, Finished, GET / ServerHello..Finished, tickets, 101
MODEL = (
    f"IP/TCP header model: {HEADER_B} B a segment (IPv4+TCP+timestamps), MSS {MSS}, RTT {RTT_S} s.\n"
    f"  a CALL (or ping): its segment(s); the answer (or pong) carrying the ACK (the backend answers within the\n"
    f"  delayed-ACK time); then a bare delayed ACK from the client, unless its next CALL leaves within\n"
    f"  {DELAYED_ACK_S * 1000:.0f} ms of the answer (queued CALLs go back to back and carry it).\n"
    f"  a connection: SYN, SYN-ACK ({SYN_B} B each), ACK; {FLIGHTS} handshake flights each way (TLS, upgrade),\n"
    f"  plus a segment per full MSS; a FIN exchange (3 segments) when a link drops (an upper bound: a dead\n"
    f"  link carries none). (b)'s pings, counted rather than played, sit alone in time: a bare ACK after each."
)

METER, STATUS, HEARTBEAT, PINGS, RECONNECT = "meter values", "statuses/transactions", "heartbeats", "pings", "reconnects"
CATEGORIES = (METER, STATUS, HEARTBEAT, PINGS, RECONNECT)


# --- the month (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One EV at one connector; times in seconds from the start of the month."""

    index: int
    connector: int
    plug: float
    charge_s: float
    unplug: float
    meter_start_wh: int

    @property
    def tx_start(self) -> float:
        return self.plug + START_AFTER_S

    @property
    def flow_end(self) -> float:
        return self.plug + FLOW_AFTER_S + self.charge_s

    def energy_at(self, t: float) -> int:
        flowed = min(max(t - self.plug - FLOW_AFTER_S, 0.0), self.charge_s)
        return self.meter_start_wh + round(flowed * POWER_W / 3600)

    def power_at(self, t: float, sample: int) -> float:
        if not self.plug + FLOW_AFTER_S <= t < self.flow_end:
            return 0.0
        return POWER_W + hash((self.index, sample)) % 161 - 80  # a real meter's jitter, +-80 W (ints hash the same every run)

    @property
    def meter_stop_wh(self) -> int:
        return self.energy_at(self.unplug)


def make_sessions(days: int, seed: int) -> list[Session]:
    """SESSIONS_PER_DAY sessions a day at every connector, one in each slot, at seeded random times.

    The last slots of the last day may end past the played days: what is due after the end is not sent.
    """
    rng = random.Random(seed)
    register = {c: rng.randrange(1_000_000, 20_000_000) for c in CONNECTORS}  # each box's energy register, Wh
    phase = {c: rng.uniform(0, SLOT_S) for c in CONNECTORS}  # slots apart from one connector to the next, as cars come
    sessions: list[Session] = []
    for day, c, slot in itertools.product(range(days), CONNECTORS, range(SESSIONS_PER_DAY)):
        charge_s = rng.uniform(3000, 30000) / POWER_W * 3600
        plugged = min(SLOT_S - 600, FLOW_AFTER_S + charge_s + rng.uniform(300, 3600))
        plug = day * 86400 + phase[c] + slot * SLOT_S + rng.uniform(0, SLOT_S - 300 - plugged)
        s = Session(len(sessions), c, plug, charge_s, plug + plugged, register[c])
        register[c] = s.meter_stop_wh
        sessions.append(s)
    return sessions


class Due(NamedTuple):
    """A message of the timeline: when it is due, for which connector, and what to build it from."""

    t: float
    connector: int
    action: str
    session: int  # Session.index; -1 for a status sent at boot
    arg: str | int = ""  # the status, or the sample number


def connector_messages(sessions: Iterable[Session]) -> list[Due]:
    """What one connector sends over the month, in time order."""
    out: list[Due] = []
    for s in sessions:
        c, i = s.connector, s.index
        out += [
            Due(s.plug, c, "StatusNotification", i, "Preparing"),
            Due(s.tx_start, c, "StartTransaction", i),
            Due(s.plug + FLOW_AFTER_S, c, "StatusNotification", i, "Charging"),
            Due(s.flow_end, c, "StatusNotification", i, "SuspendedEV"),
        ]
        out += [Due(s.tx_start + k * SAMPLE_S, c, "MeterValues", i, k) for k in range(1, math.ceil((s.unplug - s.tx_start) / SAMPLE_S))]
        out += [
            Due(s.unplug, c, "StopTransaction", i),
            Due(s.unplug + 1, c, "StatusNotification", i, "Finishing"),
            Due(s.unplug + 5, c, "StatusNotification", i, "Available"),
        ]
    return sorted(out)


def daily_drops(days: int, rng: random.Random) -> list[float]:
    return [day * 86400 + rng.uniform(0, 86400) for day in range(days)]


# --- one link's wire operations (pure) -------------------------------------------------

OPEN, CALL, PING, CLOSE = "open", "call", "ping", "close"


class Op(NamedTuple):
    """One thing the client does on the wire, at simulated time t."""

    kind: str  # OPEN, CALL, PING or CLOSE
    t: float
    category: str
    action: str = ""  # CALL: the OCPP action; CLOSE: "drop" (the link died) or "end" (of the month)
    due: Due | None = None
    bare_ack: bool = False  # the client ACKs the answer with a segment of its own


@dataclass(frozen=True)
class LinkPolicy:
    connectors: tuple[int, ...]
    heartbeat_when_idle: bool  # (a): after HEARTBEAT_S without a CALL; (b): every HEARTBEAT_S
    ping_idle_s: float = 0.0  # a ping after this long without a frame received; 0: none


def schedule(dues: Iterable[Due], drops: Sequence[float], end: float, policy: LinkPolicy) -> Iterator[Op]:
    """The link's operations: strictly one CALL in flight, heartbeats, pings and reconnects by the simulated clock."""
    status = dict.fromkeys(policy.connectors, "Available")
    free = last_call = last_rx = last_hb = 0.0  # answer of the CALL in flight; last CALL sent; last frame in; last Heartbeat

    def call(t: float, category: str, action: str, due: Due | None = None) -> Op:
        nonlocal free, last_call, last_rx
        t = max(t, free)
        last_call, free = t, t + RTT_S
        last_rx = max(last_rx, free)
        return Op(CALL, t, category, action, due)

    def connect(t: float) -> Iterator[Op]:
        nonlocal free, last_hb
        yield Op(OPEN, t, RECONNECT)
        free = t + 3 * RTT_S  # TCP, TLS 1.3 and the upgrade: a round trip each
        yield call(free, RECONNECT, "BootNotification")
        for c in (0, *policy.connectors):  # connector 0 (the charge point itself, OCPP 1.6 §4.9) and each connector
            yield call(free, RECONNECT, "StatusNotification", Due(free, c, "StatusNotification", -1, status.get(c, "Available")))
        last_hb = last_call

    yield from connect(0.0)
    queue = iter(dues)
    head = next(queue, None)
    drop = iter(drops)
    next_drop = next(drop, math.inf)
    while True:
        t_msg = head.t if head else math.inf
        t_hb = (last_call if policy.heartbeat_when_idle else last_hb) + HEARTBEAT_S
        t_ping = last_rx + policy.ping_idle_s if policy.ping_idle_s else math.inf
        t = min(t_msg, next_drop, t_hb, t_ping)
        if t >= end:
            break
        if t == next_drop:
            yield Op(CLOSE, t, RECONNECT, "drop")
            yield from connect(t)
            next_drop = next(drop, math.inf)
        elif head is not None and t == t_msg:
            if head.action == "StatusNotification":
                status[head.connector] = str(head.arg)
            yield call(t, METER if head.action == "MeterValues" else STATUS, head.action, head)
            head = next(queue, None)
        elif t == t_hb:
            op = call(t, HEARTBEAT, "Heartbeat")
            last_hb = op.t
            yield op
        else:
            last_rx = t + RTT_S
            yield Op(PING, t, PINGS)
    yield Op(CLOSE, end, RECONNECT, "end")


def with_acks(ops: Iterable[Op]) -> Iterator[Op]:
    """The ops with bare_ack set: no segment of the client's own follows the answer within the delayed-ACK time."""
    prev: Op | None = None
    for op in ops:
        if prev is not None and prev.kind in (CALL, PING):
            carried = op.kind in (CALL, PING) and op.t <= prev.t + RTT_S + DELAYED_ACK_S
            prev = prev._replace(bare_ack=not carried)
        if prev is not None:
            yield prev
        prev = op
    if prev is not None:
        yield prev


def segments(payload: int) -> int:
    return -(-payload // MSS)


def exchange_headers(sent: int, received: int, bare_ack: bool) -> int:
    return (segments(sent) + segments(received) + bare_ack) * HEADER_B


def open_headers(sent: int, received: int) -> int:
    return 2 * SYN_B + HEADER_B + (2 * FLIGHTS + sent // MSS + received // MSS) * HEADER_B


FIN_HEADERS = 3 * HEADER_B


# --- payloads, as the uplink builds them ---------------------------------------------


def wall(t: float) -> float:
    return MONTH_START + t


def boot_payload(serial: str) -> dict:
    return ocpp_messages.boot_notification(ChargePointInfo(serial, "OpenGateway", "Cluster", serial))


def payload(due: Due, sessions: Sequence[Session], tx_ids: Mapping[int, int]) -> dict:
    if due.action == "StatusNotification":
        return ocpp_messages.status_notification(due.connector, str(due.arg), "NoError", None, wall(due.t), CLOCK)
    s = sessions[due.session]
    tx = Transaction(f"s{s.index}", ID_TAG, s.meter_start_wh, wall(s.tx_start))
    if due.action == "StartTransaction":
        return ocpp_messages.start_transaction(TransactionStarted(s.connector, tx), CLOCK)
    if due.action == "MeterValues":
        reading = Reading(energy_wh=float(s.energy_at(due.t)), power_w=s.power_at(due.t, int(due.arg)))
        p = ocpp_messages.meter_values(s.connector, [ocpp_messages.meter_value(reading, MEASURANDS, wall(due.t), CLOCK)])
    else:
        p = ocpp_messages.stop_transaction(TransactionStopped(s.connector, tx, s.meter_stop_wh, "EVDisconnected", wall(due.t)), CLOCK)
    p["transactionId"] = tx_ids[s.index]  # the store adds it last, at send time
    return p
