"""A small OCPP 1.6J backend (central system) for `make demo` and for trying the gateway by hand.

It accepts any charge point, answers the Core-profile messages the gateway
sends, and prints one human line per notable event, e.g.::

    12:00:01 CP-CLUSTER-01 boot  vendor/model fw 0.1.0
    12:00:05 CP-CLUSTER-01 #3 Preparing
    12:00:06 CP-CLUSTER-01 #3 session 7 started  idTag DEMO-FREE  meter 12345 Wh
    12:00:20 CP-CLUSTER-01 #3 meter 12.37 kWh  7.20 kW  (session 7: 0.02 kWh)
    12:00:44 CP-CLUSTER-01 #3 session 7 stopped  4.21 kWh in 0:38  (EVDisconnected)

It is a demo, not a test oracle: the interop tests use the independent strict
peer in tests/interop (npm ocpp-rpc). Message classes and schema validation
come from the `ocpp` package, transport and TLS from `websockets`.

Run it with ``python -m gateway.demo_backend --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import http
import logging
import signal
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import (
    Action,
    AuthorizationStatus,
    DataTransferStatus,
    RegistrationStatus,
)
from websockets.asyncio.server import Response, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed, InvalidHeader, NegotiationError
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic
from websockets.http11 import Request
from websockets.typing import Subprotocol

from gateway.clock import Clock

SUBPROTOCOL = Subprotocol("ocpp1.6")  # OCPP-J 1.6 §3.1.2
HEARTBEAT_INTERVAL_S = 300

# OCPP 1.6 §7.31 SampledValue: the measurand defaults to the energy register and
# the unit to Wh; phases L1..L3 are summed when no total is given.
_ENERGY = "Energy.Active.Import.Register"
_POWER = "Power.Active.Import"
_UNIT_SCALE = {"Wh": 1.0, "kWh": 1000.0, "W": 1.0, "kW": 1000.0}
_PHASES = ("L1", "L2", "L3")


@dataclass
class DemoSession:
    """One transaction the demo backend saw; stop fields stay None while it runs."""

    identity: str
    connector_id: int
    transaction_id: int
    id_tag: str
    meter_start_wh: int
    start_time: str  # as the charge point reported it (ISO 8601)
    meter_stop_wh: int | None = None
    stop_time: str | None = None
    stop_reason: str | None = None
    last_register_wh: float | None = None  # from MeterValues
    last_power_w: float | None = None

    @property
    def energy_wh(self) -> float | None:
        """Energy delivered: final once stopped, else the last register reading; None before any."""
        end = self.meter_stop_wh if self.meter_stop_wh is not None else self.last_register_wh
        return None if end is None else end - self.meter_start_wh


# --- pure helpers -----------------------------------------------------------------


def identity_from_path(path: str) -> str:
    """The charge-point identity: the last segment of the request path (OCPP-J 1.6 §3.1.1).

    Accepts ``/<identity>`` and ``/<anything>/<identity>``; raises ValueError when
    the path has no identity.
    """
    segments = [s for s in urllib.parse.urlsplit(path).path.split("/") if s]
    if not segments:
        raise ValueError(f"no charge-point identity in request path {path!r}")
    return urllib.parse.unquote(segments[-1])


def _measurand_total(samples: Sequence[dict[str, Any]], measurand: str) -> float | None:
    """The value of one measurand in base units (Wh or W), or None if absent or unreadable."""
    total: float | None = None
    phased: list[float] = []
    for sample in samples:
        if sample.get("measurand", _ENERGY) != measurand or sample.get("format") == "SignedData":
            continue
        scale = _UNIT_SCALE.get(sample.get("unit", "Wh" if measurand == _ENERGY else "W"))
        try:
            value = float(sample["value"]) * scale if scale is not None else None
        except (KeyError, TypeError, ValueError):
            value = None
        if value is None:
            continue
        phase = sample.get("phase")
        if phase is None:
            total = value
        elif phase in _PHASES:
            phased.append(value)
    if total is None and phased:
        total = sum(phased)
    return total


def summarize_meter_values(meter_value: Sequence[dict[str, Any]]) -> tuple[float | None, float | None]:
    """(energy register in Wh, active power in W) from the newest MeterValue that has them."""
    energy: float | None = None
    power: float | None = None
    for entry in meter_value:  # in time order: later readings win
        samples = entry.get("sampled_value", [])
        newest_energy = _measurand_total(samples, _ENERGY)
        newest_power = _measurand_total(samples, _POWER)
        energy = newest_energy if newest_energy is not None else energy
        power = newest_power if newest_power is not None else power
    return energy, power


def format_duration(seconds: float) -> str:
    """m:ss below an hour, h:mm:ss above: "0:38", "1:02:03"."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _duration_between(start: str, stop: str) -> str:
    try:
        return format_duration((datetime.fromisoformat(stop) - datetime.fromisoformat(start)).total_seconds())
    except (TypeError, ValueError):  # naive vs aware, or not ISO 8601: show that we do not know
        return "?"


