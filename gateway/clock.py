"""The one clock object: monotonic time for deadlines, wall time only for backend timestamps.

The master may boot with no RTC (believing it is 1970) and jump when NTP syncs,
so deadlines never use wall time, and every timestamp sent to the backend goes
through `Clock.utc_iso()`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

# No timestamp before this is believable: the gateway did not exist yet.
EARLIEST_VALID = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


class Clock:
    """Wall and monotonic time; tests subclass it to move time by hand."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def wall_is_valid(self) -> bool:
        return self.wall() >= EARLIEST_VALID

    def utc_iso(self, wall: float | None = None) -> str:
        """OCPP timestamp: UTC, ISO 8601 with a Z and millisecond precision (never local time)."""
        t = self.wall() if wall is None else wall
        return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
