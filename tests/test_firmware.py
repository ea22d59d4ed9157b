"""UpdateFirmware for the gateway itself (OCPP 1.6 §5.19).

Pure: the steps' table, retries, retrieveDate arithmetic, checksum and location parsing
(gateway.firmware). Component: the runner (gateway.firmware_update) against a real HTTP server
and a real FTP server on loopback, a real SQLite store and a real install script that records
what it was given. End to end: the daemon under the strict independent backend (ocpp-rpc),
whose schema checks every FirmwareStatusNotification and DiagnosticsStatusNotification.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import sqlite3
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import firmware_update
from gateway.clock import EARLIEST_VALID, Clock, wire_time
from gateway.errors import IllegalTransition
from gateway.file_transfer import TransferError, download, redact
from gateway.firmware import (
    DEFAULT_RETRIES,
    STATUS,
    TRANSITIONS,
    Event,
    Location,
    Retries,
    Step,
    Update,
    image_name,
    install_argv,
    parse_checksum,
)
from gateway.firmware_update import STATE_KEY, FirmwareUpdater
from gateway.settings import BackendSettings, FirmwareSettings, OcppSettings
from gateway.store import Store
from gateway.uplink import Uplink
from tests.clocks import HandClock
from tests.file_servers import FTP_PASSWORD, Backend, HttpFiles, ftp_files, http_files, kept_once_reported, until
from tests.loopback import free_port
from tests.ocpp_rpc_peer import OcppCallError, OcppRpcBackend
from tests.uplinks import CLOCK, INFO, running, statuses

IMAGE = b"charger-gateway 1.1 image\n"
OLD_IMAGE = b"charger-gateway 1.0 image\n"
BROKEN = b"broken image: the install script refuses it\n"
SHA = hashlib.sha256(IMAGE).hexdigest()

# --- pure: gateway.firmware ------------------------------------------------------------------


def update(step: Step = Step.WAITING, attempts: int = 3, **kw: Any) -> Update:
    return Update("https://fw.example/gw.deb#sha256=" + SHA, 1000.0, Retries(attempts, 0.0), step, **kw)


def test_every_step_takes_only_its_events() -> None:
    for step, row in TRANSITIONS.items():
        for event in Event:
            u = update(step)
            if event in row:
                assert u.on(event).step is row[event]
            else:
                with pytest.raises(IllegalTransition):
                    u.on(event)
                assert u.step is step, "an illegal event changes nothing"
    assert {s for s in Step if not TRANSITIONS[s]} == {s for s in Step if s.finished}


def test_the_happy_path_and_what_each_step_reports() -> None:
    u = update()
    seen = [STATUS[u.step].value]
    for event in (Event.DUE, Event.VERIFIED, Event.INSTALL, Event.INSTALL_OK):
        u = u.on(event)
        seen.append(STATUS[u.step].value)
    assert seen == ["Idle", "Downloading", "Downloaded", "Installing", "Installed"]
    assert u.finished and u.trigger_status().value == "Idle", "a finished update is not busy (§4.5)"
    assert update(Step.DOWNLOADING).trigger_status().value == "Downloading"
    assert update(Step.WAITING).trigger_status().value == "Idle", "waiting for retrieveDate is not busy yet"


def test_retries_count_the_tries_after_the_first() -> None:
    assert Retries.from_request(None, None, 60).attempts == 1 + DEFAULT_RETRIES
    assert Retries.from_request(0, None, 60) == Retries(1, 60.0), "retries 0 is one attempt, never none"
    assert Retries.from_request(4, 5, 60) == Retries(5, 5.0)
    with pytest.raises(ValueError, match="retries"):
        Retries.from_request(-1, None, 60)
    with pytest.raises(ValueError, match="retryInterval"):
        Retries.from_request(None, -1, 60)
    u = update(Step.DOWNLOADING, attempts=3)
    events = []
    while not u.finished:
        event = u.attempt_failed()
        events.append(event)
        u = u.on(event)
    assert events == [Event.RETRY, Event.RETRY, Event.GIVE_UP] and u.step is Step.DOWNLOAD_FAILED and u.failures == 3


def test_retrieve_date_arithmetic() -> None:
    u = Update.from_request({"location": "ftp://h/fw.bin", "retrieveDate": "2026-03-01T12:00:00Z"}, 60)
    due = datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp()
    assert u.retrieve_at == due
    assert u.wait_s(due - 90.5) == 90.5 and u.wait_s(due) == 0 and u.wait_s(due + 10) == 0
    no_zone = Update.from_request({"location": "ftp://h/fw.bin", "retrieveDate": "2026-03-01T12:00:00"}, 60)
    assert no_zone.retrieve_at == due, "a time without offset is UTC (§3.14), never local time"
    with pytest.raises(ValueError, match="retrieveDate"):
        Update.from_request({"location": "ftp://h/fw.bin", "retrieveDate": "tomorrow"}, 60)


def test_a_restart_during_the_install_is_judged_by_the_version() -> None:
    u = update(Step.DOWNLOADED).installing("1.0")
    assert u.step is Step.INSTALLING and u.version_before == "1.0"
    assert u.interrupted_install("1.1") is Event.INSTALL_OK
    assert u.interrupted_install("1.0") is Event.INSTALL_FAILED
    with pytest.raises(IllegalTransition):
        update(Step.DOWNLOADING).interrupted_install("1.1")


def test_kept_as_json_and_back() -> None:
    u = replace(update(Step.DOWNLOADED).installing("1.0"), failures=2, reported=False)
    assert Update.from_json(u.to_json()) == u


def test_checksums_in_the_fragment() -> None:
    c = parse_checksum("sha256=" + SHA.upper())
    assert c is not None and c.algorithm == "sha256" and c.matches(SHA) and not c.matches("0" * 64)
    assert parse_checksum("") is None
    assert parse_checksum("md5=" + hashlib.md5(IMAGE).hexdigest()) is not None
    for bad in ("sha256=abc", "crc32=12345678", "latest", "sha256=" + SHA + "&md5=" + "0" * 32, "sha256=" + "g" * 64):
        with pytest.raises(ValueError):
            parse_checksum(bad)


def test_locations() -> None:
    loc = Location.parse("https://user:pw@fw.example/a/gw%201.1.deb?x=1#sha256=" + SHA)
    assert loc.url == "https://user:pw@fw.example/a/gw%201.1.deb?x=1", "the fragment never goes to the server"
    assert loc.file_name == "gw_1.1.deb" and loc.checksum is not None
    for bad in ("sftp://h/fw", "file:///etc/passwd", "http:///fw.bin", "fw.bin"):
        with pytest.raises(ValueError):
            Location.parse(bad)
    assert image_name("/x/..%2F..%2Fetc%2Fpasswd") == "_.._etc_passwd"
    assert image_name("/") == image_name("/..") == "firmware.bin"
    assert install_argv(("sudo", "/usr/sbin/gw-install", "--image={file}"), "/v/i.deb") == ["sudo", "/usr/sbin/gw-install", "--image=/v/i.deb"]
    assert install_argv(("gw-install",), "/v/i.deb") == ["gw-install", "/v/i.deb"]


@given(st.text(max_size=200))
def test_any_fragment_is_a_checksum_or_a_clear_refusal(fragment: str) -> None:
    try:
        parse_checksum(fragment)
    except ValueError:
        pass


@given(st.text(max_size=100))
def test_image_names_stay_in_their_directory(path: str) -> None:
    name = image_name(path)
    assert name and "/" not in name and "\0" not in name and not name.startswith(".")


def test_passwords_never_reach_a_log() -> None:
    assert redact("ftp://gw:" + FTP_PASSWORD + "@127.0.0.1:21/fw.bin") == "ftp://gw:***@127.0.0.1:21/fw.bin"
    assert redact("https://fw.example/fw.bin") == "https://fw.example/fw.bin"


def test_a_password_is_redacted_wherever_it_stands() -> None:
    assert redact("ftp://gw:p@ss:w0rd@127.0.0.1/fw.bin") == "ftp://gw:***@127.0.0.1/fw.bin", "an unencoded @ in the password"
    assert redact("ftp://:pw@h/x") == "ftp://:***@h/x" and redact("https://h:8443/a@b") == "https://h:8443/a@b"
    text = "GET https://fw:s3cret@h/a failed, then ftp://gw:s3cret@h:21/b failed"
    assert redact(text, "<redacted>") == "GET https://fw:<redacted>@h/a failed, then ftp://gw:<redacted>@h:21/b failed"


# --- component: the runner against real servers -----------------------------------------------


@dataclass
class Rig:
    tmp: Path
    store: Store
    backend: Backend
    record: Path  # what the install script was given, one line per run
    settings: FirmwareSettings

    def updater(self, version: str = "1.0", clock: Clock | None = None) -> FirmwareUpdater:
        return FirmwareUpdater(self.settings, self.tmp / "state" / "firmware", self.store, clock or Clock(), self.backend, version=version)

    def installs(self) -> list[bytes]:
        """The content of each image the script installed, in order."""
        if not self.record.exists():
            return []
        return [bytes.fromhex(line.split()[1]) for line in self.record.read_text().splitlines()]


INSTALL_SCRIPT = """\
import pathlib, sys
image = pathlib.Path(sys.argv[1]).read_bytes()
with open(sys.argv[2], "a") as record:
    record.write(f"{sys.argv[1]} {image.hex()}\\n")
