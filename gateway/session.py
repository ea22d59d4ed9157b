"""The connector session state machine: polled slave state in, OCPP statuses and transactions out.

Pure: no I/O, time comes in as arguments. One `Connector` per OCPP connectorId.
The transition table `TRANSITIONS[state][event]` is the documentation: an event
that is not in the row of the current state is illegal, raises
IllegalTransition and changes nothing (the h11 pattern).

Internal states are one step richer than OCPP statuses: Faulted exists with and
without an open transaction, so that a fault in the middle of a session does
not lose it (OCPP 1.6 §4.9: a fault does not end a transaction; unplugging does).

Two settings of the backend lie over the plug state and change only the status
reported (`reported_status`): a connector made Inoperative by ChangeAvailability
reports Unavailable outside a transaction (§5.2), and a reserved connector that
is free reports Reserved (§5.13). Faulted shows through both.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from gateway.errors import IllegalTransition
from gateway.reading import Pilot, Reading


class State(enum.Enum):
    AVAILABLE = "Available"
    PREPARING = "Preparing"  # EV plugged, not (yet) authorized
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"  # in a transaction, EVSE offers current, EV takes none
    SUSPENDED_EVSE = "SuspendedEVSE"  # in a transaction, EVSE offers no current
    FINISHING = "Finishing"  # transaction stopped, EV still plugged
    FAULTED = "Faulted"
    FAULTED_TX = "Faulted (in transaction)"

    @property
    def ocpp_status(self) -> str:
        return "Faulted" if self is State.FAULTED_TX else self.value

    @property
    def in_transaction(self) -> bool:
        return self in _TX_STATES


_TX_STATES = frozenset({State.CHARGING, State.SUSPENDED_EV, State.SUSPENDED_EVSE, State.FAULTED_TX})


class Event(enum.Enum):
    UNPLUGGED = "unplugged"  # pilot A
    EV_IDLE = "ev-idle"  # EV plugged, not requesting (B), or requesting while the EVSE offers current but none flows
    EVSE_BLOCKS = "evse-blocks"  # EV plugged, EVSE offers no current (x1)
    ENERGY_FLOWS = "energy-flows"  # EV requests and the EVSE allows (C2/D2)
    FAULT = "fault"  # pilot E/F, a vendor error, or the slave stopped answering
    AUTHORIZED = "authorized"  # an idTag was accepted for the plugged EV
    STOP = "stop"  # the transaction is ended by command while the EV stays plugged
    EV_LEFT = "ev-left"  # unplugged, with StopTransactionOnEVSideDisconnect false: a transaction stays open


class Action(enum.Enum):
    START_TX = "start"
    STOP_TX = "stop"


_PLUGGED = (Event.EV_IDLE, Event.EVSE_BLOCKS, Event.ENERGY_FLOWS)


Cell = tuple[State, tuple[Action, ...]]


def _row(**cells: Cell) -> dict[Event, Cell]:
    return {Event[name.upper()]: cell for name, cell in cells.items()}


def _in_tx_row() -> dict[Event, Cell]:
    return _row(
        unplugged=(State.AVAILABLE, (Action.STOP_TX,)),
        # §9.1.31: with StopTransactionOnEVSideDisconnect false the transaction outlives the cable;
        # plugging in again resumes it, only a stop command or the idTag ends it.
        ev_left=(State.SUSPENDED_EV, ()),
        ev_idle=(State.SUSPENDED_EV, ()),
        evse_blocks=(State.SUSPENDED_EVSE, ()),
        energy_flows=(State.CHARGING, ()),
        fault=(State.FAULTED_TX, ()),
        stop=(State.FINISHING, (Action.STOP_TX,)),
    )


def _idle_row(plugged: State) -> dict[Event, Cell]:
    row: dict[Event, Cell] = {event: (plugged, ()) for event in _PLUGGED}
    row[Event.UNPLUGGED] = row[Event.EV_LEFT] = (State.AVAILABLE, ())
    row[Event.FAULT] = (State.FAULTED, ())
    return row


TRANSITIONS: dict[State, dict[Event, Cell]] = {
    State.AVAILABLE: _idle_row(plugged=State.PREPARING),
    # Authorization opens the transaction; the EVSE offers no current until the
    # gateway has written the limit, hence SuspendedEVSE until the next poll says otherwise.
    State.PREPARING: {**_idle_row(plugged=State.PREPARING), Event.AUTHORIZED: (State.SUSPENDED_EVSE, (Action.START_TX,))},
    State.CHARGING: _in_tx_row(),
    State.SUSPENDED_EV: _in_tx_row(),
    State.SUSPENDED_EVSE: _in_tx_row(),
    State.FAULTED_TX: _in_tx_row(),
    # After a stop the EV must leave before a new session can start at this connector.
    State.FINISHING: _idle_row(plugged=State.FINISHING),
    State.FAULTED: _idle_row(plugged=State.PREPARING),
}


def classify(reading: Reading, charging_threshold_w: float = 50.0) -> Event:
    """The event a poll reading amounts to.

    C2 with (almost) no power is the EV that asks but takes nothing yet (SuspendedEV);
    C without the x1/x2 digit falls back on the measured power.
    """
    if reading.state is None:
        raise ValueError("a reading without a pilot state cannot drive a connector")
    pilot, allows = reading.state.pilot, reading.state.evse_allows
    if pilot is Pilot.A:
        return Event.UNPLUGGED
    if pilot in (Pilot.E, Pilot.F):
        return Event.FAULT
    if allows is False:
        return Event.EVSE_BLOCKS
    if pilot is Pilot.B:
        return Event.EV_IDLE
    power = reading.power_w
    if power is not None and power < charging_threshold_w:
        return Event.EV_IDLE if allows else Event.EVSE_BLOCKS
    return Event.ENERGY_FLOWS


@dataclass(frozen=True)
class Transaction:
    """An open session, as the connector knows it; `key` is the local session key used everywhere offline."""

    key: str
    id_tag: str
    meter_start_wh: int
    started_wall: float
    reservation_id: int | None = None  # the reservation this transaction uses (StartTransaction.req)


@dataclass(frozen=True)
class StatusChanged:
    connector_id: int
    status: str  # OCPP ChargePointStatus
    error_code: str  # OCPP ChargePointErrorCode
    info: str | None
    wall: float


@dataclass(frozen=True)
class TransactionStarted:
    connector_id: int
    transaction: Transaction


@dataclass(frozen=True)
class TransactionStopped:
    connector_id: int
    transaction: Transaction
    meter_stop_wh: int
    reason: str  # OCPP Reason
    wall: float


Effect = StatusChanged | TransactionStarted | TransactionStopped


def reported_status(state: State, operative: bool, reserved: bool) -> str:
    """The OCPP ChargePointStatus of a connector: the plug state, with availability and reservation over it."""
    if state in (State.FAULTED, State.FAULTED_TX):
        return "Faulted"
    if not operative and not state.in_transaction:
        return "Unavailable"
    if reserved and state is State.AVAILABLE:
        return "Reserved"
    return state.ocpp_status


class Connector:
    """One OCPP connector: feeds events through TRANSITIONS and reports effects."""

    def __init__(
        self,
        connector_id: int,
        state: State = State.AVAILABLE,
        transaction: Transaction | None = None,
        *,
        operative: bool = True,
        reserved: bool = False,
        stop_on_unplug: bool = True,
    ) -> None:
        if state.in_transaction != (transaction is not None):
            raise ValueError(f"state {state.name} and transaction {transaction} disagree")
        self.id = connector_id
        self.state = state
        self.transaction = transaction
        self.operative = operative  # ChangeAvailability: Operative / Inoperative
        self.reserved = reserved  # a ReserveNow holds it
        self.stop_on_unplug = stop_on_unplug  # StopTransactionOnEVSideDisconnect
        self.error_code = "NoError"
        self.info: str | None = None
        self.last_energy_wh: int | None = None

    @property
    def status(self) -> str:
        return reported_status(self.state, self.operative, self.reserved)

    @property
    def can_start(self) -> bool:
        """An idTag may open a transaction now: an EV is plugged in, and the connector is operative."""
        return self.state is State.PREPARING and self.operative

    def set_operative(self, operative: bool, wall: float) -> list[Effect]:
        return self._overlay(wall, operative=operative)

    def set_reserved(self, reserved: bool, wall: float) -> list[Effect]:
        return self._overlay(wall, reserved=reserved)

    def _overlay(self, wall: float, **changes: bool) -> list[Effect]:
        before = self.status
        self.operative = changes.get("operative", self.operative)
        self.reserved = changes.get("reserved", self.reserved)
        if self.status == before:
            return []
        return [StatusChanged(self.id, self.status, self.error_code, self.info, wall)]

    def on_reading(self, reading: Reading, wall: float) -> list[Effect]:
        """A successful poll. Faults carry the vendor state in `info`."""
        if reading.energy_wh is not None:
            self.last_energy_wh = int(reading.energy_wh)
        event = classify(reading)
        if event is Event.FAULT:
            assert reading.state is not None
            code = "OtherError"
            if reading.state.pilot is Pilot.E:
                code = "EVCommunicationError"  # pilot E: short or diode fault on the EV side
            return self._fault(code, f"pilot {reading.state.pilot.value}, vendor state {reading.vendor_state}", wall)
        if event is Event.UNPLUGGED and not self.stop_on_unplug:
            event = Event.EV_LEFT
        return self._apply(event, wall, "NoError", None)

    def on_lost(self, why: str, wall: float) -> list[Effect]:
        """The slave stopped answering: Faulted, but an open transaction stays open until the EV is seen leaving."""
        return self._fault("OtherError", f"slave not answering: {why}", wall)

    def authorize(self, id_tag: str, wall: float, key: str | None = None, reservation_id: int | None = None) -> list[Effect]:
        """Open a transaction for the plugged EV; meterStart is the last energy register read."""
        if self.last_energy_wh is None:
            raise IllegalTransition(f"connector {self.id}: no energy reading yet to start a transaction from")
        if not self.operative:
            raise IllegalTransition(f"connector {self.id}: inoperative, no transaction can start")
        tx = Transaction(key or uuid.uuid4().hex, id_tag, self.last_energy_wh, wall, reservation_id)
        return self._apply(Event.AUTHORIZED, wall, self.error_code, self.info, tx=tx)

    def stop(self, reason: str, wall: float) -> list[Effect]:
        return self._apply(Event.STOP, wall, self.error_code, self.info, reason=reason)

    def _fault(self, code: str, info: str, wall: float) -> list[Effect]:
        return self._apply(Event.FAULT, wall, code, info)

    def _apply(
        self,
        event: Event,
        wall: float,
        error_code: str,
        info: str | None,
        tx: Transaction | None = None,
        reason: str = "EVDisconnected",
    ) -> list[Effect]:
        cell = TRANSITIONS[self.state].get(event)
        if cell is None:
            raise IllegalTransition(f"connector {self.id}: {event.value} is illegal in {self.state.name}")
        new_state, actions = cell
        effects: list[Effect] = []
        for action in actions:
            if action is Action.START_TX:
                assert tx is not None
                self.transaction = tx
                effects.append(TransactionStarted(self.id, tx))
            else:
                assert self.transaction is not None and self.last_energy_wh is not None
                effects.append(TransactionStopped(self.id, self.transaction, self.last_energy_wh, reason, wall))
                self.transaction = None
        old = (self.status, self.error_code, self.info)
        self.state, self.error_code, self.info = new_state, error_code, info
        if (self.status, error_code, info) != old:
            effects.append(StatusChanged(self.id, self.status, error_code, info, wall))
        return effects
