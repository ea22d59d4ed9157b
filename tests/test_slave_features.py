"""The simulated slave plays every feature of the profile schema, pure (no I/O): state rules solved for the
wanted pilot code, bit fields, PWM-duty current registers, coils and enable registers, text states,
keepalive watchdogs, ABL's bus idle, outlets of one controller, and a meter next to a charger.

Every check decodes the slave's words with gateway.registers, exactly as the daemon does.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from gateway import registers
from gateway.devprofile import ReadBlock, StateRule, Table
from gateway.profile_loader import available_profiles, load_profile
from gateway.reading import PilotState, Reading
from gateway.simulator.ev import EvModel, EvTiming
from gateway.simulator.slave import BUS_IDLE_S, SimSlave, SlaveEvent, SlaveException, TimeScale, solve_state_rules

PROFILES = {name: load_profile(path) for name, path in available_profiles().items()}
CHARGERS = sorted(name for name, p in PROFILES.items() if p.kind == "charger")


def slave(name: str, events: list[SlaveEvent] | None = None, id_tags: tuple[str, ...] = (), unit: int = 1) -> SimSlave:
    """A slave whose EV plugs in at 1 s (simulated: 10 s at ten times real speed) and asks for energy soon after."""
    ev = EvModel(random.Random(3), timing=EvTiming(idle_s=(10, 10), session_kwh=(30, 30)), start_energy_wh=654_321, id_tags=id_tags)
    sink = events if events is not None else []
    return SimSlave(connector=1, unit=unit, profile=PROFILES[name], ev=ev, clock=TimeScale(0.0, speed=10.0), now=0.0, emit=sink.append)


def poll(s: SimSlave, now: float) -> Reading:
    return registers.decode_reading(s.profile, {b: s.read(b.table, b.address, b.count, now) for b in s.profile.blocks})


def control(s: SimSlave, amperes: float, now: float) -> None:
    """What the poller writes for `amperes`, coils included."""
    for w in registers.control_writes(s.profile, amperes):
        if w.table is Table.COIL:
            s.write_coil(w.address, w.words[0] != 0, now)
        else:
            s.write(w.address, list(w.words), now)


def shows(reading: Reading, code: str) -> bool:
    """The decoded state is the slave's pilot code, or what stands for it where the device has no such code."""
    assert reading.state is not None
    want = PilotState.parse(code)
    if code == "C1" and reading.state.pilot.value == "B":
        return reading.state.evse_allows is not True  # ABL and KEBA show an EV held back as B1
    return reading.state.pilot is want.pilot and reading.state.evse_allows in (None, want.evse_allows)


# --- state rules, solved (pure) ------------------------------------------------------------------------

RULES = (
    StateRule({"charging": frozenset({1})}, "C2"),
    StateRule({"cable": frozenset({2, 3}), "lock": frozenset({1})}, "B2"),
    StateRule({"cable": frozenset({2, 3})}, "B1"),
    StateRule({}, "A"),
)
RANGES = {"charging": (0, 1), "cable": (0, 7), "lock": (0, 1)}


def holds(rule: StateRule, raws: dict[str, int]) -> bool:
    return all(raws.get(name, 0) in allowed for name, allowed in rule.when.items())


@pytest.mark.parametrize("code", ["C2", "B2", "B1", "A"])
def test_the_first_rule_giving_the_code_holds_and_every_earlier_one_fails(code: str) -> None:
    raws = solve_state_rules(RULES, code, RANGES)
    assert raws is not None
    first = next(r for r in RULES if holds(r, raws))  # what gateway.registers decodes
    assert first.code == code
    assert all(RANGES[name][0] <= raw <= RANGES[name][1] for name, raw in raws.items())


def test_a_code_no_rule_can_give_is_none() -> None:
    assert solve_state_rules(RULES, "F", RANGES) is None
    # B1 needs the cable in {2, 3} and the lock outside {1}: a lock that can only be 1 makes it impossible.
    assert solve_state_rules(RULES, "B1", RANGES | {"lock": (1, 1)}) is None


# --- every charger profile: the image decodes to what the slave shows ----------------------------------------


