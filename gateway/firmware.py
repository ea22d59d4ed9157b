"""UpdateFirmware for the gateway itself (OCPP 1.6 §5.19), pure: the update's steps as a table.

No I/O and no clock: times come in as arguments (wall seconds, the backend's retrieveDate
is wall time by nature). gateway.firmware_update carries the steps out.

The steps, and the FirmwareStatusNotification (§4.5) entering each one sends:

    WAITING --due--> DOWNLOADING --verified--> DOWNLOADED --install--> INSTALLING --ok--> INSTALLED
    (none)           Downloading   |  ^        Downloaded   |          Installing  |     Installed
                                   |  retry                 no installer           failed
                                   v                        v                      v
                             DOWNLOAD_FAILED          INSTALLATION_FAILED <-- ROLLING_BACK
                             DownloadFailed           InstallationFailed      (none: still Installing)

ROLLING_BACK is kept while the previous image goes back in, so that a restart in the middle of it
(an install command that restarts the daemon, a power cut) ends the update with InstallationFailed
instead of rolling back again: the same version runs after such a restart, which INSTALLING would
read as one more failed install, and roll back, at every start.

A download attempt that fails (the server, the network, or the checksum) is retried after
retryInterval while attempts remain (`retry`, no new notification: backends do not want a
flood of Downloading, EVerest/libocpp#459), else the update gives up (`give_up`).

A checksum mismatch is a failed download, and so ends in DownloadFailed, not InstallationFailed:
the bytes that arrived are not the image the backend meant (a truncated or corrupted transfer, or
a wrong file at the location), nothing was installed and the running version is untouched, and the
remedy is the backend's (fix the location or the checksum, send UpdateFirmware again). A backend
reads InstallationFailed as "the charge point could not install a good image", which calls for a
technician. OCPP 1.6 has no status of its own for it (2.0.1's InvalidSignature is for signatures).

OCPP 1.6 UpdateFirmware has no checksum field. A checksum may be given in the location URL's
fragment, `https://host/fw.deb#sha256=<hex>` (also md5, sha1, sha384, sha512); a fragment never
reaches the server, so any backend can send it and any file server serves the URL. Without a
fragment the image is installed unverified (the runner logs that).

`retries` counts the tries after the first (as OCPP 2.0.1 spells out and the name says): 0 is one
attempt, never none (the OCTT case of MicroOcpp#436); absent, DEFAULT_RETRIES.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from ocpp.v16.enums import FirmwareStatus

from gateway.clock import parse_wire_time
from gateway.errors import IllegalTransition

DEFAULT_RETRIES = 2  # when the backend gives no `retries`: three attempts in all
SCHEMES = frozenset({"http", "https", "ftp"})
DIGEST_HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128}
DEFAULT_IMAGE_NAME = "firmware.bin"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


class Step(enum.Enum):
    WAITING = "waiting"  # until retrieveDate
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"  # verified, in the state directory
    INSTALLING = "installing"
    ROLLING_BACK = "rolling_back"  # the install failed; the previous image goes back in
    INSTALLED = "installed"
    DOWNLOAD_FAILED = "download_failed"
    INSTALLATION_FAILED = "installation_failed"

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    @property
    def runs_installer(self) -> bool:
        """The install command runs (the new image, or the previous one going back): nothing may stop it."""
        return self in _INSTALLING


_FINISHED = frozenset({Step.INSTALLED, Step.DOWNLOAD_FAILED, Step.INSTALLATION_FAILED})
_INSTALLING = frozenset({Step.INSTALLING, Step.ROLLING_BACK})


class Event(enum.Enum):
    DUE = "due"  # retrieveDate reached
    VERIFIED = "verified"  # the image is in, its checksum (if any) matches
    RETRY = "retry"  # an attempt failed and attempts remain
    GIVE_UP = "give-up"  # an attempt failed and it was the last
    IMAGE_LOST = "image-lost"  # the verified image went from the state directory before its install: fetch it again
    INSTALL = "install"  # the install command starts
    NO_INSTALLER = "no-installer"  # no install command is configured
    INSTALL_OK = "install-ok"
    INSTALL_FAILED = "install-failed"
    ROLLED_BACK = "rolled-back"  # the rollback is over: done, failed, or cut short by a restart


TRANSITIONS: dict[Step, dict[Event, Step]] = {
    Step.WAITING: {Event.DUE: Step.DOWNLOADING},
    Step.DOWNLOADING: {Event.VERIFIED: Step.DOWNLOADED, Event.RETRY: Step.DOWNLOADING, Event.GIVE_UP: Step.DOWNLOAD_FAILED},
    Step.DOWNLOADED: {Event.INSTALL: Step.INSTALLING, Event.NO_INSTALLER: Step.INSTALLATION_FAILED, Event.IMAGE_LOST: Step.DOWNLOADING},
    Step.INSTALLING: {Event.INSTALL_OK: Step.INSTALLED, Event.INSTALL_FAILED: Step.ROLLING_BACK},
    Step.ROLLING_BACK: {Event.ROLLED_BACK: Step.INSTALLATION_FAILED},
    Step.INSTALLED: {},
    Step.DOWNLOAD_FAILED: {},
    Step.INSTALLATION_FAILED: {},
}

# What a step reports, on entering it and when TriggerMessage asks (§5.17). Waiting for retrieveDate
# is not busy yet: Idle (1.6 has no DownloadScheduled). A finished update reports Idle to a trigger:
# "Idle ... when it is not busy downloading/installing firmware" (§4.5), see `Update.trigger_status`.
STATUS: dict[Step, FirmwareStatus] = {
    Step.WAITING: FirmwareStatus.idle,
    Step.DOWNLOADING: FirmwareStatus.downloading,
    Step.DOWNLOADED: FirmwareStatus.downloaded,
    Step.INSTALLING: FirmwareStatus.installing,
    Step.ROLLING_BACK: FirmwareStatus.installing,  # InstallationFailed once the box is settled again
    Step.INSTALLED: FirmwareStatus.installed,
    Step.DOWNLOAD_FAILED: FirmwareStatus.download_failed,
    Step.INSTALLATION_FAILED: FirmwareStatus.installation_failed,
}


@dataclass(frozen=True)
class Retries:
    """How often a transfer is tried, and the wait between tries (UpdateFirmware, GetDiagnostics)."""

    attempts: int  # >= 1
    interval_s: float

    @classmethod
    def from_request(cls, retries: int | None, retry_interval: int | None, default_interval_s: float) -> Retries:
        """ValueError for a negative value (the schema only says integer)."""
        if retries is not None and retries < 0:
            raise ValueError(f"retries {retries} is negative")
        if retry_interval is not None and retry_interval < 0:
            raise ValueError(f"retryInterval {retry_interval} is negative")
        extra = DEFAULT_RETRIES if retries is None else retries
        return cls(1 + extra, float(default_interval_s if retry_interval is None else retry_interval))


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # a hashlib name, one of DIGEST_HEX_LENGTHS
    hexdigest: str  # lower case

    def matches(self, hexdigest: str) -> bool:
        return hmac.compare_digest(self.hexdigest, hexdigest.lower())


@dataclass(frozen=True)
class Location:
    """Where an image comes from: the URL without fragment, the checksum its fragment gave, a file name."""

    url: str  # what is fetched: the location without its fragment (credentials kept)
    checksum: Checksum | None
    file_name: str  # the image's name in the state directory

    @classmethod
    def parse(cls, location: str) -> Location:
        """ValueError with the reason for a location that cannot be fetched or a fragment that is no checksum."""
        parts = check_location(location)
        return cls(parts._replace(fragment="").geturl(), parse_checksum(parts.fragment), image_name(parts.path))


def check_location(location: str) -> SplitResult:
    """The location (UpdateFirmware's, or GetDiagnostics') split; ValueError with the reason when no transfer can use it."""
    parts = urlsplit(location.strip())
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"location scheme {parts.scheme or '(none)'!r} is not one of {', '.join(sorted(SCHEMES))}")
    if not parts.hostname:
        raise ValueError("location has no host")
    return parts


def parse_checksum(fragment: str) -> Checksum | None:
    """`sha256=<hex>` (or md5, sha1, sha384, sha512) -> Checksum; empty -> None; anything else ValueError.

    A fragment that is there but not understood is refused rather than ignored: an image the
    backend meant to be verified is never installed unverified."""
    if not fragment:
        return None
    pairs = parse_qsl(fragment, keep_blank_values=True)
    if len(pairs) != 1:
        raise ValueError(f"location fragment {fragment!r} is not one checksum such as sha256=<hex>")
    algorithm, digest = pairs[0][0].lower(), pairs[0][1].strip().lower()
    if algorithm not in DIGEST_HEX_LENGTHS:
        raise ValueError(f"checksum algorithm {algorithm!r} is not one of {', '.join(DIGEST_HEX_LENGTHS)}")
    if len(digest) != DIGEST_HEX_LENGTHS[algorithm] or not re.fullmatch(r"[0-9a-f]+", digest):
        raise ValueError(f"{algorithm} checksum must be {DIGEST_HEX_LENGTHS[algorithm]} hex digits")
    return Checksum(algorithm, digest)


def image_name(url_path: str) -> str:
    """The last path segment, made safe as a file name (install commands may care about `.deb`)."""
    name = _SAFE_NAME.sub("_", unquote(url_path.rsplit("/", 1)[-1])).lstrip(".")
    return name[:128] or DEFAULT_IMAGE_NAME


def install_argv(command: Sequence[str], image: str) -> list[str]:
    """The install command with {file} replaced by the image's path; without {file} the path is appended."""
    if not any("{file}" in arg for arg in command):
        return [*command, image]
    return [arg.replace("{file}", image) for arg in command]


