"""One simulated slave charger, pure: a device profile's register image driven by an EV model.

No I/O: the line and TCP servers hand in decoded requests with the real
(monotonic) time they arrived; the slave answers with register words or a
`SlaveException`. EV behaviour runs on simulated time (`TimeScale`), while the
communication watchdog runs on real time, as on the real box.

Register words are made with gateway.registers.encode_value (and encode_string
for text), the exact inverse of what the daemon decodes, so a poll decodes back
to the model's values.

The watchdog plays the Heidelberg rules (shared/reference/modbus-register-maps.md
§1, holding 257 and 262), generalised to any profile that names the registers:
the timeout register sets the timeout in use (0 = off); on expiry the box
applies the fail-safe current register - a current of at least the minimum is
offered on (the EV keeps charging at it), anything else is state F.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.devprofile import ROLES, DataType, Profile, Table, ValueSpec, WriteSpec
from gateway.registers import decode_raw, decode_value, encode_raw, encode_string, encode_value
from gateway.simulator.ev import Activity, EvEvent, EvModel

# Modbus application protocol §7: exception codes a slave answers with.
ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3

# An unused phase reads a few volts, not zero (Heidelberg: "an unconnected
# phase reads a small non-zero value, e.g. 8 or 9 V").
_IDLE_PHASE_V = 8.0
_PCB_TEMPERATURE_C = 32.5  # a box at work in a garage
# Plausible readings for informational values of the shipped profiles, by
# value name (engineering units). Heidelberg: register layout V1.0.8 (input 4,
# the first layout with the lifetime meter is V1.0.7), external lock input 13
# and remote lock holding 259 both "1 = unlocked".
_PLAUSIBLE = {"layout_version": 0x0108, "external_lock": 1.0, "remote_lock": 1.0}


class SlaveException(Exception):
    """The slave answers this request with a Modbus exception code (Modbus application protocol §7)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class TimeScale:
    """Maps real monotonic seconds to simulated seconds: EV behaviour may run faster than real time."""

    origin_mono: float
    speed: float = 1.0

    def sim(self, mono: float) -> float:
        return max(0.0, (mono - self.origin_mono) * self.speed)


@dataclass(frozen=True)
class SlaveEvent:
    """Something a watcher of the simulation wants to know, with the energy register's value at that instant."""

    kind: str  # plug, charging, paused, suspended, unplug, watchdog, recovered
    connector: int
    unit: int
    energy_wh: int | None  # what the slave's energy register reads, in Wh; None: the profile has none
    sim_time: float


def _inverse_states(profile: Profile) -> dict[str, int]:
    """Pilot code wanted -> raw state value: the first raw whose code matches, else the bare letter's."""
    spec = profile.values.get("state")
    if spec is None:
        return {}
    first: dict[str, int] = {}
    for raw, code in spec.enum.items():
        if isinstance(raw, int):
            first.setdefault(code, raw)
    table: dict[str, int] = {}
    # F is shown only when a watchdog fails safe; a profile without one need not have it.
    wanted = ("A1", "A2", "B1", "B2", "C1", "C2") + (("F",) if profile.watchdog is not None else ())
    for want in wanted:
        for candidate in (want, want[0], f"{want[0]}2", f"{want[0]}1"):
            if candidate in first:
                table[want] = first[candidate]
                break
        else:
            raise ValueError(f"profile {profile.name}: its state enum has no value for pilot {want}")
    return table


