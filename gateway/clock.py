"""The one clock object: monotonic time for deadlines, wall time only for backend timestamps.

The master may boot with no RTC (believing it is 1970) and jump when NTP syncs,
so deadlines never use wall time, and every timestamp sent to the backend goes
through `Clock.utc_iso()`.

Wall time is valid when the system clock says a date after EARLIEST_VALID, or,
before NTP has run, once the backend told us its time (BootNotification and
Heartbeat currentTime). An event stamped while neither was true carries a
1970-ish stamp; the clock remembers the offset between that unset clock and
the monotonic clock (constant within one boot until the clock is set), and
`fix_unset_stamp` turns such a stamp into real time once it is known
(ocpp-gateway-notes.md, field failure 6).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

# No timestamp before this is believable: the gateway did not exist yet.
EARLIEST_VALID = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class Clock:
    """Wall and monotonic time; tests subclass it to move time by hand."""

    def __init__(self) -> None:
        self._backend_offset: float | None = None  # backend time - system time, while the system clock is unset
        self.unset_offset: float | None = None  # system wall - monotonic, last seen while the clock was unset

    def monotonic(self) -> float:
        return time.monotonic()

    def system_wall(self) -> float:
        return time.time()

    def boot_id(self) -> str:
        """Identifies this boot: monotonic times of another boot cannot be compared with ours."""
        try:
            return _BOOT_ID.read_text().strip()
        except OSError:
            return "unknown"

    def wall(self) -> float:
        system = self.system_wall()
        if system >= EARLIEST_VALID:
            return system
        if self._backend_offset is not None:
            return system + self._backend_offset
        self.unset_offset = system - self.monotonic()
        return system

    def wall_is_valid(self) -> bool:
        return self.wall() >= EARLIEST_VALID

    def adopt_backend_time(self, current_time: str) -> None:
        """The backend's currentTime sets our wall time until the system clock is set (by NTP)."""
        system = self.system_wall()
        if system >= EARLIEST_VALID:
            return
        backend = datetime.fromisoformat(current_time.replace("Z", "+00:00")).timestamp()
        if backend >= EARLIEST_VALID:
            self.unset_offset = system - self.monotonic()
            self._backend_offset = backend - system

    def utc_iso(self, wall: float | None = None) -> str:
        """OCPP timestamp: UTC, ISO 8601 with a Z and millisecond precision (never local time)."""
        return iso(self.wall() if wall is None else wall)


def wire_time(dt: datetime) -> str:
    """OCPP timestamp of an aware datetime: UTC, milliseconds, Z (OCPP 1.6 §3.14)."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_wire_time(text: str) -> datetime:
    """An OCPP timestamp as an aware UTC datetime; ValueError when it is not ISO 8601.

    OCPP 1.6 §3.14 wants UTC: a timestamp without an offset is taken as UTC, never as
    the master's local time (openWB/core#2272).
    """
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def iso(wall: float) -> str:
    return wire_time(datetime.fromtimestamp(wall, tz=UTC))


def parse_iso(text: str) -> float:
    return parse_wire_time(text).timestamp()


def fix_unset_stamp(
    stamp: float,
    *,
    stamp_boot: str,
    unset_offset: float,
    boot_last_stamp: float,
    now_wall: float,
    now_mono: float,
    now_boot: str,
) -> float:
    """Real wall time for a stamp taken while the clock was unset; pure.

    Same boot: the stamp's monotonic time is stamp - unset_offset, so its wall time
    is now_wall - (now_mono - that). Another boot (the power went before the clock
    was ever set there): its place in time is lost; the stamps of that boot are laid
    out, keeping their spacing, to end one second before this boot began, so that
    they stay in order and before everything that came after.
    """
    if stamp_boot == now_boot:
        return now_wall - (now_mono - (stamp - unset_offset))
    this_boot_began = now_wall - now_mono
    return this_boot_began - 1.0 - (boot_last_stamp - stamp)
