#!/usr/bin/env python3
"""A month of uplink bytes for 16 connectors: the gateway's one link against 16 plain OCPP chargers.

The month (seeded, the same for every variant, bench/uplink_month.py): 30 days,
16 connectors, 8 sessions a day each, one in each 3-hour slot of its day (the
slots shifted by a random phase for each connector) at a random time. An EV
plugs in (Preparing), free charging starts a transaction at once with a fixed
idTag (StartTransaction, Charging), takes 3..30 kWh at 11 kW, then stays
plugged 5..60 min without charging (SuspendedEV), and leaves (StopTransaction,
Finishing, Available). MeterValues (MeterValuesSampledData
Energy.Active.Import.Register,Power.Active.Import) go every 60 s from the start
of the transaction while it is open. Every connection loses its link once a day
at a random time (GPRS): the reconnect costs TCP and TLS handshakes, the
websocket upgrade, a BootNotification and the statuses again.

  (a)  the gateway: one wss connection for the cluster. The BootNotification
       answer sets HeartbeatInterval 300 s; a Heartbeat only when no CALL went
       for 300 s; no websocket pings (WebSocketPingInterval 0, the default).
       Also shown with WebSocketPingInterval 180 (a backend that demands it,
       steve#406): a ping after 180 s without any frame from the backend.
  (b)  16 plain single-connector OCPP 1.6J chargers, each its own connection
       and identity, sending the same per-connector messages with the same
       backend settings (HeartbeatInterval 300 s from the same BootNotification
       answer, same sampled data and interval), a Heartbeat every 300 s whatever
       else they send, and the websockets client defaults: a ping every 20 s
       (ping_interval 20, ping_timeout 20) and permessage-deflate.

How it is measured: every CALL of the timeline goes in timeline order, as fast
as one-CALL-in-flight allows, through REAL connections on loopback: a
`websockets` client (TLS 1.2+, subprotocol ocpp1.6, permessage-deflate with the
library's default settings, frames from `ocpp`'s Call.to_json, payloads from
gateway.ocpp_messages as the uplink builds them) to a `websockets` server with
a throw-away certificate (openssl, at run time) that accepts permessage-deflate
and answers every CALL with a compact valid CALLRESULT; the first message of
each kind, both ways, is checked against the OCPP 1.6 schemas. When to send a
Heartbeat, a ping or a reconnect is decided by the timeline's simulated clock,
never by waiting. The payload bytes (TLS records, websocket frames, deflate
output) are counted exactly at the client socket (gateway.traffic.read_counters,
Linux TCP_INFO), both directions.

Not measured but modelled (printed with the figures):
  IP/TCP headers  traffic played fast coalesces segments as a month would not, so
                  segments come from a model of each exchange spread in time
                  (uplink_month.MODEL, printed), the same for (a) and (b).
  (b)'s pings     about 2 million of them: their count comes from the timeline
                  (one per 20 s of each connection's life) and their cost from
                  pings played on a real (b) connection. (a)'s pings are all played.
  the certificate the loopback one is a small self-signed EC certificate; a real
                  backend's chain adds about 2-4 kB to every handshake, (b) has 16
                  times as many handshakes as (a).

By default 15 days are played and the figures doubled: the days are alike, and
a whole month (--days 30) gives the same ratio within a percent or so but takes
2.5-4 minutes on 2 cores. The output says what was played and what was scaled.
(a) and (b) play side by side, each in its own process with its own backend.

The goal (issue 6): (a) <= 1/4 of (b). Exit status 0 either way: it is a measurement.

Run: .venv/bin/python bench/uplink_bytes.py [--days 15] [--seed 6] [--ping-sample 500]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import json
import math
import random
import socket
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import websockets
from ocpp.messages import Call, CallResult, validate_payload

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ holds the throw-away certificate maker

from uplink_month import (  # noqa: E402
    CALL,
    CATEGORIES,
    CLOSE,
    CONNECTORS,
    FIN_HEADERS,
    HEARTBEAT_S,
    MEASURANDS,
    MODEL,
    MONTH_DAYS,
    OPEN,
    PINGS,
    RECONNECT,
    SAMPLE_S,
    SESSIONS_PER_DAY,
    Due,
    LinkPolicy,
    Op,
    Session,
    boot_payload,
    connector_messages,
    daily_drops,
    exchange_headers,
    make_sessions,
    open_headers,
    payload,
    schedule,
    wall,
    with_acks,
)
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.asyncio.server import ServerConnection, serve  # noqa: E402

from gateway.clock import iso  # noqa: E402
from gateway.traffic import TcpCounters, read_counters  # noqa: E402
from tests.certs import make_self_signed_cert  # noqa: E402

GOAL_RATIO = 0.25
DEFAULT_DAYS = 15  # a whole month takes 2.5-4 minutes on 2 cores, half of it 1.5-2
PING_IDLE_S = 180  # (a) with a backend that demands WebSocketPingInterval 180 (steve#406)
KEEPALIVE_S = 20  # (b): the websockets client's default ping_interval
T = TypeVar("T")


# --- the loopback backend -------------------------------------------------------------


class Backend:
    """Answers every CALL at once with a compact, valid CALLRESULT; its clock is each link's simulated time."""

    def __init__(self) -> None:
        self.now: dict[str, float] = {}  # identity -> simulated time of its last CALL
        self._tx_ids = itertools.count(1)

    def answer(self, identity: str, action: str) -> dict:
        if action == "BootNotification":
            return {"currentTime": iso(wall(self.now[identity])), "interval": HEARTBEAT_S, "status": "Accepted"}
        if action == "Heartbeat":
            return {"currentTime": iso(wall(self.now[identity]))}
        if action == "StartTransaction":
            return {"idTagInfo": {"status": "Accepted"}, "transactionId": next(self._tx_ids)}
        return {}  # StatusNotification, MeterValues, StopTransaction: every field optional

    async def handler(self, ws: ServerConnection) -> None:
        identity = ws.request.path.rsplit("/", 1)[-1] if ws.request else ""
        try:
            async for frame in ws:
                _, unique_id, action, _ = json.loads(frame)
                await ws.send(CallResult(unique_id, self.answer(identity, action)).to_json())
        except websockets.exceptions.ConnectionClosed:
            pass


