"""The Authorizer between a tag at a connector and the backend: one verdict per start, offline rules, the cache.

The local list, cache and configuration keys are a real daemon's (built on a real SQLite file, not
run). The backend is a plain coroutine that answers Authorize with a chosen idTagInfo, or cannot
answer (UplinkError); the path through the real uplink and the strict peer is tests/test_authorization.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.authorizer import Authorizer
from gateway.clock import Clock
from gateway.control import Control
from gateway.daemon import Daemon
from gateway.errors import UplinkError
from gateway.local_auth import IdTagInfo
from gateway.store import Store
from tests.test_backend_commands import cluster_config


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
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Authorizer, Control, Backend]]:
    config = cluster_config(tmp_path, "ws://127.0.0.1:9/ocpp", free_tag=False)
    daemon = Daemon(config, await Store.open(config.storage.path), Clock())
    await daemon.recover()
    backend = Backend()
    authorizer = Authorizer(daemon.control, Clock(), backend.authorize, online=lambda: backend.online)
    task = asyncio.create_task(authorizer.run())
    yield authorizer, daemon.control, backend
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await daemon.store.close()


async def _verdict(authorizer: Authorizer, connector_id: int, id_tag: str) -> str | None:
    """Present a tag, let the authorization run, and ask again (as the next poll does)."""
    authorizer.verdict(connector_id, id_tag)
    for _ in range(20):
        await asyncio.sleep(0.01)
    return authorizer.verdict(connector_id, id_tag)


async def test_a_tag_is_asked_once_per_start_and_learnt(setup: tuple[Authorizer, Control, Backend]) -> None:
    authorizer, control, backend = setup
    assert authorizer.verdict(1, "CARD") is None  # pending
    assert await _verdict(authorizer, 1, "CARD") == "CARD"
    assert authorizer.verdict(1, "CARD") == "CARD" and backend.asked == ["CARD"], "polls do not ask again"
    assert control.cache.peek("CARD") is not None
    assert (await control.store.load_state("auth_cache"))["entries"][0]["idTag"] == "CARD", "kept in SQLite"
    authorizer.forget(1)  # the session started (or the EV left): the next start is judged afresh
    backend.status = "Blocked"
    assert await _verdict(authorizer, 1, "CARD") is None
    assert backend.asked == ["CARD", "CARD"]


async def test_offline_the_list_and_allow_offline_tx_for_unknown_id_decide(setup: tuple[Authorizer, Control, Backend]) -> None:
    authorizer, control, backend = setup
    control.local_list.apply("Full", 1, [{"idTag": "LISTED", "idTagInfo": {"status": "Accepted"}}], 1000)
    backend.online = False
    assert await _verdict(authorizer, 1, "LISTED") == "LISTED"  # LocalAuthorizeOffline, default true
    assert await _verdict(authorizer, 2, "STRANGER") is None
    control.configuration.change("AllowOfflineTxForUnknownId", "true")
    authorizer.forget(2)
    assert await _verdict(authorizer, 2, "STRANGER") == "STRANGER"
    assert backend.asked == [], "offline: the backend is not even tried"


async def test_local_pre_authorize_starts_a_listed_tag_without_asking(setup: tuple[Authorizer, Control, Backend]) -> None:
    authorizer, control, backend = setup
    control.local_list.apply("Full", 1, [{"idTag": "LISTED", "idTagInfo": {"status": "Accepted"}}], 1000)
    control.configuration.change("LocalPreAuthorize", "true")
    assert await _verdict(authorizer, 1, "LISTED") == "LISTED"
    assert await _verdict(authorizer, 2, "OTHER") == "OTHER"
    assert backend.asked == ["OTHER"]


async def test_a_backend_that_cannot_answer_is_taken_as_offline(setup: tuple[Authorizer, Control, Backend]) -> None:
    authorizer, control, backend = setup
    backend.answers = False
    control.cache.update("CACHED", IdTagInfo.from_wire({"status": "Accepted"}), datetime.now(UTC), local_list=control.local_list)
    assert await _verdict(authorizer, 1, "CACHED") == "CACHED"
    assert await _verdict(authorizer, 2, "UNKNOWN") is None
    assert backend.asked == ["CACHED", "UNKNOWN"], "both were tried online first"
