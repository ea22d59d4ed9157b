"""Is a configured slave there, and is it the model its profile says? One verdict, whoever asks.

`charger-gateway selftest` asks over lines of its own (the daemon stopped); the daemon's control
socket (`identify`, which selftest uses while the daemon runs) asks over the daemon's lines,
before the routine polls. Both get the same answer: answered or not, matches or not, what it
looks like instead (gateway.scan's identification), and the ids it reads (serial, versions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.devprofile import Framing, Profile, ReadBlock
from gateway.errors import DeviceError, DeviceException, DeviceTimeout, LineUnavailable
from gateway.modbus_line import ModbusLine, Priority, read_profile
from gateway.registers import decode_values, identify_matches
from gateway.scan import GATEWAY_CODES, Identifier, candidates, load_candidates
from gateway.settings import BusSettings

ATTEMPTS = 2  # reads of a slave before it counts as silent: one lost frame (a line just opened) is no verdict
_ID_NAMES = re.compile(r"serial|firmware|version|manufacturer|product|model|vendor")


@dataclass(frozen=True)
class Verdict:
    answered: bool
    matches: bool | None  # None: it did not answer
    detail: str
    looks_like: tuple[str, ...] = ()  # profiles whose identify checks hold instead, best first
    ids: Mapping[str, str] = field(default_factory=dict)  # serial number, versions, ... as read

    def to_json(self) -> dict[str, Any]:
        return {"answered": self.answered, "matches": self.matches, "detail": self.detail,
                "looks_like": list(self.looks_like), "ids": dict(self.ids)}


def ids_of(profile: Profile, words: Mapping[ReadBlock, Sequence[int]]) -> dict[str, str]:
    """The values that name the device (serial number, firmware or layout version), as text."""
    out = {}
    for name, value in decode_values(profile, words).items():
        if value is None or not _ID_NAMES.search(name):
            continue
        if isinstance(value, float) and value.is_integer():
            out[name] = f"{int(value)} (0x{int(value):04X})"  # versions are often hex-coded (0x0108 = 1.0.8)
        else:
            out[name] = str(value)
    return out


def known_profiles(configured: dict[str, Profile]) -> Callable[[], Sequence[Profile]]:
    """Every profile (the config's own winning), loaded the first time it is asked for: only a device
    that is not its profile's model needs them."""
    known: list[Profile] = []

    def load() -> Sequence[Profile]:
        if not known:
            known.extend(load_candidates([], configured).values())
        return known

    return load


async def _read(
    line: ModbusLine, profile: Profile, unit: int, timeout_s: float, priority: Priority
) -> dict[ReadBlock, list[int]] | DeviceError:
    """The profile's blocks from the device, or the error that ended the reading; a silent device is asked twice."""
    error: DeviceError | None = None
    for _ in range(ATTEMPTS):
        try:
            return await read_profile(line, profile, unit, timeout_s=timeout_s, priority=priority)
        except DeviceTimeout as exc:
            error = exc
        except DeviceError as exc:
            return exc
    assert error is not None
    return error


async def probe(
    line: ModbusLine, bus: BusSettings, profile: Profile, unit: int, known: Callable[[], Sequence[Profile]],
    priority: Priority = Priority.POLL,
) -> Verdict:
    """Read the device as its profile says and judge it; `known` (all profiles, loaded on demand) names
    what a device that is not its profile's model looks like."""
    got = await _read(line, profile, unit, bus.request_timeout_s or profile.request_timeout_s, priority)
    if isinstance(got, LineUnavailable):
        return Verdict(False, None, str(got))
    if isinstance(got, DeviceTimeout):
        return Verdict(False, None, f"no answer in {ATTEMPTS} tries ({got})")
    if isinstance(got, DeviceException) and line.framing is Framing.TCP and got.code in GATEWAY_CODES:
        return Verdict(False, None, f"the TCP gateway says nothing answers behind it ({got})")
    if isinstance(got, DeviceException):
        refused = f"answered, but refused {profile.name}'s registers ({got})"
    elif isinstance(got, DeviceError):  # garbled replies: something is there
        refused = f"answered, but garbled ({got})"
    elif identify_matches(profile, got):
        how = f"{len(profile.identify)} identify check(s) hold" if profile.identify else "its reading decodes (the profile has no identify checks)"
        return Verdict(True, True, f"answers as {profile.name}: {how}", ids=ids_of(profile, got))
    else:
        refused = f"answered, but {profile.name}'s identify checks do not hold"
    try:
        ranked = await Identifier(line, candidates(known(), bus.kind), bus.request_timeout_s).identify(unit)
    except LineUnavailable:  # the adapter went meanwhile: what it answered stands
        ranked = ()
    certain = [m for m in ranked if m.certain]
    looks = tuple(m.profile.name for m in (certain or list(ranked))[:3])
    detail = refused + (f"; it looks like {', '.join(looks)}" if looks else "; no known profile matches it")
    return Verdict(True, False, detail, looks_like=looks)
