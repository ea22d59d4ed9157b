"""One poller per connector: reads its slave through the line that owns the bus, drives the session machine.

Thin I/O around pure parts: gateway.registers decodes, gateway.session decides,
the effect sink commits to SQLite before anything acts on an effect. The
poller also keeps the slave doing what the session says: no current offered
outside a transaction (the box charges on its own otherwise), the allowed
current inside one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from gateway import ocpp_messages, registers
from gateway.clock import Clock
from gateway.devprofile import Profile
from gateway.errors import DeviceError
from gateway.modbus_line import ModbusLine, Priority
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
        self.last_reading: Reading | None = None  # for TriggerMessage MeterValues
        self.timeout_s = bus.request_timeout_s or profile.request_timeout_s
        self.online: bool | None = None  # None until the first poll
        # Whether the store holds an open session for this connector: the slave follows this,
        # never a state the store refused (full disk), so no EV charges on a session kept only in memory.
        self._committed_session = connector.transaction is not None
        self._written_limit: float | None = None  # what we last wrote; None = unknown, write again
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
            blocks = {}
            for block in self.profile.blocks:
                blocks[block] = await self.line.read(
                    self.settings.unit, block.table, block.address, block.count,
                    timeout_s=self.timeout_s, gap_s=self.profile.inter_frame_delay_s, priority=Priority.POLL,
                )
            reading = registers.decode_reading(self.profile, blocks)
        except DeviceError as exc:
            await self._lost(exc, wall)
            return
        if self.online is not True:
            log.info("connector %d: slave %s unit %d answering", self.settings.id, self.settings.bus, self.settings.unit)
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
        await self._apply_current_limit(reading)
        if committed:  # a sample refers to its session row, which must exist
            await self._sample(reading, wall)

    async def _lost(self, exc: DeviceError, wall: float) -> None:
        if self.online is not False:
            self._lost_at = self.clock.monotonic()
            log.warning("connector %d: slave %s unit %d not answering: %s", self.settings.id, self.settings.bus, self.settings.unit, exc)
        self.online = False
        self._written_limit = None  # the slave may have rebooted and forgotten
        await self._on_effects(self.connector.on_lost(type(exc).__name__, wall))

    async def _init_writes(self) -> None:
        """Whenever the slave is (re)found: the profile's init writes, then its fail-safe current and watchdog."""
        writes = registers.setup_writes(self.profile, self.failsafe_a)
        for w in writes:
            await self.line.write(
                self.settings.unit, w.address, list(w.words), multiple=w.multiple,
                timeout_s=self.timeout_s, gap_s=self.profile.inter_frame_delay_s, priority=Priority.COMMAND,
            )
        if writes:
            log.info("connector %d: set up the slave: %s", self.settings.id, "; ".join(w.note or f"holding {w.address}" for w in writes))
        if self.profile.watchdog is not None and self.profile.watchdog.failsafe_current is not None:
            self._failsafe_written = self._offer_of(registers.chargeable_current(self.profile, self.failsafe_a))

    async def _apply_current_limit(self, reading: Reading) -> None:
        """Offer current only inside a transaction; pause otherwise.

        Where the profile reads the applied limit back, that reading is the truth
        (the box may have rebooted, failed safe, or been set by someone else);
        otherwise we trust what we last wrote.
        """
        spec = self.profile.current_limit
        if spec is None:
            return
        wanted = self.profile.pause_current_a
        if self._committed_session:
            limit = await self._limit_source(self.settings.id) if self._limit_source else None
            # IEC 61851-1: below 6 A the EV must pause, not trickle
            wanted = registers.chargeable_current(self.profile, self.max_current_a if limit is None else min(self.max_current_a, limit))
        applied = reading.applied_limit_a if reading.applied_limit_a is not None else self._written_limit
        if applied is not None:
            self._offered_a = self._offer_of(applied)
        if applied is not None and abs(applied - wanted) < 0.05:
            self._written_limit = wanted
            return
        words = registers.current_limit_words(self.profile, wanted)
        try:
            await self.line.write(
                self.settings.unit, spec.address, words, multiple=spec.multiple,
                timeout_s=self.timeout_s, gap_s=self.profile.inter_frame_delay_s, priority=Priority.COMMAND,
            )
        except DeviceError as exc:
            log.warning("connector %d: current limit %.1f A not written: %s", self.settings.id, wanted, exc)
            return
        self._written_limit = wanted
        self._offered_a = self._offer_of(wanted)

    def _offer_of(self, limit_a: float) -> float:
        """The current a limit register value offers: below the minimum is a pause (IEC 61851-1 Table A.8)."""
        return limit_a if limit_a >= self.profile.min_current_a else 0.0

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
