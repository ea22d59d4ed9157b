"""GetDiagnostics (OCPP 1.6 §5.9): a bundle of what a technician needs, uploaded where the backend says.

The bundle is a .tar.gz, diagnostics-<identity>-<UTC time>.tar.gz (GetDiagnostics.conf's fileName),
holding one folder of that name with:
  log.txt, log.jsonl  the recent log records (gateway.event_log.RECENT, the last
                      config.firmware.diagnostics_log_lines), only those from startTime to stopTime
                      when the backend gave them;
  database.json       the SQLite file: rows per table, the pending outbox by action and its head,
                      open sessions, recent alarms (read as gateway.history reads them for the
                      technician's commands), file sizes, and PRAGMA integrity_check;
  config.yaml         the config file as written, with the value of any secret-looking key and any
                      password in a URL replaced by <redacted> (by design it holds none: passwords
                      and keys live in files of their own);
  secrets.json        those files (Basic-auth password, AuthorizationKey, TLS client key): path,
                      present, mode, owner, size; never a byte of their contents;
  version.json        the gateway's version, Python, the libraries, the system.

Where: `location` is a directory (§6.25: "the location (directory) where the diagnostics file shall
be uploaded to"), so the file name is appended to it, as MicroOcpp does. How: ftp is STOR; http(s)
is an HTTP PUT of the bytes to that URL. PUT rather than a multipart POST: it is what the
reference open charger stack does (EVerest's diagnostics_uploader.sh runs `curl -T`, PUT for
http and STOR for ftp, the same command for both), what file servers and object stores (S3
presigned URLs, WebDAV, nginx dav) take as they are, and it needs no form field name that
OCPP 1.6 never defined; a backend that wants a form gives an ftp location, the usual one.

Statuses (§4.4): Uploading when the upload begins, then Uploaded, or UploadFailed after the last
attempt (`retries` after the first, every retryInterval, as for firmware; every attempt sends the
one bundle built when the upload began, which the fileName the backend was given names); Idle to
a TriggerMessage when nothing is under way. The final one is kept in SQLite until the backend
answered it. A restart during an upload reports UploadFailed: the recent log was the process's own
memory (the backend may simply ask again). A new GetDiagnostics replaces the one under way.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import io
import json
import logging
import platform
import re
import sys
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ocpp.v16.enums import DiagnosticsStatus

from gateway import __version__, history
from gateway.auth_key import AuthKeyStore
from gateway.clock import Clock, iso, parse_wire_time
from gateway.errors import StoreError
from gateway.event_log import RECENT, Event, RecentLog
from gateway.file_transfer import TransferError, redact, upload
from gateway.firmware import Retries, check_location
from gateway.firmware_update import Current, Notify
from gateway.settings import Config
from gateway.store import Store

log = logging.getLogger("gateway.diagnostics")

STATE_KEY = "diagnostics"
REDACTED = "<redacted>"
LIBRARIES = ("ocpp", "websockets", "pymodbus", "pyserial", "aiosqlite", "PyYAML")
RECENT_ALARMS = 20
INTEGRITY_LINES = 20  # PRAGMA integrity_check stops after this many faults
_SECRET_KEY = re.compile(r"(password|passwd|passphrase|secret|token|credential|auth(orization)?_?key|api_?key|private_?key)", re.I)
_NAMES_A_FILE = re.compile(r"_(file|path|dir)$", re.I)  # password_file names the file, it is not the password
_YAML_PAIR = re.compile(r"^(?P<lead>\s*(?:-\s+)?)(?P<key>[A-Za-z_][\w-]*)(?P<sep>\s*:\s+)(?P<value>\S.*?)\s*$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


# --- pure: what goes in the bundle, and where -------------------------------------------------


def bundle_name(identity: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"diagnostics-{_SAFE.sub('_', identity)[:100]}-{stamp}.tar.gz"


def upload_url(location: str, file_name: str) -> str:
    """The location is a directory (§6.25): the file goes into it."""
    parts = urlsplit(location.strip())
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return parts._replace(path=path + file_name, fragment="").geturl()


def within(events: Iterable[Event], start: float | None, stop: float | None) -> list[Event]:
    """The events from `start` to `stop` (either open)."""
    return [e for e in events if (start is None or e.time >= start) and (stop is None or e.time <= stop)]


def redact_config(text: str) -> str:
    """The config file with the value of every secret-looking key (and URL passwords) replaced, line by line.

    Keys that name a file (password_file, ...) keep their value: a path, which a technician needs."""
    lines = []
    for line in text.splitlines():
        match = _YAML_PAIR.match(line)
        if match and _SECRET_KEY.search(match["key"]) and not _NAMES_A_FILE.search(match["key"]) and not match["value"].startswith("#"):
            line = f"{match['lead']}{match['key']}{match['sep']}{REDACTED}"
        lines.append(redact(line, REDACTED))
    return "\n".join(lines) + "\n"


def make_bundle(folder: str, files: Mapping[str, bytes], mtime: float) -> bytes:
    """A .tar.gz of `files` (name -> content) in one folder, in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size, info.mtime, info.mode = len(content), int(mtime), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _json(data: object) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode()