# --- playing one link -------------------------------------------------------------------


@dataclass
class Tally:
    """What the played links moved: payload and modelled header bytes by category, and counts."""

    payload: Counter[str] = field(default_factory=Counter)
    headers: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    pings: int = 0  # played
    keepalive_pings: int = 0  # counted from the connections' lifetimes, not played
    connections: int = 0
    link: str = ""  # TLS version, cipher and websocket extensions as negotiated

    def add(self, other: Tally) -> None:
        self.payload += other.payload
        self.headers += other.headers
        self.calls += other.calls
        self.pings += other.pings
        self.keepalive_pings += other.keepalive_pings
        self.connections += other.connections
        self.link = self.link or other.link


@dataclass(frozen=True)
class Server:
    port: int
    ca: ssl.SSLContext
    backend: Backend


def counters(sock: socket.socket) -> TcpCounters:
    c = read_counters(sock)
    if c is None:
        raise SystemExit("this kernel gives no TCP_INFO byte counters (Linux 4.2 or later needed)")
    return c


async def open_link(server: Server, identity: str) -> tuple[ClientConnection, socket.socket]:
    """A real connection as the uplink makes it: our own TCP socket (so it can be counted), wss, ocpp1.6, deflate."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    ws = await connect(
        f"wss://127.0.0.1:{server.port}/ocpp/{identity}", sock=sock, ssl=server.ca,
        subprotocols=[websockets.Subprotocol("ocpp1.6")],
        ping_interval=None,  # pings are the timeline's to decide (or counted, for (b))
        close_timeout=2,
    )
    if ws.subprotocol != "ocpp1.6" or "permessage-deflate" not in (ws.response.headers.get("Sec-WebSocket-Extensions", "") if ws.response else ""):
        raise SystemExit("the loopback backend did not agree to ocpp1.6 with permessage-deflate")
    return ws, sock


class Player:
    """Plays one link's ops on a real connection and counts its bytes."""

    def __init__(self, server: Server, identity: str, sessions: Sequence[Session], keepalive_s: float, seed: int, validated: set[str]) -> None:
        self.server, self.identity, self.sessions, self.keepalive_s = server, identity, sessions, keepalive_s
        self.rng = random.Random(seed)  # message ids: 12 hex digits like ocpp_messages.new_message_id, but reproducible
        self.validated = validated  # actions already checked against the schemas
        self.tx_ids: dict[int, int] = {}
        self.tally = Tally()

    async def play(self, ops: Iterable[Op]) -> Tally:
        ws: ClientConnection | None = None
        sock: socket.socket | None = None
        opened = 0.0
        for op in with_acks(ops):
            if op.kind == OPEN:
                ws, sock = await open_link(self.server, self.identity)
                opened, last = op.t, counters(sock)
                self.tally.payload[RECONNECT] += last.payload_sent + last.payload_received
                self.tally.headers[RECONNECT] += open_headers(last.payload_sent, last.payload_received)
                self.tally.connections += 1
                ssl_object = ws.transport.get_extra_info("ssl_object")
                extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "") if ws.response else ""
                self.tally.link = f"{ssl_object.version()} {ssl_object.cipher()[0]}; {extensions}" if ssl_object else "no TLS"
                continue
            assert ws is not None and sock is not None
            if op.kind == CLOSE:
                if self.keepalive_s:
                    self.tally.keepalive_pings += int((op.t - opened) // self.keepalive_s)
                if op.action == "drop":
                    self.tally.headers[RECONNECT] += FIN_HEADERS
                await ws.close()  # after the last count: the close handshake is not billed (the link is gone)
                continue
            if op.kind == CALL:
                await self.call(ws, op)
            else:
                await (await ws.ping())
                self.tally.pings += 1
            now = counters(sock)
            sent, received = now.payload_sent - last.payload_sent, now.payload_received - last.payload_received
            self.tally.payload[op.category] += sent + received
            self.tally.headers[op.category] += exchange_headers(sent, received, op.bare_ack)
            last = now
        return self.tally

    async def call(self, ws: ClientConnection, op: Op) -> None:
        self.server.backend.now[self.identity] = op.t
        if op.action == "BootNotification":
            body = boot_payload(f"SN-{self.identity}")
        elif op.action == "Heartbeat":
            body = {}
        else:
            assert op.due is not None
            body = payload(op.due, self.sessions, self.tx_ids)
        request = Call(f"{self.rng.getrandbits(48):012x}", op.action, body)
        await ws.send(request.to_json())
        answer = CallResult(*json.loads(await ws.recv())[1:])
        if op.action not in self.validated:  # the first of each kind, both ways, against the OCPP 1.6 schemas
            self.validated.add(op.action)
            answer.action = op.action
            await validate_payload(request, "1.6")
            await validate_payload(answer, "1.6")
        if op.action == "StartTransaction":
            assert op.due is not None
            self.tx_ids[op.due.session] = answer.payload["transactionId"]
        self.tally.calls[op.action] += 1


async def ping_cost(server: Server, pings: int) -> tuple[float, int]:
    """(payload bytes, modelled header bytes) of one ping and its pong, played `pings` times on a real (b) connection."""
    ws, sock = await open_link(server, "CP-PING")
    try:
        before = counters(sock)
        for _ in range(pings):
            await (await ws.ping())
        after = counters(sock)
    finally:
        await ws.close()
    sent, received = (after.payload_sent - before.payload_sent) / pings, (after.payload_received - before.payload_received) / pings
    return sent + received, exchange_headers(math.ceil(sent), math.ceil(received), True)


# --- the three variants ---------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """A variant's month: bytes by category (payload), headers (modelled), and counts; already scaled."""

    name: str
    payload: dict[str, float]
    headers: float
    calls: float
    pings: float
    connections: float

    @property
    def total(self) -> float:
        return sum(self.payload.values()) + self.headers


def figures(name: str, tally: Tally, scale: float, keep_pings: bool, ping_bytes: tuple[float, int] = (0.0, 0)) -> Figures:
    payload = {c: tally.payload[c] * scale for c in CATEGORIES}
    headers = sum(tally.headers.values())
    pings = float(tally.pings)
    if not keep_pings:  # pings are control frames: they leave the deflate context and every other byte as they are
        payload[PINGS], headers, pings = 0.0, headers - tally.headers[PINGS], 0.0
    payload[PINGS] += tally.keepalive_pings * ping_bytes[0] * scale
    headers += tally.keepalive_pings * ping_bytes[1]
    pings += tally.keepalive_pings
    return Figures(name, payload, headers * scale, sum(tally.calls.values()) * scale, pings * scale, tally.connections * scale)


def report(rows: Sequence[Figures]) -> None:
    def line(label: str, values: Iterable[str]) -> None:
        print(f"  {label:<26}" + "".join(f"{v:>18}" for v in values))

    line("", (r.name for r in rows))
    for c in CATEGORIES:
        line(c, (f"{r.payload[c] / 1e6:.3f} MB" for r in rows))
    line("TCP/IP headers (model)", (f"{r.headers / 1e6:.3f} MB" for r in rows))
    line("total", (f"{r.total / 1e6:.3f} MB" for r in rows))
    line("per connector", (f"{r.total / len(CONNECTORS) / 1e6:.3f} MB" for r in rows))
    line("CALLs", (f"{r.calls:,.0f}" for r in rows))
    line("pings", (f"{r.pings:,.0f}" for r in rows))
    line("connections (handshakes)", (f"{r.connections:,.0f}" for r in rows))


@dataclass(frozen=True)
class Month:
    """What both variants play: the timeline is made again from these in each process, identically."""

    days: int
    seed: int
    cert: Path
    key: Path

    def timeline(self) -> tuple[list[Session], dict[int, list[Due]], list[float], dict[int, list[float]]]:
        """The sessions, each connector's messages, the gateway's daily drops and each plain charger's."""
        sessions = make_sessions(self.days, self.seed)
        per_connector = {c: connector_messages(s for s in sessions if s.connector == c) for c in CONNECTORS}
        drops = random.Random(self.seed + 1)
        return sessions, per_connector, daily_drops(self.days, drops), {c: daily_drops(self.days, drops) for c in CONNECTORS}


@contextlib.asynccontextmanager
async def loopback_backend(month: Month) -> AsyncIterator[Server]:
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # offers TLS 1.3
    server_tls.load_cert_chain(month.cert, month.key)
    client_tls = ssl.create_default_context(cafile=str(month.cert))
    client_tls.minimum_version = ssl.TLSVersion.TLSv1_2  # as the uplink's tls_context
    backend = Backend()
    # The backend pings nobody (ping_interval None): the pings compared are the clients' own.
    async with serve(backend.handler, "127.0.0.1", 0, ssl=server_tls, subprotocols=[websockets.Subprotocol("ocpp1.6")], ping_interval=None) as ws_server:
        yield Server(ws_server.sockets[0].getsockname()[1], client_tls, backend)


async def play_gateway(month: Month) -> Tally:
    """(a): the whole cluster on one link, pings after PING_IDLE_S of silence played (and counted apart)."""
    sessions, per_connector, drops, _ = month.timeline()
    ops = schedule(heapq.merge(*per_connector.values()), drops, month.days * 86400.0, LinkPolicy(CONNECTORS, heartbeat_when_idle=True, ping_idle_s=PING_IDLE_S))
    async with loopback_backend(month) as server:
        return await Player(server, "GW-0001", sessions, 0, month.seed, set()).play(ops)


async def play_plain(month: Month, ping_sample: int) -> tuple[Tally, tuple[float, int]]:
    """(b): 16 links side by side, each its own connector's messages; and what one of their pings costs."""
    sessions, per_connector, _, drops = month.timeline()
    validated: set[str] = set()
    async with loopback_backend(month) as server:
        links = [
            Player(server, f"CP-{c:04d}", sessions, KEEPALIVE_S, month.seed + c, validated).play(
                schedule(per_connector[c], drops[c], month.days * 86400.0, LinkPolicy((c,), heartbeat_when_idle=False))
            )
            for c in CONNECTORS
        ]
        total = Tally()
        for tally in await asyncio.gather(*links):
            total.add(tally)
        return total, await ping_cost(server, ping_sample)


def timed(play: Callable[..., Coroutine[None, None, T]], *args: object) -> tuple[T, float]:
    """Runs in a worker process: what play(*args) gives, and how long it took."""
    started = time.perf_counter()
    return asyncio.run(play(*args)), time.perf_counter() - started


def run(days: int, seed: int, ping_sample: int) -> None:
    started = time.perf_counter()
    scale = MONTH_DAYS / days
    print(f"Uplink bytes for a month: {len(CONNECTORS)} connectors x {SESSIONS_PER_DAY} sessions a day, MeterValueSampleInterval {SAMPLE_S} s "
          f"({', '.join(MEASURANDS)}), HeartbeatInterval {HEARTBEAT_S} s, a link drop a day per connection")
    with tempfile.TemporaryDirectory(prefix="uplink-bytes-") as tmp:
        month = Month(days, seed, *make_self_signed_cert(Path(tmp)))
        sessions, per_connector, _, _ = month.timeline()
        messages = sum(d.t < days * 86400 for m in per_connector.values() for d in m)
        print(f"played: {days} of {MONTH_DAYS} days ({len(sessions)} sessions, {messages:,} session messages per variant)"
              + (f"; figures scaled x{scale:.2f} to {MONTH_DAYS} days" if days != MONTH_DAYS else "; nothing scaled"))
        print("playing (a) and (b) side by side, one process each...", flush=True)
        # Each variant with its own loopback backend in its own process: the two cores play both at once.
        with concurrent.futures.ProcessPoolExecutor(2) as pool:
            a_job = pool.submit(timed, play_gateway, month)
            b_job = pool.submit(timed, play_plain, month, ping_sample)
            a, a_s = a_job.result()
            (b, ping_bytes), b_s = b_job.result()
    print(f"(a) played in {a_s:.0f} s, (b) in {b_s:.0f} s; negotiated: {a.link}")

    rows = [
        figures("(a) gateway", a, scale, keep_pings=False),
        figures(f"(a) pings {PING_IDLE_S} s", a, scale, keep_pings=True),
        figures("(b) 16 plain", b, scale, keep_pings=False, ping_bytes=ping_bytes),
    ]
    print()
    print(MODEL)
    print(f"(b)'s pings: {b.keepalive_pings:,} counted from its connections' lifetimes (one per {KEEPALIVE_S} s), not played; each costs "
          f"{ping_bytes[0]:.1f} B of payload (measured over {ping_sample} pings on a real (b) connection) + {ping_bytes[1]} B of headers")
    print(f"(a)'s pings at {PING_IDLE_S} s: {a.pings:,} played in the timeline; the (a) gateway column is the same run without them")
    print(f"(a) Heartbeats: {a.calls['Heartbeat']:,} (only after {HEARTBEAT_S} s without a CALL); (b): {b.calls['Heartbeat']:,}\n")
    report(rows)
    full, pinged, plain_total = rows[0].total, rows[1].total, rows[2].total
    print(f"\n  ratio (a)/(b)              {full / plain_total:.3f}   (goal <= {GOAL_RATIO})")
    print(f"  ratio (a) pings {PING_IDLE_S} s/(b)  {pinged / plain_total:.3f}")
    quiet = figures("", b, scale, keep_pings=False).total  # (b)'s keepalive pings counted at no cost
    print(f"  for scale: (b) without its websocket pings (ping_interval=None) would move {quiet / 1e6:.2f} MB; (a)/(b) would be {full / quiet:.3f}")
    verdict = "goal met" if full <= GOAL_RATIO * plain_total else "goal MISSED"
    print(f"verdict: {verdict}: the gateway moves {full / 1e6:.1f} MB a month against {plain_total / 1e6:.1f} MB for 16 plain chargers "
          f"({full / plain_total:.1%}; {pinged / plain_total:.1%} with pings every {PING_IDLE_S} s of silence)")
    print(f"(ran {time.perf_counter() - started:.0f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"days played; the figures are scaled to {MONTH_DAYS}")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--ping-sample", type=int, default=500, help="pings played to measure the cost of one of (b)'s")
    args = parser.parse_args()
    if not 1 <= args.days <= MONTH_DAYS:
        parser.error(f"--days must be from 1 to {MONTH_DAYS}")
    if args.ping_sample < 1:
        parser.error("--ping-sample must be at least 1")
    run(args.days, args.seed, args.ping_sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
