"""The uplink: one OCPP 1.6J websocket carrying the whole cluster to the backend.

Thin layer: websockets does the transport and TLS, the `ocpp` package does the
message classes and schema validation (gateway.ocpp_link). What is ours: the
connection lifecycle (boot first, reconnect with jittered backoff, over the
uplink gateway.failover chooses, bound to its interface or address), the
security profile (gateway.uplink_security), StatusNotification for connector 0
and every connector, and draining the SQLite outbox strictly in order, one
message in flight at a time (OCPP 1.6 §3.7, OCPP-J §4.1.1).

Frugal with a SIM's bytes: a Heartbeat only when no CALL went out for
HeartbeatInterval (OCPP 1.6 §4.6 allows it), a websocket ping only after
WebSocketPingInterval without a frame from the backend, permessage-deflate
where the backend takes it, compact JSON; and every byte counted at the socket
(gateway.traffic) and handed to the data-usage recorder.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import websockets
from ocpp.exceptions import OCPPError
from websockets.asyncio.client import ClientConnection

from gateway import ocpp_messages, retry
from gateway.auth_key import AuthKeyStore
from gateway.backoff import Backoff
from gateway.clock import Clock
from gateway.errors import BackendRefused, ClockUnset, StoreError, UplinkError
from gateway.failover import Failover
from gateway.ocpp_link import Handler, OcppLink
from gateway.reading import Reading
from gateway.session import StatusChanged
from gateway.settings import BackendSettings, ChargePointInfo, FailoverSettings, OcppSettings, UplinkSettings
from gateway.store import QueuedMessage, Store
from gateway.traffic import SocketMeter, Traffic
from gateway.uplink_connect import OCPP_SUBPROTOCOL, Recorder, connect_websocket, host_and_port, interface_usable, open_socket, probe
from gateway.uplink_security import (
    LAB_WARNING,
    basic_auth_header,
    clock_problem,
    describe_failure,
    effective_profile,
    is_tls,
    tls_context,
)

log = logging.getLogger("gateway.uplink")

# What TriggerMessage may ask for (OCPP 1.6 §5.17); _send_triggered sends each but the firmware and
# diagnostics notifications, which their runners send through `notify` (gateway.control).
TRIGGERABLE = frozenset({
    "BootNotification", "StatusNotification", "MeterValues", "Heartbeat",
    "DiagnosticsStatusNotification", "FirmwareStatusNotification",
})
CLOCK_WAIT_S = 10.0  # how often the outbox looks again while the clock is unset
COUNT_EVERY_S = 60.0  # bytes are handed to the recorder this often while connected
KEEPALIVE_RECHECK_S = 5.0  # while WebSocketPingInterval is 0, how often to look whether the backend set one


def backend_url(backend: BackendSettings, identity: str) -> str:
    """The identity is the last path segment of the URL (OCPP-J §3.1)."""
    return backend.url.rstrip("/") + "/" + identity


@dataclass(frozen=True)
class _Notice:
    """What the charge point sends of its own accord (see Uplink.notify): one CALL, or the few a trigger asks for."""

    what: str  # for the log
    send: Callable[[OcppLink], Awaitable[object]]
    delivered: asyncio.Future[None]  # done once the backend answered (a CALLERROR included)


class _Reconnect(Exception):  # noqa: N818 - not an error: the link is closed on purpose and made again at once
    def __init__(self, why: str, failback_to: int | None = None) -> None:
        super().__init__(why)
        self.failback_to = failback_to


@dataclass(frozen=True)
class UplinkStatus:
    """What a technician's status screen shows of the backend link."""

    uplink: str  # the uplink in use or being tried
    connected: bool
    security_profile: int
    compression: bool  # permessage-deflate in use
    problem: str | None  # why the link is down, or the last trouble


_ONE_UPLINK = (UplinkSettings("default"),)
_FAILOVER = FailoverSettings()


