"""Who may charge, end to end against the strict independent backend (npm ocpp-rpc).

Authorize.req before a remote start (AuthorizeRemoteTxRequests), the local list with
LocalPreAuthorize, and a StartTransaction answered with an invalid idTag, with
StopTransactionOnInvalidId true (the session ends, DeAuthorized) and false (it stays, without current).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.test_backend_commands import IDENTITY, Running, cluster

pytestmark = pytest.mark.interop

# EVs arrive 5 s after the start (speed 60): time to set the backend up first.
LATE_EVS = {"speed": 60, "seed": 2, "wire_delay": False, "idle_s": [300, 300], "session_kwh": [40, 40]}


def _calls(c: Running, method: str, **params: object) -> list[dict]:
    return [r["params"] for r in c.backend.calls(method, IDENTITY) if all(r["params"].get(k) == v for k, v in params.items())]


async def _configure(c: Running, key: str, value: str) -> None:
    assert (await c.call("ChangeConfiguration", {"key": key, "value": value}))["status"] == "Accepted"


async def test_a_remote_start_is_authorized_first_when_the_backend_asks(tmp_path: Path) -> None:
    async with cluster(tmp_path, free_tag=False) as c:
        await _configure(c, "AuthorizeRemoteTxRequests", "true")
        await c.backend.configure(id_tag_status="Invalid")
        await c.until(lambda: c.status(1) == "Preparing" and c.status(2) == "Preparing", what="two EVs waiting")
        assert (await c.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "STOLEN"}))["status"] == "Accepted"
        await c.until(lambda: _calls(c, "Authorize", idTag="STOLEN"), timeout=5, what="Authorize.req for the remote tag")
        await asyncio.sleep(1.5)
        assert not c.backend.calls("StartTransaction", IDENTITY), "an invalid tag never starts"
        assert await asyncio.to_thread(c.register, 1) == 0
        await c.backend.configure(id_tag_status="Accepted")
        assert (await c.call("RemoteStartTransaction", {"connectorId": 1, "idTag": "APP-2"}))["status"] == "Accepted"
        await c.until(lambda: _calls(c, "StartTransaction", idTag="APP-2"), timeout=5)
        await c.until(lambda: c.register(1) == 160, timeout=5, what="the box offers current")
        # A tag on the local list with LocalPreAuthorize starts at once: no Authorize.req.
        tags = [{"idTag": f"CARD{n:04d}", "idTagInfo": {"status": "Accepted"}} for n in range(1000)]
        sent = await c.call("SendLocalList", {"listVersion": 1, "updateType": "Full", "localAuthorizationList": tags})
        assert sent["status"] == "Accepted"
        await _configure(c, "LocalPreAuthorize", "true")
        assert (await c.call("RemoteStartTransaction", {"connectorId": 2, "idTag": "CARD0999"}))["status"] == "Accepted"
        await c.until(lambda: _calls(c, "StartTransaction", idTag="CARD0999"), timeout=5)
        assert not _calls(c, "Authorize", idTag="CARD0999")


async def test_a_tag_refused_in_the_start_answer_ends_the_session(tmp_path: Path) -> None:
    async with cluster(tmp_path, simulator=LATE_EVS) as c:
        await c.backend.configure(id_tag_status="Invalid")
        await c.until(lambda: len(_calls(c, "StopTransaction", reason="DeAuthorized")) == 2, timeout=20,
                      what="both sessions stopped as DeAuthorized (StopTransactionOnInvalidId true)")
        await c.until(lambda: c.status(1) == "Finishing" and c.register(1) == 0, timeout=5)
        assert c.daemon.control.cache.peek("FREE") is not None, "the answer went into the Authorization Cache"


async def test_with_stop_on_invalid_id_false_the_session_stays_without_current(tmp_path: Path) -> None:
    async with cluster(tmp_path, simulator=LATE_EVS) as c:
        await _configure(c, "StopTransactionOnInvalidId", "false")
        await c.backend.configure(id_tag_status="Invalid")
        await c.until(lambda: len(c.backend.calls("StartTransaction", IDENTITY)) == 2, timeout=20)
        await c.until(lambda: c.status(1) == "SuspendedEVSE" and c.register(1) == 0, timeout=5,
                      what="the session stays open, the box offers no current")
        await asyncio.sleep(1.0)
        assert not c.backend.calls("StopTransaction", IDENTITY)
        assert c.daemon.connectors[1].transaction is not None
