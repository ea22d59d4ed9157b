#!/usr/bin/env python3
"""A simulated day of site load sharing: is the per-phase limit ever exceeded, and what share does each car get?

Pure and accelerated: no chargers, no clock. The LoadSharer (the decision the
daemon's SiteLoad makes at most once a second) is called every --step seconds
of simulated time, with a simple EV model in the loop:

  arrivals    each free connector waits a random time (shorter by day) for its
              next car; the car stays 1 to 9 hours, then leaves, full or not
  car         1-phase (40 %) or 3-phase; a 1-phase car loads the site phase its
              connector's L1 is wired to (wiring rotated L1, L2, L3, L1, ...);
              it draws at most its own max (10, 13, 16 or 32 A), which may be
              below what it is allowed, so give-back has work to do
  battery     a need in kWh; above 80 % of it the car tapers linearly, and once
              it is met the car draws nothing (it stays plugged in)
  response    a car follows a new setpoint within the step (IEC 61851-1 gives it
              5 s to follow a lowered pilot); the sharer sees the draw of the
              previous step as its measurement
  backend     from 17:00 to 19:00 a ChargePointMaxProfile caps the site at
              --peak-cap amps per phase (evening peak), as a CSMS would

Printed: the safety figures that matter (the highest per-phase sum of the
allocations and of the modelled drawn currents, against the limit in force at
that step), then every session's share: energy, share of its need met, hours
charging, hours paused while it still needed energy, its longest pause, how
often it was paused and its shortest pause before a restart (flapping would
show as pauses much shorter than the rotation period; a pause cut short by a
car leaving or a full car giving its place back is expected). Exit status 1 if
any phase ever went above its limit.

Last, the cost on the poll path: every connector's poll asks SiteLoad for its
share (gateway/site_load.py), with the demands of all connectors; printed per
poll and per second of 16 connectors polled once a second each.

Run: .venv/bin/python bench/load_sharing.py [--seed 1] [--connectors 16] [--limit 63] [--hours 24]
                                            [--step 30] [--rotation 900] [--peak-cap 40]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.load_sharing import Allocation, Demand, LoadSharer, SharingPolicy
from gateway.site_load import Outlet, SiteLoad

VOLTS = 230.0  # phase-to-neutral, for energy
INSTALLATION_MAX_A = 32.0  # every connector's own max
TOLERANCE_A = 1e-6  # amps are floats of whole 0.1 A steps


@dataclass
class Session:
    """One car's visit to one connector, and what it got."""

    connector: int
    phases: frozenset[int]
    car_max_a: float
    need_kwh: float
    arrive_s: float
    leave_s: float
    delivered_kwh: float = 0.0
    charging_s: float = 0.0
    paused_s: float = 0.0  # paused while it still needed energy
    pause_run_s: float = 0.0
    longest_pause_s: float = 0.0
    pauses: int = 0  # times it was paused after charging
    shortest_restart_s: float = float("inf")  # the shortest pause that ended in a restart: flapping shows here
    drawn_a: float = 0.0  # per loaded phase, in the last step

    def accepts_a(self) -> float:
        """What the car would draw if allowed: its max, tapering above 80 % of its need, 0 once full."""
        done = self.delivered_kwh / self.need_kwh
        if done >= 1.0:
            return 0.0
        if done <= 0.8:
            return self.car_max_a
        return self.car_max_a * max(0.05, (1.0 - done) / 0.2)

    def demand(self, now: float) -> Demand:
        drawn = tuple(self.drawn_a if p in self.phases else 0.0 for p in (1, 2, 3))
        return Demand(
            self.connector, self.phases, 6.0, INSTALLATION_MAX_A, True, (drawn[0], drawn[1], drawn[2]), self.arrive_s
        )


@dataclass
class Figures:
    """The safety figures: the highest per-phase loads, and the worst margin to the limit in force."""

    max_alloc_a: list[float]
    max_drawn_a: list[float]
    worst_over_a: float  # highest (load - limit in force) seen; <= 0 means never above
    steps: int = 0


def arrival_gap_s(rng: random.Random, now: float) -> float:
    hour = (now / 3600.0) % 24
    mean_h = 0.75 if 7 <= hour < 19 else 5.0  # busy by day, quiet at night
    return rng.expovariate(1.0 / (mean_h * 3600.0))


