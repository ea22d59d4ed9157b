"""One poller per connector: reads its slave through the line that owns the bus, drives the session machine.

Thin I/O around pure parts: gateway.registers decodes and says what to write,
gateway.session decides, the effect sink commits to SQLite before anything
acts on an effect. The poller also keeps the slave doing what the session
says: no current offered outside a transaction (the box charges on its own
otherwise), the allowed current inside one; and it keeps the slave's
watchdog fed where a poll alone does not.

A connector may have a separate meter (its charger has none, or none to
trust): each poll then reads the meter too, on the meter's own line, and the
energy, power, currents and voltages come from it alone (METER_ROLES), never
mixed with the charger's, so that what is billed comes from one device.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

from gateway import ocpp_messages, registers
from gateway.clock import Clock
from gateway.devprofile import Profile, Table
from gateway.errors import DeviceError
from gateway.modbus_line import ModbusLine, Priority, read_profile
from gateway.reading import Reading
from gateway.session import Connector, Effect
from gateway.settings import BusSettings, ConnectorSettings, outlet_max_current_a

log = logging.getLogger("gateway.poller")

EffectSink = Callable[[Sequence[Effect]], Awaitable[bool]]  # True once every effect so far is committed
ContactSink = Callable[[int, int, bool], Awaitable[None]]  # connector id, energy register (Wh), session open
MeterSink = Callable[[int, str, Sequence[dict]], Awaitable[None]]
# Who may start a transaction on a plugged, operative connector, given its reading (a card it shows):
# (idTag, reservationId) or None (nobody yet).
StartPolicy = Callable[[int, Reading], tuple[str, int | None] | None]
LimitSource = Callable[[int], Awaitable[float | None]]  # connector id -> current limit in A (smart charging), None: none

# A slave that stopped answering is asked again this many poll periods later, so a
# dead unit costs the line one timeout per few cycles instead of one per cycle.
OFFLINE_SLOWDOWN = 5
# Two offers closer than this are the same: a register's resolution is 0.1 A at best.
_SAME_A = 0.05


@dataclasses.dataclass(frozen=True)
class MeterLink:
    """A connector's separate meter: its profile, the line it is on and its unit there."""

    profile: Profile
    line: ModbusLine
    unit: int
    timeout_s: float


def with_meter(charger: Reading, meter: Reading) -> Reading:
    """The connector's reading: state, limit and idTag from the charger, every METER_ROLES value from the meter.

    Nothing measured is taken from the charger, even where the meter says "not
    available": one device's figures only (class-A metering).
    """
    extra = charger.extra + tuple((f"meter_{name}", value) for name, value in meter.extra)
    return dataclasses.replace(
        charger,
        energy_wh=meter.energy_wh,
        power_w=meter.power_w,
        current_a=meter.current_a,
        voltage_v=meter.voltage_v,
        extra=extra,
    )


