"""Reservations: ReserveNow (OCPP 1.6 §5.13), CancelReservation (§5.1), and who may use a reserved connector (§3.11).

Pure; time comes in as `now` (aware UTC datetime). The gateway sends the
StatusNotifications (Reserved, and Available when a reservation ends); this
module only says which reservation began or ended.

Decisions:
- ReserveConnectorZeroSupported is false (§9.3): a reservation of connectorId 0 is
  Rejected. Reserving "any connector" of a cluster would mean holding one slave free
  without knowing which, and no backend we target needs it.
- A ReserveNow for a connectorId the cluster does not have, or with an expiryDate not
  after `now`, is Rejected.
- A ReserveNow with the reservationId of an existing reservation replaces it (§5.13),
  also when it moves to another connector; the old reservation is kept if the new one
  is not Accepted.
- An idTag may hold reservations on several connectors (the spec does not forbid it),
  and may charge at any connector that is not reserved for someone else. A reservation
  ends only by a transaction on its own connector, by expiry, by CancelReservation, or
  by its connector becoming Faulted or Unavailable (§5.13).
- The idTags a reserved connector takes (§5.13): the incoming idTag or its parent idTag
  matches the reservation's idTag or parentIdTag. idTags are CiString20Type, compared
  case-insensitively.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.clock import parse_wire_time, wire_time
from gateway.errors import GatewayError


class ReservationError(GatewayError):
    """A reservation was used that does not exist, or a snapshot or request is malformed."""


class ReservationStatus(enum.Enum):
    """ReserveNow.conf status (OCPP 1.6 §5.13), values as on the wire."""

    ACCEPTED = "Accepted"
    FAULTED = "Faulted"
    OCCUPIED = "Occupied"
    REJECTED = "Rejected"
    UNAVAILABLE = "Unavailable"


class CancelStatus(enum.Enum):
    """CancelReservation.conf status (OCPP 1.6 §5.1)."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


# The ChargePointStatus a connector must show to take a new reservation, and what the
# other statuses answer (§5.13). "Reserved" by another reservation is Occupied too.
_STATUS_ANSWER = {
    "Available": ReservationStatus.ACCEPTED,
    "Faulted": ReservationStatus.FAULTED,
    "Unavailable": ReservationStatus.UNAVAILABLE,
}
_ENDS_RESERVATION = frozenset({"Faulted", "Unavailable"})


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.lower() == b.lower()