sys.exit(3 if image.startswith(b"broken") else 0)
"""


@pytest.fixture
async def rig(tmp_path: Path) -> Rig:
    script = tmp_path / "install.py"
    script.write_text(INSTALL_SCRIPT)
    record = tmp_path / "installed.log"
    settings = FirmwareSettings(
        install_command=(sys.executable, str(script), "{file}", str(record)), install_timeout_s=10, download_timeout_s=5, retry_interval_s=0
    )
    store = await Store.open(tmp_path / "state" / "gw.db")
    return Rig(tmp_path, store, Backend(), record, settings)


@pytest.fixture
def web() -> Iterator[HttpFiles]:
    with http_files() as files:
        yield files


def now_iso(offset_s: float = 0.0) -> str:
    return wire_time(datetime.fromtimestamp(Clock().wall() + offset_s, UTC))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_download_verify_install_then_restart(rig: Rig, web: HttpFiles) -> None:
    web.files["/fw/gw-1.1.deb"] = IMAGE
    updater = rig.updater()
    task = asyncio.create_task(updater.run())
    location = web.url("/fw/gw-1.1.deb", credentials="fw:pa%3Ass") + "#sha256=" + SHA
    await updater.request({"location": location, "retrieveDate": now_iso(), "retries": 0})
    await asyncio.wait_for(task, 5)  # run() returns: the daemon restarts to run the new image
    assert rig.backend.statuses() == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert rig.installs() == [IMAGE]
    basic = "Basic " + base64.b64encode(b"fw:pa:ss").decode()
    assert web.requests == [("GET", "/fw/gw-1.1.deb", basic)], "no fragment to the server; the URL's user and password"
    kept = rig.tmp / "state" / "firmware" / "installed" / "gw-1.1.deb"
    assert kept.read_bytes() == IMAGE, "kept as the way back for the next update"
    assert not list((rig.tmp / "state" / "firmware" / "incoming").iterdir())
    state = await rig.store.load_state(STATE_KEY)
    assert isinstance(state, dict) and state["update"]["step"] == "installed" and state["update"]["reported"]


async def test_download_over_ftp_follows_redirects_over_http(rig: Rig, web: HttpFiles, tmp_path: Path) -> None:
    with ftp_files(tmp_path / "ftp") as ftp:
        (ftp.root / "releases").mkdir()
        (ftp.root / "releases" / "gw.bin").write_bytes(IMAGE)
        updater = rig.updater()
        task = asyncio.create_task(updater.run())
        await updater.request({"location": ftp.url("/releases/gw.bin") + "#sha256=" + SHA, "retrieveDate": now_iso()})
        await asyncio.wait_for(task, 5)
    assert rig.backend.statuses()[-1] == "Installed" and rig.installs() == [IMAGE]
    web.files["/storage/gw.bin"] = IMAGE
    web.redirects["/latest"] = "/storage/gw.bin"
    got = tmp_path / "fetched"
    assert await download(web.url("/latest"), got, 5) == len(IMAGE) and got.read_bytes() == IMAGE


async def test_the_password_goes_to_the_urls_own_server_only(web: HttpFiles, tmp_path: Path) -> None:
    """A redirect within the server keeps the URL's user and password; one to another server (here: the same
    host, another port) does not carry them."""
    with http_files() as storage:
        storage.files["/gw.bin"] = IMAGE
        web.redirects["/latest"] = storage.url("/gw.bin")
        web.redirects["/again"] = "/latest"
        got = tmp_path / "fetched"
        assert await download(web.url("/again", credentials="fw:s3cret"), got, 5) == len(IMAGE) and got.read_bytes() == IMAGE
    basic = "Basic " + base64.b64encode(b"fw:s3cret").decode()
    assert web.requests == [("GET", "/again", basic), ("GET", "/latest", basic)], "a redirect on the same server keeps it"
    assert storage.requests == [("GET", "/gw.bin", None)]


async def test_a_missing_file_is_tried_retries_plus_one_times_then_download_failed(rig: Rig, web: HttpFiles) -> None:
    updater = rig.updater()
    task = asyncio.create_task(updater.run())
    await updater.request({"location": web.url("/fw/none.deb"), "retrieveDate": now_iso(), "retries": 2, "retryInterval": 0})
    await until(lambda: "DownloadFailed" in rig.backend.statuses(), what="DownloadFailed")
    assert rig.backend.statuses() == ["Downloading", "DownloadFailed"], "one Downloading, no flood per attempt"
    assert [r[:2] for r in web.requests] == [("GET", "/fw/none.deb")] * 3
    assert rig.installs() == [] and updater.status().value == "Idle"
    assert not task.done(), "no restart: nothing was installed"
    await stop(task)


async def test_a_refused_connection_ends_in_download_failed(rig: Rig, tmp_path: Path) -> None:
    updater = rig.updater()
    task = asyncio.create_task(updater.run())
    await updater.request({"location": f"http://127.0.0.1:{free_port()}/fw.deb", "retrieveDate": now_iso(), "retries": 1, "retryInterval": 0})
    await until(lambda: "DownloadFailed" in rig.backend.statuses())
    assert rig.backend.statuses() == ["Downloading", "DownloadFailed"]
    await stop(task)
    with pytest.raises(TransferError, match="refused"):
        await download(f"ftp://127.0.0.1:{free_port()}/fw.deb", tmp_path / "x", 5)


async def test_a_bad_checksum_is_a_failed_download_and_nothing_is_installed(rig: Rig, web: HttpFiles) -> None:
    web.files["/fw.deb"] = IMAGE + b"tampered"
    updater = rig.updater()
    task = asyncio.create_task(updater.run())
    await updater.request({"location": web.url("/fw.deb") + "#sha256=" + SHA, "retrieveDate": now_iso(), "retries": 1, "retryInterval": 0})
    await until(lambda: "DownloadFailed" in rig.backend.statuses())
    assert rig.backend.statuses() == ["Downloading", "DownloadFailed"]
    assert len(web.requests) == 2, "a corrupted transfer is retried like any failed download"
    assert rig.installs() == [] and not list((rig.tmp / "state" / "firmware" / "incoming").iterdir())
    await stop(task)


async def one_good_update(rig: Rig, web: HttpFiles) -> None:
    """1.0 updated to 1.1 (kept as the way back); then a broken image to serve, and the backend's record cleared."""
    web.files["/1.1.deb"], web.files["/broken.deb"] = IMAGE, BROKEN
    first = rig.updater("1.0")
    task = asyncio.create_task(first.run())
    await first.request({"location": web.url("/1.1.deb"), "retrieveDate": now_iso()})
    await asyncio.wait_for(task, 5)
    rig.backend.sent.clear()