class SimSlave:
    """The register image of one outlet, answering reads and writes as the profile's device would."""

    def __init__(
        self,
        *,
        connector: int,
        unit: int,
        profile: Profile,
        ev: EvModel,
        clock: TimeScale,
        now: float,
        emit: Callable[[SlaveEvent], None] = lambda event: None,
    ) -> None:
        self.connector = connector
        self.unit = unit
        self.profile = profile
        self.ev = ev
        self._clock = clock
        self._emit = emit
        self._states = _inverse_states(profile)
        self._holding: dict[int, int] = {}
        self._writable: set[int] = set()
        if (limit := profile.current_limit) is not None:
            # A box left by a previous master still allows its maximum: the daemon must pause it.
            self._store(limit.address, encode_value(limit, profile.max_current_a))
            self._writable.update(range(limit.address, limit.address + limit.type.words))
        for init in profile.init_writes:
            self._writable.add(init.address)
            self._holding.setdefault(init.address, 0)  # factory value, e.g. Heidelberg standby enabled
        if (watchdog := profile.watchdog) is not None:
            # Factory values: the profile's timeout (Heidelberg 257 = 15000 ms) and the pause value
            # as fail-safe current (Heidelberg 262 = 0: state F when the watchdog strikes).
            factory_values = ((watchdog.timeout_register, watchdog.timeout_s), (watchdog.failsafe_current, profile.pause_current_a))
            for register, factory in factory_values:
                if register is not None:
                    self._store(register.address, encode_value(register, factory))
                    self._writable.update(range(register.address, register.address + register.type.words))
        for spec in profile.values.values():
            if spec.table is Table.HOLDING and spec.name in _PLAUSIBLE:
                self._store(spec.address, encode_value(spec, _PLAUSIBLE[spec.name]))
        if (tag_spec := profile.values.get("id_tag")) is not None and tag_spec.count is not None:
            for tag in ev.id_tags:
                encode_string(tag, tag_spec.count)  # raises ValueError now rather than at a poll
        self._now = now
        self._last_request = now
        self.failsafe = False
        self._apply_offer(now)

    # --- requests from the master -----------------------------------------------------

    def read(self, table: Table, address: int, count: int, now: float) -> list[int]:
        """The words of `count` registers from `address` (FC03 holding / FC04 input) at real time `now`.

        A box that had failed safe answers this request still failed safe (state F,
        or charging at the fail-safe current) and recovers after it, so the master
        sees that the watchdog struck (the real box takes seconds to recover).
        """
        now = self._monotonic(now)
        self.tick(now)
        try:
            if not all(self._readable(table, a) for a in range(address, address + count)):
                raise SlaveException(ILLEGAL_DATA_ADDRESS, f"{table.value} {address}+{count} is not readable")
            image = self._image(table)
            return [image.get(a, self._holding.get(a, 0) if table is Table.HOLDING else 0) for a in range(address, address + count)]
        finally:
            self.heard_from_master(now)

    def write(self, address: int, words: Sequence[int], now: float) -> None:
        """Store `words` at holding `address` (FC06 / FC16); the current limit changes what the EV is offered."""
        now = self._monotonic(now)
        self.heard_from_master(now)
        if not words or not all(a in self._writable for a in range(address, address + len(words))):
            raise SlaveException(ILLEGAL_DATA_ADDRESS, f"holding {address}+{len(words)} is not writable")
        self._store(address, words)
        self._apply_offer(now)

    # --- time passing -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Advance the EV to `now` and fail safe when the master has been silent longer than the watchdog."""
        now = self._monotonic(now)
        self._advance(now)
        timeout = self.watchdog_timeout_s
        if not self.failsafe and timeout > 0 and now - self._last_request >= timeout:
            self.failsafe = True
            self._note("watchdog")
            self._apply_offer(now)

    @property
    def watchdog_timeout_s(self) -> float:
        """The watchdog timeout in use: the timeout register where the profile has one, else the profile's; 0 = off."""
        watchdog = self.profile.watchdog
        if watchdog is None:
            return 0.0
        if watchdog.timeout_register is None:
            return watchdog.timeout_s
        return self._register(watchdog.timeout_register)

    @property
    def offered_a(self) -> float:
        """The current the outlet offers the EV: the current-limit register, or the fail-safe current once failed safe."""
        if self.failsafe:
            watchdog = self.profile.watchdog
            spec = watchdog.failsafe_current if watchdog is not None else None
            return self._offer_in(spec) if spec is not None else 0.0
        limit = self.profile.current_limit
        return self._offer_in(limit) if limit is not None else self.profile.max_current_a

    def _offer_in(self, spec: WriteSpec) -> float:
        amperes = self._register(spec)
        if abs(amperes - self.profile.pause_current_a) < abs(spec.scale) / 2 or amperes < self.profile.min_current_a:
            # IEC 61851-1 Table A.8: no PWM duty cycle offers less than 6 A, so below the minimum is a pause.
            return 0.0
        return min(amperes, self.profile.max_current_a)

    def _register(self, spec: WriteSpec) -> float:
        """The engineering value a written holding register holds now."""
        words = [self._holding.get(a, 0) for a in range(spec.address, spec.address + spec.type.words)]
        return decode_raw(words, spec.type, spec.word_order) * spec.scale

    def _energy_register(self, energy_wh: float) -> int | None:
        spec = self.profile.values.get("energy")
        if spec is None:
            return None
        value = decode_value(spec, _encode_clamped(spec, energy_wh))
        return None if value is None else round(value)

    def pilot_code(self) -> str:
        """The IEC 61851-1 pilot state the box shows: EV letter plus EVSE digit, or F when failed safe to no current."""
        if self.failsafe and self.offered_a <= 0:
            return "F"
        letter = {Activity.UNPLUGGED: "A", Activity.PLUGGED: "B", Activity.SUSPENDED: "B"}.get(self.ev.activity, "C")
        return f"{letter}{2 if self.offered_a > 0 else 1}"

    # --- internals --------------------------------------------------------------------------

    def heard_from_master(self, now: float) -> None:
        """A request addressed to this unit arrived: the watchdog restarts, a failed-safe box recovers."""
        now = self._monotonic(now)
        self.tick(now)
        self._last_request = now
        if self.failsafe:
            self.failsafe = False
            self._note("recovered")
            self._apply_offer(now)

    def _monotonic(self, now: float) -> float:
        """Never earlier than any time seen before: a request stamped on arrival may be served after a tick."""
        self._now = max(self._now, now)
        return self._now

    def _advance(self, now: float) -> None:
        self._note_all(self.ev.advance(self._clock.sim(now)))

    def _apply_offer(self, now: float) -> None:
        self._note_all(self.ev.set_offered(self._clock.sim(now), self.offered_a))

    def _note_all(self, events: list[EvEvent]) -> None:
        # Each with the meter as it stood at the event, not at the end of the step:
        # a coarse step may hold a plug-in and the charging that followed it.
        for event in events:
            self._note(event.activity.value, event.energy_wh, event.sim_time)

    def _note(self, kind: str, energy_wh: float | None = None, sim_time: float | None = None) -> None:
        energy = self.ev.energy_wh if energy_wh is None else energy_wh
        at = self.ev.sim_time if sim_time is None else sim_time
        self._emit(SlaveEvent(kind, self.connector, self.unit, self._energy_register(energy), at))

    def _store(self, address: int, words: Sequence[int]) -> None:
        for i, word in enumerate(words):
            self._holding[address + i] = word

    def _readable(self, table: Table, address: int) -> bool:
        in_block = any(b.covers(table, address, 1) for b in self.profile.blocks)
        return in_block or (table is Table.HOLDING and address in self._writable)

    def _image(self, table: Table) -> dict[int, int]:
        """The words of every modelled value in `table`, as they read right now."""
        image: dict[int, int] = {}
        for spec in self.profile.values.values():
            if spec.table is not table:
                continue
            if spec.count is not None:
                # While an EV is plugged in (plug-in to unplug) the outlet shows the tag it presented.
                tag = self.ev.ev.id_tag if spec.name == "id_tag" and self.ev.ev is not None else None
                words = encode_string(tag, spec.count)
                image.update(zip(range(spec.address, spec.address + spec.count), words, strict=True))
                continue
            value = self._model_value(spec)
            if value is None:
                continue
            for i, word in enumerate(_encode_clamped(spec, value)):
                image[spec.address + i] = word
        return image

    def _model_value(self, spec: ValueSpec) -> float | None:
        """The engineering value of a profile value; None leaves the register as stored (holding) or 0."""
        ev = self.ev
        if spec.name == "state":
            return self._states[self.pilot_code()] * spec.scale
        if spec.name == "energy":
            return ev.energy_wh
        if spec.name == "power":
            return ev.power_w
        if spec.name.startswith("current_l"):
            return ev.currents_a[int(spec.name[-1]) - 1]
        if spec.name.startswith("voltage_l"):
            return self._voltage(int(spec.name[-1]))
        if spec.name in ROLES or spec.table is Table.HOLDING:
            return None
        if spec.name in _PLAUSIBLE:
            return _PLAUSIBLE[spec.name]
        if spec.enum:
            return min(k for k in spec.enum if isinstance(k, int)) * spec.scale
        if spec.unit in ("°C", "C", "degC"):
            return _PCB_TEMPERATURE_C
        return None

    def _voltage(self, line: int) -> float:
        """~230 V on the phases the EV uses while the contactor is closed, a few volts otherwise.

        A slow deterministic wobble (no random draw) keeps a run reproducible.
        """
        n = self.ev.used_phases
        closed = self.ev.draw_a > 0 and (line == 1 or n >= 3)
        if not closed:
            return _IDLE_PHASE_V
        return 230.0 + 3.0 * math.sin(self.ev.sim_time / 97.0 + line)


def _encode_clamped(spec: ValueSpec, value: float) -> list[int]:
    """encode_value, but a value beyond the register's range reads as its limit instead of failing the poll.

    The limit stops one short of the device's "not available" value where that is the limit (0xFFFFFFFF).
    """
    bits = 16 * spec.type.words
    signed = spec.type.value.startswith("i")
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    try:
        words = encode_value(spec, value)
    except ValueError:
        words = encode_raw(high if value / spec.scale > 0 else low, spec.type, spec.word_order)
    raw = decode_raw(words, spec.type, spec.word_order)
    if raw in spec.invalid and spec.type not in (DataType.F32, DataType.F64):
        words = encode_raw(raw - 1 if raw == high else raw + 1, spec.type, spec.word_order)
    return words