@dataclass(frozen=True)
class Reservation:
    reservation_id: int
    connector_id: int
    id_tag: str
    parent_id_tag: str | None
    expiry: datetime

    @classmethod
    def from_wire(cls, payload: Mapping[str, Any]) -> Reservation:
        """From a ReserveNow.req payload (camelCase, as on the wire)."""
        try:
            return cls(
                reservation_id=int(payload["reservationId"]),
                connector_id=int(payload["connectorId"]),
                id_tag=str(payload["idTag"]),
                parent_id_tag=str(payload["parentIdTag"]) if payload.get("parentIdTag") is not None else None,
                expiry=parse_wire_time(payload["expiryDate"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReservationError(f"malformed reservation: {exc}") from exc

    def to_wire(self) -> dict[str, Any]:
        """The ReserveNow.req form; also the snapshot form."""
        out: dict[str, Any] = {
            "reservationId": self.reservation_id,
            "connectorId": self.connector_id,
            "idTag": self.id_tag,
            "expiryDate": wire_time(self.expiry),
        }
        if self.parent_id_tag is not None:
            out["parentIdTag"] = self.parent_id_tag
        return out

    def admits(self, id_tag: str, parent_id_tag: str | None) -> bool:
        """§5.13: the incoming idTag or its parent matches the reserved idTag or parentIdTag."""
        mine = (self.id_tag, self.parent_id_tag)
        return any(_same(theirs, ours) for theirs in (id_tag, parent_id_tag) for ours in mine)


@dataclass(frozen=True)
class ReserveResult:
    status: ReservationStatus
    replaced: Reservation | None = None  # the earlier reservation with this reservationId, now gone (Accepted only)


@dataclass(frozen=True)
class CancelResult:
    status: CancelStatus
    cancelled: Reservation | None = None  # its connector goes back to Available (Accepted only)


class Reservations:
    """The reservations in force, at most one per connector."""

    def __init__(self) -> None:
        self._by_connector: dict[int, Reservation] = {}

    def __len__(self) -> int:
        return len(self._by_connector)

    def reserve(self, reservation: Reservation, connector_status: Mapping[int, str], now: datetime) -> ReserveResult:
        """ReserveNow.req (§5.13). `connector_status`: the OCPP ChargePointStatus of every connector, 1..N."""
        if reservation.connector_id == 0 or reservation.connector_id not in connector_status:
            return ReserveResult(ReservationStatus.REJECTED)
        if reservation.expiry <= now:
            return ReserveResult(ReservationStatus.REJECTED)
        previous = self._by_id(reservation.reservation_id)
        holder = self._by_connector.get(reservation.connector_id)
        if holder is not None and holder.reservation_id != reservation.reservation_id:
            return ReserveResult(ReservationStatus.OCCUPIED)  # reserved for another reservation (§5.13)
        status = connector_status[reservation.connector_id]
        if status == "Reserved" and holder is not None:
            status = "Available"  # reserved by the very reservation this one replaces
        answer = _STATUS_ANSWER.get(status, ReservationStatus.OCCUPIED)
        if answer is not ReservationStatus.ACCEPTED:
            return ReserveResult(answer)
        if previous is not None:
            del self._by_connector[previous.connector_id]
        self._by_connector[reservation.connector_id] = reservation
        return ReserveResult(ReservationStatus.ACCEPTED, previous)

    def cancel(self, reservation_id: int) -> CancelResult:
        """CancelReservation.req (§5.1): Rejected when no reservation has this id."""
        found = self._by_id(reservation_id)
        if found is None:
            return CancelResult(CancelStatus.REJECTED)
        del self._by_connector[found.connector_id]
        return CancelResult(CancelStatus.ACCEPTED, found)

    def expired(self, now: datetime) -> list[Reservation]:
        """Remove and return the reservations whose expiryDate has come (§5.13), oldest expiry first."""
        gone = sorted((r for r in self._by_connector.values() if r.expiry <= now), key=lambda r: r.expiry)
        for r in gone:
            del self._by_connector[r.connector_id]
        return gone

    def on_connector_status(self, connector_id: int, status: str) -> list[Reservation]:
        """A connector turned Faulted or Unavailable ends its reservation (§5.13); returns what ended."""
        if status in _ENDS_RESERVATION and connector_id in self._by_connector:
            return [self._by_connector.pop(connector_id)]
        return []

    def reservation_for(self, connector_id: int) -> Reservation | None:
        """The reservation on a connector, expired or not (call `expired` first); None when there is none."""
        return self._by_connector.get(connector_id)

    def is_reserved(self, connector_id: int, now: datetime) -> bool:
        r = self._by_connector.get(connector_id)
        return r is not None and r.expiry > now

    def may_start(self, connector_id: int, id_tag: str, parent_id_tag: str | None, now: datetime) -> bool:
        """Whether `id_tag` (whose parent is `parent_id_tag`, if known) may charge at this connector now."""
        r = self._by_connector.get(connector_id)
        if r is None or r.expiry <= now:
            return True
        return r.admits(id_tag, parent_id_tag)

    def needs_parent(self, connector_id: int, id_tag: str, now: datetime) -> bool:
        """The tag does not match the reservation directly, but its parent might: look the parent up
        (local list or cache, else Authorize.req) before refusing (§3.10, §5.13).
        """
        r = self._by_connector.get(connector_id)
        return r is not None and r.expiry > now and r.parent_id_tag is not None and not r.admits(id_tag, None)

    def consume(self, connector_id: int) -> Reservation:
        """A transaction starts on a reserved connector: end its reservation and return it.

        Its reservationId goes into the StartTransaction.req (§5.13). Raises ReservationError
        when the connector has no reservation.
        """
        r = self._by_connector.pop(connector_id, None)
        if r is None:
            raise ReservationError(f"connector {connector_id} has no reservation")
        return r

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_wire() for r in sorted(self._by_connector.values(), key=lambda r: r.connector_id)]

    @classmethod
    def from_json(cls, data: list[Mapping[str, Any]]) -> Reservations:
        out = cls()
        for item in data:
            r = Reservation.from_wire(item)
            if r.connector_id in out._by_connector or out._by_id(r.reservation_id) is not None:
                raise ReservationError(f"reservation snapshot holds connector {r.connector_id} or id twice")
            out._by_connector[r.connector_id] = r
        return out

    def _by_id(self, reservation_id: int) -> Reservation | None:
        return next((r for r in self._by_connector.values() if r.reservation_id == reservation_id), None)