# --- I/O: what the bundle reads ----------------------------------------------------------------


def database_summary(path: Path, now: float) -> dict[str, Any]:
    """What a technician asks of the database first: read as `charger-gateway queue` and `sessions` read it
    (gateway.history, a read-only connection), safe while the daemon writes."""
    summary: dict[str, Any] = {"path": str(path), "present": path.is_file()}
    if not summary["present"]:
        return summary
    summary["bytes"] = {part.name: part.stat().st_size for part in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if part.is_file()}
    try:
        with history.read_only(path) as db:
            # First what needs no table of ours: a damaged or foreign file still tells this much.
            summary["integrity_check"] = [row[0] for row in db.execute(f"PRAGMA integrity_check({INTEGRITY_LINES})")]
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            summary["rows"] = {table: db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}
            queue = history.queue(db, 1)
            summary["outbox_pending"], summary["outbox_bytes"] = queue.by_action, queue.bytes
            summary["outbox_head"] = queue.head[0].to_json(now) if queue.head else None
            summary["open_sessions"] = [  # no idTag: a card number is personal data the bundle does not need
                {"connector": s.connector, "session": s.key, "started": iso(s.started), "transaction_id": s.transaction_id}
                for s in history.sessions(db, now, now) if s.stopped is None
            ]
            summary["recent_alarms"] = [
                {"time": iso(a.time), "connector": a.connector, "text": a.text} for a in history.recorded_alarms(db, 0.0, RECENT_ALARMS)
            ]
    except StoreError as exc:
        summary["error"] = str(exc)
    return summary


def secret_files(config: Config) -> list[dict[str, Any]]:
    """Presence and mode of the files that hold secrets, never their contents."""
    keys = AuthKeyStore(config.storage.path.parent)
    files: Sequence[tuple[str, Path | None]] = (
        ("backend.password_file", config.backend.password_file),
        ("backend.client_key", config.backend.client_key),
        ("AuthorizationKey", keys.path),
        ("AuthorizationKey (previous)", keys.previous_path),
    )
    out: list[dict[str, Any]] = []
    for what, path in files:
        entry: dict[str, Any] = {"what": what, "path": None if path is None else str(path)}
        if path is not None:
            try:
                st = path.stat()
            except OSError as exc:
                entry["present"], entry["problem"] = False, exc.strerror
            else:
                entry |= {"present": True, "mode": f"{st.st_mode & 0o7777:04o}", "uid": st.st_uid, "gid": st.st_gid, "bytes": st.st_size}
        out.append(entry)
    return out


