"""One simulated slave charger or meter, pure: a device profile's register image driven by an EV model.

No I/O: the line and TCP servers hand in decoded requests with the real
(monotonic) time they arrived; the slave answers with register words or a
`SlaveException`, or drops a request unheard (`accepts`). EV behaviour runs on
simulated time (`TimeScale`), while the communication watchdog runs on real
time, as on the real box.

Everything comes from the profile: register words are made with
gateway.registers (encode_value, encode_string), the exact inverse of what the
daemon decodes, so a poll decodes back to the model's values: bit fields are
merged into their registers, a PWM-duty current register offers exactly what
the gateway decodes from it, a state made of several registers (state_rules)
is produced by solving the rules for the wanted pilot code, an enable register
or coil gates the offer, outlets of one controller share a unit.

The watchdog plays the Heidelberg rules (shared/reference/modbus-register-maps.md
§1, holding 257 and 262), generalised to any profile that names the registers:
the timeout register sets the timeout in use (0 = off); on expiry the box
applies the fail-safe current register - a current of at least the minimum is
offered on (the EV keeps charging at it), anything else is state F. What feeds
it is the profile's keepalive: any request ("poll"), or only the heartbeat,
timeout-register or current-limit write.

A meter next to a charger (a connector's meter) measures that charger's EV:
it shares the EvModel and lets the charger move it on, so the events stay the
charger's.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.devprofile import INT_RANGES, ROLES, Conversion, DataType, Profile, StateRule, Table, ValueSpec, WriteSpec
from gateway.pwm import amps_to_duty, duty_to_amps
from gateway.registers import (
    decode_raw,
    decode_value,
    decode_written,
    encode_raw,
    encode_string,
    encode_value,
    field_range,
    insert_field,
)
from gateway.simulator.ev import Activity, EvEvent, EvModel

# Modbus application protocol §7: exception codes a slave answers with.
ILLEGAL_FUNCTION = 1
ILLEGAL_DATA_ADDRESS = 2
ILLEGAL_DATA_VALUE = 3

# ABL's EVCC controller drops the first frame after a silence ("bus idle", state E3;
# evcc sends every request twice for it, reference §2). How long the silence must be
# is UNCONFIRMED: 1 s, longer than the gap between the two sends of one request and
# shorter than a poll period, so that every poll meets a bus-idle box.
BUS_IDLE_S = 1.0

# An unused phase reads a few volts, not zero (Heidelberg: "an unconnected
# phase reads a small non-zero value, e.g. 8 or 9 V").
_IDLE_PHASE_V = 8.0
_PCB_TEMPERATURE_C = 32.5  # a box at work in a garage
# Plausible readings for informational values of the shipped profiles, by
# value name (engineering units). Heidelberg: register layout V1.0.8 (input 4,
# the first layout with the lifetime meter is V1.0.7), external lock input 13
# and remote lock holding 259 both "1 = unlocked".
_PLAUSIBLE = {"layout_version": 0x0108, "external_lock": 1.0, "remote_lock": 1.0}
# The pilot codes a box shows in the simulation; F only when its watchdog fails safe.
_PILOT_CODES = ("A1", "A2", "B1", "B2", "C1", "C2", "F")


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
    energy_wh: int | None  # what the gateway reads from the energy register, in whole Wh; None: no register
    sim_time: float


def _candidates(want: str) -> tuple[str, ...]:
    """The codes that show pilot `want`, best first: itself, the bare letter, then the letter with either digit.

    An EV asking for current that is not offered (C1) shows as B1 where the device
    has no C1 before it shows as C2: ABL's 0xB1 is "EV is asking for charging"
    (reference §2), and C2 would claim current is offered.
    """
    if want == "F":
        return (want,)
    return (want, want[0]) + (("B1",) if want == "C1" else ()) + (f"{want[0]}2", f"{want[0]}1")


def _inverse_states(profile: Profile) -> dict[str, int | str]:
    """Pilot code wanted -> the raw state value (a number, or text) that shows it; F only where the enum has it."""
    spec = profile.values.get("state")
    if spec is None:
        return {}
    first: dict[str, int | str] = {}
    for raw, code in spec.enum.items():
        first.setdefault(code, raw)
    table: dict[str, int | str] = {}
    for want in _PILOT_CODES:
        found = next((first[c] for c in _candidates(want) if c in first), None)
        if found is not None:
            table[want] = found
        elif want != "F":
            raise ValueError(f"profile {profile.name}: its state enum has no value for pilot {want}")
    return table


def solve_state_rules(rules: Sequence[StateRule], code: str, ranges: dict[str, tuple[int, int]]) -> dict[str, int] | None:
    """Raw values of the values the rules test that make them yield `code`; None if no rule can.

    The first rule giving `code` must hold and every rule before it must fail
    (the first rule that holds wins, gateway.registers). Values are tried by
    class: the members of each set the rules test, and one raw outside all of
    them (the smallest in `ranges`), so the search stays small.
    """
    for i, rule in enumerate(rules):
        if rule.code != code:
            continue
        relevant = rules[: i + 1]
        names = sorted({name for r in relevant for name in r.when})
        choices = [_choices(name, rule, relevant, ranges[name]) for name in names]
        for combo in itertools.product(*choices):
            raws = dict(zip(names, combo, strict=True))
            if _holds(rule, raws) and not any(_holds(r, raws) for r in rules[:i]):
                return raws
    return None


def _choices(name: str, rule: StateRule, rules: Sequence[StateRule], span: tuple[int, int]) -> list[int]:
    """One raw per class of `name`'s raws (same membership in every set the rules test); the rule's own set where it tests it."""
    sets = [r.when[name] for r in rules if name in r.when]
    mentioned = sorted(set().union(*sets))
    outside = next((v for v in range(max(0, span[0]), span[1] + 1) if v not in mentioned), None)
    pool = [v for v in (*mentioned, outside) if v is not None and span[0] <= v <= span[1]]
    if name in rule.when:
        pool = [v for v in pool if v in rule.when[name]]
    classes: dict[tuple[bool, ...], int] = {}
    for v in pool:
        classes.setdefault(tuple(v in s for s in sets), v)
    return list(classes.values())


def _holds(rule: StateRule, raws: dict[str, int]) -> bool:
    return all(raws[name] in allowed for name, allowed in rule.when.items())


def _rule_states(profile: Profile) -> dict[str, dict[str, int]]:
    """Pilot code wanted -> raws of the values the state rules test; F only where a rule gives it."""
    if not profile.state_rules:
        return {}
    ranges = {name: field_range(profile.values[name]) for rule in profile.state_rules for name in rule.when}
    table: dict[str, dict[str, int]] = {}
    for want in _PILOT_CODES:
        for candidate in _candidates(want):
            if (raws := solve_state_rules(profile.state_rules, candidate, ranges)) is not None:
                table[want] = raws
                break
        else:
            if want != "F":
                raise ValueError(f"profile {profile.name}: no state rule can yield pilot {want}")
    return table


class SimSlave:
    """The register image of one outlet (or one meter), answering reads and writes as the profile's device would."""

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
        measures: SimSlave | None = None,
    ) -> None:
        self.connector = connector
        self.unit = unit
        self.profile = profile
        self.ev = ev
        self._clock = clock
        self._emit = emit
        self._source = measures  # a meter: the charger whose EV it measures (and which moves the EV on)
        # The energy register that events report: the charger's own, or its connector's meter's (set by the runner).
        self.energy_spec: ValueSpec | None = profile.values.get("energy")
        self._states = _inverse_states(profile)
        self._rules = _rule_states(profile)
        self._outlets: list[SimSlave] = [self]  # the outlets of one controller answer on this unit
        self._holding: dict[int, int] = {}
        self._coils: dict[int, int] = {}
        self._writable: set[int] = set()
        self._writable_coils: set[int] = set()
        if (limit := profile.current_limit) is not None:
            # A box left by a previous master still allows its maximum: the daemon must pause it.
            self._keep_writable(limit.address, encode_value(limit, profile.max_current_a))
        if (enable := profile.enable) is not None:
            if enable.table is Table.COIL:
                self._coils[enable.address] = enable.on
                self._writable_coils.add(enable.address)
            else:
                self._keep_writable(enable.address, [enable.on])
        for init in profile.init_writes:
            self._writable.add(init.address)
            self._holding.setdefault(init.address, 0)  # factory value, e.g. Heidelberg standby enabled
        if (watchdog := profile.watchdog) is not None:
            # Factory values: the profile's timeout (Heidelberg 257 = 15000 ms) and the pause value
            # as fail-safe current (Heidelberg 262 = 0: state F when the watchdog strikes).
            factory_values = ((watchdog.timeout_register, watchdog.timeout_s), (watchdog.failsafe_current, profile.pause_current_a))
            for register, factory in factory_values:
                if register is not None:
                    self._keep_writable(register.address, self._factory_words(register, factory))
            if watchdog.heartbeat is not None:
                self._keep_writable(watchdog.heartbeat.address, [0])
        for spec in profile.values.values():
            if spec.table is Table.HOLDING and spec.name in _PLAUSIBLE:
                self._store(spec.address, encode_value(spec, _PLAUSIBLE[spec.name]))
        if (tag_spec := profile.values.get("id_tag")) is not None and tag_spec.count is not None:
            for tag in ev.id_tags:
                encode_string(tag, tag_spec.count, tag_spec.encoding)  # raises ValueError now rather than at a poll
        self._now = now
        self._fed_at = now  # the watchdog's last feed
        self._frame_at = now  # the last frame addressed to this unit (bus idle)
        self.failsafe = False
        self._apply_offer(now)

    def join(self, outlet: SimSlave) -> None:
        """Answer for another outlet of the same controller on this unit: its requests go to it by address."""
        self._outlets.append(outlet)

    # --- requests from the master -----------------------------------------------------

    def accepts(self, now: float) -> bool:
        """Whether the device hears this request: a profile that repeats each request models ABL's bus idle.

        After BUS_IDLE_S without a request the controller wakes on a frame and drops it.
        """
        idle = now - self._frame_at >= BUS_IDLE_S
        self._frame_at = max(self._frame_at, now)
        return not (idle and self.profile.repeat > 1)

    def read(self, table: Table, address: int, count: int, now: float) -> list[int]:
        """The words of `count` registers from `address` (FC03 holding / FC04 input), or coils (FC01) at real time `now`.

        A box that had failed safe answers this request still failed safe (state F,
        or charging at the fail-safe current) and recovers after it, so the master
        sees that the watchdog struck (the real box takes seconds to recover).
        """
        now = self._monotonic(now)
        self.tick(now)
        try:
            outlet = self._owner(table, address, count, readable=True)
            if outlet is None:
                raise SlaveException(ILLEGAL_DATA_ADDRESS, f"{table.value} {address}+{count} is not readable")
            return outlet._words(table, address, count)
        finally:
            self.heard_from_master(now)

    def write(self, address: int, words: Sequence[int], now: float) -> None:
        """Store `words` at holding `address` (FC06 / FC16); the current limit and enable change what the EV is offered."""
        now = self._monotonic(now)
        self.heard_from_master(now)
        outlet = self._owner(Table.HOLDING, address, len(words), readable=False) if words else None
        if outlet is None:
            raise SlaveException(ILLEGAL_DATA_ADDRESS, f"holding {address}+{len(words)} is not writable")
        outlet._store(address, words)
        if outlet._keeps_alive(Table.HOLDING, address, words):
            outlet._fed(now)
        outlet._apply_offer(now)

    def write_coil(self, address: int, on: bool, now: float) -> None:
        """Switch the coil at `address` (FC05); the enable coil changes what the EV is offered."""
        now = self._monotonic(now)
        self.heard_from_master(now)
        outlet = self._owner(Table.COIL, address, 1, readable=False)
        if outlet is None:
            raise SlaveException(ILLEGAL_DATA_ADDRESS, f"coil {address} is not writable")
        outlet._coils[address] = int(on)
        if outlet._keeps_alive(Table.COIL, address, [int(on)]):
            outlet._fed(now)
        outlet._apply_offer(now)

    def heard_from_master(self, now: float) -> None:
        """A request addressed to this unit arrived: it feeds every outlet's watchdog that any request feeds."""
        for outlet in self._outlets:
            outlet.tick(now)
            if outlet._keepalive == "poll":
                outlet._fed(now)

    # --- time passing -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Advance the EV to `now` and fail safe when the master has been silent longer than the watchdog."""
        now = self._monotonic(now)
        self._advance(now)
        timeout = self.watchdog_timeout_s
        if not self.failsafe and timeout > 0 and now - self._fed_at >= timeout:
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
        """The current the outlet offers the EV: 0 with its enable off; its current limit, or the fail-safe current once failed safe."""
        if self.failsafe:
            watchdog = self.profile.watchdog
            spec = watchdog.failsafe_current if watchdog is not None else None
            return self._offer_in(spec) if spec is not None else 0.0
        if not self.enabled:
            return 0.0
        limit = self.profile.current_limit
        return self._offer_in(limit) if limit is not None else self.profile.max_current_a

    @property
    def enabled(self) -> bool:
        """The enable register or coil is on (always, for a profile without one)."""
        enable = self.profile.enable
        if enable is None:
            return True
        stored = self._coils if enable.table is Table.COIL else self._holding
        return stored.get(enable.address) == enable.on

    def pilot_code(self) -> str:
        """The IEC 61851-1 pilot state the box shows: EV letter plus EVSE digit, or F when failed safe to no current.

        A box whose states have no F shows the EV's letter with "no current" instead.
        """
        if self.failsafe and self.offered_a <= 0 and "F" in (self._rules or self._states):
            return "F"
        letter = {Activity.UNPLUGGED: "A", Activity.PLUGGED: "B", Activity.SUSPENDED: "B"}.get(self.ev.activity, "C")
        return f"{letter}{2 if self.offered_a > 0 else 1}"

    # --- internals --------------------------------------------------------------------------

    @property
    def _keepalive(self) -> str:
        watchdog = self.profile.watchdog
        return "poll" if watchdog is None else watchdog.keepalive

    def _keeps_alive(self, table: Table, address: int, words: Sequence[int]) -> bool:
        """Whether this write is the one the profile's watchdog waits for (beyond "poll", where any request is)."""
        watchdog, span = self.profile.watchdog, range(address, address + len(words))
        if watchdog is None:
            return False
        if watchdog.keepalive == "heartbeat" and (beat := watchdog.heartbeat) is not None:
            return table is Table.HOLDING and address == beat.address and words[0] == beat.value
        if watchdog.keepalive == "timeout_register" and (register := watchdog.timeout_register) is not None:
            return table is Table.HOLDING and register.address in span
        if watchdog.keepalive == "current_limit":
            limit, enable = self.profile.current_limit, self.profile.enable
            return (table is Table.HOLDING and limit is not None and limit.address in span) or (
                enable is not None and enable.table is table and enable.address in span
            )
        return False

    def _fed(self, now: float) -> None:
        """The watchdog was fed: it restarts, and a failed-safe box recovers."""
        self._fed_at = now
        if self.failsafe:
            self.failsafe = False
            self._note("recovered")
            self._apply_offer(now)

    def _owner(self, table: Table, address: int, count: int, *, readable: bool) -> SimSlave | None:
        """The outlet on this unit whose registers (readable, or writable) these are; None: nobody's."""
        span = range(address, address + count)
        for outlet in self._outlets:
            check = outlet._readable if readable else outlet._writable_at
            if all(check(table, a) for a in span):
                return outlet
        return None

    def _readable(self, table: Table, address: int) -> bool:
        return any(b.covers(table, address, 1) for b in self.profile.blocks) or self._writable_at(table, address)

    def _writable_at(self, table: Table, address: int) -> bool:
        return address in (self._writable_coils if table is Table.COIL else self._writable if table is Table.HOLDING else ())

    def _words(self, table: Table, address: int, count: int) -> list[int]:
        image = self._image(table)
        stored = self._coils if table is Table.COIL else self._holding if table is Table.HOLDING else {}
        return [image.get(a, stored.get(a, 0)) for a in range(address, address + count)]

    def _offer_in(self, spec: WriteSpec) -> float:
        """What a current register offers, decoded as the gateway decodes it: below the minimum (or the pause raw) is 0."""
        words = self._stored_words(spec.address, spec.type.words)
        if spec is self.profile.current_limit and self.profile.pause_raw is not None and words == [self.profile.pause_raw]:
            return 0.0
        amperes = decode_written(spec, words)
        # IEC 61851-1 Table A.8: no PWM duty cycle offers less than 6 A, so below the minimum is a pause.
        if amperes is None or amperes < self.profile.min_current_a:
            return 0.0
        return min(amperes, self.profile.max_current_a)

    def _register(self, spec: WriteSpec) -> float:
        """The engineering value a written holding register holds now (before any conversion)."""
        return decode_raw(self._stored_words(spec.address, spec.type.words), spec.type, spec.word_order) * spec.scale

    def _stored_words(self, address: int, count: int) -> list[int]:
        return [self._holding.get(a, 0) for a in range(address, address + count)]

    def _energy_register(self, energy_wh: float) -> int | None:
        """What the gateway records from the energy register for `energy_wh`: the decoded value, in whole Wh."""
        spec = self.energy_spec
        if spec is None:
            return None
        value = decode_value(spec, _encode_clamped(spec, energy_wh))
        return None if value is None else int(value)  # whole Wh, as gateway.session keeps it

    def _monotonic(self, now: float) -> float:
        """Never earlier than any time seen before: a request stamped on arrival may be served after a tick."""
        self._now = max(self._now, now)
        return self._now

    def _advance(self, now: float) -> None:
        if self._source is not None:
            self._source.tick(now)  # the charger moves the shared EV on, and reports its events
        else:
            self._note_all(self.ev.advance(self._clock.sim(now)))

    def _apply_offer(self, now: float) -> None:
        if self._source is None:
            self._note_all(self.ev.set_offered(self._clock.sim(now), self.offered_a))

    def _note_all(self, events: list[EvEvent]) -> None:
        # Each with the meter as it stood at the event, not at the end of the step:
        # a coarse step may hold a plug-in and the charging that followed it.
        for event in events:
            self._note(event.activity.value, event.energy_wh, event.sim_time)

    def _note(self, kind: str, energy_wh: float | None = None, sim_time: float | None = None) -> None:
        if self._source is not None:
            return  # a meter has no events of its own
        energy = self.ev.energy_wh if energy_wh is None else energy_wh
        at = self.ev.sim_time if sim_time is None else sim_time
        self._emit(SlaveEvent(kind, self.connector, self.unit, self._energy_register(energy), at))

    def _store(self, address: int, words: Sequence[int]) -> None:
        for i, word in enumerate(words):
            self._holding[address + i] = word

    def _keep_writable(self, address: int, words: Sequence[int]) -> None:
        self._store(address, words)
        self._writable.update(range(address, address + len(words)))

    def _factory_words(self, spec: WriteSpec, value: float) -> list[int]:
        try:
            return encode_value(spec, value)
        except ValueError:  # a PWM-duty register holds no current below 6 A: its pause value, or 0
            return [self.profile.pause_raw or 0] * spec.type.words

    def _image(self, table: Table) -> dict[int, int]:
        """The words of every modelled value in `table`, as they read right now; bit fields merged into their registers."""
        image: dict[int, int] = {}
        stored = self._coils if table is Table.COIL else self._holding if table is Table.HOLDING else {}
        rules = self._rules.get(self.pilot_code(), {}) if self._rules else {}
        # Whole registers first, so that bit fields are merged into them and not overwritten.
        for spec in sorted((s for s in self.profile.values.values() if s.table is table), key=lambda s: s.bits is not None):
            if spec.type is DataType.STRING:
                words = self._text(spec)
                if words is not None:
                    image.update(zip(range(spec.address, spec.address + len(words)), words, strict=True))
                continue
            raw = rules[spec.name] if spec.name in rules else self._raw(spec)
            if raw is None:
                continue
            span = range(spec.address, spec.address + spec.type.words)
            words = insert_field(spec, [image.get(a, stored.get(a, 0)) for a in span], raw)
            image.update(zip(range(spec.address, spec.address + len(words)), words, strict=True))
        return image

    def _text(self, spec: ValueSpec) -> list[int] | None:
        """A text value's words: the state's text, the tag shown, or None (left as stored: no text)."""
        assert spec.count is not None  # a string value has a count
        if spec.name == "state":
            return encode_string(str(self._states[self.pilot_code()]), spec.count, spec.encoding)
        if spec.name == "id_tag":
            # While an EV is plugged in (plug-in to unplug) the outlet shows the tag it presented.
            tag = self.ev.ev.id_tag if self.ev.ev is not None else None
            return encode_string(tag, spec.count, spec.encoding)
        return None

    def _raw(self, spec: ValueSpec) -> int | float | None:
        """The raw number (of its bit field, where it has one) a value reads now; None leaves the register as stored, or 0."""
        if spec.name == "state":
            return int(self._states[self.pilot_code()])
        if spec.name == "applied_current_limit":
            return self._applied_raw(spec)
        if spec.name == "charging_enabled":
            enable = self.profile.enable
            if enable is not None and enable.table is spec.table and enable.address == spec.address:
                return None  # the enable register or coil itself: as written
            value: float | None = 1.0 if self.enabled and not self.failsafe else 0.0
        else:
            value = self._model_value(spec)
        if value is None:
            return None
        plain = dataclasses.replace(spec, bits=None)
        raw = decode_raw(_encode_clamped(plain, value), spec.type, spec.word_order)
        if spec.bits is not None:
            low, high = field_range(spec)
            raw = min(max(int(raw), low), high)
        return raw

    def _applied_raw(self, spec: ValueSpec) -> int | float | None:
        """The applied limit read back where it is not the limit register itself (ABL 0x0012 vs 0x0014): the same
        duty cycle or current, converted where one register holds a duty cycle and the other amperes."""
        limit = self.profile.current_limit
        if limit is None or (spec.table is Table.HOLDING and spec.address == limit.address):
            return None
        if self.profile.pause_raw is not None and self._stored_words(limit.address, limit.type.words) == [self.profile.pause_raw]:
            physical = 100.0 if spec.convert is Conversion.PWM_DUTY else 0.0  # 100 % duty: no PWM, nothing offered
        else:
            physical = self._register(limit)  # duty % for a PWM-duty register, else A
            if (spec.convert is Conversion.PWM_DUTY) != (limit.convert is Conversion.PWM_DUTY):
                physical = duty_to_amps(physical) if limit.convert is Conversion.PWM_DUTY else (
                    amps_to_duty(physical) if physical >= self.profile.min_current_a else 100.0
                )
        raw = physical / spec.scale
        return round(raw) if spec.type.integer else raw

    def _model_value(self, spec: ValueSpec) -> float | None:
        """The engineering value of a profile value; None leaves the register as stored (holding) or 0."""
        ev = self.ev
        if spec.name == "energy":
            return ev.energy_wh
        if spec.name == "power":
            return ev.power_w
        if spec.name.startswith("current_l"):
            return ev.currents_a[int(spec.name[-1]) - 1]
        if spec.name.startswith("voltage_l"):
            return self._voltage(int(spec.name[-1]))
        if spec.name in ROLES:
            return None
        if spec.name in _PLAUSIBLE:
            return _PLAUSIBLE[spec.name]
        for check in self.profile.identify:  # a value the bus scan checks reads as this model's
            if check.value == spec.name and check.pattern is None:
                if check.one_of:
                    return check.one_of[0]
                if check.min is not None or check.max is not None:
                    return check.min if check.min is not None else check.max
        if spec.table is Table.HOLDING:
            return None
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
    bounds = INT_RANGES.get(spec.type)
    try:
        words = encode_value(spec, value)
    except ValueError:
        if bounds is None:
            raise
        words = encode_raw(bounds[1] if value / spec.scale > 0 else bounds[0], spec.type, spec.word_order)
    if bounds is not None:
        raw = decode_raw(words, spec.type, spec.word_order)
        if raw in spec.invalid:
            words = encode_raw(raw - 1 if raw == bounds[1] else raw + 1, spec.type, spec.word_order)
    return words