async def _no_recording(name: str, portion: Traffic) -> None:
    return None


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
        *,
        uplinks: Sequence[UplinkSettings] = _ONE_UPLINK,
        failover: FailoverSettings = _FAILOVER,
        security_profile: Callable[[], int] | None = None,
        auth_keys: AuthKeyStore | None = None,
        record_traffic: Recorder = _no_recording,
        boot_fields: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self.info = info
        self.backend = backend
        self.ocpp = ocpp
        self.store = store
        self.clock = clock
        self._statuses = statuses
        self._handlers = {action: self._holding(handler) for action, handler in (handlers or {}).items()}
        self._readings = readings or dict
        self._on_answer = on_answer  # sees each answer to an outbox message once it is recorded (idTagInfo)
        self.uplinks = tuple(uplinks)
        self.failover = Failover([u.name for u in self.uplinks], failover.failback_after_s, failover.probe_interval_s)
        # The SecurityProfile in force: the backend may raise it (ChangeConfiguration), the config file seeds it.
        self._security_profile = security_profile or (lambda: effective_profile(backend))
        self._auth_keys = auth_keys
        self._use_previous_key = False  # the backend refused the new AuthorizationKey: try the one before
        self._record = record_traffic
        self._boot_fields = boot_fields
        self._link: OcppLink | None = None  # while connected and booted
        self.station_status = "Available"  # connector 0: Unavailable when the backend made every connector Inoperative
        self._notices: collections.deque[_Notice] = collections.deque()  # see notify()
        self._notice_added = asyncio.Event()
        self._answering = False  # a backend command is being answered: notices wait until its answer is out
        self.heartbeat_interval_s = ocpp.heartbeat_interval_s
        self._status_queue: asyncio.Queue[StatusChanged] = asyncio.Queue()
        self._outbox_changed = asyncio.Event()
        self._reconnect_wanted: str | None = None  # why, once the answer to the backend's command has gone out
        self._reconnect_now = asyncio.Event()
        self.connected = asyncio.Event()  # set while Boot is accepted and the link is up
        self._backoff = Backoff(backend.reconnect_min_s, backend.reconnect_max_s)
        self._compression = False
        self.problem: str | None = None

    # --- called by the rest of the daemon -------------------------------------------

    def status(self) -> UplinkStatus:
        return UplinkStatus(
            self.failover.active_name, self.connected.is_set(), self._security_profile(), self._compression, self.problem
        )

    def status_changed(self, effect: StatusChanged) -> None:
        if self.connected.is_set():
            self._status_queue.put_nowait(effect)
        # While offline, nothing is queued: all current statuses are sent after the next boot.

    def outbox_changed(self) -> None:
        self._outbox_changed.set()

    def reconnect(self, why: str) -> None:
        """Close the link now and make it again (the backend settings were reloaded)."""
        self._reconnect_wanted = why
        self._reconnect_now.set()

    def reconnect_after_answer(self, why: str) -> None:
        """Close the link and make it again once the answer to the backend's current command has gone
        out (a new AuthorizationKey or SecurityProfile takes effect at the reconnect)."""
        self._reconnect_wanted = why

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
        """TriggerMessage (OCPP 1.6 §5.17): send `message` as a notice (see notify), after the Accepted."""
        self._queue_notice(f"triggered {message}", lambda link: self._send_triggered(link, message, connector_id))

    def notify(self, action: str, payload: dict) -> asyncio.Future[None]:
        """A CALL that is no transaction message (FirmwareStatusNotification, DiagnosticsStatusNotification):
        sent in the order given while the link is up, never before the answer to a command being handled
        (§5.17: the requested message follows the TriggerMessage answer; Downloading follows the
        UpdateFirmware answer). Kept in memory while offline: not the outbox, whose transaction messages
        it would wait behind, and whose retry policy is theirs. The future is done once the backend
        answered it, a CALLERROR included (sending it again would not help)."""
        return self._queue_notice(f"{action} {payload}", lambda link: self._call(link, action, payload))

    def _queue_notice(self, what: str, send: Callable[[OcppLink], Awaitable[object]]) -> asyncio.Future[None]:
        notice = _Notice(what, send, asyncio.get_running_loop().create_future())
        self._notices.append(notice)
        self._notice_added.set()
        return notice.delivered

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, reconnect; forever, until cancelled."""
        if not is_tls(self.backend.url):
            log.warning("%s", LAB_WARNING)
        while True:
            uplink = self.uplinks[self.failover.active]
            try:
                await self._serve_one_connection(uplink)
                problem = "connection closed"
            except _Reconnect as again:
                log.info("uplink %s: reconnecting: %s", uplink.name, again)
                if again.failback_to is not None:
                    self.failover.fail_back(again.failback_to, self.clock.monotonic())
                    log.warning("uplink: back to %s, healthy again", self.failover.active_name)
                continue
            except (_NotReady, BackendRefused) as exc:
                problem = str(exc)  # this box or the backend, not the path: no failover
            except (TimeoutError, OSError, websockets.exceptions.WebSocketException, UplinkError) as exc:
                problem = describe_failure(exc)
                if self.failover.failed(self.clock.monotonic(), [interface_usable(u) for u in self.uplinks]):
                    log.warning("uplink %s failed (%s); switching to %s", uplink.name, problem, self.failover.active_name)
                    self.problem = f"{uplink.name}: {problem}"
                    self._backoff.reset()
                    await asyncio.sleep(self.backend.reconnect_min_s)
                    continue
            finally:
                self.connected.clear()
                self._compression = False
            was_up = self.problem is None  # the link was up (it clears the problem at boot), or this is the first try
            self.problem = f"{uplink.name}: {problem}"
            delay = next(self._backoff)
            if was_up:  # a warning when the link goes down; each further failed try only at debug
                log.warning("uplink %s down (%s); reconnecting in %.1f s", uplink.name, problem, delay)
            else:
                log.debug("uplink %s still down (%s); next try in %.1f s", uplink.name, problem, delay)
            await asyncio.sleep(delay)

    def _password(self) -> bytes | None:
        """The Basic-auth password: the backend's AuthorizationKey when it set one, else the installer's file."""
        if self._auth_keys is not None:
            key = self._auth_keys.previous() if self._use_previous_key else self._auth_keys.current()
            if key is not None:
                return key
        # No key from the backend (or it was refused and there is none before it): the installer's password.
        if self.backend.password_file is not None:
            try:
                return self.backend.password_file.read_text().strip().encode()
            except OSError as exc:
                raise _NotReady(f"password_file {self.backend.password_file}: {exc.strerror}") from None
        return None

    async def _open(self, uplink: UplinkSettings, profile: int, tls: ssl.SSLContext | None) -> tuple[ClientConnection, SocketMeter]:
        headers: dict[str, str] = {}
        password = None if profile == 3 else self._password()  # profile 3 proves itself with its certificate
        if password is not None:
            headers = basic_auth_header(self.info.identity, password)
        host, port = host_and_port(self.backend.url)
        # TCP, TLS and the websocket handshake each get as long as the backend gets to answer a call.
        sock = await open_socket(host, port, uplink, self.backend.response_timeout_s)
        meter = SocketMeter(sock)
        try:
            ws = await connect_websocket(
                backend_url(self.backend, self.info.identity), sock, tls, headers,
                compression=self.backend.compression, timeout_s=self.backend.response_timeout_s,
            )
        except BaseException:
            # The event loop's transport owns the socket now and closes it; closing it here as well would
            # free its descriptor number while the transport still holds it registered.
            await self._record(uplink.name, meter.close())
            raise
        return ws, meter

    async def _serve_one_connection(self, uplink: UplinkSettings) -> None:
        profile = self._security_profile()
        tls: ssl.SSLContext | None = None
        if is_tls(self.backend.url):
            if (why := clock_problem(self.clock.system_wall())) is not None:
                raise _NotReady(why)
            try:
                tls = tls_context(self.backend, profile)
            except OSError as exc:  # a CA file or client certificate not there (yet) or unreadable
                raise _NotReady(f"TLS files: {exc.strerror or exc}: {exc.filename or ''}") from None
        try:
            ws, meter = await self._open(uplink, profile, tls)
        except websockets.exceptions.InvalidStatus as exc:
            code = exc.response.status_code
            if code == 401 and self._auth_keys is not None and self._auth_keys.current() is not None and not self._use_previous_key:
                self._use_previous_key = True
                raise BackendRefused("the backend refused the AuthorizationKey (HTTP 401); trying the one before it") from exc
            if code in (401, 403, 404):
                raise BackendRefused(f"the backend answered HTTP {code}{' (credentials refused)' if code == 401 else ''}") from exc
            raise
        except websockets.exceptions.InvalidMessage as exc:
            if tls is None or not isinstance(exc.__cause__, EOFError):
                raise
            # TLS 1.3: the backend checks a client certificate after our side of the handshake is done, and
            # asyncio reports its alert as a plain end of stream. Nothing else closes before any HTTP answer.
            raise UplinkError(
                "the backend closed the connection before any HTTP answer: it most likely "
                + ("refused our client certificate" if profile == 3 else "wants a client certificate (security profile 3)")
            ) from None
        try:
            async with ws:
                if ws.subprotocol != OCPP_SUBPROTOCOL:
                    raise BackendRefused(f"backend did not agree to subprotocol {OCPP_SUBPROTOCOL}")
                self._key_accepted()
                self._compression = bool(ws.protocol.extensions)
                link = OcppLink(
                    self.info.identity, ws, self._handlers, response_timeout=self.backend.response_timeout_s,
                    after_answer=self._answered_command, monotonic=self.clock.monotonic,
                )
                log.info(
                    "uplink %s connected to %s (security profile %d%s)", uplink.name, backend_url(self.backend, self.info.identity),
                    profile, ", permessage-deflate" if self._compression else "",
                )
                try:
                    await self._serve_link(link, ws, uplink, meter, tls)
                except asyncio.CancelledError:
                    # Shutting down: tell the backend we are going away (1001), not that we crashed (1011).
                    await ws.close(websockets.CloseCode.GOING_AWAY)
                    raise
                except _Reconnect:
                    await ws.close(websockets.CloseCode.NORMAL_CLOSURE)
                    raise
        finally:
            await self._record(uplink.name, meter.close())

    def _key_accepted(self) -> None:
        if self._use_previous_key and self._auth_keys is not None:
            log.error("the backend refused the new AuthorizationKey and took the previous one, which is in use again")
            self._auth_keys.go_back()
            self._use_previous_key = False

    def _holding(self, handler: Handler) -> Handler:
        async def handle(payload: dict) -> dict:
            self._answering = True  # until _answered_command: the answer goes out after the handler returns
            return await handler(payload)

        return handle

    def _answered_command(self) -> None:
        self._answering = False
        self._notice_added.set()
        if self._reconnect_wanted is not None:
            self._reconnect_now.set()

    async def _serve_link(
        self, link: OcppLink, ws: ClientConnection, uplink: UplinkSettings, meter: SocketMeter, tls: ssl.SSLContext | None
    ) -> None:
        self._reconnect_wanted = None
        self._reconnect_now.clear()
        self._answering = False  # an answer the last link never sent holds nothing back on this one
        try:
            # Every task here ends only by raising; the first failure tears the connection down.
            async with asyncio.TaskGroup() as tg:
                tg.create_task(link.start())  # the reader: routes answers and backend commands
                tg.create_task(self._keepalive(link, ws))
                tg.create_task(self._count(uplink, meter))
                tg.create_task(self._reconnect_when_asked())
                await self._boot(link)
                self._backoff.reset()
                self.failover.up(self.clock.monotonic())
                self.problem = None
                self._link = link
                self.connected.set()
                tg.create_task(self._heartbeats(link))
                tg.create_task(self._send_statuses(link))
                tg.create_task(self._drain(link))
                tg.create_task(self._send_notices(link))
                tg.create_task(self._watch_preferred(tls))
        except* _Reconnect as group:
            raise group.exceptions[0] from None
        # StoreError too: a full disk must not kill the daemon. The answer that could not be recorded is
        # lost, so the message is resent after the reconnect, identical (same id): a duplicate the backend can spot.
        except* (websockets.exceptions.ConnectionClosed, UplinkError, TimeoutError, OCPPError, StoreError) as group:
            first = group.exceptions[0]
            raise UplinkError(describe_failure(first)) from None
        finally:
            self._link = None

    async def _reconnect_when_asked(self) -> None:
        await self._reconnect_now.wait()
        raise _Reconnect(self._reconnect_wanted or "asked")

    async def _count(self, uplink: UplinkSettings, meter: SocketMeter) -> None:
        while True:
            await asyncio.sleep(COUNT_EVERY_S)
            await self._record(uplink.name, meter.take())

    async def _keepalive(self, link: OcppLink, ws: ClientConnection) -> None:
        """A websocket ping only after WebSocketPingInterval without any frame from the backend."""
        while True:
            interval = self.backend.ping_interval_s  # the backend may change it (WebSocketPingInterval)
            if not interval:
                await asyncio.sleep(KEEPALIVE_RECHECK_S)
                continue
            quiet = self.clock.monotonic() - link.last_received
            if quiet < interval:
                await asyncio.sleep(interval - quiet)
                continue
            pong = await ws.ping()
            try:
                async with asyncio.timeout(self.backend.ping_timeout_s):
                    await pong
            except TimeoutError:
                raise UplinkError(f"no pong within {self.backend.ping_timeout_s:g} s") from None
            link.last_received = self.clock.monotonic()

    async def _watch_preferred(self, tls: ssl.SSLContext | None) -> None:
        """While a lesser uplink carries the link: probe the preferred ones, and go back to one proven healthy.

        `tls` is the link's own context: a probe checks the backend exactly as the link did."""
        while True:
            now = self.clock.monotonic()
            self.failover.still_up(now)
            for index in self.failover.probe_due(now):
                preferred = self.uplinks[index]
                ok = interface_usable(preferred)
                if ok:
                    why = await probe(self.backend.url, preferred, tls, self.backend.response_timeout_s, self._record)
                    ok = why is None
                    log.debug("uplink %s probed: %s", preferred.name, why or "reachable")
                self.failover.probed(index, ok, self.clock.monotonic())
            target = self.failover.failback_target(self.clock.monotonic())
            if target is not None:
                raise _Reconnect(f"failing back to {self.uplinks[target].name}", failback_to=target)
            await asyncio.sleep(max(1.0, min(self.failover.probe_interval_s, self.failover.failback_after_s) / 4))

    async def _call(self, link: OcppLink, action: str, payload: dict, message_id: str | None = None) -> dict:
        """One CALL; returns the CALLRESULT payload (camelCase), raises OCPPError on a CALLERROR, TimeoutError without answer."""
        return await link.call_wire(action, payload, message_id or ocpp_messages.new_message_id())

    def _boot_payload(self) -> dict:
        return ocpp_messages.boot_notification(self.info, self._boot_fields())

    async def _boot(self, link: OcppLink) -> None:
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

    async def _heartbeats(self, link: OcppLink) -> None:
        """A Heartbeat only when no CALL went out for HeartbeatInterval: any CALL tells the backend we are alive."""
        while True:
            quiet = self.clock.monotonic() - link.last_call_sent
            if quiet < self.heartbeat_interval_s:
                await asyncio.sleep(self.heartbeat_interval_s - quiet)
                continue
            await self._heartbeat(link)

    async def _heartbeat(self, link: OcppLink) -> None:
        self.clock.adopt_backend_time((await self._call(link, "Heartbeat", {}))["currentTime"])

    def _all_statuses(self) -> list[StatusChanged]:
        """Connector 0 (the cluster's main controller, OCPP 1.6 §3.8) and every connector."""
        return [StatusChanged(0, self.station_status, "NoError", None, self.clock.wall()), *self._statuses()]

    async def _send_statuses(self, link: OcppLink) -> None:
        """Connector 0 and every connector right after boot, then each change as it happens."""
        while not self._status_queue.empty():
            self._status_queue.get_nowait()  # superseded by the full round below
        for s in self._all_statuses():
            await self._send_status(link, s)
        while True:
            await self._send_status(link, await self._status_queue.get())

    async def _send_triggered(self, link: OcppLink, message: str, cid: int | None) -> None:
        """What TriggerMessage asked for, made when it goes out (the firmware and diagnostics statuses come through notify)."""
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

    async def _send_notices(self, link: OcppLink) -> None:
        """The notices (see notify) in order; one that the link lost on the way is sent again on the next."""
        while True:
            if not self._notices or self._answering:
                self._notice_added.clear()
                await self._notice_added.wait()
                continue
            notice = self._notices[0]
            try:
                await notice.send(link)
            except OCPPError as exc:
                log.error("backend refused %s: %s", notice.what, exc)
            self._notices.popleft()
            if not notice.delivered.done():
                notice.delivered.set_result(None)

    async def _send_status(self, link: OcppLink, s: StatusChanged) -> None:
        payload = ocpp_messages.status_notification(s.connector_id, s.status, s.error_code, s.info, s.wall, self.clock)
        await self._call(link, "StatusNotification", payload)

    async def _drain(self, link: OcppLink) -> None:
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

    async def _send_queued(self, link: OcppLink, message: QueuedMessage) -> None:
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


class _NotReady(UplinkError):
    """This box is not ready to connect (the clock is unset, a secret file is missing): not the uplink's fault."""
