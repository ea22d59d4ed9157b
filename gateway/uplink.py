"""The uplink: one OCPP 1.6J websocket carrying the whole cluster to the backend.

Thin layer: websockets does the transport and TLS, the `ocpp` package does the
message classes and schema validation (of what we send and what we get back).
What is ours: the connection lifecycle (boot first, reconnect with jittered
backoff), the heartbeat, StatusNotification for connector 0 and every
connector, and draining the SQLite outbox strictly in order, one message in
flight at a time (OCPP 1.6 §3.7, OCPP-J §4.1.1).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping

import websockets
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.exceptions import FormationViolationError, FormatViolationError, OCPPError
from ocpp.messages import Call, CallError, CallResult, MessageType, validate_payload
from ocpp.v16 import ChargePoint, call_result
from websockets.asyncio.client import ClientConnection, connect

import gateway
from gateway import ocpp_messages, retry
from gateway.backoff import Backoff
from gateway.clock import Clock
from gateway.errors import BackendRefused, ClockUnset, StoreError, UplinkError
from gateway.reading import Reading
from gateway.session import StatusChanged
from gateway.settings import BackendSettings, ChargePointInfo, OcppSettings
from gateway.store import QueuedMessage, Store

log = logging.getLogger("gateway.uplink")

OCPP_SUBPROTOCOL = "ocpp1.6"
# What TriggerMessage may ask for (OCPP 1.6 §5.17); _send_triggered sends each.
TRIGGERABLE = frozenset({
    "BootNotification", "StatusNotification", "MeterValues", "Heartbeat",
    "DiagnosticsStatusNotification", "FirmwareStatusNotification",
})
CLOCK_WAIT_S = 10.0  # how often the outbox looks again while the clock is unset


def backend_url(backend: BackendSettings, identity: str) -> str:
    """The identity is the last path segment of the URL (OCPP-J §3.1)."""
    return backend.url.rstrip("/") + "/" + identity


def basic_auth_header(identity: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{identity}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def tls_context(backend: BackendSettings) -> ssl.SSLContext | None:
    if not backend.url.startswith("wss://"):
        return None
    ctx = ssl.create_default_context(cafile=str(backend.ca_file) if backend.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # platforms refuse older TLS (REQUIREMENTS 11)
    return ctx


Handler = Callable[[dict], Awaitable[dict]]  # a backend command: CALL payload in, CALLRESULT payload out (camelCase)


class _Link(ChargePoint):
    """The ocpp library's charge point on one open websocket, with our handlers for the backend's commands.

    The library validates each incoming CALL against the OCPP 1.6 schemas (a bad one gets its
    CALLERROR: FormationViolation, PropertyConstraintViolation, ...), answers NotImplemented for an
    action without handler, and validates our answer. Our handlers speak camelCase, as the wire
    and the store do; the library's snake_case kwargs are turned back here, once.
    """

    def __init__(self, identity: str, connection: ClientConnection, handlers: Mapping[str, Handler], response_timeout: float) -> None:
        super().__init__(identity, connection, response_timeout=response_timeout)
        for action, handler in handlers.items():
            self.route_map[action] = {"_on_action": _library_handler(action, handler)}

    async def _handle_call(self, msg: Call) -> None:
        try:
            await super()._handle_call(msg)
        except FormatViolationError as exc:
            # OCPP-J 1.6 §4.2.3 spells this error code FormationViolation (2.0 renamed it); the library uses the new name.
            raise FormationViolationError(description=exc.description, details=exc.details) from None

    async def call_wire(self, action: str, payload: dict, unique_id: str) -> dict:
        """ChargePoint.call for a payload already in wire form (camelCase), as the outbox stores it.

        The library's call() wants a dataclass and converts camelCase -> snake_case -> camelCase
        both ways: about 23 ms for a 60-sample MeterValues on x86, far more on the ARM master,
        for nothing. Same steps otherwise: schema-validate the request, one call in flight
        (the library's lock), wait for the answer with our id, validate it. Uses the library's
        private _call_lock/_send/_response_queue: ocpp is pinned to 2.1.x (setup.cfg).
        """
        request = Call(unique_id=unique_id, action=action, payload=payload)
        await validate_payload(request, self._ocpp_version)
        async with self._call_lock:
            await self._send(request.to_json())
            response = await self._answer_to(unique_id)
        if response.message_type_id == MessageType.CallError:
            raise response.to_exception()
        response.action = action
        await validate_payload(response, self._ocpp_version)
        result: dict = response.payload
        return result

    async def _answer_to(self, unique_id: str) -> CallResult | CallError:
        """The answer with our id; a late answer to a call given up on earlier is dropped.

        Not the library's _get_specific_response: its asyncio.wait_for can, on Python 3.11, swallow
        a cancellation that arrives together with the answer (CPython gh-86296). The task then went
        on waiting for the next status, and the uplink's TaskGroup never finished cancelling: a
        shutdown or reconnect that hung. It also measured the deadline in wall time.
        """
        async with asyncio.timeout(self._response_timeout):
            while True:
                response = await self._response_queue.get()
                if response.unique_id == unique_id:
                    return response
                log.warning("dropped an answer to a call no longer waited for (id %s)", response.unique_id)


def _library_handler(action: str, handler: Handler) -> Callable[..., Awaitable[object]]:
    result_class = getattr(call_result, action)

    async def handle(**kwargs: object) -> object:
        result = await handler(snake_to_camel_case(kwargs))
        return result_class(**camel_to_snake_case(result))

    return handle


class Uplink:
    """Keeps the backend connection up and feeds it statuses and the outbox."""

    def __init__(
        self,
        info: ChargePointInfo,
        backend: BackendSettings,
        ocpp: OcppSettings,
        store: Store,
        clock: Clock,
        statuses: Callable[[], list[StatusChanged]],
        handlers: Mapping[str, Handler] | None = None,
        readings: Callable[[], Mapping[int, Reading]] | None = None,
        on_answer: Callable[[QueuedMessage, dict], Awaitable[None]] | None = None,
    ) -> None:
        self.info = info
        self.backend = backend
        self.ocpp = ocpp
        self.store = store
        self.clock = clock
        self._statuses = statuses
        self._handlers = dict(handlers or {})
        self._readings = readings or dict
        self._on_answer = on_answer  # sees each answer to an outbox message once it is recorded (idTagInfo)
        self._link: _Link | None = None  # while connected and booted
        self.station_status = "Available"  # connector 0: Unavailable when the backend made every connector Inoperative
        self._triggers: asyncio.Queue[tuple[str, int | None]] = asyncio.Queue()
        self.heartbeat_interval_s = ocpp.heartbeat_interval_s
        self._status_queue: asyncio.Queue[StatusChanged] = asyncio.Queue()
        self._outbox_changed = asyncio.Event()
        self.connected = asyncio.Event()  # set while Boot is accepted and the link is up
        self._backoff = Backoff(backend.reconnect_min_s, backend.reconnect_max_s)

    # --- called by the rest of the daemon -------------------------------------------

    def status_changed(self, effect: StatusChanged) -> None:
        if self.connected.is_set():
            self._status_queue.put_nowait(effect)
        # While offline, nothing is queued: all current statuses are sent after the next boot.

    def outbox_changed(self) -> None:
        self._outbox_changed.set()

    async def authorize(self, id_tag: str) -> dict:
        """Authorize.req (OCPP 1.6 §4.2): the backend's idTagInfo; UplinkError when it cannot answer now."""
        link = self._link
        if link is None:
            raise UplinkError("offline")
        try:
            result = await self._call(link, "Authorize", {"idTag": id_tag})
        except (TimeoutError, OCPPError, websockets.exceptions.ConnectionClosed) as exc:
            raise UplinkError(f"Authorize not answered: {type(exc).__name__}: {exc}") from None
        info: dict = result["idTagInfo"]
        return info

    def trigger(self, message: str, connector_id: int | None) -> None:
        """TriggerMessage (OCPP 1.6 §5.17): send `message` once the answer has gone and the link is up."""
        self._triggers.put_nowait((message, connector_id))

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect; forever, until cancelled."""
        failing = False
        while True:
            try:
                await self._serve_one_connection()
                problem = "connection closed"
            except (TimeoutError, OSError, websockets.exceptions.WebSocketException, UplinkError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            finally:
                self.connected.clear()
            delay = next(self._backoff)
            if not failing:
                log.warning("uplink down (%s); reconnecting in %.1f s", problem, delay)
                failing = True
            else:
                log.debug("uplink still down (%s); next try in %.1f s", problem, delay)
            await asyncio.sleep(delay)

    def _connect(self) -> connect:
        headers: dict[str, str] = {}
        if self.backend.password_file is not None:
            password = self.backend.password_file.read_text().strip()
            headers = basic_auth_header(self.info.identity, password)
        return connect(
            backend_url(self.backend, self.info.identity),
            subprotocols=[websockets.Subprotocol(OCPP_SUBPROTOCOL)],
            additional_headers=headers,
            ssl=tls_context(self.backend),
            ping_interval=self.backend.ping_interval_s or None,
            ping_timeout=self.backend.ping_interval_s or None,
            open_timeout=30,
            # A close handshake cannot cross a dead GPRS link; do not wait the default 10 s for one.
            close_timeout=2,
        )

    async def _serve_one_connection(self) -> None:
        try:
            ws: ClientConnection = await self._connect()
        except websockets.exceptions.InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403, 404):
                raise BackendRefused(f"backend answered HTTP {code}") from exc
            raise
        async with ws:
            if ws.subprotocol != OCPP_SUBPROTOCOL:
                raise BackendRefused(f"backend did not agree to subprotocol {OCPP_SUBPROTOCOL}")
            link = _Link(self.info.identity, ws, self._handlers, response_timeout=self.backend.response_timeout_s)
            log.info("uplink connected to %s", backend_url(self.backend, self.info.identity))
            try:
                await self._serve_link(link)
            except asyncio.CancelledError:
                # Shutting down: tell the backend we are going away (1001), not that we crashed (1011).
                await ws.close(websockets.CloseCode.GOING_AWAY)
                raise

    async def _serve_link(self, link: _Link) -> None:
        try:
            # Every task here ends only by raising; the first failure tears the connection down.
            async with asyncio.TaskGroup() as tg:
                tg.create_task(link.start())  # the reader: routes answers and backend commands
                await self._boot(link)
                self._backoff.reset()
                self._link = link
                self.connected.set()
                tg.create_task(self._heartbeats(link))
                tg.create_task(self._send_statuses(link))
                tg.create_task(self._drain(link))
                tg.create_task(self._send_triggered(link))
        # StoreError too: a full disk must not kill the daemon. The answer that could not be recorded is
        # lost, so the message is resent after the reconnect, identical (same id): a duplicate the backend can spot.
        except* (websockets.exceptions.ConnectionClosed, UplinkError, TimeoutError, OCPPError, StoreError) as group:
            first = group.exceptions[0]
            raise UplinkError(f"{type(first).__name__}: {first or 'no answer in time'}") from None
        finally:
            self._link = None

    async def _call(self, link: _Link, action: str, payload: dict, message_id: str | None = None) -> dict:
        """One CALL; returns the CALLRESULT payload (camelCase), raises OCPPError on a CALLERROR, TimeoutError without answer."""
        return await link.call_wire(action, payload, message_id or ocpp_messages.new_message_id())

    def _boot_payload(self) -> dict:
        payload: dict = {
            "chargePointVendor": self.info.vendor,
            "chargePointModel": self.info.model,
            "firmwareVersion": gateway.__version__,
        }
        if self.info.serial_number:
            payload["chargePointSerialNumber"] = self.info.serial_number
        return payload

    async def _boot(self, link: _Link) -> None:
        """BootNotification until Accepted; on Pending/Rejected wait the interval the backend gave (OCPP 1.6 §4.2)."""
        payload = self._boot_payload()
        while True:
            result = await self._call(link, "BootNotification", payload)
            self.clock.adopt_backend_time(result["currentTime"])
            if result["status"] == "Accepted":
                if result.get("interval", 0) > 0:
                    self.heartbeat_interval_s = int(result["interval"])
                log.info("boot accepted; heartbeat every %d s", self.heartbeat_interval_s)
                return
            wait = result.get("interval") or 60
            log.warning("boot %s by the backend; retrying in %d s", result["status"], wait)
            await asyncio.sleep(wait)

    async def _heartbeats(self, link: _Link) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            await self._heartbeat(link)

    async def _heartbeat(self, link: _Link) -> None:
        self.clock.adopt_backend_time((await self._call(link, "Heartbeat", {}))["currentTime"])

    def _all_statuses(self) -> list[StatusChanged]:
        """Connector 0 (the cluster's main controller, OCPP 1.6 §3.8) and every connector."""
        return [StatusChanged(0, self.station_status, "NoError", None, self.clock.wall()), *self._statuses()]

    async def _send_statuses(self, link: _Link) -> None:
        """Connector 0 and every connector right after boot, then each change as it happens."""
        while not self._status_queue.empty():
            self._status_queue.get_nowait()  # superseded by the full round below
        for s in self._all_statuses():
            await self._send_status(link, s)
        while True:
            await self._send_status(link, await self._status_queue.get())

    async def _send_triggered(self, link: _Link) -> None:
        """The messages TriggerMessage asked for, each after its Accepted went out."""
        while True:
            message, cid = await self._triggers.get()
            if message == "BootNotification":
                result = await self._call(link, "BootNotification", self._boot_payload())
                self.clock.adopt_backend_time(result["currentTime"])
            elif message == "Heartbeat":
                await self._heartbeat(link)
            elif message == "StatusNotification":
                for s in self._all_statuses():
                    if cid in (None, s.connector_id):
                        await self._send_status(link, s)
            elif message == "MeterValues":
                for connector_id, reading in sorted(self._readings().items()):
                    if cid in (None, 0, connector_id):
                        entry = ocpp_messages.meter_value(reading, self.ocpp.meter_values_sampled_data, self.clock.wall(), self.clock, "Trigger")
                        await self._call(link, "MeterValues", ocpp_messages.meter_values(connector_id, [entry]))
            elif message in ("DiagnosticsStatusNotification", "FirmwareStatusNotification"):
                await self._call(link, message, {"status": "Idle"})  # no upload or update under way

    async def _send_status(self, link: _Link, s: StatusChanged) -> None:
        payload = ocpp_messages.status_notification(s.connector_id, s.status, s.error_code, s.info, s.wall, self.clock)
        await self._call(link, "StatusNotification", payload)

    async def _drain(self, link: _Link) -> None:
        """Send the outbox head, wait for its answer, drop it; strictly one in flight, in order."""
        while True:
            self._outbox_changed.clear()
            try:
                message = await self.store.next_to_send(self.ocpp.meter_values_batch_max, self.clock)
            except ClockUnset as exc:
                # Never a 1970 timestamp to the backend: the queue waits (statuses and heartbeats go on)
                # until NTP sets the clock or a Heartbeat brings the backend's time.
                log.warning("%s", exc)
                await asyncio.sleep(CLOCK_WAIT_S)
                continue
            if message is None:
                await self._outbox_changed.wait()
                continue
            await self._send_queued(link, message)

    async def _send_queued(self, link: _Link, message: QueuedMessage) -> None:
        try:
            result = await self._call(link, message.action, message.payload, message.message_id)
        except OCPPError as exc:
            # A CALLERROR (or a reply that fails the schema): the backend answered and did not take it.
            failures = await self.store.count_attempt(message)
            decision = retry.after_failure(
                message.action, failures, self.ocpp.transaction_message_attempts, self.ocpp.transaction_message_retry_interval_s
            )
            log.error("backend refused %s #%d (failure %d): %s", message.action, message.seq, failures, exc)
            if decision.drop:
                await self.store.drop(message, f"refused {failures} times: {exc}", self.clock.wall())
                return
            if decision.alarm:
                text = f"{message.action} refused {failures} times, kept and retried every {decision.delay_s:.0f} s: {exc}"
                await self.store.alarm(int(message.payload.get("connectorId", 0)), text, self.clock.wall())
            await asyncio.sleep(decision.delay_s)
            return
        except TimeoutError:
            # No answer on an open socket: on GPRS the link is most likely dead. Reconnect and resend the same,
            # frozen message. Not counted as a refusal: whether the backend got it is unknown, and a week in
            # a dead zone must not use up the attempts of the samples waiting at the head of the queue.
            raise UplinkError(f"no answer to {message.action} within {self.backend.response_timeout_s} s") from None
        await self.store.acknowledge(message, result)
        log.debug("delivered %s #%d", message.action, message.seq)
        if self._on_answer is not None:
            await self._on_answer(message, result)