@pytest.mark.parametrize("name", CHARGERS)
def test_every_charger_profile_decodes_to_what_the_slave_shows(name: str) -> None:
    events: list[SlaveEvent] = []
    s = slave(name, events)
    control(s, 0, 0.1)  # paused, as the daemon leaves a box outside a session
    assert s.offered_a == 0
    for now, amperes in ((0.5, 0), (2.0, 0), (3.0, 16), (4.0, 16), (5.0, 10), (6.0, 0)):
        control(s, amperes, now - 0.05)
        reading = poll(s, now)
        assert shows(reading, s.pilot_code()), (now, s.pilot_code(), reading.state, reading.vendor_state)
        offered = registers.offered_current(s.profile, reading)
        assert offered is None or offered == pytest.approx(s.offered_a)
        assert s.offered_a == pytest.approx(registers.readback_offer(s.profile, amperes))
        if "energy" in s.profile.values:
            assert reading.energy_wh is not None and int(reading.energy_wh) == s._energy_register(s.ev.energy_wh)
    assert [e.kind for e in events][:2] == ["plug", "paused"] and "charging" in [e.kind for e in events]


# --- bit fields and PWM duty (ABL) --------------------------------------------------------------------


def test_abl_current_is_a_pwm_duty_that_reads_back_as_the_gateway_decodes_it() -> None:
    s = slave("abl-emh")
    assert s.read(Table.HOLDING, 0x14, 1, 0.1) == [266]  # left at 16 A by a previous master: 26.6 % duty
    reading = poll(s, 0.2)
    assert reading.applied_limit_a == pytest.approx(15.96) and s.offered_a == pytest.approx(15.96)
    assert registers.readback_offer(s.profile, 16) == pytest.approx(15.96), "the poller does not write 16 A again"
    control(s, 0, 0.3)
    assert s.read(Table.HOLDING, 0x14, 1, 0.4) == [0x03E8] and s.offered_a == 0  # pause_raw: no PWM
    assert poll(s, 0.5).applied_limit_a == 0
    control(s, 10, 0.6)
    assert s.read(Table.HOLDING, 0x14, 1, 0.7) == [166] and s.offered_a == pytest.approx(9.96)
    status = s.profile.values["state"]
    word = s.read(Table.HOLDING, status.address, 1, 3.0)[0]
    assert word & 0xFF == 0xC2 and reading.state is not None  # the state code in the low byte (bits 0..7)


def test_abl_drops_the_first_request_after_a_silence() -> None:
    s, heidelberg = slave("abl-emh"), slave("heidelberg-energy-control")
    assert s.accepts(0.5)  # the master has talked recently (the box was made at 0)
    assert not s.accepts(0.5 + BUS_IDLE_S)  # bus idle: woken by this frame, which it drops
    assert s.accepts(0.5 + BUS_IDLE_S + 0.05)  # the repeat, straight after, is answered
    assert all(heidelberg.accepts(t) for t in (0.5, 5.0, 50.0))  # repeat 1: no bus idle


# --- coils, enable registers ------------------------------------------------------------------------


def test_an_enable_coil_gates_the_offer() -> None:
    s = slave("phoenix-em-cp-pp-eth")
    enable = s.profile.enable
    assert enable is not None and enable.table is Table.COIL
    assert s.read(Table.COIL, enable.address, 1, 0.1) == [1] and s.offered_a > 0
    s.write_coil(enable.address, False, 0.2)
    reading = poll(s, 0.3)
    assert reading.charging_enabled is False and s.offered_a == 0 and registers.offered_current(s.profile, reading) == 0
    s.write_coil(enable.address, True, 0.4)
    assert poll(s, 0.5).charging_enabled is True and s.offered_a > 0
    with pytest.raises(SlaveException) as info:
        s.write_coil(enable.address + 1, True, 0.6)
    assert info.value.code == 2


def test_an_enable_register_pauses_without_touching_the_current() -> None:
    s = slave("mennekes-amtron-compact")
    enable, limit = s.profile.enable, s.profile.current_limit
    assert enable is not None and limit is not None
    control(s, 0, 0.1)
    assert s.read(Table.HOLDING, enable.address, 1, 0.2) == [enable.off] and s.offered_a == 0
    assert registers.decode_value(registers.ValueSpec("l", Table.HOLDING, limit.address, limit.type), s.read(Table.HOLDING, limit.address, 2, 0.2)) == 16


# --- keepalives ------------------------------------------------------------------------------------


def test_a_heartbeat_watchdog_is_fed_by_the_heartbeat_only() -> None:
    s = slave("mennekes-amtron-compact")
    watchdog = s.profile.watchdog
    assert watchdog is not None and watchdog.heartbeat is not None
    beat = watchdog.heartbeat
    for now in range(1, 12):
        poll(s, float(now))  # polls do not feed it
    assert s.failsafe and s.pilot_code() in ("F", "C1", "B1")
    s.write(beat.address, [beat.value ^ 1], 12.0)  # a wrong token is no heartbeat
    assert s.failsafe
    s.write(beat.address, [beat.value], 12.5)
    assert not s.failsafe
    s.tick(12.5 + watchdog.timeout_s - 0.1)
    assert not s.failsafe