def new_session(rng: random.Random, connector: int, now: float) -> Session:
    if rng.random() < 0.4:
        wired = (connector - 1) % 3 + 1  # rotated wiring: connector 1's L1 is L1, connector 2's is L2, ...
        phases, car_max = frozenset({wired}), rng.choice([16.0, 16.0, 32.0, 13.0])
    else:
        phases, car_max = frozenset({1, 2, 3}), rng.choice([16.0, 16.0, 13.0, 10.0, 32.0])
    return Session(connector, phases, car_max, rng.uniform(5.0, 50.0), now, now + rng.uniform(1.0, 9.0) * 3600.0)


def simulate(args: argparse.Namespace) -> tuple[list[Session], Figures]:
    rng = random.Random(args.seed)
    sharer = LoadSharer(SharingPolicy((args.limit, args.limit, args.limit), rotation_s=args.rotation))
    end = args.hours * 3600.0
    plugged: dict[int, Session] = {}
    next_arrival = {c: arrival_gap_s(rng, 0.0) for c in range(1, args.connectors + 1)}
    done: list[Session] = []
    figures = Figures([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], -args.limit)
    now = 0.0
    while now < end:
        for c in range(1, args.connectors + 1):
            session = plugged.get(c)
            if session is not None and now >= session.leave_s:
                done.append(plugged.pop(c))
                next_arrival[c] = now + arrival_gap_s(rng, now)
            elif session is None and now >= next_arrival[c]:
                plugged[c] = new_session(rng, c, now)
        hour = (now / 3600.0) % 24
        cap = args.peak_cap if 17 <= hour < 19 else None
        demands = [
            plugged[c].demand(now) if c in plugged else Demand(c, frozenset({1, 2, 3}), wants_current=False)
            for c in range(1, args.connectors + 1)
        ]
        alloc = sharer.allocate(now, demands, cap)
        step(args.step, plugged, alloc, figures)
        now += args.step
    done.extend(plugged.values())
    return sorted(done, key=lambda s: (s.arrive_s, s.connector)), figures


def step(step_s: float, plugged: dict[int, Session], alloc: Allocation, figures: Figures) -> None:
    """Let every car draw for one step, and record the phase loads against the limit in force."""
    drawn = [0.0, 0.0, 0.0]
    for session in plugged.values():
        amps, accepts = alloc.amps(session.connector), session.accepts_a()
        session.drawn_a = min(amps, accepts)
        session.delivered_kwh += session.drawn_a * VOLTS * len(session.phases) * step_s / 3.6e6
        if amps > 0:
            if session.pause_run_s > 0 and session.charging_s > 0:
                session.shortest_restart_s = min(session.shortest_restart_s, session.pause_run_s)
            session.charging_s += step_s
            session.pause_run_s = 0.0
        else:
            if session.pause_run_s == 0 and session.charging_s > 0:
                session.pauses += 1
            session.pause_run_s += step_s
            if accepts > 0:
                session.paused_s += step_s
                session.longest_pause_s = max(session.longest_pause_s, session.pause_run_s)
        for p in session.phases:
            drawn[p - 1] += session.drawn_a
    for i in range(3):
        figures.max_alloc_a[i] = max(figures.max_alloc_a[i], alloc.load_a[i])
        figures.max_drawn_a[i] = max(figures.max_drawn_a[i], drawn[i])
        figures.worst_over_a = max(
            figures.worst_over_a, alloc.load_a[i] - alloc.limit_a[i], drawn[i] - alloc.limit_a[i]
        )
    figures.steps += 1


def poll_cost(connectors: int, limit_a: float, seconds: int = 300) -> None:
    """What the site share costs the poll loop: each connector polled once a second, all of them charging.

    Against the same polls deciding the whole site every time (LoadSharer.allocate at each poll).
    """
    outlets = [Outlet(c, (1, 2, 3), 6.0, INSTALLATION_MAX_A) for c in range(1, connectors + 1)]

    def per_poll_ms(ask: Callable[[SiteLoad, int, float, list[Demand], dict[int, float]], float]) -> float:
        site = SiteLoad(outlets, (limit_a, limit_a, limit_a), rotation_s=900.0)
        offered = {o.connector_id: 0.0 for o in outlets}
        start = time.perf_counter()
        for second in range(seconds):
            for o in outlets:
                demands = [  # as the daemon builds them at each poll
                    Demand(x.connector_id, frozenset(x.phases), x.min_a, x.max_a, True, (8.0, 8.0, 8.0), 0.0) for x in outlets
                ]
                offered[o.connector_id] = ask(site, o.connector_id, second + o.connector_id / (connectors + 1), demands, offered)
        return (time.perf_counter() - start) / (seconds * connectors) * 1e3

    shared = per_poll_ms(lambda site, cid, now, demands, offered: site.allowed_a(cid, now, demands, offered, None))
    every = per_poll_ms(lambda site, cid, now, demands, offered: site.sharer.allocate(now, demands).amps(cid))
    print(
        f"\npoll path: {shared:.3f} ms per connector poll (its demands + SiteLoad.allowed_a), "
        f"{shared * connectors:.1f} ms per second for {connectors} connectors polled once a second; "
        f"deciding the whole site at every poll would take {every:.3f} ms ({every * connectors:.1f} ms per second)"
    )


