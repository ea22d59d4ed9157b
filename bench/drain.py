#!/usr/bin/env python3
"""How fast the outbox drains after an outage, and how many messages it takes, batched against unbatched.

The scenario (REQUIREMENTS "Nothing lost"): a 24 h outage of 16 connectors that
charged the whole time, sampled every 60 s. A fresh SQLite store is filled the
way the daemon fills it: each session's StartTransaction (Store.commit), then
the MeterValues samples of all connectors in time order
(Store.queue_meter_values, one sample per call, energy, power, 3 currents and
3 voltages), then the StopTransactions; timestamps start 24 h before now.

Then the real Uplink drains it through a loopback FaultProxy adding 300 ms of
round-trip time, to the strict independent backend (npm ocpp-rpc, which checks
every message against the OCPP 1.6 schemas), until the store is empty:

  batched    OcppSettings.meter_values_batch_max as given (--batch): measured in full.
  unbatched  meter_values_batch_max = 1: one message per queued row. At 300 ms a
             round trip that is about 2 hours, so only the first N transaction
             messages (--unbatched-sample) are replayed, on a copy of the same
             store, and time and bytes are extrapolated linearly from the rate
             over messages N/5..N (past the boot and the status round). The
             message count needs no extrapolation: one per queued row.

Goals: drain <= 180 s, and >= 30x fewer messages than unbatched replay. The exit
status is 0 when both are met, 1 otherwise.

Run: .venv/bin/python bench/drain.py [--connectors 16] [--hours 24] [--interval 60] [--rtt 0.3] [--batch 60] [--unbatched-sample 500]
Needs the strict peer: npm ci --prefix tests/interop
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ holds the proxy and the strict peer

from gateway import ocpp_messages  # noqa: E402
from gateway.clock import Clock  # noqa: E402
from gateway.reading import Reading  # noqa: E402
from gateway.session import StatusChanged, Transaction, TransactionStarted, TransactionStopped  # noqa: E402
from gateway.settings import BackendSettings, ChargePointInfo, OcppSettings  # noqa: E402
from gateway.store import QueuedMessage, Store  # noqa: E402
from gateway.uplink import Uplink  # noqa: E402
from tests.fault_proxy import FaultProxy  # noqa: E402
from tests.ocpp_rpc_peer import OcppRpcBackend  # noqa: E402

GOAL_DRAIN_S = 180.0
GOAL_RATIO = 30.0
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
INFO = ChargePointInfo("CP-DRAIN-BENCH", "OpenGateway", "Cluster", "SN-BENCH")
CLOCK = Clock()


@dataclass(frozen=True)
class Ack:
    """One queued message answered by the backend: when, what, and the proxy's byte counters at that moment."""

    t: float  # monotonic
    action: str
    samples: int
    bytes_up: int
    bytes_down: int


class TimedStore(Store):
    """The real store, noting each acknowledgement with its time and the bytes through the proxy so far."""

    def __init__(self, db: aiosqlite.Connection, path: Path, budget_bytes: int) -> None:
        super().__init__(db, path, budget_bytes)
        self.acks: list[Ack] = []
        self.proxy: FaultProxy | None = None

    async def acknowledge(self, message: QueuedMessage, result: dict) -> None:
        await super().acknowledge(message, result)
        up, down = (self.proxy.bytes_up, self.proxy.bytes_down) if self.proxy else (0, 0)
        self.acks.append(Ack(time.monotonic(), message.action, len(message.payload.get("meterValue", ())), up, down))


# --- the outage -------------------------------------------------------------------------


def reading(connector: int, minute: int, energy_before_wh: float, interval_s: int) -> Reading:
    """A three-phase charge near 11 kW, a little different per connector and over time; energy at the sample's end."""
    amps = 16.0 - 0.5 * (connector % 4)
    volts = (229.0 + 0.3 * (minute % 7), 230.5 - 0.2 * (minute % 5), 231.0 + 0.1 * (connector % 3))
    power = sum(amps * v for v in volts)
    return Reading(
        energy_wh=round(energy_before_wh + power * interval_s / 3600, 1),
        power_w=power,
        current_a=(amps, amps, amps - 0.2),
        voltage_v=volts,
    )


