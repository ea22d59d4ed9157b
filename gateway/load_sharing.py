"""Site load management: share the site's per-phase current limit among the charging connectors.

This is why a master exists: its slaves sit behind one main fuse (say 63 A per
phase), and the cars plugged into them must never draw more than that together.
Every few seconds the caller passes one `Demand` per connector and gets back an
`Allocation`: the current each connector may offer (0 A = pause) and why, for
the technician.

What the sharer does, in order:

1. Limit. Each phase's limit is the configured site limit, lowered by the
   ChargePointMaxProfile limit the backend sent (OCPP 1.6 §3.13.1: that profile
   caps the whole charge point, which for the backend is the whole cluster).
2. Who charges. Each car needs at least its minimum (6 A by default: IEC 61851-1
   Annex A, the pilot cannot signal less than 6 A and still allow charging).
   If the minimums of everyone fit, everyone charges. If not, a subset does
   and the rest is paused, rotating like KEBA's x-series master: turns change
   at common boundaries every `rotation_s`. A car that starts keeps charging
   at least `rotation_s`, up to the next boundary (no flapping, and no car is
   paused for seconds only because turns that began apart end apart). Only at
   a boundary do waiting cars take the place of running ones: the cars paused
   longest start first and the cars that charged longest are paused. Between
   boundaries a waiting car starts only into free room (a car left). A
   waiting car that does not fit reserves its phases: no car queued behind
   it may start on them, so the turns on those phases run out and it gets in
   within two rotation periods once it is first in the queue (no starvation,
   even for a 3-phase car among 1-phase ones).
3. How much. The running cars share what is left by progressive filling
   (max-min fairness, the multi-phase form of water-filling): all cars are
   raised together; a car stops rising at its own max, and the cars on a
   phase that is full stop there while the others keep rising.
4. Give-back. A car that draws clearly less than it is allowed, for a while,
   is capped at what it draws plus some headroom, and the rest goes to the
   others; when it draws near its cap again the cap is raised step by step.
   A car that cannot even use its minimum (full battery) also loses the
   protection of its turn, so a waiting car can take its place; once paused
   for that, it starts again only into free room until `yielded_retry_s` has
   passed (otherwise full cars would take turns pausing one another).
5. Stability. Changes smaller than `hysteresis_a` are suppressed when that
   keeps every phase within its limit.

The per-phase sums are computed in whole units of `step_a` (0.1 A by default,
the resolution of the chargers' current registers), so "never above the
limit" holds exactly, not up to rounding. Safety comes before stability: when
the limit drops, cars are paused at once, even within their turn.

Pure: time is a monotonic float passed in. The state (turns, queue, give-back)
survives a restart through `to_json(now)` / `from_json(data, now)`, which store
ages rather than monotonic instants, since the monotonic clock restarts at boot.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.errors import GatewayError

PHASES = (1, 2, 3)
Triple = tuple[float, float, float]

_EPS = 1e-9  # float slack when converting amps to whole steps, so 6.0 A stays 60 steps and not 59


class LoadSharingError(GatewayError):
    """A policy, demand or snapshot the sharer cannot work with (a bug or a bad config value)."""


class SnapshotError(LoadSharingError):
    """A stored snapshot is malformed; the caller should start from a fresh sharer."""


class Reason(enum.Enum):
    """Why a connector got the current it got; shown to the technician."""

    SHARE = "share"  # its fair share of what is left
    CAPPED_BY_MAX = "capped-by-max"  # its own max (installation, profile, backend limit); 0 A if max < min
    GAVE_BACK = "gave-back"  # capped near what it draws, the rest to the others; at 0 A: it drew less than its minimum
    MIN_NOT_AVAILABLE_PAUSED = "min-not-available-paused"  # the limit cannot give it its minimum
    ROTATION = "rotation"  # paused, waiting for its turn
    IDLE = "idle"  # does not want current (no car, not authorised, session over)


@dataclass(frozen=True)
class Demand:
    """One connector as the sharer sees it.

    wants_current: a car is plugged and authorised and its session is not over,
    whether or not it is paused right now (a car paused by the sharer still wants
    current). max_a is the lowest of the installation max, the device profile max
    and the backend's per-connector limit (TxProfile/TxDefaultProfile). drawn_a is
    the measured current per site phase L1..L3, None when unknown. since is the
    monotonic time the car started wanting current: it orders the queue first
    come, first served when the sharer first sees the car.
    """

    connector_id: int
    phases: frozenset[int]
    min_a: float = 6.0
    max_a: float = 32.0
    wants_current: bool = True
    drawn_a: Triple | None = None
    since: float = 0.0

    def __post_init__(self) -> None:
        if not self.phases or not self.phases <= set(PHASES):
            raise LoadSharingError(
                f"connector {self.connector_id}: phases must be a non-empty subset of {{1, 2, 3}}, "
                f"got {set(self.phases)}"
            )
        if not (math.isfinite(self.min_a) and self.min_a > 0):
            raise LoadSharingError(f"connector {self.connector_id}: min_a must be > 0 A, got {self.min_a}")
        if not (math.isfinite(self.max_a) and self.max_a >= 0):
            raise LoadSharingError(f"connector {self.connector_id}: max_a must be >= 0 A, got {self.max_a}")
        if not math.isfinite(self.since):
            raise LoadSharingError(f"connector {self.connector_id}: since must be finite, got {self.since}")
        if self.drawn_a is not None and (
            len(self.drawn_a) != 3 or not all(math.isfinite(a) and a >= 0 for a in self.drawn_a)
        ):
            raise LoadSharingError(
                f"connector {self.connector_id}: drawn_a must be three amps >= 0, got {self.drawn_a}"
            )

    def measured_a(self) -> float | None:
        """The car's current: the highest of the phases it loads (a car draws the same on each)."""
        if self.drawn_a is None:
            return None
        return max(self.drawn_a[p - 1] for p in self.phases)