@pytest.mark.parametrize(("name", "register"), [("keba-p30", "timeout_register"), ("alfen-eve", "current_limit")])
def test_a_register_keepalive_is_fed_by_writing_that_register(name: str, register: str) -> None:
    s = slave(name)
    watchdog = s.profile.watchdog
    assert watchdog is not None and watchdog.keepalive == register
    end = watchdog.timeout_s + 1
    poll(s, end - 1)
    s.tick(end)
    assert s.failsafe, "reads do not feed it"
    writes = registers.keepalive_writes(s.profile, 16)
    assert writes
    for w in writes:
        s.write(w.address, list(w.words), end + 0.5)
    assert not s.failsafe


# --- text, wide numbers, fixed units, outlets ---------------------------------------------------------------


def test_utf16_tag_and_text_state() -> None:
    vestel = slave("vestel-evc04", id_tags=("CARD-0042",))
    assert poll(vestel, 0.5).id_tag is None
    assert poll(vestel, 2.0).id_tag == "CARD-0042"  # plugged in: the card shown, one character per register
    alfen = slave("alfen-eve")
    control(alfen, 16, 2.0)
    reading = poll(alfen, 3.0)
    assert reading.vendor_state == "C2" and reading.applied_limit_a == 16
    station = next(b for b in alfen.profile.blocks if b.unit is not None)
    assert len(alfen.read(station.table, station.address, station.count, 3.5)) == station.count


def test_a_64_bit_energy_register() -> None:
    charx = slave("phoenix-charx")
    spec = charx.profile.values["energy"]
    assert spec.type.words == 4
    assert poll(charx, 1.0).energy_wh == 654_321


def test_outlets_of_one_controller_share_its_unit() -> None:
    base = dataclasses.replace(PROFILES["heidelberg-energy-control"], outlet_stride=100)
    ev = [EvModel(random.Random(i), timing=EvTiming(idle_s=(10 * i, 10 * i))) for i in (1, 100)]
    first, second = (
        SimSlave(connector=n + 1, unit=1, profile=base.for_outlet(n + 1), ev=ev[n], clock=TimeScale(0.0, 10.0), now=0.0)
        for n in range(2)
    )
    first.join(second)
    first.write(361, [0], 0.5)  # outlet 2's current limit, sent to the shared unit
    assert second.offered_a == 0 and first.offered_a == 16
    assert first.read(Table.INPUT, 105, 1, 2.0) == [2]  # outlet 2: no EV yet, paused (A1)
    assert first.read(Table.INPUT, 5, 1, 2.0) == [7]  # outlet 1: charging (C2)
    with pytest.raises(SlaveException):
        first.read(Table.INPUT, 50, 1, 2.0)  # between the outlets: nobody's register
    blocks = {ReadBlock(b.table, b.address, b.count): first.read(b.table, b.address, b.count, 2.1) for b in second.profile.blocks}
    assert registers.decode_reading(second.profile, blocks).applied_limit_a == 0


# --- a meter next to a charger -------------------------------------------------------------------------------


@pytest.mark.parametrize("meter_name", sorted(name for name, p in PROFILES.items() if p.kind == "meter"))
def test_a_connectors_meter_measures_its_ev(meter_name: str) -> None:
    events: list[SlaveEvent] = []
    charger = slave("abl-emh", events)
    meter_profile = PROFILES[meter_name]
    meter = SimSlave(connector=1, unit=7, profile=meter_profile, ev=charger.ev, clock=TimeScale(0.0, 10.0), now=0.0, measures=charger)
    charger.energy_spec = meter_profile.values["energy"]
    control(charger, 16, 0.1)
    for now in (0.5, 2.0, 3.0):
        poll(charger, now - 0.1)
        reading = poll(meter, now)
        assert reading.energy_wh is not None and int(reading.energy_wh) == charger._energy_register(charger.ev.energy_wh)
        if reading.power_w is not None:
            assert reading.power_w == pytest.approx(charger.ev.power_w, abs=100)
        if reading.current_a[0] is not None:
            assert reading.current_a[0] == pytest.approx(charger.ev.currents_a[0], abs=0.1)
    assert charger.ev.power_w > 0
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["plug", "charging"]
    assert all(e.unit == 1 for e in events), "the events are the charger's"
    plug = events[0]
    assert plug.energy_wh == int(registers.decode_value(meter_profile.values["energy"], registers.encode_value(meter_profile.values["energy"], 654_321)) or 0)