# --- the OCPP side -------------------------------------------------------------------


class _Backend:
    """State shared by every connection of one serve() run: sessions and the transaction counter."""

    def __init__(self, out: Callable[[str], None], sessions: list[DemoSession]) -> None:
        self.out = out
        self.sessions = sessions
        self.clock = Clock()
        self._next_transaction_id = 1

    def say(self, identity: str, text: str) -> None:
        # Local wall time: this line is for a person at a terminal, not for the backend protocol.
        self.out(f"{time.strftime('%H:%M:%S')} {identity} {text}")

    def new_transaction_id(self) -> int:
        transaction_id = self._next_transaction_id
        self._next_transaction_id += 1
        return transaction_id

    def session(self, transaction_id: int | None) -> DemoSession | None:
        for s in reversed(self.sessions):
            if s.transaction_id == transaction_id:
                return s
        return None


class _DemoChargePoint(ChargePoint):
    """Central-system end of one charge point's websocket."""

    def __init__(self, identity: str, connection: ServerConnection, backend: _Backend) -> None:
        super().__init__(identity, connection)
        self.backend = backend

    def _say(self, text: str) -> None:
        self.backend.say(self.id, text)

    @on(Action.boot_notification)
    def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any
    ) -> call_result.BootNotification:
        firmware = kwargs.get("firmware_version", "?")
        self._say(f"boot  {charge_point_vendor}/{charge_point_model} fw {firmware}")
        return call_result.BootNotification(
            current_time=self.backend.clock.utc_iso(),
            interval=HEARTBEAT_INTERVAL_S,
            status=RegistrationStatus.accepted,
        )

    @on(Action.heartbeat)
    def on_heartbeat(self) -> call_result.Heartbeat:
        self._say("heartbeat")
        return call_result.Heartbeat(current_time=self.backend.clock.utc_iso())

    @on(Action.status_notification)
    def on_status_notification(
        self, connector_id: int, error_code: str, status: str, **kwargs: Any
    ) -> call_result.StatusNotification:
        details = [error_code] if error_code != "NoError" else []
        details += [str(kwargs[k]) for k in ("info", "vendor_error_code") if kwargs.get(k)]
        self._say(f"#{connector_id} {status}" + (f"  ({', '.join(details)})" if details else ""))
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str) -> call_result.Authorize:
        self._say(f"authorize {id_tag}: Accepted")
        return call_result.Authorize(id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted))

    @on(Action.start_transaction)
    def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kwargs: Any
    ) -> call_result.StartTransaction:
        transaction_id = self.backend.new_transaction_id()
        self.backend.sessions.append(
            DemoSession(self.id, connector_id, transaction_id, id_tag, meter_start, timestamp)
        )
        self._say(f"#{connector_id} session {transaction_id} started  idTag {id_tag}  meter {meter_start} Wh")
        return call_result.StartTransaction(
            transaction_id=transaction_id, id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted)
        )

    @on(Action.meter_values)
    def on_meter_values(
        self, connector_id: int, meter_value: list[dict[str, Any]], **kwargs: Any
    ) -> call_result.MeterValues:
        energy_wh, power_w = summarize_meter_values(meter_value)
        parts = [f"#{connector_id} meter"]
        if energy_wh is not None:
            parts.append(f"{energy_wh / 1000:.2f} kWh")
        if power_w is not None:
            parts.append(f"{power_w / 1000:.2f} kW")
        if energy_wh is None and power_w is None:
            parts.append("(no energy or power sample)")
        session = self.backend.session(kwargs.get("transaction_id"))
        if session is not None:
            session.last_register_wh = energy_wh if energy_wh is not None else session.last_register_wh
            session.last_power_w = power_w if power_w is not None else session.last_power_w
            so_far = session.energy_wh
            if so_far is not None:
                parts.append(f"(session {session.transaction_id}: {so_far / 1000:.2f} kWh)")
        self._say("  ".join(parts))
        return call_result.MeterValues()

    @on(Action.stop_transaction)
    def on_stop_transaction(
        self, meter_stop: int, timestamp: str, transaction_id: int, **kwargs: Any
    ) -> call_result.StopTransaction:
        reason = kwargs.get("reason", "Local")  # OCPP 1.6 §7.41: absent means Local
        session = self.backend.session(transaction_id)
        if session is None:
            self._say(f"session {transaction_id} stopped  meter {meter_stop} Wh  ({reason}; unknown to this backend)")
        else:
            session.meter_stop_wh, session.stop_time, session.stop_reason = meter_stop, timestamp, reason
            kwh = (meter_stop - session.meter_start_wh) / 1000
            took = _duration_between(session.start_time, timestamp)
            self._say(
                f"#{session.connector_id} session {transaction_id} stopped  {kwh:.2f} kWh in {took}  ({reason})"
            )
        id_tag = kwargs.get("id_tag")
        # idTagInfo only when the charge point sent an idTag (OCPP 1.6 §6.50).
        info = IdTagInfo(status=AuthorizationStatus.accepted) if id_tag is not None else None
        return call_result.StopTransaction(id_tag_info=info)

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **kwargs: Any) -> call_result.DataTransfer:
        message_id = kwargs.get("message_id")
        self._say(f"data transfer {vendor_id}" + (f"/{message_id}" if message_id else ""))
        return call_result.DataTransfer(status=DataTransferStatus.accepted)

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, status: str) -> call_result.FirmwareStatusNotification:
        self._say(f"firmware {status}")
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status(self, status: str) -> call_result.DiagnosticsStatusNotification:
        self._say(f"diagnostics {status}")
        return call_result.DiagnosticsStatusNotification()


