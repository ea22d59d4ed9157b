"""The security profiles on loopback with real TLS, certificates made at test time, against the strict npm ocpp-rpc backend.

Mutual TLS accepted and refused, a backend that only speaks TLS 1.1 refused, a box that
believes it is 1970, plain ws only in lab mode with its warning, and the AuthorizationKey
the backend sets: stored 0600, never logged nor put in the database, used after a
reconnect, and given up for the key before it when the backend refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import stat
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth_key import AuthKeyStore
from gateway.clock import EARLIEST_VALID, Clock
from gateway.settings import BackendSettings, Config, OcppSettings, UplinkSettings
from gateway.store import Store
from gateway.uplink import Uplink
from gateway.uplink_security import LAB_WARNING
from tests.certs import make_ca, make_client_cert, make_self_signed_cert
from tests.ocpp_rpc_peer import OcppRpcBackend
from tests.test_backend_commands import IDENTITY as INFO_ID
from tests.test_backend_commands import cluster_config, daemon_on_simulator
from tests.uplinks import CLOCK, INFO, running, statuses

pytestmark = pytest.mark.interop

INSTALLER_PASSWORD = "installer-password-of-16+-bytes"
NEW_KEY = "00112233445566778899AABBCCDDEEFF0A0B0C0D"  # 20 bytes, as a backend sends it (hex)


async def until(predicate: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)


# --- profile 3: mutual TLS -------------------------------------------------------------------


async def test_mutual_tls_is_accepted_without_basic_auth(tmp_path: Path) -> None:
    server_cert, server_key = make_self_signed_cert(tmp_path)
    ca = make_ca(tmp_path, "operator")
    client_cert, client_key = make_client_cert(tmp_path, ca, INFO.identity)
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend(tls_cert=server_cert, tls_key=server_key, tls_ca=ca[0]) as backend:
        settings = BackendSettings(url=backend.url, ca_file=server_cert, client_cert=client_cert, client_key=client_key, security_profile=3)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await asyncio.wait_for(uplink.connected.wait(), 10)
            assert uplink.status().security_profile == 3 and uplink.status().connected
        connect = backend.of_type("connect", INFO.identity)[0]
        assert connect["tlsClientSubject"]["CN"] == INFO.identity
        assert "authorization" not in {k.lower() for k in connect["headers"]}, "profile 3 sends no password"
        assert backend.violations == []
    await store.close()


@pytest.mark.parametrize("fault", ["no client certificate", "certificate of another CA"])
async def test_mutual_tls_refused_never_connects_and_says_why(tmp_path: Path, fault: str) -> None:
    server_cert, server_key = make_self_signed_cert(tmp_path)
    trusted = make_ca(tmp_path, "operator")
    stranger = make_ca(tmp_path, "stranger")
    client_cert, client_key = make_client_cert(tmp_path, stranger, INFO.identity)
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend(tls_cert=server_cert, tls_key=server_key, tls_ca=trusted[0]) as backend:
        if fault == "no client certificate":
            settings = BackendSettings(url=backend.url, ca_file=server_cert, reconnect_min_s=0.2, reconnect_max_s=0.5)
        else:
            settings = BackendSettings(
                url=backend.url, ca_file=server_cert, client_cert=client_cert, client_key=client_key, security_profile=3,
                reconnect_min_s=0.2, reconnect_max_s=0.5,
            )
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await until(lambda: uplink.problem is not None)
            await asyncio.sleep(0.5)
            assert not uplink.connected.is_set()
        problem = uplink.problem or ""
        expected = "wants a client certificate" if fault == "no client certificate" else "refused our client certificate"
        assert expected in problem, problem
        assert backend.calls(identity=INFO.identity) == []
    await store.close()


async def test_an_untrusted_backend_certificate_is_named_in_the_status(tmp_path: Path) -> None:
    server_cert, server_key = make_self_signed_cert(tmp_path)
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend(tls_cert=server_cert, tls_key=server_key) as backend:
        settings = BackendSettings(url=backend.url, reconnect_min_s=0.2, reconnect_max_s=0.5)  # system CAs only
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await until(lambda: uplink.problem is not None)
        assert "the backend's certificate did not validate: self-signed certificate" in (uplink.problem or "")
        assert backend.calls(identity=INFO.identity) == []
    await store.close()


# --- TLS 1.2 or later only ----------------------------------------------------------------------


@contextlib.contextmanager
def tls11_server(cert: Path, key: Path) -> Iterator[int]:
    """A TLS server on loopback that speaks nothing newer than TLS 1.1 (an outdated backend or a downgrade).

    Blocking ssl in a thread: it answers a client that wants more with a protocol_version alert, as
    such servers do (asyncio's TLS server would drop the connection without one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated: the point of the test
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with contextlib.suppress(OSError), conn, ctx.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


async def test_a_backend_offering_only_tls_1_1_is_refused(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    store = await Store.open(tmp_path / "gw.db")
    with tls11_server(cert, key) as port:
        # The server does speak TLS 1.1: a client that allows it gets through.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            lax = ssl.create_default_context(cafile=cert)
            lax.set_ciphers("DEFAULT:@SECLEVEL=0")
            lax.minimum_version = ssl.TLSVersion.TLSv1
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=lax)
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
        writer.close()
        settings = BackendSettings(url=f"wss://127.0.0.1:{port}/ocpp", ca_file=cert, reconnect_min_s=0.2, reconnect_max_s=0.5)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        async with running(uplink):
            await until(lambda: uplink.problem is not None)
        assert "the backend offers no TLS 1.2 or later" in (uplink.problem or ""), uplink.problem
    await store.close()


# --- the clock before TLS; plain ws only in a lab ------------------------------------------------


class Unset1970(Clock):
    """A master without RTC that booted believing it is 1970, until `ntp()`."""

    def __init__(self) -> None:
        super().__init__()
        self.synced = False

    def system_wall(self) -> float:
        return super().system_wall() if self.synced else 100.0 + self.monotonic() % 60

    def ntp(self) -> None:
        self.synced = True


async def test_tls_waits_for_the_clock_and_says_so(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    clock = Unset1970()
    assert clock.system_wall() < EARLIEST_VALID
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend(tls_cert=cert, tls_key=key) as backend:
        settings = BackendSettings(url=backend.url, ca_file=cert, reconnect_min_s=0.2, reconnect_max_s=0.5)
        uplink = Uplink(INFO, settings, OcppSettings(), store, clock, statuses)
        async with running(uplink):
            await until(lambda: uplink.problem is not None)
            await asyncio.sleep(0.5)
            assert "the system clock says 1970-01-01 00:0" in (uplink.problem or "")
            assert "no certificate can be validated" in (uplink.problem or "")
            assert backend.of_type("connect") == [], "no TLS attempt while the clock is wrong"
            clock.ntp()
            await asyncio.wait_for(uplink.connected.wait(), 10)
    await store.close()


async def test_plain_ws_in_lab_mode_warns_at_every_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend() as backend:
        settings = BackendSettings(url=backend.url, insecure_lab_mode=True)
        for _ in range(2):
            with caplog.at_level(logging.WARNING, logger="gateway.uplink"):
                uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
                async with running(uplink):
                    await asyncio.wait_for(uplink.connected.wait(), 10)
    assert sum(LAB_WARNING in r.getMessage() for r in caplog.records) == 2
    await store.close()


# --- profile 2: the AuthorizationKey the backend sets ------------------------------------------------


def _secure_cluster(tmp_path: Path, url: str, cert: Path) -> Config:
    password = tmp_path / "backend-password"
    password.write_text(INSTALLER_PASSWORD + "\n")
    return cluster_config(
        tmp_path, url, True, connectors=1,
        backend={"url": url, "password_file": str(password), "ca_file": str(cert), "security_profile": 2,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
    )


async def test_a_new_authorization_key_is_kept_secret_and_used_after_a_reconnect(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    caplog.set_level(logging.DEBUG)
    async with OcppRpcBackend(password=INSTALLER_PASSWORD, tls_cert=cert, tls_key=key) as backend:
        config = _secure_cluster(tmp_path, backend.url, cert)
        async with daemon_on_simulator(config) as (daemon, _):
            await asyncio.wait_for(daemon.uplink.connected.wait(), 15)
            # Too short, and a downgrade: both refused, the link stays.
            assert (await backend.call(INFO_ID, "ChangeConfiguration", {"key": "AuthorizationKey", "value": "00112233"}))["status"] == "Rejected"
            assert (await backend.call(INFO_ID, "ChangeConfiguration", {"key": "SecurityProfile", "value": "1"}))["status"] == "Rejected"
            connects = len(backend.of_type("connect", INFO_ID))
            await backend.configure(password_hex=NEW_KEY)  # the backend takes the new key from now on
            answer = await backend.call(INFO_ID, "ChangeConfiguration", {"key": "AuthorizationKey", "value": NEW_KEY})
            assert answer["status"] == "Accepted"
            await until(lambda: len(backend.of_type("connect", INFO_ID)) > connects, 15)
            await asyncio.wait_for(daemon.uplink.connected.wait(), 15)
        keys = AuthKeyStore(tmp_path)
        assert keys.current() == bytes.fromhex(NEW_KEY)
        assert stat.S_IMODE(keys.path.stat().st_mode) == 0o600
        assert NEW_KEY.encode() not in (tmp_path / "gw.db").read_bytes()
        assert NEW_KEY.lower() not in caplog.text.lower()
        assert len(backend.of_type("auth-rejected", INFO_ID)) == 0, "the reconnect used the new key at once"
        # After a restart the new key is still the one used.
        connects = len(backend.of_type("connect", INFO_ID))
        async with daemon_on_simulator(config) as (daemon, _):
            await asyncio.wait_for(daemon.uplink.connected.wait(), 15)
        assert len(backend.of_type("connect", INFO_ID)) == connects + 1
        assert backend.of_type("auth-rejected", INFO_ID) == []
        assert backend.violations == []


async def test_a_new_key_the_backend_then_refuses_gives_way_to_the_one_before(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    async with OcppRpcBackend(password=INSTALLER_PASSWORD, tls_cert=cert, tls_key=key) as backend:
        config = _secure_cluster(tmp_path, backend.url, cert)
        async with daemon_on_simulator(config) as (daemon, _):
            await asyncio.wait_for(daemon.uplink.connected.wait(), 15)
            # A backend that forgot to store the key it sent: it still wants the installer's password.
            answer = await backend.call(INFO_ID, "ChangeConfiguration", {"key": "AuthorizationKey", "value": NEW_KEY})
            assert answer["status"] == "Accepted"
            await backend.wait_for(lambda r: r["type"] == "auth-rejected" and r["status"] == 401, 15)
            await until(lambda: len(backend.of_type("connect", INFO_ID)) >= 2, 15)
            await asyncio.wait_for(daemon.uplink.connected.wait(), 15)
        assert AuthKeyStore(tmp_path).current() is None, "back to the installer's password"



async def test_a_missing_or_refused_password_fails_no_uplink_over(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend(password=INSTALLER_PASSWORD, tls_cert=cert, tls_key=key) as backend:
        password = tmp_path / "not-provisioned-yet"
        settings = BackendSettings(url=backend.url, ca_file=cert, password_file=password, reconnect_min_s=0.2, reconnect_max_s=0.5)
        uplink = Uplink(
            INFO, settings, OcppSettings(), store, CLOCK, statuses,
            uplinks=(UplinkSettings("wired", interface="lo"), UplinkSettings("gprs", interface="lo")),
        )
        async with running(uplink):
            await until(lambda: uplink.problem is not None)
            await asyncio.sleep(1.0)  # several tries
            assert f"password_file {password}: No such file or directory" in (uplink.problem or "")
            assert uplink.status().uplink == "wired", "a file missing here is no reason to leave the uplink"
            assert backend.of_type("connect") == [] and backend.of_type("auth-rejected") == []
            # A wrong password: the backend answered 401, so the path works; no reason to switch either.
            password.write_text("not-the-installer-password")
            await until(lambda: len(backend.of_type("auth-rejected")) >= 3)
            assert uplink.status().uplink == "wired"
            assert "HTTP 401" in (uplink.problem or "")
            password.write_text(INSTALLER_PASSWORD)
            await asyncio.wait_for(uplink.connected.wait(), 10)
    await store.close()