@dataclass(frozen=True)
class SharingPolicy:
    """The site's limits and the sharer's tuning; one per master, from the config."""

    phase_limit_a: Triple  # the main fuse (or the part of it given to charging), per phase L1..L3
    rotation_s: float = 900.0  # a turn; KEBA rotates every 15 minutes
    step_a: float = 0.1  # resolution of the chargers' current setpoint
    hysteresis_a: float = 0.5  # smaller changes are suppressed
    give_back_margin_a: float = 3.0  # drawing this much below the allocation counts as "draws less"
    give_back_after_s: float = 60.0  # ... for this long: long enough for a car to ramp up after a change
    give_back_headroom_a: float = 2.0  # the cap is the measured current plus this
    ramp_near_a: float = 1.0  # drawing within this of the allocation counts as "wants more"
    ramp_step_a: float = 4.0  # the cap is raised by this each time
    yielded_retry_s: float = (
        3600.0  # a car paused for drawing nothing rejoins the queue after this (a charge timer may have fired)
    )

    def __post_init__(self) -> None:
        if len(self.phase_limit_a) != 3 or not all(math.isfinite(a) and a >= 0 for a in self.phase_limit_a):
            raise LoadSharingError(f"phase_limit_a must be three amps >= 0, got {self.phase_limit_a}")
        for name in ("rotation_s", "step_a", "give_back_after_s", "ramp_step_a", "ramp_near_a", "yielded_retry_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise LoadSharingError(f"{name} must be > 0, got {value}")
        if not (math.isfinite(self.hysteresis_a) and self.hysteresis_a >= 0):
            raise LoadSharingError(f"hysteresis_a must be >= 0 A, got {self.hysteresis_a}")
        # A capped car must not look like it draws less (headroom <= margin), or its cap
        # would ratchet down every period; and must not look like it wants more
        # (near < headroom), or the cap would be lifted at once.
        if not (self.ramp_near_a < self.give_back_headroom_a <= self.give_back_margin_a):
            raise LoadSharingError(
                "need ramp_near_a < give_back_headroom_a <= give_back_margin_a, got "
                f"{self.ramp_near_a}, {self.give_back_headroom_a}, {self.give_back_margin_a}"
            )

    def limits_a(self, station_cap_a: float | None) -> Triple:
        """The effective per-phase limit: the site limit, lowered by the ChargePointMaxProfile limit."""
        if station_cap_a is None:
            return self.phase_limit_a
        if math.isnan(station_cap_a):
            raise LoadSharingError("station_cap_a is NaN")
        cap = max(0.0, station_cap_a)
        l1, l2, l3 = (min(a, cap) for a in self.phase_limit_a)
        return (l1, l2, l3)


@dataclass(frozen=True)
class Grant:
    """What one connector may offer: 0 A (paused) or a current within its [min, max]."""

    amps: float
    reason: Reason


@dataclass(frozen=True)
class Allocation:
    """The outcome of one `LoadSharer.allocate` call."""

    grants: Mapping[int, Grant]  # by connector id, one per demand
    limit_a: Triple  # the effective per-phase limit it was computed against
    load_a: Triple  # the per-phase sum of the granted currents

    def amps(self, connector_id: int) -> float:
        return self.grants[connector_id].amps

    def reason(self, connector_id: int) -> Reason:
        return self.grants[connector_id].reason


@dataclass
class _Track:
    """The sharer's memory of one connector that wants current."""

    running: bool = False
    units: int = 0  # last allocation, in steps
    turn_start: float = 0.0  # when its current turn began (running)
    waiting_since: float = 0.0  # its place in the queue (paused)
    low_since: float | None = None  # since when it draws clearly less than allowed
    cap_a: float | None = None  # give-back cap
    yielded_at: float | None = None  # when it was paused for drawing less than its minimum


class _Group(enum.IntEnum):
    """A car's claim to a place, strongest first."""

    TURN = 0  # running, within its turn (or between boundaries)
    QUEUED = 1  # waiting for a turn
    TURN_OVER = 2  # running, its turn over at this boundary (or it draws less than its minimum): stays if there is room
    YIELDED = 3  # paused for drawing less than its minimum: starts only into free room


@dataclass
class _Car:
    """One running candidate, in steps, for the filling."""

    cid: int
    phases: frozenset[int]
    lo: int
    hi: int
    units: int = field(default=0)


class LoadSharer:
    """Keeps turns, the queue and give-back caps between `allocate` calls."""

    def __init__(self, policy: SharingPolicy, *, boundary: float = 0.0) -> None:
        self.policy = policy
        self._boundary = boundary  # one rotation boundary; the others are every rotation_s from it
        self._last_call: float | None = None  # to see when a boundary is crossed
        self._tracks: dict[int, _Track] = {}

    def _turn_over(self, now: float, track: _Track) -> bool:
        """Whether a running car's turn is over: the first boundary rotation_s or more after its start has passed."""
        period = self.policy.rotation_s
        end = self._boundary + math.ceil((track.turn_start + period - self._boundary) / period - _EPS) * period
        return now >= end

    # --- the decision ------------------------------------------------------------

    def allocate(self, now: float, demands: Iterable[Demand], station_cap_a: float | None = None) -> Allocation:
        """Decide every connector's current for now (monotonic seconds)."""
        if not math.isfinite(now):
            raise LoadSharingError(f"now must be finite, got {now}")
        by_id: dict[int, Demand] = {}
        for d in demands:
            if d.connector_id in by_id:
                raise LoadSharingError(f"connector {d.connector_id} appears twice in one allocate call")
            by_id[d.connector_id] = d
        period = self.policy.rotation_s
        # Rotate on the first call at or after a boundary, even if calls skipped the boundary itself.
        rotating = self._last_call is None or math.floor((now - self._boundary) / period + _EPS) > math.floor(
            (self._last_call - self._boundary) / period + _EPS
        )
        self._last_call = now
        limit_a = self.policy.limits_a(station_cap_a)
        limits = [self._floor(a) for a in limit_a]
        wanting = {cid: d for cid, d in by_id.items() if d.wants_current}
        # A car that left (or whose session ended) is forgotten: its turn and queue place go with it.
        self._tracks = {cid: t for cid, t in self._tracks.items() if cid in wanting}
        for cid, d in wanting.items():
            if cid not in self._tracks:
                self._tracks[cid] = _Track(waiting_since=min(d.since, now))
            self._update_give_back(now, d, self._tracks[cid])

        grants: dict[int, Grant] = {cid: Grant(0.0, Reason.IDLE) for cid, d in by_id.items() if not d.wants_current}
        cars: dict[int, _Car] = {}
        for cid, d in wanting.items():
            lo, hi = self._ceil(d.min_a), self._floor(d.max_a)
            track = self._tracks[cid]
            if track.cap_a is not None:
                hi = min(hi, max(lo, self._floor(track.cap_a)))
            if hi < lo:
                grants[cid] = Grant(0.0, Reason.CAPPED_BY_MAX)  # the backend or installation limit is below the minimum
            elif any(lo > limits[p - 1] for p in d.phases):
                grants[cid] = Grant(0.0, Reason.MIN_NOT_AVAILABLE_PAUSED)
            else:
                cars[cid] = _Car(cid, d.phases, lo, hi)

        groups = {cid: self._group(now, rotating, wanting[cid], self._tracks[cid]) for cid in cars}
        running = self._select(self._queue_order(groups, wanting, cars), groups, limits)
        self._fill(running, limits)
        self._steady(running, limits)

        run_ids = {c.cid: c for c in running}
        for cid, demand in wanting.items():
            track = self._tracks[cid]
            car = run_ids.get(cid)
            if car is not None:
                if not track.running:
                    track.running, track.turn_start = True, now
                    track.low_since = track.cap_a = track.yielded_at = None
                track.units = car.units
                grants[cid] = Grant(self._amps(car.units), self._running_reason(car, demand))
                continue
            if cid in cars:
                grants[cid] = Grant(0.0, self._paused_reason(groups[cid], demand, track))
                if track.running and self._yields_turn(demand, track):
                    track.yielded_at = now
            if track.running:
                track.running, track.waiting_since, track.units = False, now, 0
                track.low_since = track.cap_a = None

        load = [0, 0, 0]
        for car in running:
            for p in car.phases:
                load[p - 1] += car.units
        l1, l2, l3 = (self._amps(u) for u in load)
        return Allocation(grants={cid: grants[cid] for cid in sorted(grants)}, limit_a=limit_a, load_a=(l1, l2, l3))

    def _update_give_back(self, now: float, demand: Demand, track: _Track) -> None:
        """Lower the cap of a car that draws less than it is allowed; raise it when it draws near it again."""
        measured = demand.measured_a()
        if not track.running or measured is None:
            # Without a measurement there is no evidence the car needs less: give it its share.
            track.low_since = track.cap_a = None
            return
        p = self.policy
        allocated = self._amps(track.units)
        if measured < allocated - p.give_back_margin_a:
            if track.low_since is None:
                track.low_since = now
            elif now - track.low_since >= p.give_back_after_s:
                track.cap_a = max(demand.min_a, measured + p.give_back_headroom_a)
                track.low_since = now  # a car that keeps tapering is capped again after another period
            return
        track.low_since = None
        if track.cap_a is not None and measured >= allocated - p.ramp_near_a:
            track.cap_a += p.ramp_step_a
            if track.cap_a >= demand.max_a:
                track.cap_a = None

    def _yields_turn(self, demand: Demand, track: _Track) -> bool:
        """A capped car that cannot use even its minimum (a full battery) holds a slot for nothing."""
        measured = demand.measured_a()
        return (
            track.cap_a is not None
            and measured is not None
            and measured + self.policy.give_back_headroom_a < demand.min_a
        )

    def _group(self, now: float, rotating: bool, demand: Demand, track: _Track) -> _Group:
        if track.running:
            if (rotating and self._turn_over(now, track)) or self._yields_turn(demand, track):
                return _Group.TURN_OVER
            return _Group.TURN
        if track.yielded_at is not None and now - track.yielded_at < self.policy.yielded_retry_s:
            return _Group.YIELDED
        return _Group.QUEUED

    def _queue_order(
        self, groups: Mapping[int, _Group], wanting: Mapping[int, Demand], cars: Mapping[int, _Car]
    ) -> list[_Car]:
        """Cars in the order they claim a place: turns, the queue (paused longest first), turns over, yielded cars."""

        def key(car: _Car) -> tuple[_Group, bool, float, float, int]:
            track, demand, group = self._tracks[car.cid], wanting[car.cid], groups[car.cid]
            if group in (_Group.TURN, _Group.TURN_OVER):
                # If some must go: first the cars that draw less than their minimum, then the
                # ones that charged longest in their turn (newest turns first).
                return (group, self._yields_turn(demand, track), -track.turn_start, demand.since, car.cid)
            return (group, False, track.waiting_since, demand.since, car.cid)

        return sorted(cars.values(), key=key)

    @staticmethod
    def _select(order: list[_Car], groups: Mapping[int, _Group], limits: list[int]) -> list[_Car]:
        """Greedy admission at the minimum, in queue order, with reservations against starvation."""
        used = [0, 0, 0]
        reserved: set[int] = set()
        running: list[_Car] = []
        for car in order:
            starting = groups[car.cid] in (_Group.QUEUED, _Group.YIELDED)
            if starting and car.phases & reserved:
                continue  # a car queued ahead of it is waiting for these phases
            if all(used[p - 1] + car.lo <= limits[p - 1] for p in car.phases):
                for p in car.phases:
                    used[p - 1] += car.lo
                car.units = car.lo
                running.append(car)
            elif groups[car.cid] is _Group.QUEUED:
                reserved |= car.phases
        return running

    @staticmethod
    def _fill(cars: list[_Car], limits: list[int]) -> None:
        """Progressive filling from the minimums: raise all together; freeze cars at their max or on a full phase."""
        frozen_load = [0, 0, 0]
        active: list[_Car] = []
        for c in cars:
            c.units = c.lo
            if c.hi > c.lo:
                active.append(c)
            else:
                for p in c.phases:
                    frozen_load[p - 1] += c.units

        def load_at(level: int) -> list[int]:
            load = list(frozen_load)
            for c in active:
                for p in c.phases:
                    load[p - 1] += max(c.lo, min(c.hi, level))
            return load

        level = 0
        while active:
            low, high = level, max(c.hi for c in active)
            while low < high:  # the highest level at which every phase still fits
                mid = (low + high + 1) // 2
                if all(u <= lim for u, lim in zip(load_at(mid), limits, strict=True)):
                    low = mid
                else:
                    high = mid - 1
            level = low
            load = load_at(level)
            rising = [sum(1 for c in active if p in c.phases and c.lo <= level < c.hi) for p in PHASES]
            # A phase that cannot give one more step to each car rising on it is full: its cars stop here.
            full = {p for p in PHASES if limits[p - 1] - load[p - 1] < rising[p - 1]}
            still = []
            for c in active:
                c.units = max(c.lo, min(c.hi, level))
                if c.units >= c.hi or c.phases & full:
                    for p in c.phases:
                        frozen_load[p - 1] += c.units
                else:
                    still.append(c)
            active = still
        # The steps a full phase could not spread evenly go one each, lowest first (queue order breaks ties).
        spare = [limits[i] - frozen_load[i] for i in range(3)]
        given = True
        while given:
            given = False
            for c in sorted(cars, key=lambda c: c.units):
                if c.units < c.hi and all(spare[p - 1] >= 1 for p in c.phases):
                    c.units += 1
                    for p in c.phases:
                        spare[p - 1] -= 1
                    given = True

    def _steady(self, running: list[_Car], limits: list[int]) -> None:
        """Keep the previous setpoint when the change is small and the phases allow it (no flapping)."""
        band = self._floor(self.policy.hysteresis_a)
        load = [0, 0, 0]
        for c in running:
            for p in c.phases:
                load[p - 1] += c.units
        # Suppressed rises free current, suppressed falls need it: rises first.
        for rising in (True, False):
            for c in running:
                track = self._tracks[c.cid]
                if not track.running or not c.lo <= track.units <= c.hi or track.units == c.units:
                    continue
                delta = track.units - c.units
                if abs(delta) >= band or (delta < 0) != rising:
                    continue
                if all(load[p - 1] + delta <= limits[p - 1] for p in c.phases):
                    for p in c.phases:
                        load[p - 1] += delta
                    c.units = track.units

    def _paused_reason(self, group: _Group, demand: Demand, track: _Track) -> Reason:
        if group is _Group.YIELDED or (track.running and self._yields_turn(demand, track)):
            return Reason.GAVE_BACK  # it gave its place back: it drew less than its minimum
        if group is _Group.TURN:
            return Reason.MIN_NOT_AVAILABLE_PAUSED  # shed within its turn: the limit dropped
        return Reason.ROTATION

    def _running_reason(self, car: _Car, demand: Demand) -> Reason:
        if car.units < car.hi:
            return Reason.SHARE
        if car.hi < self._floor(demand.max_a):
            return Reason.GAVE_BACK
        return Reason.CAPPED_BY_MAX

    # --- units -----------------------------------------------------------------------

    def _floor(self, amps: float) -> int:
        return math.floor(amps / self.policy.step_a + _EPS)

    def _ceil(self, amps: float) -> int:
        return math.ceil(amps / self.policy.step_a - _EPS)

    def _amps(self, units: int) -> float:
        return round(units * self.policy.step_a, 6)

    # --- persistence -------------------------------------------------------------------

    def to_json(self, now: float) -> dict[str, object]:
        """A plain-dict snapshot; times are stored as ages, as the monotonic clock restarts at boot."""
        connectors: dict[str, object] = {}
        for cid, t in sorted(self._tracks.items()):
            connectors[str(cid)] = {
                "running": t.running,
                "amps": self._amps(t.units),
                "turn_age_s": now - t.turn_start,
                "waiting_age_s": now - t.waiting_since,
                "low_age_s": None if t.low_since is None else now - t.low_since,
                "cap_a": t.cap_a,
                "yielded_age_s": None if t.yielded_at is None else now - t.yielded_at,
            }
        return {
            "version": 1,
            "next_boundary_in_s": (self._boundary - now) % self.policy.rotation_s,
            "connectors": connectors,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], now: float, policy: SharingPolicy) -> LoadSharer:
        """Rebuild a sharer from `to_json` output; the policy comes from the (possibly changed) config."""
        connectors, next_boundary = data.get("connectors"), data.get("next_boundary_in_s")
        if data.get("version") != 1 or not isinstance(connectors, dict) or not isinstance(next_boundary, int | float):
            raise SnapshotError(f"not a version 1 load-sharing snapshot: {data!r}")
        sharer = cls(policy, boundary=now + next_boundary)
        sharer._last_call = now  # the restart is no boundary: turns change at the next one
        for key, raw in connectors.items():
            try:
                cid = int(key)
                low_age, cap, yielded_age = raw["low_age_s"], raw["cap_a"], raw["yielded_age_s"]
                track = _Track(
                    running=bool(raw["running"]),
                    units=sharer._floor(float(raw["amps"])),
                    turn_start=now - float(raw["turn_age_s"]),
                    waiting_since=now - float(raw["waiting_age_s"]),
                    low_since=None if low_age is None else now - float(low_age),
                    cap_a=None if cap is None else float(cap),
                    yielded_at=None if yielded_age is None else now - float(yielded_age),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise SnapshotError(f"bad load-sharing snapshot entry {key!r}: {exc}") from exc
            sharer._tracks[cid] = track
        return sharer