async def test_a_failed_install_rolls_back_to_the_previous_image(rig: Rig, web: HttpFiles) -> None:
    await one_good_update(rig, web)
    after_restart = rig.updater("1.1")
    task = asyncio.create_task(after_restart.run())
    await after_restart.request({"location": web.url("/broken.deb"), "retrieveDate": now_iso()})
    await until(lambda: "InstallationFailed" in rig.backend.statuses())
    assert rig.backend.statuses() == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
    assert rig.installs() == [IMAGE, BROKEN, IMAGE], "the kept image went back in before InstallationFailed"
    assert (rig.tmp / "state" / "firmware" / "installed" / "1.1.deb").read_bytes() == IMAGE
    assert not task.done()
    await stop(task)


async def test_a_restart_during_the_rollback_ends_the_update_without_a_second_rollback(rig: Rig, web: HttpFiles, tmp_path: Path) -> None:
    """An install command that restarts the daemon (a package's postinst) restarts it during the rollback too:
    the restarted daemon runs the version it went back to, reports InstallationFailed and leaves it there."""
    await one_good_update(rig, web)
    slow_rollback = tmp_path / "slow_rollback.py"  # records, then takes its time on the kept image: the restart comes then
    slow_rollback.write_text(INSTALL_SCRIPT.replace("sys.exit(", f"import time\ntime.sleep(30 if image == {IMAGE!r} else 0)\nsys.exit("))
    rig.settings = replace(rig.settings, install_command=(sys.executable, str(slow_rollback), "{file}", str(rig.record)))
    updater = rig.updater("1.1")
    task = asyncio.create_task(updater.run())
    await updater.request({"location": web.url("/broken.deb"), "retrieveDate": now_iso()})
    await until(lambda: len(rig.installs()) == 3, what="the rollback started")
    await stop(task)  # the restart, in the middle of the rollback
    assert (await rig.store.load_state(STATE_KEY))["update"]["step"] == "rolling_back"  # type: ignore[index]
    rig.backend.sent.clear()
    restarted = rig.updater("1.1")
    task = asyncio.create_task(restarted.run())
    await until(lambda: "InstallationFailed" in rig.backend.statuses())
    await kept_once_reported(rig.store, STATE_KEY, lambda s: s["update"]["reported"])
    assert rig.backend.statuses() == ["InstallationFailed"]
    assert rig.installs() == [IMAGE, BROKEN, IMAGE], "the rollback is not run again at the restart"
    assert restarted.status().value == "Idle" and not task.done()
    await stop(task)