def clock(seconds: float) -> str:
    return f"{int(seconds // 3600) % 24:02d}:{int(seconds % 3600 // 60):02d}"


def report(args: argparse.Namespace, sessions: list[Session], figures: Figures, wall_s: float) -> bool:
    """Print the tables; return whether the limit held."""
    held = figures.worst_over_a <= TOLERANCE_A
    print(
        f"Load sharing, simulated: {args.connectors} connectors, {args.limit:g} A per phase, "
        f"{args.hours:g} h in {args.step:g} s steps, rotation {args.rotation:g} s, "
        f"peak cap {args.peak_cap:g} A 17:00-19:00, seed {args.seed}"
    )
    per_call_ms = wall_s / max(1, figures.steps) * 1e3
    print(f"{figures.steps} allocate calls in {wall_s:.2f} s wall time ({per_call_ms:.2f} ms a call)\n")
    print("phase   site limit   max sum allocated   max sum drawn")
    for i in range(3):
        alloc_a, drawn_a = figures.max_alloc_a[i], figures.max_drawn_a[i]
        print(f"L{i + 1}      {args.limit:8.1f} A   {alloc_a:15.1f} A   {drawn_a:11.1f} A")
    verdict = "never above it" if held else "EXCEEDED"
    print(f"worst (load - limit in force, incl. the peak cap): {figures.worst_over_a:+.2f} A -> {verdict}\n")

    print(
        "conn  phases  car max  arrive  leave   need kWh  got kWh  met %  "
        "charging h  paused h  longest pause h  pauses  shortest restart min"
    )
    for s in sessions:
        phases = "3ph" if len(s.phases) == 3 else f"1ph L{min(s.phases)}"
        leave = clock(min(s.leave_s, args.hours * 3600))
        met = 100 * min(1.0, s.delivered_kwh / s.need_kwh)
        restart = f"{s.shortest_restart_s / 60:21.1f}" if s.shortest_restart_s < float("inf") else f"{'-':>21s}"
        print(
            f"{s.connector:4d}  {phases:6s}  {s.car_max_a:5.0f} A  {clock(s.arrive_s)}   {leave}  "
            f"{s.need_kwh:8.1f}  {s.delivered_kwh:7.1f}  {met:5.0f}  {s.charging_s / 3600:10.2f}  "
            f"{s.paused_s / 3600:8.2f}  {s.longest_pause_s / 3600:15.2f}  {s.pauses:6d}  {restart}"
        )

    long_stays = [s for s in sessions if s.charging_s + s.paused_s >= 2 * args.rotation]
    starved = [s for s in long_stays if s.charging_s == 0]
    met_all = [min(1.0, s.delivered_kwh / s.need_kwh) for s in sessions]
    longest = max((s.longest_pause_s for s in sessions), default=0.0)
    shortest = min((s.shortest_restart_s for s in sessions), default=float("inf"))
    print(
        f"\n{len(sessions)} sessions, {sum(s.delivered_kwh for s in sessions):.0f} kWh delivered; need met: "
        f"median {100 * statistics.median(met_all) if met_all else 0:.0f} %, "
        f"lowest {100 * min(met_all, default=0):.0f} %, fully met {sum(1 for m in met_all if m >= 0.999)}/{len(met_all)}"
    )
    print(
        f"sessions plugged >= 2 rotations that never charged: {len(starved)} of {len(long_stays)}; "
        f"longest pause of a car needing energy {longest / 60:.0f} min; "
        f"shortest pause before a restart {shortest / 60:.1f} min (rotation {args.rotation / 60:.0f} min)"
    )
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connectors", type=int, default=16)
    parser.add_argument("--limit", type=float, default=63.0, help="site limit per phase, A")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--step", type=float, default=30.0, help="seconds between allocate calls")
    parser.add_argument("--rotation", type=float, default=900.0, help="rotation period, s")
    parser.add_argument(
        "--peak-cap", type=float, default=40.0, help="ChargePointMaxProfile limit 17:00-19:00, A per phase"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    sessions, figures = simulate(args)
    held = report(args, sessions, figures, time.perf_counter() - start)
    poll_cost(args.connectors, args.limit)
    if not held:
        sys.exit(1)


if __name__ == "__main__":
    main()
