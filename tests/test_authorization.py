"""Who may charge, end to end against the strict independent backend (npm ocpp-rpc).

Authorize.req before a remote start (AuthorizeRemoteTxRequests), the local list with
LocalPreAuthorize, and a StartTransaction answered with an invalid idTag, with
StopTransactionOnInvalidId true (the session ends, DeAuthorized) and false (it stays, without current).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.test_backend_commands import IDENTITY, Running, cluster, cluster_config, daemon_on_simulator

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


BENDER_LIMIT = 1000  # Bender CC613 holding register: the current limit in whole amperes
SLOW_LAN = [{"name": "lan", "kind": "tcp", "poll_interval_s": 1.5}]  # the Bender profile waits 1 s for an answer
CARDS = {"speed": 60, "seed": 3, "wire_delay": False, "idle_s": [60, 180], "session_kwh": [40, 40], "id_tags": ["CARD0001", "STRANGER"]}


async def test_the_card_at_the_slaves_reader_is_authorized_by_the_backend(tmp_path: Path) -> None:
    """Bender CC613 boxes show the presented card in their RFID register; no free charging here."""
    async with cluster(tmp_path, free_tag=False, profile="bender-cc613", simulator=CARDS, buses=SLOW_LAN) as c:
        await c.until(lambda: len(c.backend.calls("StartTransaction", IDENTITY)) == 2, timeout=20)
        shown = {p.settings.id: p.last_reading.id_tag for p in c.daemon.pollers if p.last_reading}
        for start in [r["params"] for r in c.backend.calls("StartTransaction", IDENTITY)]:
            assert start["idTag"] == shown[start["connectorId"]]
            assert _calls(c, "Authorize", idTag=start["idTag"]), "asked the backend first"
        await c.until(lambda: c.register(1, BENDER_LIMIT) == 16, timeout=5)


async def test_offline_only_a_card_on_the_local_list_charges(tmp_path: Path) -> None:
    """No backend at all: LocalAuthorizeOffline lets the listed card in; AllowOfflineTxForUnknownId is false."""
    config = cluster_config(tmp_path, "ws://127.0.0.1:9/ocpp", False, 2, "bender-cc613", simulator=CARDS, buses=SLOW_LAN)
    async with daemon_on_simulator(config) as (daemon, _):
        listed = [{"idTag": "CARD0001", "idTagInfo": {"status": "Accepted"}}]
        sent = await daemon.control.send_local_list({"listVersion": 4, "updateType": "Full", "localAuthorizationList": listed})
        assert sent["status"] == "Accepted"  # before the EVs arrive, 1 to 3 s after the start
        async with asyncio.timeout(20):
            while len([p for p in daemon.pollers if p.last_reading and p.last_reading.id_tag]) < 2:
                await asyncio.sleep(0.2)
            shown = {p.settings.id: p.last_reading.id_tag for p in daemon.pollers if p.last_reading}
            assert sorted(shown.values()) == ["CARD0001", "STRANGER"], f"seed 3 no longer gives one card each: {shown}"
            card = next(cid for cid, tag in shown.items() if tag == "CARD0001")
            while daemon.connectors[card].transaction is None:
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)
        stranger = next(cid for cid, tag in shown.items() if tag == "STRANGER")
        assert daemon.connectors[stranger].transaction is None and daemon.connectors[stranger].status == "Preparing"
        assert daemon.connectors[card].transaction.id_tag == "CARD0001"
        assert await daemon.store.pending() >= 1, "the StartTransaction waits in the outbox for the backend"