class ConnectorPoller:
    def __init__(
        self,
        settings: ConnectorSettings,
        bus: BusSettings,
        profile: Profile,
        line: ModbusLine,
        connector: Connector,
        clock: Clock,
        on_effects: EffectSink,
        on_meter_values: MeterSink,
        start_policy: StartPolicy,
        measurands: Sequence[str],
        sample_interval_s: float,
        on_first_contact: ContactSink | None = None,
        limit_source: LimitSource | None = None,
        failsafe_a: float = 0.0,
        meter: MeterLink | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.profile = profile
        self.line = line
        self.connector = connector
        self.clock = clock
        self._on_effects = on_effects
        self._on_meter_values = on_meter_values
        self.measurands = tuple(measurands)
        self.sample_interval_s = sample_interval_s
        self._on_first_contact = on_first_contact
        self._start_policy = start_policy
        self._limit_source = limit_source
        self.failsafe_a = failsafe_a  # what the slave falls back to when its watchdog strikes (site share)
        self.meter = meter
        self.last_reading: Reading | None = None  # for TriggerMessage MeterValues
        self.timeout_s = bus.request_timeout_s or profile.request_timeout_s
        self.online: bool | None = None  # None until the first poll
        self._fields = {"connector": settings.id, "bus": settings.bus, "unit": settings.unit}  # journald's, events'
        # Whether the store holds an open session for this connector: the slave follows this,
        # never a state the store refused (full disk), so no EV charges on a session kept only in memory.
        self._committed_session = connector.transaction is not None
        self._written_offer: float | None = None  # what our last control writes offer; None = unknown, write again
        self._kept_alive_at: float | None = None  # monotonic: the last keepalive writes; None: due now
        self._offered_a: float | None = None  # what the slave offers as far as we know; None: unknown
        self._lost_at: float | None = None  # monotonic: when it stopped answering
        self._failsafe_written: float | None = None  # the fail-safe current the slave holds, once written
        self._next_sample: float | None = None

    @property
    def max_current_a(self) -> float:
        return outlet_max_current_a(self.settings, self.profile)

    @property
    def session_committed(self) -> bool:
        """The store holds an open session for this connector (only then does the slave offer current)."""
        return self._committed_session

    @property
    def offered_a(self) -> float:
        """The most current the slave may be offering now, for the site limit.

        What we wrote or read back while it answers. A slave that stopped answering
        keeps what it had until its watchdog strikes, then falls back to the
        fail-safe current we gave it; where we know neither, its maximum.
        """
        watchdog = self.profile.watchdog
        if (  # _lost_at is set only while the slave does not answer
            self._lost_at is not None and self._failsafe_written is not None
            and watchdog is not None and self.clock.monotonic() - self._lost_at > watchdog.timeout_s
        ):
            return self._failsafe_written
        return self.max_current_a if self._offered_a is None else self._offered_a

    async def run(self) -> None:
        while True:
            started = self.clock.monotonic()
            await self.poll_once()
            period = self.bus.poll_interval_s * (1 if self.online else OFFLINE_SLOWDOWN)
            await asyncio.sleep(max(0.0, started + period - self.clock.monotonic()))

    async def poll_once(self) -> None:
        wall = self.clock.wall()
        try:
            if not self.online:
                await self._init_writes()
            blocks = await read_profile(self.line, self.profile, self.settings.unit, timeout_s=self.timeout_s)
            reading = registers.decode_reading(self.profile, blocks)
        except DeviceError as exc:
            await self._lost(exc, wall, "slave")
            return
        if (meter := self.meter) is not None:
            try:
                metered = registers.decode_reading(meter.profile, await read_profile(meter.line, meter.profile, meter.unit, timeout_s=meter.timeout_s))
            except DeviceError as exc:
                # Without the meter there is no energy to account: the connector is lost like a silent charger.
                await self._lost(exc, wall, "meter")
                return
            reading = with_meter(reading, metered)
        if self.online is not True:
            log.info("connector %d: slave %s unit %d answering", self.settings.id, self.settings.bus, self.settings.unit, extra=self._fields)
            if self._on_first_contact is not None and reading.energy_wh is not None:
                # Before the reading drives the session: energy taken while we were not looking is
                # accounted for first, ahead of any new session's StartTransaction.
                await self._on_first_contact(self.settings.id, int(reading.energy_wh), self.connector.transaction is not None)
        self.online, self._lost_at = True, None
        self.last_reading = reading
        effects = self.connector.on_reading(reading, wall)
        if self.connector.can_start:
            if (start := self._start_policy(self.settings.id, reading)) is not None:
                effects += self.connector.authorize(start[0], wall, reservation_id=start[1])
        committed = await self._on_effects(effects)
        if committed:
            self._committed_session = self.connector.transaction is not None
        wanted = await self._apply_current_limit(reading)
        await self._keepalive(wanted)
        if committed:  # a sample refers to its session row, which must exist
            await self._sample(reading, wall)

    async def _write(self, write: registers.RegisterWrite) -> None:
        """One write to the charger: a coil (FC05) or holding registers (FC06 / FC16)."""
        profile, unit = self.profile, self.settings.unit
        if write.table is Table.COIL:
            await self.line.write_coil(
                unit, write.address, write.words[0] != 0,
                timeout_s=self.timeout_s, gap_s=profile.inter_frame_delay_s, priority=Priority.COMMAND, repeat=profile.repeat,
            )
        else:
            await self.line.write(
                unit, write.address, list(write.words), multiple=write.multiple,
                timeout_s=self.timeout_s, gap_s=profile.inter_frame_delay_s, priority=Priority.COMMAND, repeat=profile.repeat,
            )

    async def _lost(self, exc: DeviceError, wall: float, what: str) -> None:
        if self.online is not False:
            self._lost_at = self.clock.monotonic()
            if what == "meter" and (meter := self.meter) is not None:
                log.warning("connector %d: meter %s unit %d not answering: %s", self.settings.id, meter.line.name, meter.unit, exc, extra=self._fields)
            else:
                log.warning("connector %d: slave %s unit %d not answering: %s", self.settings.id, self.settings.bus, self.settings.unit, exc, extra=self._fields)
        self.online = False
        self._written_offer = None  # the slave may have rebooted and forgotten
        await self._on_effects(self.connector.on_lost(type(exc).__name__, wall))

    async def _init_writes(self) -> None:
        """Whenever the slave is (re)found: the profile's init writes, then its fail-safe current and watchdog."""
        writes = registers.setup_writes(self.profile, self.failsafe_a)
        for w in writes:
            await self._write(w)
        if writes:
            log.info("connector %d: set up the slave: %s", self.settings.id, "; ".join(w.note or f"holding {w.address}" for w in writes), extra=self._fields)
        if self.profile.watchdog is not None and self.profile.watchdog.failsafe_current is not None:
            self._failsafe_written = registers.offer(self.profile, registers.chargeable_current(self.profile, self.failsafe_a))
        self._kept_alive_at = None  # a (re)found slave gets its keepalive at once

    async def _apply_current_limit(self, reading: Reading) -> float:
        """Offer current only inside a transaction; pause otherwise. Returns the current wanted now.

        Where the device reads back what it offers (its applied limit, its enable),
        that reading is the truth (the box may have rebooted, failed safe, or been
        set by someone else); otherwise we trust what we last wrote. The reading is
        compared with what the writes would read back, not with the amperes wanted,
        so a register that cannot hold the exact current (a PWM duty) is not
        written again at every poll.
        """
        profile = self.profile
        wanted = profile.pause_current_a
        if profile.current_limit is None:
            return wanted
        if self._committed_session:
            limit = await self._limit_source(self.settings.id) if self._limit_source else None
            # IEC 61851-1: below 6 A the EV must pause, not trickle
            wanted = registers.chargeable_current(profile, self.max_current_a if limit is None else min(self.max_current_a, limit))
        target = registers.readback_offer(profile, wanted)
        offered = registers.offered_current(profile, reading)
        if offered is None:
            offered = self._written_offer
        if offered is not None:
            self._offered_a = offered
            if abs(offered - target) < _SAME_A:
                self._written_offer = target
                return wanted
        writes = registers.control_writes(profile, wanted)
        try:
            for w in writes:
                await self._write(w)
        except DeviceError as exc:
            log.warning("connector %d: control for %.1f A not written: %s", self.settings.id, wanted, exc, extra=self._fields)
            self._written_offer = None  # part of it may have been written: read it back, or write it all again
            return wanted
        self._written_offer = target
        self._offered_a = target
        if profile.watchdog is not None and profile.watchdog.keepalive == "current_limit":
            self._kept_alive_at = self.clock.monotonic()  # these writes were the keepalive
        return wanted

    async def _keepalive(self, wanted: float) -> None:
        """Feed a watchdog that a poll does not feed (heartbeat, timeout register, current limit) every keepalive period."""
        watchdog = self.profile.watchdog
        if watchdog is None or watchdog.keepalive == "poll" or self.profile.current_limit is None:
            return
        now = self.clock.monotonic()
        if self._kept_alive_at is not None and now - self._kept_alive_at < watchdog.keepalive_period_s:
            return
        try:
            for w in registers.keepalive_writes(self.profile, wanted):
                await self._write(w)
        except DeviceError as exc:
            # The next poll tells whether the slave is gone; its watchdog leaves it in the fail-safe state meanwhile.
            log.warning("connector %d: keepalive (%s) not written: %s", self.settings.id, watchdog.keepalive, exc, extra=self._fields)
            return
        self._kept_alive_at = now

    async def _sample(self, reading: Reading, wall: float) -> None:
        """MeterValues every MeterValueSampleInterval from the start of the transaction (OCPP 1.6 §4.7)."""
        tx = self.connector.transaction
        if tx is None or self.sample_interval_s <= 0:
            self._next_sample = None
            return
        now = self.clock.monotonic()
        if self._next_sample is None:
            self._next_sample = now + self.sample_interval_s
            return
        if now < self._next_sample:
            return
        while self._next_sample <= now:  # after a stall, skip the missed slots rather than burst
            self._next_sample += self.sample_interval_s
        entry = ocpp_messages.meter_value(reading, self.measurands, wall, self.clock)
        await self._on_meter_values(self.settings.id, tx.key, [entry])
