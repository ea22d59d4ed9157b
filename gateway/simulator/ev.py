"""The simulated electric vehicle at one outlet, pure: no I/O, time comes in as `now`.

`now` is simulated seconds. Each outlet cycles through

    away --(idle time)--> plugged (pilot B) --(a few s)--> requesting (pilot C)
    --(wanted energy taken)--> done (pilot B, SuspendedEV) --(a few min)--> away

While requesting, the EV draws min(offered current, its own maximum) on each
of its phases; with no current offered (the EVSE pauses it: pilot C1) it draws
nothing and waits. Energy is integrated exactly: power only changes at
transitions and at `set_offered`, so the model advances from event to event
and never accumulates step errors.

Every random draw comes from the outlet's own `random.Random`, made only at
transitions, so a seeded run replays exactly given the same offered currents at
the same simulated times.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

NOMINAL_VOLTAGE_V = 230.0  # IEC 60038 low-voltage nominal, phase to neutral

# Real EV on-board chargers: (phases, max current A) with rough market weights.
# 1 x 16 A: older plug-in hybrids; 3 x 16 A: most 11 kW BEVs; 32 A: 7.4 / 22 kW chargers.
_EV_KINDS: tuple[tuple[tuple[int, float], float], ...] = (
    ((1, 16.0), 0.25),
    ((1, 32.0), 0.10),
    ((3, 16.0), 0.50),
    ((3, 32.0), 0.15),
)
_PLUG_TO_REQUEST_S = (2.0, 10.0)  # the EV wakes up and asks for energy a few seconds after plug-in
_DONE_TO_UNPLUG_S = (60.0, 600.0)  # the driver comes back a few minutes after the car is full


class EvPhase(enum.Enum):
    AWAY = "away"  # no vehicle (pilot A)
    PLUGGED = "plugged"  # connected, not yet asking for energy (pilot B)
    REQUESTING = "requesting"  # asking for energy (pilot C); charging if current is offered
    DONE = "done"  # has taken what it wanted, still connected (pilot B)


class Activity(enum.Enum):
    """What an observer sees at the outlet; each change is an event."""

    UNPLUGGED = "unplug"
    PLUGGED = "plug"
    CHARGING = "charging"  # C2 with current flowing
    PAUSED = "paused"  # C1: the EV asks, the EVSE offers no current
    SUSPENDED = "suspended"  # B after charging: the EV is full (SuspendedEV)


@dataclass(frozen=True)
class EvSpec:
    """One visiting vehicle."""

    phases: int  # 1 or 3; a 1-phase EV uses L1
    max_current_a: float
    wanted_wh: float
    id_tag: str | None = None  # the RFID card the driver presents at the outlet; None: none


@dataclass(frozen=True)
class EvEvent:
    """The outlet's activity changed at `sim_time`; `energy_wh` is the meter at that instant (model value)."""

    activity: Activity
    sim_time: float
    energy_wh: float


@dataclass(frozen=True)
class EvTiming:
    """The random ranges of the model, in simulated seconds and kWh (from SimulatorSettings)."""

    idle_s: tuple[float, float] = (300.0, 3600.0)
    session_kwh: tuple[float, float] = (3.0, 30.0)


