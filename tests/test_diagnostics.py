"""GetDiagnostics (OCPP 1.6 §5.9): the bundle's contents, and its upload over HTTP PUT and FTP STOR.

Pure: redaction, the upload URL, the time window, the bundle format. Component: the
Diagnostics task with a real config file, real secret files, a real SQLite store, its own
ring of log records, against real HTTP and FTP servers on loopback; the bundle is unpacked
and read, and no secret may be anywhere in it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.clock import Clock
from gateway.config import load_config_with_warnings
from gateway.diagnostics import (
    REDACTED,
    STATE_KEY,
    Diagnostics,
    bundle_name,
    check_location,
    database_summary,
    make_bundle,
    redact_config,
    upload_url,
    within,
)
from gateway.event_log import Event, RecentLog
from gateway.session import Transaction, TransactionStarted
from gateway.settings import Config
from gateway.store import Store
from tests.file_servers import FTP_PASSWORD, Backend, HttpFiles, ftp_files, http_files, kept_once_reported, until
from tests.loopback import free_port

BASIC_PASSWORD = "basic-auth-S3CRET-pw"
AUTH_KEY = "41757468KeyS3CRET0123456789abcdef"
CLIENT_KEY = "-----BEGIN PRIVATE KEY-----\nS3CRET-KEY-MATERIAL\n-----END PRIVATE KEY-----\n"
SECRETS = (BASIC_PASSWORD, AUTH_KEY, "S3CRET-KEY-MATERIAL", FTP_PASSWORD)

# --- pure -------------------------------------------------------------------------------------


def test_secret_values_are_redacted_and_file_names_kept() -> None:
    text = """\
backend:
  url: wss://cp:hunter2@backend.example/ocpp   # a password in a URL
  password_file: backend-password
  client_key: client.key
  api_key: abc123
  - token: "xyz"
firmware:
  install_command: [sudo, /usr/sbin/gw-install, "{file}"]
# password: kept as a comment only
"""
    out = redact_config(text)
    assert "hunter2" not in out and "abc123" not in out and "xyz" not in out
    assert "wss://cp:<redacted>@backend.example/ocpp" in out
    assert "password_file: backend-password" in out and "client_key: client.key" in out, "paths are what a technician needs"
    assert f"api_key: {REDACTED}" in out and f"  - token: {REDACTED}" in out
    assert "/usr/sbin/gw-install" in out


@given(st.text(max_size=300), st.from_regex(r"[A-Za-z0-9!%&*+=?^~]{6,30}", fullmatch=True))
def test_any_config_text_is_redacted_without_a_crash(text: str, secret: str) -> None:
    out = redact_config(text + f"\n  passphrase: {secret}\n")
    assert f"passphrase: {REDACTED}" in out and f"passphrase: {secret}" not in out


def test_the_location_is_a_directory() -> None:
    assert upload_url("ftp://u:p@h/incoming", "d.tar.gz") == "ftp://u:p@h/incoming/d.tar.gz"
    assert upload_url("https://h/up/", "d.tar.gz") == "https://h/up/d.tar.gz"
    assert upload_url("https://h", "d.tar.gz") == "https://h/d.tar.gz"
    assert upload_url("https://h/up?sig=1", "d.tar.gz") == "https://h/up/d.tar.gz?sig=1"
    for bad in ("C:", "file:///tmp/", "ftp:///x"):
        with pytest.raises(ValueError):
            check_location(bad)


def test_names_and_the_time_window() -> None:
    name = bundle_name("CP/01 main", 1_780_000_000.0)
    assert name == "diagnostics-CP_01_main-20260528T202640Z.tar.gz" and len(bundle_name("x" * 300, 0)) <= 255
    events = [Event(float(t), "INFO", "gw", f"at {t}") for t in (10, 20, 30)]
    assert [e.time for e in within(events, 15, None)] == [20, 30]
    assert [e.time for e in within(events, None, 20)] == [10, 20]
    assert [e.time for e in within(events, 20, 20)] == [20]


def test_a_bundle_is_one_folder() -> None:
    data = make_bundle("diag-x", {"a.txt": b"A", "b.json": b"{}"}, 1000.0)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["diag-x/a.txt", "diag-x/b.json"]
        member = tar.extractfile("diag-x/a.txt")
        assert member is not None and member.read() == b"A"


# --- component --------------------------------------------------------------------------------


def site_config(tmp_path: Path) -> Config:
    """A real config file whose secrets sit in files of their own, as the package installs them."""
    (tmp_path / "backend-password").write_text(BASIC_PASSWORD + "\n")
    (tmp_path / "backend-password").chmod(0o600)
    (tmp_path / "client.key").write_text(CLIENT_KEY)
    (tmp_path / "client.key").chmod(0o600)
    (tmp_path / "client.pem").write_text("certificate\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "authorization-key").write_text(AUTH_KEY)
    (state / "authorization-key").chmod(0o600)
    doc = {
        "charge_point": {"identity": "CP-DIAG-01", "vendor": "OpenGateway", "model": "Cluster"},
        "backend": {
            "url": "wss://127.0.0.1:9/ocpp", "password_file": "backend-password",
            "client_cert": "client.pem", "client_key": "client.key", "security_profile": 2,
        },
        "buses": [{"name": "lan", "kind": "tcp"}],
        "connectors": [{"id": 1, "bus": "lan", "host": "127.0.0.1", "port": free_port(), "unit": 1, "profile": "heidelberg-energy-control"}],
        "storage": {"path": "state/gw.db"},
        "firmware": {"retry_interval_s": 0, "download_timeout_s": 5, "diagnostics_log_lines": 100},
    }
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(doc))
    config, _ = load_config_with_warnings(tmp_path / "gateway.yaml")
    return config


def log_ring(times: list[float]) -> RecentLog:
    """A ring of its own (not the daemon's RECENT), with records at the given wall times."""
    ring = RecentLog()
    for t in times:
        record = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, "event at %d via ftp://gw:%s@127.0.0.1/x", (t, FTP_PASSWORD), None)
        record.created = t
        ring.handle(record)
    return ring


