"""Two uplinks on loopback with real TLS: bound to 127.0.0.2 ("wired") and 127.0.0.3 ("gprs").

A fault proxy in front of the strict npm ocpp-rpc backend swallows the traffic of one source
address only, so one uplink loses its path while the other keeps it. The uplink fails over,
probes the preferred one, fails back only after it was healthy for the hold time, and the
outbox reaches the backend once, in order, throughout. Interface binding is tested on `lo`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.settings import BackendSettings, FailoverSettings, OcppSettings, UplinkSettings
from gateway.store import Store
from gateway.traffic import Traffic
from gateway.uplink import Uplink
from tests.certs import make_self_signed_cert
from tests.fault_proxy import FaultProxy
from tests.ocpp_rpc_peer import OcppRpcBackend
from tests.uplinks import CLOCK, INFO, drained, offline_session, running, statuses

pytestmark = pytest.mark.interop

WIRED, GPRS = "127.0.0.2", "127.0.0.3"


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


class Counted:
    """The traffic the uplink hands to its recorder, per uplink name."""

    def __init__(self) -> None:
        self.by_uplink: dict[str, Traffic] = {}

    async def record(self, name: str, portion: Traffic) -> None:
        self.by_uplink[name] = self.by_uplink.get(name, Traffic()) + portion


async def test_failover_to_the_second_address_and_failback_after_the_hold(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    store = await Store.open(tmp_path / "gw.db")
    await offline_session(store)
    counted = Counted()
    async with OcppRpcBackend(tls_cert=cert, tls_key=key) as backend, FaultProxy("127.0.0.1", backend.port) as proxy:
        settings = BackendSettings(
            url=proxy.url_for(backend.url), ca_file=cert, ping_interval_s=1, ping_timeout_s=1,
            response_timeout_s=2, reconnect_min_s=0.2, reconnect_max_s=1,
        )
        uplink = Uplink(
            INFO, settings, OcppSettings(), store, CLOCK, statuses,
            uplinks=(UplinkSettings("wired", source_address=WIRED), UplinkSettings("gprs", source_address=GPRS)),
            failover=FailoverSettings(failback_after_s=2, probe_interval_s=0.5),
            record_traffic=counted.record,
        )

        def on(name: str) -> bool:
            return uplink.connected.is_set() and uplink.status().uplink == name

        async with running(uplink):
            await until(lambda: on("wired"), 10)
            assert set(proxy.client_hosts) == {WIRED}, "bound to the wired uplink's address"
            await drained(store)
            proxy.blackhole(source=WIRED)  # the cable is cut somewhere beyond the box
            await until(lambda: on("gprs"), 20)
            assert proxy.client_hosts[-1] == GPRS
            await asyncio.sleep(3)
            assert on("gprs"), "no failback while the wired path is dead (its probes fail)"
            proxy.restore(source=WIRED)
            back_at = time.monotonic()
            await until(lambda: on("wired"), 20)
            assert time.monotonic() - back_at >= 2, "failback only after failback_after_s of good probes"
            await asyncio.sleep(2)
            assert on("wired"), "and it stays"
        assert len(backend.calls("StartTransaction")) == 1 and len(backend.calls("StopTransaction")) == 1
        assert backend.violations == []
    assert counted.by_uplink["wired"].total > 0 and counted.by_uplink["gprs"].total > 0
    await store.close()


async def test_an_uplink_whose_interface_is_missing_is_skipped_and_the_next_binds_to_lo(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend(tls_cert=cert, tls_key=key) as backend:
        settings = BackendSettings(url=backend.url, ca_file=cert, reconnect_min_s=0.2, reconnect_max_s=1)
        uplink = Uplink(
            INFO, settings, OcppSettings(), store, CLOCK, statuses,
            uplinks=(UplinkSettings("cable", interface="gwtest0"), UplinkSettings("loop", interface="lo")),
        )
        started = time.monotonic()
        async with running(uplink):
            await asyncio.wait_for(uplink.connected.wait(), 10)
            assert uplink.status().uplink == "loop"
        assert time.monotonic() - started < 3, "a missing interface is left at once, not after retries"
        assert backend.violations == []
    await store.close()
