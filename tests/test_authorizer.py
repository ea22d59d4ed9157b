"""The Authorizer between a tag at a connector and the backend: one verdict per start, offline rules, the cache.

The backend here is a plain coroutine that answers Authorize with a chosen idTagInfo, or
cannot answer (UplinkError); the local list, cache and configuration keys are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from gateway.authorizer import Authorizer
from gateway.clock import Clock
from gateway.errors import UplinkError
from gateway.local_auth import AuthCache, IdTagInfo, LocalList
from gateway.ocpp_config import OcppConfiguration


@dataclass
class Settings:
    """What the Authorizer reads of gateway.control.Control."""

    configuration: OcppConfiguration = field(default_factory=lambda: OcppConfiguration(2))
    local_list: LocalList = field(default_factory=LocalList)
    cache: AuthCache = field(default_factory=AuthCache)
    saved: int = 0

    async def save_cache(self) -> None:
        self.saved += 1


@dataclass
class Backend:
    status: str = "Accepted"
    online: bool = True
    answers: bool = True  # False: connected, but the answer never comes
    asked: list[str] = field(default_factory=list)

    async def authorize(self, id_tag: str) -> dict:
        self.asked.append(id_tag)
        if not (self.online and self.answers):
            raise UplinkError("Authorize not answered")
        return {"status": self.status}


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Authorizer, Settings, Backend]]:
    settings, backend = Settings(), Backend()
    authorizer = Authorizer(settings, Clock(), backend.authorize, online=lambda: backend.online)  # type: ignore[arg-type]
    task = asyncio.create_task(authorizer.run())
    yield authorizer, settings, backend
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _verdict(authorizer: Authorizer, connector_id: int, id_tag: str) -> str | None:
    """Present a tag, let the authorization run, and ask again (as the next poll does)."""
    authorizer.verdict(connector_id, id_tag)
    for _ in range(20):
        await asyncio.sleep(0.01)
    return authorizer.verdict(connector_id, id_tag)


async def test_a_tag_is_asked_once_per_start_and_learnt(setup: tuple[Authorizer, Settings, Backend]) -> None:
    authorizer, settings, backend = setup
    assert authorizer.verdict(1, "CARD") is None  # pending
    assert await _verdict(authorizer, 1, "CARD") == "CARD"
    assert authorizer.verdict(1, "CARD") == "CARD" and backend.asked == ["CARD"], "polls do not ask again"
    assert settings.cache.peek("CARD") is not None and settings.saved == 1
    authorizer.forget(1)  # the session started (or the EV left): the next start is judged afresh
    backend.status = "Blocked"
    assert await _verdict(authorizer, 1, "CARD") is None
    assert backend.asked == ["CARD", "CARD"]


async def test_offline_the_list_and_allow_offline_tx_for_unknown_id_decide(setup: tuple[Authorizer, Settings, Backend]) -> None:
    authorizer, settings, backend = setup
    settings.local_list.apply("Full", 1, [{"idTag": "LISTED", "idTagInfo": {"status": "Accepted"}}], 1000)
    backend.online = False
    assert await _verdict(authorizer, 1, "LISTED") == "LISTED"  # LocalAuthorizeOffline, default true
    assert await _verdict(authorizer, 2, "STRANGER") is None
    settings.configuration.change("AllowOfflineTxForUnknownId", "true")
    authorizer.forget(2)
    assert await _verdict(authorizer, 2, "STRANGER") == "STRANGER"
    assert backend.asked == [], "offline: the backend is not even tried"


async def test_local_pre_authorize_starts_a_listed_tag_without_asking(setup: tuple[Authorizer, Settings, Backend]) -> None:
    authorizer, settings, backend = setup
    settings.local_list.apply("Full", 1, [{"idTag": "LISTED", "idTagInfo": {"status": "Accepted"}}], 1000)
    settings.configuration.change("LocalPreAuthorize", "true")
    assert await _verdict(authorizer, 1, "LISTED") == "LISTED"
    assert await _verdict(authorizer, 2, "OTHER") == "OTHER"
    assert backend.asked == ["OTHER"]


async def test_a_backend_that_cannot_answer_is_taken_as_offline(setup: tuple[Authorizer, Settings, Backend]) -> None:
    authorizer, settings, backend = setup
    backend.answers = False
    settings.cache.update("CACHED", IdTagInfo.from_wire({"status": "Accepted"}), datetime.now(UTC), local_list=settings.local_list)
    assert await _verdict(authorizer, 1, "CACHED") == "CACHED"
    assert await _verdict(authorizer, 2, "UNKNOWN") is None
    assert backend.asked == ["CACHED", "UNKNOWN"], "both were tried online first"
