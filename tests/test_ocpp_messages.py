"""OCPP payloads from readings: measurands, phases, compact values."""

from __future__ import annotations

import gateway
from gateway.clock import Clock
from gateway.ocpp_messages import boot_notification, meter_value, sampled_values, status_notification
from gateway.reading import Reading
from gateway.settings import ChargePointInfo

READING = Reading(energy_wh=123456.0, power_w=11040.0, current_a=(16.0, 16.0, 15.9), voltage_v=(230.0, 231.0, 229.0))


def test_sampled_values_follow_the_configured_measurands() -> None:
    values = sampled_values(READING, ["Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage"])
    assert values[0] == {"value": "123456", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
    assert values[1] == {"value": "11040", "measurand": "Power.Active.Import", "unit": "W"}
    assert [(v["phase"], v["value"]) for v in values[2:5]] == [("L1", "16"), ("L2", "16"), ("L3", "15.9")]
    assert [(v["phase"], v["unit"]) for v in values[5:]] == [("L1-N", "V"), ("L2-N", "V"), ("L3-N", "V")]
    assert all("context" not in v for v in values), "Sample.Periodic is the default; not sent"


def test_other_contexts_are_sent_and_missing_values_skipped() -> None:
    values = sampled_values(Reading(energy_wh=5.0), ["Energy.Active.Import.Register", "Power.Active.Import"], context="Transaction.End")
    assert values == [{"value": "5", "measurand": "Energy.Active.Import.Register", "unit": "Wh", "context": "Transaction.End"}]


def test_timestamps_are_utc_with_z() -> None:
    entry = meter_value(READING, ["Power.Active.Import"], 1_790_000_000.0, Clock())
    assert entry["timestamp"] == "2026-09-21T14:13:20.000Z"
    status = status_notification(3, "Faulted", "OtherError", "x" * 80, 1_790_000_000.0, Clock())
    assert len(status["info"]) == 50  # CiString50Type


def test_boot_notification_carries_the_serial_and_the_sim_ids_only_when_known() -> None:
    bare = boot_notification(ChargePointInfo("CP-1", "Vendor", "Model"))
    assert bare == {"chargePointVendor": "Vendor", "chargePointModel": "Model", "firmwareVersion": gateway.__version__}
    full = boot_notification(ChargePointInfo("CP-1", "Vendor", "Model", "SN-1"), {"iccid": "8949", "imsi": "2620"})
    assert full == bare | {"chargePointSerialNumber": "SN-1", "iccid": "8949", "imsi": "2620"}
