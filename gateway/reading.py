"""What one poll of a slave says, decoded: the input of the connector state machine."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Pilot(enum.Enum):
    """IEC 61851-1 control-pilot state."""

    A = "A"  # no vehicle
    B = "B"  # vehicle connected, not requesting energy
    C = "C"  # vehicle requests energy
    D = "D"  # vehicle requests energy, ventilation required
    E = "E"  # error (short, no pilot)
    F = "F"  # EVSE not available


@dataclass(frozen=True)
class PilotState:
    pilot: Pilot
    evse_allows: bool | None  # the x1/x2 digit: does the EVSE offer current (PWM on)? None: not said

    @classmethod
    def parse(cls, code: str) -> PilotState:
        """'C2' -> (C, True); 'B1' -> (B, False); 'E' -> (E, None)."""
        allows = {"1": False, "2": True}.get(code[1:]) if len(code) > 1 else None
        return cls(Pilot(code[0]), allows)


@dataclass(frozen=True)
class Reading:
    """Decoded values of one slave poll.

    None means the profile has no register for it, or the device says "not available" this poll.
    """

    state: PilotState | None = None
    vendor_state: int | str | None = None  # the raw state register, or the raw values a profile's state rules tested
    energy_wh: float | None = None
    power_w: float | None = None
    current_a: tuple[float | None, float | None, float | None] = (None, None, None)
    voltage_v: tuple[float | None, float | None, float | None] = (None, None, None)
    applied_limit_a: float | None = None  # the current limit the device applies now, where it can be read back
    charging_enabled: bool | None = None  # the device's own enable register or coil, where it has one
    id_tag: str | None = None  # the RFID/OCPP idTag presented at the outlet now; None: none (or no such register)
    extra: tuple[tuple[str, float | str], ...] = ()  # other named values, for display