# --- the websocket side ----------------------------------------------------------------


def _unauthorized(connection: ServerConnection, text: str) -> Response:
    response = connection.respond(http.HTTPStatus.UNAUTHORIZED, text + "\n")
    response.headers["WWW-Authenticate"] = build_www_authenticate_basic("OCPP")
    return response


def _check_request(
    backend: _Backend, password: str | None
) -> Callable[[ServerConnection, Request], Response | None]:
    """The handshake gate: an identity in the path, and Basic auth when a password is set."""

    def check(connection: ServerConnection, request: Request) -> Response | None:
        try:
            identity = identity_from_path(request.path)
        except ValueError as exc:
            backend.say("-", f"refused: {exc}")
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"{exc}\n")
        if password is None:
            return None
        # Security whitepaper profile 1/2: HTTP Basic auth, user = the charge-point identity.
        header = request.headers.get("Authorization")
        if header is None:
            backend.say(identity, "refused: no credentials")
            return _unauthorized(connection, "Missing credentials")
        try:
            user, given = parse_authorization_basic(header)
        except InvalidHeader:
            backend.say(identity, "refused: unreadable credentials")
            return _unauthorized(connection, "Unsupported credentials")
        if user != identity or not hmac.compare_digest(given.encode(), password.encode()):
            backend.say(identity, "refused: bad credentials")
            return _unauthorized(connection, "Invalid credentials")
        return None

    return check