def unpack(bundle: bytes) -> dict[str, bytes]:
    files = {}
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            assert extracted is not None
            files[member.name] = extracted.read()
    return files


@pytest.fixture
def web() -> Iterator[HttpFiles]:
    with http_files() as files:
        yield files


async def diagnostics_for(tmp_path: Path, ring: RecentLog) -> tuple[Diagnostics, Backend, Store]:
    config = site_config(tmp_path)
    store = await Store.open(config.storage.path)
    clock = Clock()
    await store.commit([TransactionStarted(2, Transaction("sess-open", "CARD-PERSONAL-1", 1200, clock.wall()))], clock)
    await store.alarm(2, "slave 2 stopped answering", clock.wall())
    backend = Backend()
    return Diagnostics(config, store, clock, backend, recent=ring), backend, store


async def test_a_bundle_over_http_holds_what_a_technician_needs_and_no_secret(tmp_path: Path, web: HttpFiles) -> None:
    diagnostics, backend, store = await diagnostics_for(tmp_path, log_ring([1000.0, 2000.0, 3000.0]))
    task = asyncio.create_task(diagnostics.run())
    name = await diagnostics.request({"location": web.url("/upload/cp"), "startTime": "1970-01-01T00:25:00Z", "retries": 0})
    await until(lambda: "Uploaded" in backend.statuses("DiagnosticsStatusNotification"))
    assert backend.statuses("DiagnosticsStatusNotification") == ["Uploading", "Uploaded"]
    bundle = web.uploads[f"/upload/cp/{name}"]
    assert [r[0] for r in web.requests] == ["PUT"]
    files = unpack(bundle)
    folder = name.removesuffix(".tar.gz")
    assert sorted(files) == sorted(f"{folder}/{f}" for f in ("log.txt", "log.jsonl", "database.json", "config.yaml", "secrets.json", "version.json"))
    log_lines = files[f"{folder}/log.txt"].decode().splitlines()
    assert [line.split()[-3] for line in log_lines] == ["2000", "3000"], "only from startTime on"
    assert "ftp://gw:<redacted>@127.0.0.1" in log_lines[0], "a password in a logged URL is redacted too"
    assert json.loads(files[f"{folder}/log.jsonl"].decode().splitlines()[0])["logger"] == "gateway.test"
    db = json.loads(files[f"{folder}/database.json"])
    assert db["integrity_check"] == ["ok"] and db["rows"]["sessions"] == 1 and db["outbox_pending"] == {"StartTransaction": 1}
    assert db["open_sessions"][0]["connector"] == 2 and db["recent_alarms"][0]["text"] == "slave 2 stopped answering"
    assert db["bytes"]["gw.db"] > 0
    secrets = {s["what"]: s for s in json.loads(files[f"{folder}/secrets.json"])}
    assert secrets["backend.password_file"]["present"] and secrets["backend.password_file"]["mode"] == "0600"
    assert secrets["AuthorizationKey"]["mode"] == "0600" and not secrets["AuthorizationKey (previous)"]["present"]
    assert b"password_file: backend-password" in files[f"{folder}/config.yaml"]
    assert json.loads(files[f"{folder}/version.json"])["identity"] == "CP-DIAG-01"
    everything = b"".join(files.values())
    for secret in (*SECRETS, "CARD-PERSONAL-1"):
        assert secret.encode() not in everything, secret
    assert diagnostics.status().value == "Idle"
    state = await kept_once_reported(store, STATE_KEY, lambda s: s["reported"])
    assert state == {"status": "Uploaded", "file_name": name, "reported": True}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_bundle_over_ftp(tmp_path: Path) -> None:
    diagnostics, backend, _ = await diagnostics_for(tmp_path, log_ring([1000.0]))
    task = asyncio.create_task(diagnostics.run())
    with ftp_files(tmp_path / "ftp") as ftp:
        (ftp.root / "diag").mkdir()
        name = await diagnostics.request({"location": ftp.url("/diag"), "retries": 0})
        await until(lambda: "Uploaded" in backend.statuses("DiagnosticsStatusNotification"))
        files = unpack((ftp.root / "diag" / name).read_bytes())
    assert any(n.endswith("/database.json") for n in files)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_refused_upload_is_retried_then_upload_failed(tmp_path: Path, web: HttpFiles) -> None:
    web.upload_status = 500
    diagnostics, backend, store = await diagnostics_for(tmp_path, log_ring([]))
    task = asyncio.create_task(diagnostics.run())
    await diagnostics.request({"location": web.url("/up/"), "retries": 1, "retryInterval": 0})
    await until(lambda: "UploadFailed" in backend.statuses("DiagnosticsStatusNotification"))
    assert backend.statuses("DiagnosticsStatusNotification") == ["Uploading", "UploadFailed"]
    assert [r[0] for r in web.requests] == ["PUT", "PUT"] and web.uploads == {}
    await diagnostics.request({"location": f"ftp://127.0.0.1:{free_port()}/up", "retries": 0})
    await until(lambda: backend.statuses("DiagnosticsStatusNotification").count("UploadFailed") == 2, what="refused connection")
    state = await kept_once_reported(store, STATE_KEY, lambda s: s["reported"])
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert isinstance(state, dict) and state["status"] == "UploadFailed"