async def fill(path: Path, connectors: int, hours: float, interval_s: int, measurands: tuple[str, ...]) -> int:
    """What the outage leaves in the outbox; returns the number of queued messages."""
    store = await Store.open(path)
    samples = int(hours * 3600 // interval_s)
    t0 = CLOCK.wall() - hours * 3600
    txs = {c: Transaction(f"outage-{c}", f"TAG-{c:02d}", 100_000 * c, t0) for c in range(1, connectors + 1)}
    energy = {c: float(tx.meter_start_wh) for c, tx in txs.items()}
    for c, tx in txs.items():
        await store.commit([TransactionStarted(c, tx)], CLOCK)
    for k in range(1, samples + 1):
        for c, tx in txs.items():
            r = reading(c, k, energy[c], interval_s)
            assert r.energy_wh is not None
            energy[c] = r.energy_wh
            await store.queue_meter_values(c, tx.key, [ocpp_messages.meter_value(r, measurands, t0 + k * interval_s, CLOCK)], CLOCK)
    for c, tx in txs.items():
        await store.commit([TransactionStopped(c, tx, int(energy[c]), "EVDisconnected", t0 + samples * interval_s)], CLOCK)
    queued = await store.pending()
    await store.close()  # checkpoints the WAL into the file, so the file can be copied
    return queued


# --- one drain --------------------------------------------------------------------------


@dataclass(frozen=True)
class Drain:
    """What one run of the uplink did until it stopped: acks, backend calls by method, samples delivered."""

    start: float  # monotonic, just before the uplink started
    acks: list[Ack]
    calls: Counter[str]
    samples: int
    complete: bool


async def drain(path: Path, connectors: int, rtt_s: float, batch_max: int, stop_after: int | None) -> Drain:
    """Run the uplink on the store at `path` until it is empty, or until `stop_after` messages were answered."""
    store = await TimedStore.open(path)
    assert isinstance(store, TimedStore)

    def statuses() -> list[StatusChanged]:
        return [StatusChanged(c, "Available", "NoError", None, CLOCK.wall()) for c in range(1, connectors + 1)]

    try:
        async with OcppRpcBackend() as backend, FaultProxy("127.0.0.1", backend.port) as proxy:
            proxy.delay(rtt_s)
            store.proxy = proxy
            uplink = Uplink(INFO, BackendSettings(url=proxy.url_for(backend.url)), OcppSettings(meter_values_batch_max=batch_max), store, CLOCK, statuses)
            start = time.monotonic()
            task = asyncio.create_task(uplink.run())
            try:
                while await store.pending() and (stop_after is None or len(store.acks) < stop_after):
                    if task.done():
                        task.result()  # the uplink never returns; this raises what killed it
                    await asyncio.sleep(0.1)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            complete = await store.pending() == 0
            backend.assert_clean()
            calls = backend.calls(identity=INFO.identity)
            return Drain(
                start,
                list(store.acks),
                Counter(c["method"] for c in calls),
                sum(len(c["params"]["meterValue"]) for c in calls if c["method"] == "MeterValues"),
                complete,
            )
    finally:
        await store.close()


# --- report -----------------------------------------------------------------------------


def extrapolate(start: float, acks: list[Ack], total: int) -> tuple[float, float, float, int]:
    """(drain time, bytes up, bytes down) for `total` messages from the first len(acks), and how many were skipped.

    The rate is taken over the last four fifths of `acks`: the first fifth holds
    the boot and the status round, which happen once. With every message
    answered (len(acks) == total) this is the measurement itself.
    """
    done = len(acks)
    skip = done // 5
    first = acks[skip - 1] if skip else Ack(start, "", 0, 0, 0)
    last = acks[-1]
    more = (total - done) / (done - skip)
    return (
        last.t - start + (last.t - first.t) * more,
        last.bytes_up + (last.bytes_up - first.bytes_up) * more,
        last.bytes_down + (last.bytes_down - first.bytes_down) * more,
        skip,
    )


def by_method(calls: Counter[str]) -> str:
    order = ["BootNotification", "StatusNotification", "Heartbeat", *TX_ACTIONS]
    return ", ".join(f"{m} {calls[m]}" for m in sorted(calls, key=lambda m: (order.index(m) if m in order else 99, m)))


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def duration(s: float) -> str:
    return f"{s:.1f} s" if s < 600 else f"{s:.0f} s ({s / 3600:.1f} h)"


async def run(args: argparse.Namespace) -> int:
    measurands = OcppSettings().meter_values_sampled_data
    print(
        f"Outage drain: {args.connectors} connectors x {args.hours:g} h at {args.interval} s sampling, "
        f"loopback proxy adding {args.rtt * 1000:.0f} ms RTT, strict backend (npm ocpp-rpc)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="drain-bench-") as tmp:
        full = Path(tmp) / "outage.db"
        t = time.monotonic()
        queued = await fill(full, args.connectors, args.hours, args.interval, measurands)
        samples = queued - 2 * args.connectors
        print(f"queued: {samples} MeterValues samples + {args.connectors} Start + {args.connectors} Stop = {queued} messages "
              f"(filled in {time.monotonic() - t:.1f} s, {mb(full.stat().st_size)} of SQLite)", flush=True)
        copy = Path(tmp) / "outage-unbatched.db"
        shutil.copyfile(full, copy)

        print(f"\nbatched drain (meter_values_batch_max={args.batch}): running...", flush=True)
        b = await drain(full, args.connectors, args.rtt, args.batch, None)
        b_time = b.acks[-1].t - b.start
        b_total = sum(b.calls.values())
        b_tx = sum(b.calls[m] for m in TX_ACTIONS)
        print(f"  drain time          {duration(b_time)}  (connect to last answer, measured)")
        print(f"  messages            {b_total}: {by_method(b.calls)}")
        print(f"  samples delivered   {b.samples} of {samples}; Start {b.calls['StartTransaction']}, Stop {b.calls['StopTransaction']} of {args.connectors}")
        print(f"  bytes up / down     {mb(b.acks[-1].bytes_up)} / {mb(b.acks[-1].bytes_down)}")
        largest = max((a.samples for a in b.acks), default=0)
        if args.batch > 1 and largest <= 1:
            print("  NOTE: every MeterValues carried one sample: this build does not batch (meter_values_batch_max ignored)")

        n = min(args.unbatched_sample, queued)
        print(f"\nunbatched replay (meter_values_batch_max=1): running the first {n} of {queued} messages...", flush=True)
        u = await drain(copy, args.connectors, args.rtt, 1, n)
        # Session setup (boot, statuses) is the same in both runs; unbatched, every queued row is one message.
        setup = b_total - b_tx
        u_total = queued + setup
        u_time, u_up, u_down, skip = extrapolate(u.start, u.acks, queued)
        done = len(u.acks)
        if u.complete:
            how = f"measured in full ({queued} messages)"
        else:
            per_ms = (u.acks[-1].t - (u.acks[skip - 1].t if skip else u.start)) / (done - skip) * 1000
            how = f"EXTRAPOLATED linearly from the first {done} of {queued} messages (rate over messages {skip + 1}..{done}: {per_ms:.0f} ms each)"
        print(f"  drain time          ~{duration(u_time)}  {how}")
        print(f"  messages            {u_total}: {setup} session setup + {queued} transaction messages (exact: one per queued row)")
        print(f"  bytes up / down     ~{mb(u_up)} / ~{mb(u_down)}  {'measured' if u.complete else 'extrapolated likewise'}")

    ratio = u_total / b_total
    print(f"\nmessages: {u_total} unbatched -> {b_total} batched = {ratio:.1f}x fewer "
          f"(transaction messages only: {queued} -> {b_tx} = {queued / b_tx:.1f}x); drain {u_time / b_time:.0f}x faster")
    drain_ok, ratio_ok = b_time <= GOAL_DRAIN_S, ratio >= GOAL_RATIO
    lost = not b.complete or b.samples != samples or not b.calls["StartTransaction"] == b.calls["StopTransaction"] == args.connectors
    print(f"verdict: drain {b_time:.1f} s <= {GOAL_DRAIN_S:.0f} s: {'PASS' if drain_ok else 'FAIL'}; "
          f"{ratio:.1f}x >= {GOAL_RATIO:.0f}x fewer messages: {'PASS' if ratio_ok else 'FAIL'}; "
          f"nothing lost: {'FAIL' if lost else 'PASS'}")
    return 0 if drain_ok and ratio_ok and not lost else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=16)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--interval", type=int, default=60, help="MeterValueSampleInterval, seconds")
    parser.add_argument("--rtt", type=float, default=0.3, help="round-trip time the proxy adds, seconds")
    parser.add_argument("--batch", type=int, default=OcppSettings().meter_values_batch_max, help="meter_values_batch_max of the batched run")
    parser.add_argument("--unbatched-sample", type=int, default=500, help="messages of the unbatched replay actually run")
    args = parser.parse_args()
    for name in ("connectors", "interval", "batch", "unbatched_sample"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.hours <= 0 or args.hours * 3600 < args.interval:
        parser.error("--hours must cover at least one sample interval")
    if not 0 <= args.rtt < 10:
        parser.error("--rtt must be from 0 to 10 s")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