def _select_subprotocol(backend: _Backend) -> Callable[[ServerConnection, Sequence[Subprotocol]], Subprotocol]:
    def select(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol:
        if SUBPROTOCOL in offered:
            return SUBPROTOCOL
        identity = identity_from_path(connection.request.path) if connection.request else "-"
        backend.say(identity, f"refused: subprotocol {SUBPROTOCOL} not offered (got {', '.join(offered) or 'none'})")
        raise NegotiationError(f"subprotocol {SUBPROTOCOL} required")  # websockets answers 400

    return select


def _handler(backend: _Backend) -> Callable[[ServerConnection], Any]:
    async def handle(connection: ServerConnection) -> None:
        assert connection.request is not None  # the handshake is done when the handler runs
        identity = identity_from_path(connection.request.path)
        host, port = connection.remote_address[:2]
        backend.say(identity, f"connected from {host}:{port}")
        try:
            await _DemoChargePoint(identity, connection, backend).start()
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = exc.rcvd.reason if exc.rcvd is not None else "no close frame"
            backend.say(identity, f"disconnected ({code}{' ' + reason if reason else ''})")

    return handle


def _tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    if certfile is None:
        if keyfile is not None:
            raise ValueError("a TLS key file was given without a certificate file")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # what backends in the field require
    context.load_cert_chain(certfile, keyfile)
    return context


async def serve(
    host: str = "127.0.0.1",
    port: int = 9000,
    *,
    password: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    out: Callable[[str], None] = print,
    ready: asyncio.Event | None = None,
    sessions: list[DemoSession] | None = None,
) -> None:
    """Run the demo backend until cancelled.

    ``port`` 0 picks a free port; the first line written to ``out`` says which.
    ``ready`` is set once the socket listens. Every transaction seen is appended
    to ``sessions`` (and updated in place when it stops), for tests.
    """
    backend = _Backend(out, sessions if sessions is not None else [])
    context = _tls_context(certfile, keyfile)
    async with ws_serve(
        _handler(backend),
        host,
        port,
        subprotocols=[SUBPROTOCOL],
        select_subprotocol=_select_subprotocol(backend),
        process_request=_check_request(backend, password),
        ssl=context,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        scheme = "wss" if context is not None else "ws"
        auth = "  (Basic auth, user = identity)" if password is not None else ""
        backend.say("demo backend", f"listening on {scheme}://{host}:{bound}/ocpp/<identity>{auth}")
        if ready is not None:
            ready.set()
        await server.serve_forever()


def main(
    host: str,
    port: int,
    password: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> int:
    """Run the demo backend in the foreground until Ctrl-C or SIGTERM; 0 on a clean stop, 1 if it cannot start."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The printed lines tell the story; the libraries' INFO logs (every raw frame,
    # every connection) would drown them, even when a caller set up INFO logging.
    for noisy in ("ocpp", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def say(line: str) -> None:
        print(line, flush=True)

    async def run() -> int:
        task = asyncio.create_task(
            serve(host, port, password=password, certfile=certfile, keyfile=keyfile, out=say)
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        await asyncio.wait([task])
        if task.cancelled():  # our own signal handler: the one clean way out
            say(f"{time.strftime('%H:%M:%S')} demo backend stopped")
            return 0
        try:
            task.result()
        except (OSError, ValueError) as exc:  # port in use, unreadable TLS files, bad TLS pair
            print(f"demo backend: cannot start on {host}:{port}: {exc}", file=sys.stderr, flush=True)
            return 1
        return 0  # serve() only returns when cancelled; kept for the type checker

    return asyncio.run(run())


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo_backend", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to listen on (default 9000, 0 = any free)")
    parser.add_argument("--password", help="require HTTP Basic auth with this password (user = identity)")
    parser.add_argument("--cert", help="TLS certificate (PEM): serve wss://")
    parser.add_argument("--key", help="TLS private key (PEM), if not inside --cert")
    args = parser.parse_args(argv)
    return main(args.host, args.port, args.password, args.cert, args.key)


if __name__ == "__main__":
    raise SystemExit(_cli())