async def test_without_a_previous_image_a_failed_install_raises_an_alarm(rig: Rig, web: HttpFiles) -> None:
    web.files["/broken.deb"] = BROKEN
    updater = rig.updater()
    task = asyncio.create_task(updater.run())
    await updater.request({"location": web.url("/broken.deb"), "retrieveDate": now_iso()})
    await until(lambda: "InstallationFailed" in rig.backend.statuses())
    await stop(task)
    with sqlite3.connect(rig.store.path) as db:
        alarms = [row[0] for row in db.execute("SELECT data FROM events WHERE kind = 'alarm'")]
    assert any("no previous image" in a for a in alarms)


async def test_no_install_command_is_installation_failed(rig: Rig, web: HttpFiles) -> None:
    web.files["/fw.deb"] = IMAGE
    rig.settings = replace(rig.settings, install_command=())
    updater = rig.updater()
    task = asyncio.create_task(updater.run())
    await updater.request({"location": web.url("/fw.deb"), "retrieveDate": now_iso()})
    await until(lambda: "InstallationFailed" in rig.backend.statuses())
    assert rig.backend.statuses() == ["Downloading", "Downloaded", "InstallationFailed"]
    await stop(task)


async def test_retrieve_date_is_honoured_in_wall_time(rig: Rig, web: HttpFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firmware_update, "DUE_RECHECK_S", 0.01)  # the wall clock is read again this often
    web.files["/fw.deb"] = IMAGE
    clock = HandClock(system=EARLIEST_VALID + 86400)
    updater = rig.updater(clock=clock)
    task = asyncio.create_task(updater.run())
    due = wire_time(datetime.fromtimestamp(clock.wall() + 3600, UTC))
    await updater.request({"location": web.url("/fw.deb"), "retrieveDate": due})
    await asyncio.sleep(0.1)
    clock.advance(3599)
    await asyncio.sleep(0.1)
    assert web.requests == [] and rig.backend.sent == [] and updater.status().value == "Idle"
    clock.advance(1)  # NTP, or an hour: the wall clock says it is time
    await asyncio.wait_for(task, 5)
    assert rig.backend.statuses()[-1] == "Installed"


