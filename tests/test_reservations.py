"""Reservations: ReserveNow, CancelReservation, who may use a reserved connector (OCPP 1.6 §3.11, §5.1, §5.13)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.reservations import (
    CancelStatus,
    Reservation,
    ReservationError,
    Reservations,
    ReservationStatus,
)

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
FREE = {1: "Available", 2: "Available", 3: "Available"}


def res(
    rid: int = 1, connector: int = 1, tag: str = "ALICE", parent: str | None = None, expiry: datetime = NOW + HOUR
) -> Reservation:
    return Reservation(rid, connector, tag, parent, expiry)


def test_from_wire_round_trip() -> None:
    wire = {"reservationId": 7, "connectorId": 2, "idTag": "ALICE", "parentIdTag": "FAMILY",
            "expiryDate": "2026-05-01T13:00:00.000Z"}
    r = Reservation.from_wire(wire)
    assert r == res(7, 2, "ALICE", "FAMILY")
    assert r.to_wire() == wire
    assert "parentIdTag" not in res().to_wire()
    with pytest.raises(ReservationError):
        Reservation.from_wire({"reservationId": 1, "connectorId": 1, "idTag": "A", "expiryDate": "later"})
    with pytest.raises(ReservationError):
        Reservation.from_wire({"connectorId": 1})


def test_reserve_available_connector() -> None:
    book = Reservations()
    result = book.reserve(res(), FREE, NOW)
    assert result.status is ReservationStatus.ACCEPTED and result.replaced is None
    assert book.is_reserved(1, NOW) and not book.is_reserved(2, NOW)
    assert book.reservation_for(1) == res()
    assert book.reservation_for(2) is None


@pytest.mark.parametrize("status,answer", [
    ("Preparing", ReservationStatus.OCCUPIED),
    ("Charging", ReservationStatus.OCCUPIED),
    ("SuspendedEV", ReservationStatus.OCCUPIED),
    ("SuspendedEVSE", ReservationStatus.OCCUPIED),
    ("Finishing", ReservationStatus.OCCUPIED),
    ("Reserved", ReservationStatus.OCCUPIED),
    ("Faulted", ReservationStatus.FAULTED),
    ("Unavailable", ReservationStatus.UNAVAILABLE),
])
def test_reserve_busy_connector(status: str, answer: ReservationStatus) -> None:
    book = Reservations()
    assert book.reserve(res(), {**FREE, 1: status}, NOW).status is answer
    assert len(book) == 0


@pytest.mark.parametrize("reservation", [
    res(connector=0),                 # ReserveConnectorZeroSupported is false
    res(connector=9),                 # no such connector
    res(expiry=NOW),                  # already expired
    res(expiry=NOW - HOUR),
])
def test_reserve_rejected(reservation: Reservation) -> None:
    book = Reservations()
    assert book.reserve(reservation, FREE, NOW).status is ReservationStatus.REJECTED
    assert len(book) == 0


def test_reserved_connector_is_occupied_for_another_reservation() -> None:
    book = Reservations()
    book.reserve(res(1, 1, "ALICE"), FREE, NOW)
    # the lead has not sent StatusNotification Reserved yet: our own record still counts
    assert book.reserve(res(2, 1, "BOB"), FREE, NOW).status is ReservationStatus.OCCUPIED
    assert book.reserve(res(2, 1, "BOB"), {**FREE, 1: "Reserved"}, NOW).status is ReservationStatus.OCCUPIED
    assert book.reservation_for(1) == res(1, 1, "ALICE")


def test_same_reservation_id_replaces() -> None:
    book = Reservations()
    book.reserve(res(1, 1, "ALICE"), FREE, NOW)
    # same connector, new tag and expiry: the connector shows Reserved by this very reservation
    newer = res(1, 1, "ALICE2", expiry=NOW + 2 * HOUR)
    result = book.reserve(newer, {**FREE, 1: "Reserved"}, NOW)
    assert result.status is ReservationStatus.ACCEPTED and result.replaced == res(1, 1, "ALICE")
    assert book.reservation_for(1) == newer
    # moved to connector 2: connector 1 is free again
    moved = res(1, 2, "ALICE2")
    result = book.reserve(moved, {**FREE, 1: "Reserved"}, NOW)
    assert result.status is ReservationStatus.ACCEPTED and result.replaced == newer
    assert book.reservation_for(1) is None and book.reservation_for(2) == moved
    assert len(book) == 1


def test_failed_replacement_keeps_the_old_reservation() -> None:
    book = Reservations()
    book.reserve(res(1, 1), FREE, NOW)
    assert book.reserve(res(1, 2), {**FREE, 2: "Charging"}, NOW).status is ReservationStatus.OCCUPIED
    assert book.reservation_for(1) == res(1, 1)


def test_cancel() -> None:
    book = Reservations()
    book.reserve(res(5, 3), FREE, NOW)
    missing = book.cancel(6)
    assert missing.status is CancelStatus.REJECTED and missing.cancelled is None
    done = book.cancel(5)
    assert done.status is CancelStatus.ACCEPTED and done.cancelled == res(5, 3)
    assert book.cancel(5).status is CancelStatus.REJECTED
    assert len(book) == 0


def test_expired_removes_and_returns_in_expiry_order() -> None:
    book = Reservations()
    book.reserve(res(1, 1, expiry=NOW + 2 * HOUR), FREE, NOW)
    book.reserve(res(2, 2, expiry=NOW + HOUR), FREE, NOW)
    book.reserve(res(3, 3, expiry=NOW + 3 * HOUR), FREE, NOW)
    assert book.expired(NOW) == []
    assert not book.is_reserved(2, NOW + HOUR)  # expiry is the end
    assert [r.reservation_id for r in book.expired(NOW + 2 * HOUR)] == [2, 1]
    assert len(book) == 1 and book.is_reserved(3, NOW + 2 * HOUR)


def test_faulted_or_unavailable_connector_ends_reservation() -> None:
    book = Reservations()
    book.reserve(res(1, 1), FREE, NOW)
    book.reserve(res(2, 2), FREE, NOW)
    assert book.on_connector_status(1, "Preparing") == []
    assert book.on_connector_status(1, "Faulted") == [res(1, 1)]
    assert book.on_connector_status(2, "Unavailable") == [res(2, 2)]
    assert book.on_connector_status(3, "Faulted") == []
    assert len(book) == 0


@pytest.mark.parametrize("tag,parent,allowed", [
    ("ALICE", None, True),
    ("alice", None, True),              # CiString
    ("BOB", None, False),
    ("BOB", "FAMILY", True),            # same parent as the reservation
    ("FAMILY", None, True),             # the parent tag itself
    ("BOB", "ALICE", True),             # a child of the reserved tag
    ("BOB", "OTHERS", False),
])
def test_may_start_on_reserved_connector(tag: str, parent: str | None, allowed: bool) -> None:
    book = Reservations()
    book.reserve(res(1, 1, "ALICE", "FAMILY"), FREE, NOW)
    assert book.may_start(1, tag, parent, NOW) is allowed
    assert book.may_start(2, tag, parent, NOW)  # unreserved connectors take anyone
    assert book.may_start(1, tag, parent, NOW + HOUR)  # expired: anyone


def test_tag_with_a_reservation_elsewhere_may_charge_at_a_free_connector() -> None:
    book = Reservations()
    book.reserve(res(1, 1, "ALICE"), FREE, NOW)
    book.reserve(res(2, 2, "BOB"), FREE, NOW)
    assert book.may_start(3, "ALICE", None, NOW)
    assert not book.may_start(2, "ALICE", None, NOW)


def test_needs_parent() -> None:
    book = Reservations()
    book.reserve(res(1, 1, "ALICE", "FAMILY"), FREE, NOW)
    book.reserve(res(2, 2, "BOB"), FREE, NOW)
    assert book.needs_parent(1, "CAROL", NOW)
    assert not book.needs_parent(1, "ALICE", NOW)  # matches directly
    assert not book.needs_parent(2, "CAROL", NOW)  # no parent to match: simply refused
    assert not book.needs_parent(3, "CAROL", NOW)
    assert not book.needs_parent(1, "CAROL", NOW + HOUR)


def test_consume() -> None:
    book = Reservations()
    book.reserve(res(9, 2), FREE, NOW)
    assert book.reservation_for(2) == res(9, 2)
    assert book.consume(2) == res(9, 2)
    assert book.reservation_for(2) is None
    with pytest.raises(ReservationError):
        book.consume(2)


def test_json_round_trip() -> None:
    book = Reservations()
    book.reserve(res(1, 3, "A", "P"), FREE, NOW)
    book.reserve(res(2, 1, "B"), FREE, NOW)
    snapshot = json.loads(json.dumps(book.to_json()))
    again = Reservations.from_json(snapshot)
    assert again.to_json() == book.to_json()
    assert again.reservation_for(3) == res(1, 3, "A", "P")
    with pytest.raises(ReservationError):
        Reservations.from_json(snapshot + [res(3, 1).to_wire()])
    with pytest.raises(ReservationError):
        Reservations.from_json(snapshot + [res(1, 2).to_wire()])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["reserve", "cancel", "expire", "consume"]),
    st.integers(min_value=1, max_value=4),   # reservation id
    st.integers(min_value=0, max_value=4),   # connector (0 and 4 are rejected)
    st.integers(min_value=-1, max_value=5),  # expiry, hours from now
), max_size=25))
def test_invariants_under_any_sequence(ops: list[tuple[str, int, int, int]]) -> None:
    book = Reservations()
    for op, rid, connector, hours in ops:
        if op == "reserve":
            book.reserve(res(rid, connector, expiry=NOW + timedelta(hours=hours)), FREE, NOW)
        elif op == "cancel":
            book.cancel(rid)
        elif op == "expire":
            book.expired(NOW + timedelta(hours=hours))
        elif book.reservation_for(connector) is not None:
            book.consume(connector)
        held = [book.reservation_for(c) for c in (1, 2, 3)]
        ids = [r.reservation_id for r in held if r is not None]
        assert len(ids) == len(set(ids)) == len(book)  # one reservation per id and per connector
        assert all(r is None or r.connector_id == c for c, r in zip((1, 2, 3), held, strict=True))
        assert book.reservation_for(0) is None and book.reservation_for(4) is None
