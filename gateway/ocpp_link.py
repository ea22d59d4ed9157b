"""The ocpp library's charge point on one open websocket: our wire-level calls and the backend's commands.

Thin layer over `ocpp.v16.ChargePoint`. It also keeps the times of the last frame
sent and received, which the uplink needs to send a Heartbeat or a websocket ping
only when the link has been quiet (a SIM's data is counted by the byte).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping

from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.exceptions import FormationViolationError, FormatViolationError
from ocpp.messages import Call, CallError, CallResult, MessageType, validate_payload
from ocpp.v16 import ChargePoint, call_result
from websockets.asyncio.client import ClientConnection

log = logging.getLogger("gateway.uplink")

_SECRET_VALUE = re.compile(r'("value"\s*:\s*)"[^"]*"')


class _RedactKeys(logging.Filter):
    """Frame logs never show an AuthorizationKey: the ocpp library logs every frame at INFO, websockets at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "authorizationkey" in text.lower():
            record.msg, record.args = _SECRET_VALUE.sub(r'\1"<redacted>"', text), ()
        return True


def _redacting(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RedactKeys) for f in logger.filters):
        logger.addFilter(_RedactKeys())
    return logger


FRAME_LOG = _redacting("gateway.frames")  # the ocpp library's frame log
WEBSOCKET_LOG = _redacting("gateway.websocket")  # the websockets library's protocol log

Handler = Callable[[dict], Awaitable[dict]]  # a backend command: CALL payload in, CALLRESULT payload out (camelCase)


class OcppLink(ChargePoint):
    """The ocpp library's charge point on one open websocket, with our handlers for the backend's commands.

    The library validates each incoming CALL against the OCPP 1.6 schemas (a bad one gets its
    CALLERROR: FormationViolation, PropertyConstraintViolation, ...), answers NotImplemented for an
    action without handler, and validates our answer. Our handlers speak camelCase, as the wire
    and the store do; the library's snake_case kwargs are turned back here, once.
    """

    def __init__(
        self,
        identity: str,
        connection: ClientConnection,
        handlers: Mapping[str, Handler],
        response_timeout: float,
        after_answer: Callable[[], None] = lambda: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(identity, connection, response_timeout=response_timeout, logger=FRAME_LOG)
        for action, handler in handlers.items():
            self.route_map[action] = {"_on_action": _library_handler(action, handler)}
        self._after_answer = after_answer  # runs once the answer to a backend command has gone out
        self._call_handled = False
        self._monotonic = monotonic
        self.last_call_sent = self.last_received = monotonic()

    async def _handle_call(self, msg: Call) -> None:
        self._call_handled = True
        try:
            await super()._handle_call(msg)
        except FormatViolationError as exc:
            # OCPP-J 1.6 §4.2.3 spells this error code FormationViolation (2.0 renamed it); the library uses the new name.
            raise FormationViolationError(description=exc.description, details=exc.details) from None

    async def route_message(self, raw_msg: str) -> None:
        self.last_received = self._monotonic()
        self._call_handled = False
        try:
            await super().route_message(raw_msg)  # a backend command's CALLRESULT or CALLERROR is sent in here
        finally:
            if self._call_handled:  # answered, or refused: either way nothing waits for its answer any more
                self._after_answer()

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
            self.last_call_sent = self._monotonic()
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