async def test_a_new_request_replaces_one_not_yet_installing(rig: Rig, web: HttpFiles) -> None:
    web.files["/new.deb"] = IMAGE
    updater = rig.updater()
    task = asyncio.create_task(updater.run())
    await updater.request({"location": web.url("/old.deb"), "retrieveDate": now_iso(3600)})
    await asyncio.sleep(0.05)
    await updater.request({"location": web.url("/new.deb"), "retrieveDate": now_iso()})
    await asyncio.wait_for(task, 5)
    assert [r[1] for r in web.requests] == ["/new.deb"] and rig.installs() == [IMAGE]


async def test_a_request_during_the_install_waits_for_the_restart(rig: Rig, web: HttpFiles, tmp_path: Path) -> None:
    slow = tmp_path / "slow_install.py"
    slow.write_text("import time\ntime.sleep(0.3)\n" + INSTALL_SCRIPT)
    rig.settings = replace(rig.settings, install_command=(sys.executable, str(slow), "{file}", str(rig.record)))
    web.files["/a.deb"], web.files["/b.deb"] = IMAGE, OLD_IMAGE
    updater = rig.updater("1.0")
    task = asyncio.create_task(updater.run())
    await updater.request({"location": web.url("/a.deb"), "retrieveDate": now_iso()})
    await until(lambda: "Installing" in rig.backend.statuses())
    await updater.request({"location": web.url("/b.deb"), "retrieveDate": now_iso()})
    await asyncio.wait_for(task, 5)
    assert rig.installs() == [IMAGE], "the install under way was not disturbed"
    after_restart = rig.updater("1.1")
    await asyncio.wait_for(after_restart.run(), 5)
    assert rig.installs() == [IMAGE, OLD_IMAGE], "the waiting request ran after the restart"


