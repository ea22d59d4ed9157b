"""Who may charge: the idTag a slave shows (its RFID reader), checked locally or by the backend.

Thin async layer over gateway.local_auth.decide: a tag presented at a
connector is looked up in the local list and the cache; where the OCPP
configuration says so (LocalPreAuthorize, LocalAuthorizeOffline,
AllowOfflineTxForUnknownId) the decision is taken at once, otherwise an
Authorize.req goes to the backend, and if the backend cannot answer the tag is
judged as offline. Every idTagInfo the backend sends (Authorize,
StartTransaction and StopTransaction answers) updates the cache (§3.5.1).

The poller asks at each poll (`verdict`); the answer is the tag once it may
start, None while pending or refused. Authorizations run one at a time in
`run`, a task of the daemon.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.clock import Clock
from gateway.control import Control
from gateway.errors import UplinkError
from gateway.local_auth import AuthFlags, AuthorizationStatus, DecisionKind, IdTagInfo, decide, parent_id_tag_of

log = logging.getLogger("gateway.authorizer")


class Verdict(enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REFUSED = "refused"


@dataclass
class _Presented:
    id_tag: str
    verdict: Verdict = Verdict.PENDING


class Authorizer:
    def __init__(
        self,
        control: Control,
        clock: Clock,
        ask_backend: Callable[[str], Awaitable[dict]],
        online: Callable[[], bool],
    ) -> None:
        self.control = control
        self.clock = clock
        self._ask_backend = ask_backend  # Authorize.req -> idTagInfo; UplinkError when it cannot answer
        self._online = online
        self._presented: dict[int, _Presented] = {}
        self._queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    def verdict(self, connector_id: int, id_tag: str) -> str | None:
        """The tag shown at a connector, once it may start charging; a new tag is sent for authorization."""
        shown = self._presented.get(connector_id)
        if shown is None or shown.id_tag != id_tag:
            self._presented[connector_id] = _Presented(id_tag)
            self._queue.put_nowait((connector_id, id_tag))
            return None
        return id_tag if shown.verdict is Verdict.ACCEPTED else None

    def forget(self, connector_id: int) -> None:
        """A verdict counts for one start: after it, or once the EV or the card went, a tag is judged afresh."""
        self._presented.pop(connector_id, None)

    def parent_of(self, id_tag: str) -> str | None:
        return parent_id_tag_of(id_tag, self.control.local_list, self.control.cache)

    async def run(self) -> None:
        while True:
            connector_id, id_tag = await self._queue.get()
            accepted = await self._authorize(id_tag)
            shown = self._presented.get(connector_id)
            if shown is not None and shown.id_tag == id_tag:
                shown.verdict = Verdict.ACCEPTED if accepted else Verdict.REFUSED
            log.info("connector %d: idTag %s %s", connector_id, id_tag, "accepted" if accepted else "refused")

    async def _authorize(self, id_tag: str) -> bool:
        flags = AuthFlags.from_config(self.control.configuration)
        now = datetime.fromtimestamp(self.clock.wall(), UTC)
        decision = decide(id_tag, now, self._online(), flags, self.control.local_list, self.control.cache)
        if decision.kind is DecisionKind.ASK_BACKEND:
            try:
                info = await self._ask_backend(id_tag)
            except UplinkError as exc:
                log.warning("idTag %s: backend cannot answer (%s); judged as offline", id_tag, exc)
                decision = decide(id_tag, now, False, flags, self.control.local_list, self.control.cache)
            else:
                await self.learn(id_tag, info)
                return IdTagInfo.from_wire(info).at(now).status is AuthorizationStatus.ACCEPTED
        if decision.kind is DecisionKind.ACCEPT:
            log.info("idTag %s accepted locally (%s)", id_tag, decision.source.value)
        return decision.kind is DecisionKind.ACCEPT

    async def learn(self, id_tag: str, info: dict) -> None:
        """An idTagInfo from the backend goes into the Authorization Cache (§3.5.1), where it is enabled."""
        if not self.control.configuration.bool_value("AuthorizationCacheEnabled"):
            return
        now = datetime.fromtimestamp(self.clock.wall(), UTC)
        self.control.cache.update(id_tag, IdTagInfo.from_wire(info), now, local_list=self.control.local_list)
        await self.control.save_cache()

