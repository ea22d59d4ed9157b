"""The connector state machine: every legal and illegal (state, event) pair of the table."""

from __future__ import annotations

import pytest

from gateway.errors import IllegalTransition
from gateway.reading import PilotState, Reading
from gateway.session import (
    TRANSITIONS,
    Connector,
    Event,
    State,
    StatusChanged,
    Transaction,
    TransactionStarted,
    TransactionStopped,
    classify,
    reported_status,
)


def reading(code: str, energy: float = 1000.0, power: float | None = None) -> Reading:
    if power is None:
        power = 7000.0 if code in ("C2", "D2") else 0.0
    return Reading(state=PilotState.parse(code), vendor_state=0, energy_wh=energy, power_w=power)


# One reading per event, as a Heidelberg box would report it.
READING_FOR = {
    Event.UNPLUGGED: reading("A2"),
    Event.EV_IDLE: reading("B2"),
    Event.EVSE_BLOCKS: reading("C1"),
    Event.ENERGY_FLOWS: reading("C2"),
    Event.FAULT: reading("F"),
}


def connector_in(state: State) -> Connector:
    tx = Transaction("k1", "TAG", 1000, 0.0) if state.in_transaction else None
    c = Connector(1, state, tx)
    c.last_energy_wh = 1000
    return c


def fire(c: Connector, event: Event) -> list:
    if event is Event.AUTHORIZED:
        return c.authorize("TAG", 10.0, key="k2")
    if event is Event.STOP:
        return c.stop("Remote", 10.0)
    if event is Event.EV_LEFT:
        c.stop_on_unplug = False
        return c.on_reading(READING_FOR[Event.UNPLUGGED], 10.0)
    return c.on_reading(READING_FOR[event], 10.0)


@pytest.mark.parametrize("code,event", [
    ("A1", Event.UNPLUGGED), ("A2", Event.UNPLUGGED), ("A", Event.UNPLUGGED),
    ("B1", Event.EVSE_BLOCKS), ("B2", Event.EV_IDLE), ("B", Event.EV_IDLE),
    ("C1", Event.EVSE_BLOCKS), ("C2", Event.ENERGY_FLOWS), ("D2", Event.ENERGY_FLOWS),
    ("E", Event.FAULT), ("F", Event.FAULT),
])
def test_classify_pilot_codes(code: str, event: Event) -> None:
    assert classify(reading(code)) is event


def test_classify_c2_without_power_is_ev_idle() -> None:
    assert classify(reading("C2", power=0.0)) is Event.EV_IDLE
    assert classify(reading("C", power=0.0)) is Event.EVSE_BLOCKS
    assert classify(reading("C", power=3000.0)) is Event.ENERGY_FLOWS


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_every_cell_of_the_table(state: State, event: Event) -> None:
    c = connector_in(state)
    cell = TRANSITIONS[state].get(event)
    if cell is None:
        before = (c.state, c.transaction, c.error_code, c.info)
        with pytest.raises(IllegalTransition):
            fire(c, event)
        assert (c.state, c.transaction, c.error_code, c.info) == before, "an illegal event changed the connector"
        return
    new_state, _ = cell
    effects = fire(c, event)
    assert c.state is new_state
    assert (c.transaction is not None) == new_state.in_transaction
    started = [e for e in effects if isinstance(e, TransactionStarted)]
    stopped = [e for e in effects if isinstance(e, TransactionStopped)]
    assert len(started) == (not state.in_transaction and new_state.in_transaction)
    assert len(stopped) == (state.in_transaction and not new_state.in_transaction)
    statuses = [e for e in effects if isinstance(e, StatusChanged)]
    assert len(statuses) <= 1
    if state.ocpp_status != new_state.ocpp_status:
        assert statuses and statuses[0].status == new_state.ocpp_status