@pytest.mark.parametrize(("running", "expected", "installs"), [("1.1", "Installed", []), ("1.0", "InstallationFailed", [OLD_IMAGE])])
async def test_a_restart_during_the_install_resumes_and_reports(
    rig: Rig, running: str, expected: str, installs: list[bytes]
) -> None:
    firmware = rig.tmp / "state" / "firmware"
    (firmware / "incoming").mkdir(parents=True)
    (firmware / "installed").mkdir()
    (firmware / "incoming" / "gw.deb").write_bytes(IMAGE)
    (firmware / "installed" / "gw-1.0.deb").write_bytes(OLD_IMAGE)
    cut_short = update(Step.DOWNLOADED).installing("1.0")
    await rig.store.save_state(STATE_KEY, {"update": cut_short.to_json(), "next": None})
    updater = rig.updater(running)
    task = asyncio.create_task(updater.run())
    await until(lambda: expected in rig.backend.statuses())
    assert rig.backend.statuses() == [expected] and rig.installs() == installs
    await kept_once_reported(rig.store, STATE_KEY, lambda s: s["update"]["reported"])
    assert not task.done(), "the new version already runs: no second restart"
    await stop(task)


async def test_an_unanswered_final_status_is_sent_again_after_a_restart(rig: Rig, web: HttpFiles) -> None:
    web.files["/fw.deb"] = IMAGE
    rig.backend.answer = False  # the link is down
    updater = rig.updater()
    task = asyncio.create_task(updater.run())
    await updater.request({"location": web.url("/fw.deb"), "retrieveDate": now_iso(), "retries": 0})
    await until(lambda: "Installed" in rig.backend.statuses())
    await stop(task)  # a restart before the backend answered: gateway.uplink keeps notices in memory only
    rig.backend = Backend()
    updater = rig.updater("1.1")
    task = asyncio.create_task(updater.run())
    await until(lambda: rig.backend.statuses() == ["Installed"])
    await until(lambda: updater.status().value == "Idle")
    await kept_once_reported(rig.store, STATE_KEY, lambda s: s["update"]["reported"])
    await stop(task)


# --- end to end: the strict independent backend ------------------------------------------------


