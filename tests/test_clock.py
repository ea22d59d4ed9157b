"""Clock trouble (ocpp-gateway-notes.md field failure 6): never 1970, fix unset stamps, UTC only."""

from __future__ import annotations

import time

from gateway.clock import EARLIEST_VALID, fix_unset_stamp, iso, parse_iso
from tests.clocks import BOOT_1970, HandClock

NTP_TIME = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def test_valid_system_time_is_used_as_is() -> None:
    clock = HandClock(system=NTP_TIME)
    assert clock.wall() == NTP_TIME and clock.wall_is_valid() and clock.unset_offset is None
    assert clock.utc_iso() == "2026-09-21T14:13:20.000Z"


def test_unset_clock_remembers_its_offset_to_monotonic() -> None:
    clock = HandClock()
    assert not clock.wall_is_valid()
    assert clock.unset_offset == BOOT_1970 - 50.0


def test_the_backends_time_sets_the_wall_until_ntp_does() -> None:
    clock = HandClock()
    clock.adopt_backend_time("2026-09-21T14:13:20Z")
    assert clock.wall() == NTP_TIME
    clock.advance(10)
    assert clock.wall() == NTP_TIME + 10
    clock.system = NTP_TIME + 100  # NTP steps the system clock: it wins
    assert clock.wall() == NTP_TIME + 100
    clock.adopt_backend_time("2026-09-21T15:00:00Z")  # ignored: the system clock is set
    assert clock.wall() == NTP_TIME + 100


def test_a_stamp_of_this_boot_is_placed_by_monotonic_time() -> None:
    clock = HandClock()
    event = clock.wall()  # at monotonic 50
    offset = clock.unset_offset
    assert offset is not None
    real = fix_unset_stamp(event, stamp_boot="boot-a", unset_offset=offset, boot_last_stamp=event, now_wall=NTP_TIME, now_mono=350.0, now_boot="boot-a")
    assert real == NTP_TIME - 300  # it happened 300 s of monotonic time before now


def test_stamps_of_a_boot_that_never_got_the_time_stay_in_order_before_this_boot() -> None:
    stamps = [1000.0, 1060.0, 1200.0]
    fixed = [fix_unset_stamp(s, stamp_boot="old", unset_offset=950.0, boot_last_stamp=1200.0, now_wall=NTP_TIME, now_mono=500.0, now_boot="new") for s in stamps]
    this_boot_began = NTP_TIME - 500
    assert fixed == sorted(fixed) and fixed[-1] == this_boot_began - 1
    assert [b - a for a, b in zip(fixed, fixed[1:], strict=False)] == [60.0, 140.0]
    assert all(f >= EARLIEST_VALID for f in fixed)


def test_iso_is_utc_with_z() -> None:
    assert iso(NTP_TIME) == "2026-09-21T14:13:20.000Z"
    assert parse_iso("2026-09-21T16:13:20+02:00") == NTP_TIME


def test_a_stamp_without_offset_is_utc_whatever_the_local_zone(monkeypatch) -> None:
    """OCPP 1.6 §3.14: times are UTC; a backend's currentTime without "Z" must not be read as local time."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert parse_iso("2026-09-21T14:13:20") == NTP_TIME
    finally:
        monkeypatch.undo()
        time.tzset()