async def test_an_upload_cut_short_by_a_restart_is_reported_failed(tmp_path: Path) -> None:
    diagnostics, backend, store = await diagnostics_for(tmp_path, log_ring([]))
    await store.save_state(STATE_KEY, {"status": "Uploading", "file_name": "diagnostics-x.tar.gz", "reported": False})
    task = asyncio.create_task(diagnostics.run())
    await until(lambda: backend.statuses("DiagnosticsStatusNotification") == ["UploadFailed"])
    state = await kept_once_reported(store, STATE_KEY, lambda s: s["reported"])
    assert state == {"status": "UploadFailed", "file_name": "diagnostics-x.tar.gz", "reported": True}
    diagnostics.report()
    assert backend.statuses("DiagnosticsStatusNotification")[-1] == "Idle", "TriggerMessage with nothing under way"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_bad_requests_are_refused_with_the_reason(tmp_path: Path) -> None:
    diagnostics, _, _ = await diagnostics_for(tmp_path, log_ring([]))
    for payload, reason in (
        ({"location": "C:"}, "scheme"),
        ({"location": "ftp://h/", "startTime": "2026-01-02T00:00:00Z", "stopTime": "2026-01-01T00:00:00Z"}, "before"),
        ({"location": "ftp://h/", "startTime": "yesterday"}, "startTime"),
        ({"location": "ftp://h/", "retries": -1}, "retries"),
    ):
        with pytest.raises(ValueError, match=reason):
            await diagnostics.request(payload)


def test_a_database_that_is_not_the_gateways_is_still_summarised(tmp_path: Path) -> None:
    """A foreign or damaged file: the integrity check and the row counts come first, then the error, never a crash."""
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE things (x)")
        db.execute("INSERT INTO things VALUES (1)")
    db.close()
    summary = database_summary(foreign, 0.0)
    assert summary["integrity_check"] == ["ok"] and summary["rows"] == {"things": 1} and "outbox" in summary["error"]
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    summary = database_summary(garbage, 0.0)
    assert summary["present"] and "integrity_check" not in summary and summary["error"]
    assert database_summary(tmp_path / "none.db", 0.0) == {"path": str(tmp_path / "none.db"), "present": False}