def test_a_whole_session() -> None:
    c = Connector(3)
    seen: list = []
    seen += c.on_reading(reading("A2", energy=5000), 1.0)
    assert seen == []  # already Available: nothing to report
    seen += c.on_reading(reading("B2", energy=5000), 2.0)
    seen += c.authorize("FREE", 3.0)
    seen += c.on_reading(reading("C2", energy=5000), 4.0)
    seen += c.on_reading(reading("C2", energy=7500), 5.0)
    seen += c.on_reading(reading("B2", energy=9000), 6.0)
    seen += c.on_reading(reading("A2", energy=9000), 7.0)
    kinds = [(type(e).__name__, getattr(e, "status", None)) for e in seen]
    assert kinds == [
        ("StatusChanged", "Preparing"),
        ("TransactionStarted", None),
        ("StatusChanged", "SuspendedEVSE"),
        ("StatusChanged", "Charging"),
        ("StatusChanged", "SuspendedEV"),
        ("TransactionStopped", None),
        ("StatusChanged", "Available"),
    ]
    start = next(e for e in seen if isinstance(e, TransactionStarted))
    stop = next(e for e in seen if isinstance(e, TransactionStopped))
    assert start.transaction.meter_start_wh == 5000
    assert stop.meter_stop_wh == 9000 and stop.reason == "EVDisconnected"
    assert stop.transaction == start.transaction


def test_slave_lost_mid_session_keeps_the_transaction() -> None:
    c = Connector(1)
    c.on_reading(reading("C2", energy=100), 1.0)
    c.authorize("T", 1.0)
    lost = c.on_lost("timeout", 2.0)
    assert c.state is State.FAULTED_TX and c.transaction is not None
    assert lost == [StatusChanged(1, "Faulted", "OtherError", "slave not answering: timeout", 2.0)]
    assert c.on_lost("timeout", 3.0) == []  # reported once, not once per poll
    effects = c.on_reading(reading("A2", energy=900), 4.0)
    assert isinstance(effects[0], TransactionStopped) and effects[0].meter_stop_wh == 900


def test_authorize_needs_an_energy_reading() -> None:
    c = Connector(1)
    with pytest.raises(IllegalTransition):
        c.authorize("T", 1.0)


def test_state_and_transaction_must_agree() -> None:
    with pytest.raises(ValueError):
        Connector(1, State.CHARGING, None)


# --- availability and reservation over the plug state (OCPP 1.6 §5.2, §5.13) ------------------


@pytest.mark.parametrize(
    ("state", "operative", "reserved", "status"),
    [
        (State.AVAILABLE, True, False, "Available"),
        (State.AVAILABLE, True, True, "Reserved"),
        (State.AVAILABLE, False, True, "Unavailable"),
        (State.PREPARING, False, False, "Unavailable"),
        (State.PREPARING, True, True, "Preparing"),  # the reservation shows only while the connector is free
        (State.CHARGING, False, False, "Charging"),  # Inoperative waits for the transaction to end
        (State.FAULTED, False, True, "Faulted"),
        (State.FAULTED_TX, True, False, "Faulted"),
    ],
)
def test_reported_status(state: State, operative: bool, reserved: bool, status: str) -> None:
    assert reported_status(state, operative, reserved) == status


def test_availability_and_reservation_change_the_status_once_and_block_starts() -> None:
    c = Connector(1)
    assert c.set_operative(False, 5.0) == [StatusChanged(1, "Unavailable", "NoError", None, 5.0)]
    assert c.set_operative(False, 6.0) == [], "no news, no StatusNotification"
    assert [e.status for e in c.on_reading(reading("B1"), 7.0)] == []  # plugged, still Unavailable
    assert not c.can_start
    with pytest.raises(IllegalTransition):
        c.authorize("TAG", 8.0)
    assert [e.status for e in c.set_operative(True, 9.0)] == ["Preparing"]
    assert c.can_start
    c2 = Connector(2)
    assert [e.status for e in c2.set_reserved(True, 1.0)] == ["Reserved"]
    assert [e.status for e in c2.on_reading(reading("B1"), 2.0)] == ["Preparing"]
    assert c2.set_reserved(False, 3.0) == []


def test_with_stop_on_ev_side_disconnect_false_the_transaction_outlives_the_cable() -> None:
    c = connector_in(State.CHARGING)
    c.stop_on_unplug = False
    key = c.transaction.key if c.transaction else None
    effects = c.on_reading(READING_FOR[Event.UNPLUGGED], 20.0)
    assert c.state is State.SUSPENDED_EV and c.transaction is not None and c.transaction.key == key
    assert not [e for e in effects if isinstance(e, TransactionStopped)]
    c.on_reading(READING_FOR[Event.ENERGY_FLOWS], 30.0)  # plugged in again: the same session resumes
    assert c.state is State.CHARGING and c.transaction.key == key
    stopped = [e for e in c.stop("Remote", 40.0) if isinstance(e, TransactionStopped)]
    assert stopped and stopped[0].reason == "Remote"
