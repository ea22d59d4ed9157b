"""The configuration key registry: ChangeConfiguration / GetConfiguration (OCPP 1.6 §5.3, §5.8, §9)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ocpp_config import (
    KEYS,
    MEASURANDS,
    ChangeStatus,
    InvalidValue,
    Kind,
    OcppConfigError,
    OcppConfiguration,
    TooManyKeys,
    seed_from_settings,
    wire_value,
)
from gateway.settings import OcppSettings

NOTES_KEYS = (
    "HeartbeatInterval MeterValueSampleInterval MeterValuesSampledData ClockAlignedDataInterval "
    "MeterValuesAlignedData StopTxnSampledData StopTxnAlignedData ConnectionTimeOut LocalAuthorizeOffline "
    "LocalPreAuthorize AllowOfflineTxForUnknownId AuthorizationCacheEnabled StopTransactionOnInvalidId "
    "StopTransactionOnEVSideDisconnect UnlockConnectorOnEVSideDisconnect TransactionMessageAttempts "
    "TransactionMessageRetryInterval WebSocketPingInterval NumberOfConnectors SupportedFeatureProfiles "
    "LocalAuthListEnabled LocalAuthListMaxLength SendLocalListMaxLength ChargeProfileMaxStackLevel "
    "ChargingScheduleAllowedChargingRateUnit ChargingScheduleMaxPeriods MaxChargingProfilesInstalled "
    "AuthorizationKey SecurityProfile GetConfigurationMaxKeys ResetRetries MeterValuesSampledDataMaxLength "
    "SupportedFeatureProfilesMaxLength ConnectorPhaseRotation ConnectorPhaseRotationMaxLength "
    "MinimumStatusDuration StopTxnSampledDataMaxLength"
).split()

KEY_HEX = "00112233445566778899AABBCCDDEEFF"  # 16 bytes
EAIR = "Energy.Active.Import.Register"


def cfg() -> OcppConfiguration:
    return OcppConfiguration(3)


def as_dict(config: OcppConfiguration) -> dict[str, dict]:
    found, unknown = config.get()
    assert unknown == []
    return {e["key"]: e for e in found}


# --- the registry -------------------------------------------------------------


def test_registry_covers_every_key_of_the_notes() -> None:
    assert set(NOTES_KEYS) <= set(KEYS)


def test_every_default_passes_its_own_parser() -> None:
    config = cfg()
    for name, definition in KEYS.items():
        if name == "AuthorizationKey":
            continue  # '' means never set; the backend cannot set it back to ''
        assert definition.parse(config.value(name), config.value) == config.value(name), name


def test_defaults_the_platform_asks_for() -> None:
    config = cfg()
    assert config.value("MeterValuesSampledData") == "Energy.Active.Import.Register,Power.Active.Import"
    assert config.value("MeterValueSampleInterval") == "60"
    assert config.value("SupportedFeatureProfiles") == (
        "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger"
    )
    assert config.int_value("NumberOfConnectors") == 3
    assert config.int_value("ConnectorPhaseRotationMaxLength") == 4
    assert config.int_value("GetConfigurationMaxKeys") == len(KEYS)
    assert "SoC" not in MEASURANDS


def test_left_out_keys_are_not_supported() -> None:
    config = cfg()
    for key in ("LightIntensity", "BlinkRepeat", "MaxEnergyOnInvalidId", "CpoName"):
        assert config.change(key, "1").status is ChangeStatus.NOT_SUPPORTED
    assert config.get(["LightIntensity"]) == ([], ["LightIntensity"])


# --- ChangeConfiguration ----------------------------------------------------------


@pytest.mark.parametrize("key,value,expected", [
    ("HeartbeatInterval", "900", "900"),
    ("HeartbeatInterval", " +900 ", "900"),
    ("MeterValueSampleInterval", "0", "0"),
    ("LocalPreAuthorize", "TRUE", "true"),
    ("LocalPreAuthorize", "False", "false"),
    ("MeterValuesSampledData", "Energy.Active.Import.Register, Power.Active.Import", f"{EAIR},Power.Active.Import"),
    ("MeterValuesSampledData", "Voltage,Voltage,Current.Import", "Voltage,Current.Import"),
    ("StopTxnSampledData", "", ""),
    ("ConnectorPhaseRotation", "0.RST,1.RST,3.RTS", "0.RST,1.RST,3.RTS"),
    ("SecurityProfile", "2", "2"),
])
def test_change_accepted(key: str, value: str, expected: str) -> None:
    config = cfg()
    result = config.change(key, value)
    assert result.status is ChangeStatus.ACCEPTED, result.reason
    assert config.value(key) == expected


@pytest.mark.parametrize("key,value", [
    ("HeartbeatInterval", "-1"),
    ("HeartbeatInterval", "86401"),
    ("HeartbeatInterval", "ten"),
    ("HeartbeatInterval", "1.5"),
    ("HeartbeatInterval", ""),
    ("LocalPreAuthorize", "yes"),
    ("LocalPreAuthorize", "1"),
    ("MeterValuesSampledData", "Energy.Active.Import.Register,SoC"),
    ("MeterValuesSampledData", "Voltage.L1"),
    ("MeterValuesSampledData", "Voltage,,Power.Active.Import"),
    ("MeterValuesSampledData", "x" * 501),
    ("ConnectorPhaseRotation", "4.RST"),
    ("ConnectorPhaseRotation", "1.XYZ"),
    ("ConnectorPhaseRotation", "1.RST,1.RTS"),
    ("SecurityProfile", "4"),
])
def test_change_rejected_leaves_value(key: str, value: str) -> None:
    config = cfg()
    before = config.value(key)
    result = config.change(key, value)
    assert result.status is ChangeStatus.REJECTED
    assert result.reason
    assert config.value(key) == before


def test_too_many_measurands_for_max_length() -> None:
    config = cfg()
    six = ",".join(MEASURANDS) + ",Energy.Active.Import.Register"  # a duplicate is dropped, so 5 members: fine
    assert config.change("MeterValuesSampledData", six).status is ChangeStatus.ACCEPTED
    seeded = OcppConfiguration(3, {"MeterValuesSampledDataMaxLength": 2})
    three = "Voltage,Current.Import,Power.Active.Import"
    assert seeded.change("MeterValuesSampledData", three).status is ChangeStatus.REJECTED
    assert seeded.change("MeterValuesSampledData", "Voltage,Current.Import").status is ChangeStatus.ACCEPTED


def test_unknown_key_not_supported_readonly_rejected() -> None:
    config = cfg()
    assert config.change("NoSuchKey", "1").status is ChangeStatus.NOT_SUPPORTED
    for key in ("NumberOfConnectors", "SupportedFeatureProfiles", "LocalAuthListMaxLength", "GetConfigurationMaxKeys",
                "UnlockConnectorOnEVSideDisconnect", "ReserveConnectorZeroSupported"):
        result = config.change(key, config.value(key))
        assert result.status is ChangeStatus.REJECTED, key
        assert result.reason == "read-only"


def test_keys_match_case_insensitively() -> None:
    config = cfg()
    result = config.change("websocketpinginterval", "180")  # steve#406: one backend wants 180
    assert result.status is ChangeStatus.ACCEPTED
    assert result.key == "WebSocketPingInterval"
    assert config.int_value("WebSocketPingInterval") == 180
    found, unknown = config.get(["WEBSOCKETPINGINTERVAL"])
    assert found == [{"key": "WebSocketPingInterval", "readonly": False, "value": "180"}]


def test_never_reboot_required() -> None:
    config = cfg()
    for name, definition in KEYS.items():
        if not definition.readonly:
            assert config.change(name, config.value(name) or KEY_HEX).status is not ChangeStatus.REBOOT_REQUIRED


# --- security keys -------------------------------------------------------------------


def test_security_profile_only_raised() -> None:
    config = cfg()
    assert config.change("SecurityProfile", "1").status is ChangeStatus.ACCEPTED
    result = config.change("SecurityProfile", "2")
    assert result.status is ChangeStatus.ACCEPTED and result.reconnect
    assert config.change("SecurityProfile", "1").status is ChangeStatus.REJECTED
    assert config.change("SecurityProfile", "0").status is ChangeStatus.REJECTED
    assert config.change("SecurityProfile", "2").status is ChangeStatus.ACCEPTED  # same is not lower
    assert config.int_value("SecurityProfile") == 2


def test_security_profile_capped_by_installation() -> None:
    config = OcppConfiguration(2, {"SecurityProfile": 2}, max_security_profile=2)
    assert config.change("SecurityProfile", "3").status is ChangeStatus.REJECTED
    assert config.change("SecurityProfile", "1").status is ChangeStatus.REJECTED


@pytest.mark.parametrize("value,ok", [
    (KEY_HEX, True),
    (KEY_HEX.lower() + "01020304", True),  # 18 bytes, lower case
    ("00" * 20, True),
    ("00" * 15, False),
    ("00" * 21, False),
    ("0" * 33, False),
    ("secretpassword1234", False),
])
def test_authorization_key_format(value: str, ok: bool) -> None:
    result = cfg().change("AuthorizationKey", value)
    assert (result.status is ChangeStatus.ACCEPTED) is ok
    assert value not in result.reason


def test_authorization_key_is_write_only_and_hidden() -> None:
    config = cfg()
    assert config.authorization_key() is None
    result = config.change("AuthorizationKey", KEY_HEX.lower())
    assert result.status is ChangeStatus.ACCEPTED and result.reconnect
    assert config.authorization_key() == bytes.fromhex(KEY_HEX)
    entry = as_dict(config)["AuthorizationKey"]
    assert entry == {"key": "AuthorizationKey", "readonly": False}
    found, _ = config.get(["AuthorizationKey"])
    assert "value" not in found[0]
    assert KEY_HEX not in repr(config) and KEY_HEX.lower() not in repr(config)
    assert "<redacted>" in repr(config)
    assert KEYS["AuthorizationKey"].write_only


# --- GetConfiguration -----------------------------------------------------------------


def test_get_all_and_some() -> None:
    config = cfg()
    all_keys = as_dict(config)
    assert len(all_keys) == len(KEYS)
    assert all_keys["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True, "value": "3"}
    found, unknown = config.get(["HeartbeatInterval", "Nope", "heartbeatinterval", "Nope"])
    assert found == [{"key": "HeartbeatInterval", "readonly": False, "value": "3600"}]
    assert unknown == ["Nope"]
    assert config.get([]) == config.get(None)


def test_get_configuration_max_keys() -> None:
    config = cfg()
    limit = config.int_value("GetConfigurationMaxKeys")
    config.get(list(KEYS)[:limit])
    with pytest.raises(TooManyKeys) as err:
        config.get(list(KEYS) + ["Extra"])
    assert err.value.ocpp_error_code == "OccurrenceConstraintViolation"


def test_result_is_json() -> None:
    json.dumps(cfg().get())


# --- typed accessors --------------------------------------------------------------------


def test_typed_accessors() -> None:
    config = cfg()
    assert config.int_value("HeartbeatInterval") == 3600
    assert config.bool_value("LocalAuthorizeOffline") is True
    assert config.csl_value("MeterValuesSampledData") == ["Energy.Active.Import.Register", "Power.Active.Import"]
    assert config.csl_value("StopTxnSampledData") == []
    with pytest.raises(OcppConfigError):
        config.int_value("LocalPreAuthorize")
    with pytest.raises(OcppConfigError):
        config.bool_value("HeartbeatInterval")
    with pytest.raises(OcppConfigError):
        config.value("NoSuchKey")
    for name, definition in KEYS.items():
        if definition.kind is Kind.INT:
            config.int_value(name)
        elif definition.kind is Kind.BOOL:
            config.bool_value(name)
        elif definition.kind is Kind.CSL:
            config.csl_value(name)


# --- seed and persistence ---------------------------------------------------------------


def test_seed_from_settings() -> None:
    seed = seed_from_settings(OcppSettings(heartbeat_interval_s=600, meter_values_sampled_data=("Voltage",)), 180)
    config = OcppConfiguration(4, seed)
    assert config.int_value("HeartbeatInterval") == 600
    assert config.csl_value("MeterValuesSampledData") == ["Voltage"]
    assert config.int_value("WebSocketPingInterval") == 180
    assert config.int_value("TransactionMessageAttempts") == 3
    assert config.to_json() == {"changed": {}}  # the seed is not a change


def test_seed_can_set_readonly_but_not_connectors() -> None:
    seed: dict[str, int | list[str]] = {
        "ChargingScheduleAllowedChargingRateUnit": ["Current"],
        "ChargeProfileMaxStackLevel": 3,
    }
    config = OcppConfiguration(2, seed)
    assert config.csl_value("ChargingScheduleAllowedChargingRateUnit") == ["Current"]
    with pytest.raises(InvalidValue) as err:
        OcppConfiguration(
            2, {"NumberOfConnectors": 5, "HeartbeatInterval": -3, "Bogus": 1, "MeterValuesSampledData": ["SoC"]}
        )
    text = str(err.value)
    for part in ("NumberOfConnectors", "HeartbeatInterval", "Bogus", "MeterValuesSampledData"):
        assert part in text


def test_wire_value() -> None:
    assert wire_value(True) == "true"
    assert wire_value(False) == "false"
    assert wire_value(60) == "60"
    assert wire_value(("a", "b")) == "a,b"
    assert wire_value("x") == "x"


def test_json_round_trip_keeps_only_changes() -> None:
    config = cfg()
    config.change("HeartbeatInterval", "120")
    config.change("MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import")
    config.change("AuthorizationKey", KEY_HEX)
    config.change("SecurityProfile", "1")
    snapshot = json.loads(json.dumps(config.to_json()))
    # The AuthorizationKey is a secret kept apart (gateway.auth_key), never in the snapshot.
    changed = {"HeartbeatInterval", "MeterValuesSampledData", "SecurityProfile"}
    assert set(snapshot["changed"]) == changed
    assert KEY_HEX not in json.dumps(snapshot)
    again = OcppConfiguration.from_json(snapshot, 3)
    assert again.get() == config.get()
    assert again.dropped == []
    # the change wins over the seed; a key nobody changed follows the seed
    seeded = OcppConfiguration.from_json(snapshot, 3, {"HeartbeatInterval": 999, "MeterValueSampleInterval": 30})
    assert seeded.int_value("HeartbeatInterval") == 120
    assert seeded.int_value("MeterValueSampleInterval") == 30


def test_from_json_drops_what_no_longer_fits() -> None:
    snapshot = {"changed": {
        "HeartbeatInterval": "120",
        "RemovedKey": "1",
        "MeterValueSampleInterval": "9999999",
        "NumberOfConnectors": "9",
        "SecurityProfile": "1",
    }}
    config = OcppConfiguration.from_json(snapshot, 3, {"SecurityProfile": 2})
    assert config.int_value("HeartbeatInterval") == 120
    assert config.int_value("SecurityProfile") == 2  # never lowered below the config file's
    assert sorted(config.dropped) == ["MeterValueSampleInterval", "NumberOfConnectors", "RemovedKey", "SecurityProfile"]
    with pytest.raises(OcppConfigError):
        OcppConfiguration.from_json({}, 3)


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-10**6, max_value=10**6))
def test_int_keys_accept_exactly_their_range(n: int) -> None:
    config = cfg()
    result = config.change("MeterValueSampleInterval", str(n))
    assert (result.status is ChangeStatus.ACCEPTED) == (0 <= n <= 86_400)
    if result.status is ChangeStatus.ACCEPTED:
        assert config.int_value("MeterValueSampleInterval") == n


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(MEASURANDS + ("SoC", "Temperature", "Voltage.L1")), max_size=8))
def test_measurand_lists(members: list[str]) -> None:
    config = cfg()
    result = config.change("MeterValuesAlignedData", ",".join(members))
    ok = all(m in MEASURANDS for m in members)
    assert (result.status is ChangeStatus.ACCEPTED) == ok
    if ok:
        assert config.csl_value("MeterValuesAlignedData") == list(dict.fromkeys(members))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=12))
def test_bool_parse_never_crashes(text: str) -> None:
    config = cfg()
    result = config.change("LocalPreAuthorize", text)
    assert (result.status is ChangeStatus.ACCEPTED) == (text.strip().lower() in ("true", "false"))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(KEYS)), st.text(max_size=60))
def test_any_value_is_answered(key: str, value: str) -> None:
    config = cfg()
    before = config.get()
    result = config.change(key, value)
    assert result.status in (ChangeStatus.ACCEPTED, ChangeStatus.REJECTED)
    if result.status is ChangeStatus.REJECTED:
        assert config.get() == before
