"""OCPP 1.6J payloads built from session effects and readings, pure.

Payloads are plain camelCase dicts, exactly as they go on the wire, so that a
queued message is stored once and replayed byte for byte. transactionId is
left out of Stop/MeterValues here: it is resolved from the local session key
at send time (ocpp-gateway-notes.md, field failure 1).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence

import gateway
from gateway.clock import EARLIEST_VALID, Clock
from gateway.reading import Reading
from gateway.session import TransactionStarted, TransactionStopped
from gateway.settings import ChargePointInfo

# Measurands we can fill from a Reading, with their OCPP unit (OCPP 1.6 §7.31, §7.43).
_PHASES = ("L1", "L2", "L3")


def new_message_id() -> str:
    """A CALL's unique id: 12 hex digits, unique enough within one connection and short on a GPRS link."""
    return uuid.uuid4().hex[:12]


def boot_notification(info: ChargePointInfo, extra: Mapping[str, str] | None = None) -> dict:
    """BootNotification.req (OCPP 1.6 §4.2); `extra`: the modem's iccid and imsi, where known."""
    payload: dict = {"chargePointVendor": info.vendor, "chargePointModel": info.model, "firmwareVersion": gateway.__version__}
    if info.serial_number:
        payload["chargePointSerialNumber"] = info.serial_number
    return payload | dict(extra or {})


def start_transaction(effect: TransactionStarted, clock: Clock) -> dict:
    tx = effect.transaction
    payload: dict = {
        "connectorId": effect.connector_id,
        "idTag": tx.id_tag,
        "meterStart": tx.meter_start_wh,
        "timestamp": clock.utc_iso(tx.started_wall),
    }
    if tx.reservation_id is not None:
        payload["reservationId"] = tx.reservation_id
    return payload


def stop_transaction(effect: TransactionStopped, clock: Clock) -> dict:
    return {
        "idTag": effect.transaction.id_tag,
        "meterStop": effect.meter_stop_wh,
        "timestamp": clock.utc_iso(effect.wall),
        "reason": effect.reason,
    }


def _value(number: float) -> str:
    """OCPP sampled values are strings; keep them short (GPRS bytes) but exact to 0.1."""
    text = f"{number:.1f}"
    return text[:-2] if text.endswith(".0") else text


def sampled_values(reading: Reading, measurands: Sequence[str], context: str = "Sample.Periodic") -> list[dict]:
    """The sampledValue list for one meterValue entry, in the order of `measurands` (MeterValuesSampledData)."""
    out: list[dict] = []

    def add(measurand: str, number: float | None, unit: str, phase: str | None = None) -> None:
        if number is None:
            return
        item = {"value": _value(number), "measurand": measurand, "unit": unit}
        if context != "Sample.Periodic":  # the default (OCPP 1.6 §7.37): 25 bytes a value saved on GPRS
            item["context"] = context
        if phase:
            item["phase"] = phase
        out.append(item)

    for measurand in measurands:
        if measurand == "Energy.Active.Import.Register":
            add(measurand, reading.energy_wh, "Wh")
        elif measurand == "Power.Active.Import":
            add(measurand, reading.power_w, "W")
        elif measurand == "Current.Import":
            for phase, amps in zip(_PHASES, reading.current_a, strict=True):
                add(measurand, amps, "A", phase)
        elif measurand == "Voltage":
            for phase, volts in zip(_PHASES, reading.voltage_v, strict=True):
                add(measurand, volts, "V", f"{phase}-N")
        elif measurand == "Current.Offered":  # the limit the box applies, where it can be read back
            add(measurand, reading.applied_limit_a, "A")
    return out


def meter_value(reading: Reading, measurands: Sequence[str], wall: float, clock: Clock, context: str = "Sample.Periodic") -> dict:
    """One meterValue entry: a timestamp and its sampled values."""
    return {"timestamp": clock.utc_iso(wall), "sampledValue": sampled_values(reading, measurands, context)}


def meter_values(connector_id: int, entries: Sequence[dict]) -> dict:
    return {"connectorId": connector_id, "meterValue": list(entries)}


def status_notification(connector_id: int, status: str, error_code: str, info: str | None, wall: float, clock: Clock) -> dict:
    payload: dict = {"connectorId": connector_id, "errorCode": error_code, "status": status}
    if wall >= EARLIEST_VALID:  # optional; never a time from before the clock was set
        payload["timestamp"] = clock.utc_iso(wall)
    if info:
        payload["info"] = info[:50]  # CiString50Type
    return payload