def version_info(identity: str, now: float) -> dict[str, Any]:
    libraries: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            libraries[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            libraries[name] = None
    return {
        "gateway": __version__, "identity": identity, "generated": iso(now), "python": sys.version.split()[0],
        "platform": platform.platform(), "machine": platform.machine(), "libraries": libraries,
    }


def _config_text(path: Path) -> bytes:
    try:
        return redact_config(path.read_text(errors="replace")).encode()
    except OSError as exc:
        return f"# {path}: {exc.strerror}\n".encode()


def build_bundle(config: Config, folder: str, events: Sequence[Event], now: float) -> bytes:
    """The whole bundle (blocking: run it in a thread)."""
    files = {
        "log.txt": redact("".join(e.line() + "\n" for e in events), REDACTED).encode(),
        "log.jsonl": redact("".join(json.dumps(e.to_json(), default=str) + "\n" for e in events), REDACTED).encode(),
        "database.json": _json(database_summary(config.storage.path, now)),
        "config.yaml": _config_text(config.source),
        "secrets.json": _json(secret_files(config)),
        "version.json": _json(version_info(config.charge_point.identity, now)),
    }
    return make_bundle(folder, files, now)


# --- the task ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One GetDiagnostics."""

    url: str  # the location with the file name appended
    file_name: str
    retries: Retries
    start: float | None  # wall seconds; None: open
    stop: float | None


class Diagnostics:
    """Carries out GetDiagnostics; `run` is the daemon's task for it."""

    def __init__(self, config: Config, store: Store, clock: Clock, notify: Notify, recent: RecentLog = RECENT) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self._notify = notify
        self._recent = recent
        self._upload: Upload | None = None  # asked for, not begun
        self._status = DiagnosticsStatus.idle
        self._wanted = asyncio.Event()
        self._current = Current()

    async def request(self, payload: Mapping[str, Any]) -> str:
        """GetDiagnostics.req (wire form) -> the fileName of the bundle; ValueError for a value that cannot be used."""
        check_location(payload["location"])
        start, stop = (_time(payload, key) for key in ("startTime", "stopTime"))
        if start is not None and stop is not None and stop < start:
            raise ValueError("stopTime is before startTime")
        retries = Retries.from_request(payload.get("retries"), payload.get("retryInterval"), self.config.firmware.retry_interval_s)
        name = bundle_name(self.config.charge_point.identity, self.clock.wall())
        if self._status is DiagnosticsStatus.uploading:
            log.warning("diagnostics upload under way replaced by a new GetDiagnostics")
        self._current.stop()
        self._upload = Upload(upload_url(payload["location"], name), name, retries, start, stop)
        self._wanted.set()
        return name

    def status(self) -> DiagnosticsStatus:
        """What TriggerMessage DiagnosticsStatusNotification reports now: Uploading, or Idle (§4.4)."""
        return DiagnosticsStatus.uploading if self._status is DiagnosticsStatus.uploading else DiagnosticsStatus.idle

    def report(self) -> None:
        """TriggerMessage (§5.17): the current status, after the answer."""
        self._notify("DiagnosticsStatusNotification", {"status": self.status().value})

    async def run(self) -> None:
        """Upload bundles as they are asked for, until cancelled."""
        await self._current.run(self._resume(), if_stopped=None)
        while True:
            self._wanted.clear()
            job, self._upload = self._upload, None
            if job is None:
                await self._wanted.wait()
                continue
            await self._current.run(self._carry_out(job), if_stopped=None)

    async def _carry_out(self, job: Upload) -> None:
        where = redact(job.url)
        await self._enter(DiagnosticsStatus.uploading, job.file_name)
        events = within(self._recent.recent(self.config.firmware.diagnostics_log_lines), job.start, job.stop)
        try:
            bundle = await asyncio.to_thread(build_bundle, self.config, job.file_name.removesuffix(".tar.gz"), events, self.clock.wall())
        except OSError as exc:  # a file vanished while it was read: nothing to upload, the backend may ask again
            log.error("diagnostics %s not built: %s", job.file_name, exc)
            await self._final(DiagnosticsStatus.upload_failed, job.file_name)
            return
        for attempt in range(1, job.retries.attempts + 1):
            try:
                await upload(job.url, bundle, self.config.firmware.download_timeout_s)
            except TransferError as exc:
                log.warning("diagnostics upload attempt %d of %d failed: %s", attempt, job.retries.attempts, exc)
                if attempt < job.retries.attempts:
                    await asyncio.sleep(job.retries.interval_s)
                continue
            log.info("diagnostics %s uploaded to %s (%d bytes, %d log lines)", job.file_name, where, len(bundle), len(events))
            await self._final(DiagnosticsStatus.uploaded, job.file_name)
            return
        log.error("diagnostics %s not uploaded to %s after %d attempts", job.file_name, where, job.retries.attempts)
        await self._final(DiagnosticsStatus.upload_failed, job.file_name)

    async def _resume(self) -> None:
        """After a restart: an upload cut short failed; a final status not yet answered goes again."""
        try:
            kept = await self.store.load_state(STATE_KEY)
            if not isinstance(kept, dict) or kept.get("reported", True):
                return
            status, name = DiagnosticsStatus(kept["status"]), str(kept["file_name"])
        except (StoreError, KeyError, ValueError) as exc:
            log.error("kept diagnostics status could not be read: %s", exc)
            return
        if status is DiagnosticsStatus.uploading:
            log.warning("diagnostics %s: the upload was cut short by a restart", name)
            status = DiagnosticsStatus.upload_failed
        await self._final(status, name)

    async def _enter(self, status: DiagnosticsStatus, file_name: str) -> asyncio.Future[None]:
        self._status = status
        await self._keep({"status": status.value, "file_name": file_name, "reported": False})
        return self._notify("DiagnosticsStatusNotification", {"status": status.value})

    async def _final(self, status: DiagnosticsStatus, file_name: str) -> None:
        delivered = await self._enter(status, file_name)
        await asyncio.shield(delivered)
        await self._keep({"status": status.value, "file_name": file_name, "reported": True})

    async def _keep(self, state: dict[str, Any]) -> None:
        try:
            await self.store.save_state(STATE_KEY, state)
        except StoreError as exc:
            log.error("diagnostics status not kept: %s", exc)


def _time(payload: Mapping[str, Any], key: str) -> float | None:
    if payload.get(key) is None:
        return None
    try:
        return parse_wire_time(payload[key]).timestamp()
    except ValueError:
        raise ValueError(f"{key} {payload[key]!r} is not an ISO 8601 time") from None