def sent(method: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r["type"] == "call" and r["method"] == method and r["params"]["status"] == status


@pytest.mark.interop
async def test_the_strict_backend_accepts_every_notification(tmp_path: Path, web: HttpFiles) -> None:
    from tests.ocpp_rpc_peer import OcppCallError
    from tests.test_backend_commands import IDENTITY, cluster

    web.files["/fw.bin"] = IMAGE
    firmware = {"retry_interval_s": 0, "download_timeout_s": 5}
    async with cluster(tmp_path, connectors=1, firmware=firmware) as c:
        assert await c.call("UpdateFirmware", {"location": web.url("/fw.bin") + "#sha256=" + SHA, "retrieveDate": now_iso()}) == {}
        await c.backend.wait_for(sent("FirmwareStatusNotification", "InstallationFailed"), timeout=10)
        got = [r["params"]["status"] for r in c.backend.calls("FirmwareStatusNotification", IDENTITY)]
        assert got == ["Downloading", "Downloaded", "InstallationFailed"], "no install_command: nothing to install with"
        answer = await c.call("GetDiagnostics", {"location": web.url("/diag/"), "retries": 0})
        await c.backend.wait_for(sent("DiagnosticsStatusNotification", "Uploaded"), timeout=10)
        bundle = web.uploads["/diag/" + answer["fileName"]]
        with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
            assert any(name.endswith("/database.json") for name in tar.getnames())
        for message in ("FirmwareStatusNotification", "DiagnosticsStatusNotification"):
            assert (await c.call("TriggerMessage", {"requestedMessage": message}))["status"] == "Accepted"
            await c.backend.wait_for(sent(message, "Idle"), timeout=5)
        with pytest.raises(OcppCallError) as refused:
            await c.call("UpdateFirmware", {"location": "sftp://127.0.0.1/fw.bin", "retrieveDate": now_iso()})
        assert refused.value.code == "PropertyConstraintViolation"


@pytest.mark.interop
async def test_notices_and_triggered_messages_follow_the_answer_to_the_command(tmp_path: Path) -> None:
    """§5.17: the requested message goes after the TriggerMessage answer; likewise Downloading after UpdateFirmware's.
    The handler queues both, then takes its time to answer: neither may overtake the answer."""
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend() as backend:
        uplink: Uplink

        async def update_firmware(payload: dict[str, Any]) -> dict[str, Any]:
            uplink.notify("FirmwareStatusNotification", {"status": "Downloading"})
            uplink.trigger("Heartbeat", None)
            await asyncio.sleep(0.3)  # a store write, say: the answer is not out yet
            return {}

        settings = BackendSettings(url=backend.url, insecure_lab_mode=True)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses, {"UpdateFirmware": update_firmware})
        async with running(uplink):
            await backend.wait_for_calls("StatusNotification", 3, timeout=10)  # the round after boot: then nothing is in flight
            await backend.call(INFO.identity, "UpdateFirmware", {"location": "ftp://127.0.0.1/fw.bin", "retrieveDate": now_iso()})
            await backend.wait_for_calls("Heartbeat", 1, timeout=5)
            await backend.wait_for_calls("FirmwareStatusNotification", 1, timeout=5)
        frames = [json.loads(r["message"]) for r in backend.of_type("frame", INFO.identity) if r["direction"] == "in"]
        answer = next(i for i, f in enumerate(frames) if f[0] == 3)  # the CALLRESULT to UpdateFirmware, the one backend call
        sent_at = {f[2]: i for i, f in enumerate(frames) if f[0] == 2}
        assert answer < sent_at["FirmwareStatusNotification"] and answer < sent_at["Heartbeat"], frames
        assert backend.violations == []


async def test_a_command_refused_with_a_callerror_holds_no_notice_back(tmp_path: Path) -> None:
    """Our answer failed validation, so the backend got a CALLERROR instead: the answer is out all the same,
    and a notice the handler queued must follow it, not wait for the next command (or reconnect)."""
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend() as backend:
        uplink: Uplink

        async def clear_cache(payload: dict[str, Any]) -> dict[str, Any]:
            uplink.notify("FirmwareStatusNotification", {"status": "Idle"})
            return {"status": "Bogus"}  # not in ClearCacheStatus: the library refuses to send it

        settings = BackendSettings(url=backend.url, insecure_lab_mode=True)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses, {"ClearCache": clear_cache})
        async with running(uplink):
            await backend.wait_for_calls("StatusNotification", 3, timeout=10)
            with pytest.raises(OcppCallError):
                await backend.call(INFO.identity, "ClearCache", {})
            await backend.wait_for_calls("FirmwareStatusNotification", 1, timeout=5)