class EvModel:
    """The vehicle side of one outlet and the outlet's energy meter.

    The EVSE side (what current is offered) is set from outside with
    `set_offered`; the slave does that when the master writes the current
    limit or the watchdog fails safe.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        timing: EvTiming = EvTiming(),
        outlet_phases: int = 3,
        start_energy_wh: float = 0.0,
        now: float = 0.0,
        offered_a: float = 0.0,
        id_tags: Sequence[str] = (),
    ) -> None:
        if outlet_phases not in (1, 3):
            raise ValueError(f"an outlet has 1 or 3 phases, not {outlet_phases}")
        for name, (low, high) in (("idle_s", timing.idle_s), ("session_kwh", timing.session_kwh)):
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a range 0 <= low <= high, got {(low, high)}")
        self._rng = rng
        self._timing = timing
        self.id_tags = tuple(id_tags)  # each arriving EV's driver presents one of these; none -> no tag
        self._outlet_phases = outlet_phases
        self.energy_wh = float(start_energy_wh)
        self.offered_a = max(0.0, offered_a)
        self.phase = EvPhase.AWAY
        self.ev: EvSpec | None = None
        self._t = now
        self._session_wh = 0.0  # energy taken by the current EV
        self._next_at: float | None = now + rng.uniform(*timing.idle_s)
        self._activity = Activity.UNPLUGGED

    # --- what the outlet shows ------------------------------------------------

    @property
    def sim_time(self) -> float:
        return self._t

    @property
    def draw_a(self) -> float:
        """Current per used phase, A."""
        if self.phase is not EvPhase.REQUESTING or self.ev is None or self.offered_a <= 0:
            return 0.0
        return min(self.offered_a, self.ev.max_current_a)

    @property
    def used_phases(self) -> int:
        return 0 if self.ev is None else min(self.ev.phases, self._outlet_phases)

    @property
    def currents_a(self) -> tuple[float, float, float]:
        draw, n = self.draw_a, self.used_phases
        return (draw if n >= 1 else 0.0, draw if n >= 3 else 0.0, draw if n >= 3 else 0.0)

    @property
    def power_w(self) -> float:
        return self.draw_a * NOMINAL_VOLTAGE_V * self.used_phases

    @property
    def activity(self) -> Activity:
        return self._activity

    # --- driving the model ------------------------------------------------------

    def advance(self, now: float) -> list[EvEvent]:
        """Move to simulated time `now`, integrating energy; the activity changes on the way, in order."""
        if now < self._t:
            raise ValueError(f"time went back: {now} < {self._t}")
        events: list[EvEvent] = []
        while (at := self._transition_time()) is not None and at <= now:
            self._integrate(at)
            self._transition(at)
            self._note_activity(events)
        self._integrate(now)
        return events

    def set_offered(self, now: float, amperes: float) -> list[EvEvent]:
        """The EVSE now offers `amperes` per phase (0 = paused). Advances to `now` first."""
        events = self.advance(now)
        self.offered_a = max(0.0, amperes)
        self._note_activity(events)
        return events

    # --- internals -----------------------------------------------------------------

    def _transition_time(self) -> float | None:
        if self.phase is EvPhase.REQUESTING:
            power = self.power_w
            if power <= 0 or self.ev is None:
                return None  # paused: waits for current as long as it takes
            remaining = max(0.0, self.ev.wanted_wh - self._session_wh)
            return self._t + remaining / power * 3600.0
        return self._next_at

    def _integrate(self, to: float) -> None:
        dt = to - self._t
        if dt > 0 and self.ev is not None:
            wh = self.power_w * dt / 3600.0
            if self.phase is EvPhase.REQUESTING:
                wh = min(wh, self.ev.wanted_wh - self._session_wh)  # float guard at the finish instant
            self._session_wh += wh
            self.energy_wh += wh
        self._t = max(self._t, to)

    def _transition(self, at: float) -> None:
        rng = self._rng
        if self.phase is EvPhase.AWAY:
            (phases, max_a), = rng.choices([k for k, _ in _EV_KINDS], weights=[w for _, w in _EV_KINDS])
            wanted_wh = rng.uniform(*self._timing.session_kwh) * 1000.0
            # Drawn only when there are tags, so a run without tags replays the same as before tags existed.
            tag = rng.choice(self.id_tags) if self.id_tags else None
            self.ev = EvSpec(phases, max_a, wanted_wh, tag)
            self._session_wh = 0.0
            self.phase = EvPhase.PLUGGED
            self._next_at = at + rng.uniform(*_PLUG_TO_REQUEST_S)
        elif self.phase is EvPhase.PLUGGED:
            self.phase = EvPhase.REQUESTING
            self._next_at = None
        elif self.phase is EvPhase.REQUESTING:
            self.phase = EvPhase.DONE
            self._next_at = at + rng.uniform(*_DONE_TO_UNPLUG_S)
        else:
            self.phase = EvPhase.AWAY
            self.ev = None
            self._next_at = at + rng.uniform(*self._timing.idle_s)

    def _current_activity(self) -> Activity:
        if self.phase is EvPhase.AWAY:
            return Activity.UNPLUGGED
        if self.phase is EvPhase.PLUGGED:
            return Activity.PLUGGED
        if self.phase is EvPhase.DONE:
            return Activity.SUSPENDED
        return Activity.CHARGING if self.draw_a > 0 else Activity.PAUSED

    def _note_activity(self, events: list[EvEvent]) -> None:
        activity = self._current_activity()
        if activity is not self._activity:
            self._activity = activity
            events.append(EvEvent(activity, self._t, self.energy_wh))
