"""A clock the tests move by hand: a master without RTC boots in 1970, then NTP or the backend sets it."""

from __future__ import annotations

from gateway.clock import Clock

BOOT_1970 = 1_000.0  # seconds after the epoch at which the unset clock shows "now" at monotonic 50


class HandClock(Clock):
    def __init__(self, system: float = BOOT_1970, mono: float = 50.0, boot: str = "boot-a") -> None:
        super().__init__()
        self.system, self.mono, self.boot = system, mono, boot

    def system_wall(self) -> float:
        return self.system

    def monotonic(self) -> float:
        return self.mono

    def boot_id(self) -> str:
        return self.boot

    def advance(self, seconds: float) -> None:
        self.system += seconds
        self.mono += seconds
