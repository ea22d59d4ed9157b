"""The cluster's share of the site supply, per connector: load_sharing's decision, applied safely.

gateway.load_sharing decides what each charging connector may draw so that the
sum stays within the site limit. The slaves, though, are written one at a time
as each is polled: if one connector's current went up before another's came
down, the two together would be above the limit for a poll period. So a
connector is given its grant only as far as the currents the *other* slaves
offer right now leave room on its phases; a decrease always goes through at
once, and an increase waits until the others have come down.

It also works out each slave's fail-safe current: what it falls back to when
the master goes silent. All slaves on a phase fail safe together, so each gets
the phase limit divided by their number.

Pure: the daemon hands in the monotonic time, the connectors' demands and the
currents the slaves offer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.load_sharing import PHASES, Allocation, Demand, LoadSharer, SharingPolicy, SnapshotError

_STEP_A = 0.1  # the resolution of the slaves' current setpoints
# Every connector's poll asks for its share. The whole site is decided again at most this often
# (turns, give-back, what the cars draw), and at once when a car comes or goes, a backend limit
# changes or the station cap moves: the rest of the time the polls reuse the last decision.
REALLOCATE_S = 1.0


@dataclass(frozen=True)
class Outlet:
    """What the site needs to know of one connector: the site phases it loads and its current range."""

    connector_id: int
    phases: tuple[int, ...]  # site phases, in the order of the outlet's own phases
    min_a: float
    max_a: float


class SiteLoad:
    """Grants within the site limit, for a fixed set of outlets."""

    def __init__(self, outlets: Iterable[Outlet], phase_limit_a: tuple[float, float, float] | None, rotation_s: float) -> None:
        self.outlets = {o.connector_id: o for o in outlets}
        if phase_limit_a is None:
            # No site fuse: only a ChargePointMaxProfile can constrain; every outlet at its max fits.
            total = tuple(sum(o.max_a for o in self.outlets.values() if p in o.phases) for p in PHASES)
            phase_limit_a = (total[0], total[1], total[2])
        self.policy = SharingPolicy(phase_limit_a=phase_limit_a, rotation_s=rotation_s, step_a=_STEP_A)
        self.sharer = LoadSharer(self.policy)
        self.allocation: Allocation | None = None  # the last decision, for status
        self._decided: tuple[float, object] | None = None  # when, and for which demands, it was made

    def snapshot(self, now: float) -> dict[str, object]:
        """Turns, queue and give-back caps, to keep across a restart."""
        return self.sharer.to_json(now)

    def restore(self, data: object, now: float) -> None:
        """Take up the turns kept before a restart; raises SnapshotError if they cannot be read."""
        if not isinstance(data, Mapping):
            raise SnapshotError(f"not a load-sharing snapshot: {data!r}")
        self.sharer = LoadSharer.from_json(data, now, self.policy)

    def drawn(self, connector_id: int, currents: tuple[float | None, float | None, float | None]) -> tuple[float, float, float] | None:
        """An outlet's measured currents moved onto the site phases; None when it measures none."""
        if all(c is None for c in currents):
            return None
        site = [0.0, 0.0, 0.0]
        for own, site_phase in enumerate(self.outlets[connector_id].phases):
            site[site_phase - 1] = max(0.0, currents[own] or 0.0)
        return (site[0], site[1], site[2])

    def allowed_a(
        self,
        connector_id: int,
        now: float,
        demands: Sequence[Demand],
        offered_a: Mapping[int, float],
        station_cap_a: float | None,
    ) -> float:
        """What `connector_id` may offer now: its grant, within the room the other slaves' offers leave.

        offered_a: the current each other slave offers now (0 when paused; its max when unknown).
        Below the outlet's minimum the answer is 0 (pause, IEC 61851-1: no less than 6 A).
        """
        shape = (station_cap_a, [(d.connector_id, d.wants_current, d.max_a) for d in demands])
        if self._decided is None or self._decided[1] != shape or now - self._decided[0] >= REALLOCATE_S:
            self.allocation = self.sharer.allocate(now, demands, station_cap_a)
            self._decided = (now, shape)
        assert self.allocation is not None
        grant = self.allocation.amps(connector_id) if connector_id in self.allocation.grants else 0.0
        outlet = self.outlets[connector_id]
        room = min(
            self.allocation.limit_a[p - 1]
            - sum(a for c, a in offered_a.items() if c != connector_id and p in self.outlets[c].phases)
            for p in outlet.phases
        )
        allowed = _floor_step(min(grant, room))
        return allowed if allowed >= outlet.min_a else 0.0

    def why(self, connector_id: int, allowed_a: float) -> str:
        """Why a connector got `allowed_a` at the last decision, for the technician's log."""
        grant = self.allocation.grants.get(connector_id) if self.allocation is not None else None
        if grant is None:
            return "-"
        if allowed_a < grant.amps - _STEP_A / 2:
            return f"{grant.reason.value}; {grant.amps:.1f} A once the others have come down"
        return grant.reason.value

    def failsafe_a(self, connector_id: int, configured_a: float | None) -> float:
        """The fail-safe current of an outlet: every outlet on a phase at it together stay within the limit.

        The configured value, where there is one, can only lower it. 0 (pause) when it is below the minimum.
        """
        outlet = self.outlets[connector_id]
        share = min(
            self.policy.phase_limit_a[p - 1] / sum(1 for o in self.outlets.values() if p in o.phases)
            for p in outlet.phases
        )
        amps = _floor_step(min(share, outlet.max_a, configured_a if configured_a is not None else math.inf))
        return amps if amps >= outlet.min_a else 0.0


def _floor_step(amps: float) -> float:
    return max(0.0, round(math.floor(amps / _STEP_A + 1e-9) * _STEP_A, 1))