@dataclass(frozen=True)
class Update:
    """One UpdateFirmware, where it stands; kept as JSON so that a restart resumes it."""

    location: str  # as the backend sent it (may hold credentials: never logged as is)
    retrieve_at: float  # wall seconds
    retries: Retries
    step: Step = Step.WAITING
    failures: int = 0  # failed download attempts so far
    version_before: str | None = None  # the gateway's version when the install began
    reported: bool = False  # the backend answered the final FirmwareStatusNotification

    @classmethod
    def from_request(cls, payload: Mapping[str, Any], default_interval_s: float) -> Update:
        """UpdateFirmware.req (wire form) -> Update; ValueError with the reason for a value that cannot be used."""
        Location.parse(payload["location"])
        try:
            retrieve_at = parse_wire_time(payload["retrieveDate"]).timestamp()
        except ValueError:
            raise ValueError(f"retrieveDate {payload['retrieveDate']!r} is not an ISO 8601 time") from None
        retries = Retries.from_request(payload.get("retries"), payload.get("retryInterval"), default_interval_s)
        return cls(payload["location"], retrieve_at, retries)

    @property
    def source(self) -> Location:
        return Location.parse(self.location)

    @property
    def finished(self) -> bool:
        return self.step.finished

    def on(self, event: Event) -> Update:
        """The update after `event`; IllegalTransition (and no change) for an event its step does not take."""
        target = TRANSITIONS[self.step].get(event)
        if target is None:
            raise IllegalTransition(f"firmware update: {event.value} while {self.step.value}")
        failures = self.failures + 1 if event in (Event.RETRY, Event.GIVE_UP) else self.failures
        return dataclasses.replace(self, step=target, failures=failures)

    def attempt_failed(self) -> Event:
        """RETRY while attempts remain after this failed one, else GIVE_UP."""
        return Event.RETRY if self.failures + 1 < self.retries.attempts else Event.GIVE_UP

    def wait_s(self, now: float) -> float:
        """Seconds until retrieveDate, 0 once it has come."""
        return max(0.0, self.retrieve_at - now)

    def installing(self, version: str) -> Update:
        """INSTALLING, remembering the version that ran before: a restart in the middle tells the outcome by it."""
        return dataclasses.replace(self.on(Event.INSTALL), version_before=version)

    def interrupted_install(self, running_version: str) -> Event:
        """The daemon restarted while installing (the installer restarted it, or the power went):
        a new version running means the install got through; the same one, that it did not."""
        if self.step is not Step.INSTALLING:
            raise IllegalTransition(f"firmware update: no install was under way ({self.step.value})")
        return Event.INSTALL_OK if running_version != self.version_before else Event.INSTALL_FAILED

    def trigger_status(self) -> FirmwareStatus:
        """What TriggerMessage FirmwareStatusNotification reports: the step under way, Idle when none (§4.5)."""
        return FirmwareStatus.idle if self.finished else STATUS[self.step]

    def to_json(self) -> dict[str, Any]:
        return {
            "location": self.location, "retrieve_at": self.retrieve_at, "attempts": self.retries.attempts,
            "interval_s": self.retries.interval_s, "step": self.step.value, "failures": self.failures,
            "version_before": self.version_before, "reported": self.reported,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Update:
        """KeyError/ValueError/TypeError for a record that is not one of ours."""
        return cls(
            str(data["location"]), float(data["retrieve_at"]), Retries(int(data["attempts"]), float(data["interval_s"])),
            Step(data["step"]), int(data["failures"]), data["version_before"], bool(data["reported"]),
        )
