"""The OCPP 1.6 configuration key registry: ChangeConfiguration (§5.3) and GetConfiguration (§5.8).

Pure. `KEYS` is the table of every key we know (OCPP 1.6 §9 "Standard Configuration
Key Names & Values", plus two keys of the Security whitepaper, edition 2): its type,
its limits, whether the backend may write it, and its default. `OcppConfiguration`
holds the current values as wire strings and answers the two messages.

A value comes from, in this order of precedence: what the backend set with
ChangeConfiguration (the only part `to_json` persists, so that the defaults of a
later release still apply to keys nobody changed), the seed (built from the
config file on every start, see `seed_from_settings`), and the default in `KEYS`.

Decisions:
- Keys are CiString50Type (ChangeConfiguration.req, GetConfiguration.req), so they are matched case-insensitively
  ("WebsocketPingInterval" finds WebSocketPingInterval) and answered in their
  canonical spelling.
- No key needs a reboot of this gateway: every value is read live or at the next
  connection. So ChangeConfiguration never answers RebootRequired. `ChangeResult.reconnect`
  says when the uplink must reconnect for the change to take effect.
- Keys left out because the product has no such feature: BlinkRepeat and LightIntensity
  (the master drives no indicator of the slaves), MaxEnergyOnInvalidId (a transaction
  whose idTag turns out invalid is stopped or continued, never energy-capped),
  ConnectorSwitch3to1PhaseSupported (slaves cannot switch phases), and the certificate
  keys of the Security whitepaper (the extended security messages are not implemented).
  A backend that asks for them gets them back in unknownKey; ChangeConfiguration answers
  NotSupported.
- UnlockConnectorOnEVSideDisconnect is read-only "true": each slave's own firmware
  releases its socket lock when the EV goes; the master has no unlock register to drive.
  StopTransactionOnEVSideDisconnect is writable: false keeps the transaction open while
  the cable is out (gateway.session, event EV_LEFT).
- AuthorizationKey is write-only (Security whitepaper ed. 2, configuration keys: so that a
  backend reading all keys cannot store the password in plaintext). GetConfiguration lists
  the key, so that the backend sees that it is supported, without a value (`value` is
  optional in the KeyValue type). Its value never appears in a repr, a ChangeResult or an
  exception message.
- Measurand lists accept bare measurands only ("Voltage", never "Voltage.L1"): the
  gateway always reports every phase it reads (gateway.ocpp_messages).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError
from gateway.settings import OcppSettings


class OcppConfigError(GatewayError):
    """A configuration key was used the wrong way by the gateway itself (wrong type, unknown key)."""


class InvalidValue(OcppConfigError):
    """A value does not fit its key. Raised for seeds; ChangeConfiguration answers Rejected instead."""


class TooManyKeys(OcppConfigError):
    """GetConfiguration.req asked for more keys than GetConfigurationMaxKeys (§9.1).

    The uplink answers it with a CALLERROR of `ocpp_error_code` (OCPP-J §4.2.3).
    """

    ocpp_error_code = "OccurrenceConstraintViolation"


class ChangeStatus(enum.Enum):
    """ConfigurationStatus of ChangeConfiguration.conf (OCPP 1.6 §5.3), values as on the wire."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    REBOOT_REQUIRED = "RebootRequired"  # never answered: no key needs a reboot here (module docstring)
    NOT_SUPPORTED = "NotSupported"


class Kind(enum.Enum):
    INT = "integer"
    BOOL = "boolean"
    CSL = "comma separated list"
    STRING = "string"


# Measurands a slave reading can supply (gateway.reading); SoC is not among them.
MEASURANDS = ("Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage", "Current.Offered")
FEATURE_PROFILES = (
    "Core",
    "FirmwareManagement",
    "LocalAuthListManagement",
    "Reservation",
    "SmartCharging",
    "RemoteTrigger",
)
# The rotations §9.1 ConnectorPhaseRotation allows.
_PHASE_ROTATIONS = ("NotApplicable", "Unknown", "RST", "RTS", "SRT", "STR", "TRS", "TSR")
_HEX = re.compile(r"[0-9A-Fa-f]*")
_VALUE_MAX_CHARS = 500  # ChangeConfiguration.req value is CiString500Type

# A parser turns a wire value into its canonical wire form or raises InvalidValue.
# It may read other current values (the *MaxLength keys) through `current`.
Parser = Callable[[str, Callable[[str], str]], str]


@dataclass(frozen=True)
class KeyDef:
    """One configuration key: how to read and check its value, and who may write it."""

    name: str
    kind: Kind
    default: str
    parse: Parser = field(repr=False)
    readonly: bool = False
    write_only: bool = False  # never returned by GetConfiguration (AuthorizationKey)
    reconnect: bool = False  # the uplink must reconnect for a change to take effect


def wire_value(value: str | int | bool | Sequence[str]) -> str:
    """A Python value as its configuration wire string: True -> 'true', 60 -> '60', [a, b] -> 'a,b'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return ",".join(value)


def _int(lo: int, hi: int) -> Parser:
    def parse(raw: str, current: Callable[[str], str]) -> str:
        text = raw.strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,12}", text):
            raise InvalidValue("not an integer")
        number = int(text)
        if not lo <= number <= hi:
            raise InvalidValue(f"out of range {lo}..{hi}")
        return str(number)

    return parse


def _bool(raw: str, current: Callable[[str], str]) -> str:
    text = raw.strip().lower()  # §9: boolean values are 'true'/'false'; backends vary the case
    if text not in ("true", "false"):
        raise InvalidValue("not 'true' or 'false'")
    return text


def _split(raw: str) -> list[str]:
    """CSL members, trimmed, duplicates dropped in order; '' is the empty list."""
    members: list[str] = []
    for part in raw.split(","):
        item = part.strip()
        if not item and raw.strip():
            raise InvalidValue("empty member in list")
        if item and item not in members:
            members.append(item)
    return members


def _csl(allowed: Iterable[str], max_key: str | None) -> Parser:
    allowed_set = frozenset(allowed)

    def parse(raw: str, current: Callable[[str], str]) -> str:
        members = _split(raw)
        unknown = [m for m in members if m not in allowed_set]
        if unknown:
            raise InvalidValue(f"unsupported member(s): {', '.join(unknown)}")
        # §9.1 [KeyName]MaxLength: the maximum number of members the list may hold.
        if max_key is not None and len(members) > int(current(max_key)):
            raise InvalidValue(f"more than {max_key} = {current(max_key)} members")
        return ",".join(members)

    return parse


def _phase_rotation(raw: str, current: Callable[[str], str]) -> str:
    """'0.RST,1.RTS': connectorId.rotation, one per connector (§9.1 ConnectorPhaseRotation)."""
    members = _split(raw)
    connectors = int(current("NumberOfConnectors"))
    seen: set[str] = set()
    for member in members:
        connector, _, rotation = member.partition(".")
        if not connector.isdigit() or int(connector) > connectors or rotation not in _PHASE_ROTATIONS:
            raise InvalidValue(f"bad member {member!r}: expected <connectorId 0..{connectors}>.<rotation>")
        if connector in seen:
            raise InvalidValue(f"connector {connector} listed twice")
        seen.add(connector)
    if len(members) > int(current("ConnectorPhaseRotationMaxLength")):
        raise InvalidValue("more members than ConnectorPhaseRotationMaxLength")
    return ",".join(members)


def _authorization_key(raw: str, current: Callable[[str], str]) -> str:
    # Security whitepaper ed. 2: the Basic-auth password, at least 16 bytes, hexadecimal,
    # at most 20 bytes (40 hex digits). The message never echoes the value.
    if not _HEX.fullmatch(raw) or len(raw) % 2:
        raise InvalidValue("not an even-length hexadecimal string")
    if not 32 <= len(raw) <= 40:
        raise InvalidValue("must be 16 to 20 bytes (32 to 40 hex digits)")
    return raw.upper()


DAY_S = 86_400


def _key(name: str, kind: Kind, default: str | int | bool, parse: Parser, **flags: bool) -> KeyDef:
    return KeyDef(name, kind, wire_value(default), parse, **flags)


def _int_key(name: str, default: int, lo: int, hi: int, **flags: bool) -> KeyDef:
    return _key(name, Kind.INT, default, _int(lo, hi), **flags)


def _bool_key(name: str, default: bool, **flags: bool) -> KeyDef:
    return _key(name, Kind.BOOL, default, _bool, **flags)


def _measurand_key(name: str, default: str) -> KeyDef:
    return _key(name, Kind.CSL, default, _csl(MEASURANDS, f"{name}MaxLength"))


_NUMBER_OF_MEASURANDS = len(MEASURANDS)

_DEFS: tuple[KeyDef, ...] = (
    # --- Core profile, OCPP 1.6 §9.1 ---
    _bool_key("AllowOfflineTxForUnknownId", False),
    _bool_key("AuthorizationCacheEnabled", True),
    _bool_key("AuthorizeRemoteTxRequests", False),
    _int_key("ClockAlignedDataInterval", 0, 0, DAY_S),  # 0: no clock-aligned data
    _int_key("ConnectionTimeOut", 60, 0, 3600),  # seconds from authorization to plug-in
    _key("ConnectorPhaseRotation", Kind.CSL, "0.Unknown", _phase_rotation),
    _int_key("ConnectorPhaseRotationMaxLength", 1, 0, 1000, readonly=True),  # NumberOfConnectors + 1, set at init
    _int_key("GetConfigurationMaxKeys", 0, 0, 1000, readonly=True),  # len(KEYS), set at init
    _int_key("HeartbeatInterval", 3600, 0, DAY_S),  # 0: no heartbeats (websocket pings may still run)
    _bool_key("LocalAuthorizeOffline", True),
    _bool_key("LocalPreAuthorize", False),
    _measurand_key("MeterValuesAlignedData", "Energy.Active.Import.Register"),
    _int_key("MeterValuesAlignedDataMaxLength", _NUMBER_OF_MEASURANDS, 0, _NUMBER_OF_MEASURANDS, readonly=True),
    # The smart-charging platform of REQUIREMENTS.md 17 sets exactly these two values.
    _measurand_key("MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import"),
    _int_key("MeterValuesSampledDataMaxLength", _NUMBER_OF_MEASURANDS, 0, _NUMBER_OF_MEASURANDS, readonly=True),
    _int_key("MeterValueSampleInterval", 60, 0, DAY_S),  # 0: no sampled data
    _int_key("MinimumStatusDuration", 0, 0, 3600),
    _int_key("NumberOfConnectors", 0, 1, 1000, readonly=True),  # from the cluster config, set at init
    _int_key("ResetRetries", 3, 0, 100),
    _bool_key("StopTransactionOnEVSideDisconnect", True),
    _bool_key("StopTransactionOnInvalidId", True),
    _measurand_key("StopTxnAlignedData", ""),  # empty: meterStop already carries the energy (GPRS bytes)
    _int_key("StopTxnAlignedDataMaxLength", _NUMBER_OF_MEASURANDS, 0, _NUMBER_OF_MEASURANDS, readonly=True),
    _measurand_key("StopTxnSampledData", ""),
    _int_key("StopTxnSampledDataMaxLength", _NUMBER_OF_MEASURANDS, 0, _NUMBER_OF_MEASURANDS, readonly=True),
    _key(
        "SupportedFeatureProfiles",
        Kind.CSL,
        ",".join(FEATURE_PROFILES),
        _csl(FEATURE_PROFILES, "SupportedFeatureProfilesMaxLength"),
        readonly=True,
    ),
    _int_key("SupportedFeatureProfilesMaxLength", len(FEATURE_PROFILES), 0, len(FEATURE_PROFILES), readonly=True),
    _int_key("TransactionMessageAttempts", 3, 0, 100),  # §3.7.1; Start/Stop are kept past it anyway
    _int_key("TransactionMessageRetryInterval", 30, 0, 3600),
    _bool_key("UnlockConnectorOnEVSideDisconnect", True, readonly=True),
    _int_key("WebSocketPingInterval", 0, 0, DAY_S),  # 0: no pings; the uplink reads it per connection
    # --- Local Auth List Management profile, §9.2 ---
    _bool_key("LocalAuthListEnabled", True),
    _int_key("LocalAuthListMaxLength", 1000, 1, 100_000, readonly=True),  # a KEBA master holds 1000 cards
    _int_key("SendLocalListMaxLength", 1000, 1, 100_000, readonly=True),
    # --- Reservation profile, §9.3 ---
    _bool_key("ReserveConnectorZeroSupported", False, readonly=True),
    # --- Smart Charging profile, §9.4: the lead seeds what the charging-profile module supports ---
    _int_key("ChargeProfileMaxStackLevel", 10, 0, 1000, readonly=True),
    _key(
        "ChargingScheduleAllowedChargingRateUnit",
        Kind.CSL,
        "Current,Power",
        _csl(("Current", "Power"), None),
        readonly=True,
    ),
    _int_key("ChargingScheduleMaxPeriods", 48, 1, 1000, readonly=True),
    _int_key("MaxChargingProfilesInstalled", 20, 1, 1000, readonly=True),
    # --- Security whitepaper ed. 2 ---
    _key("AuthorizationKey", Kind.STRING, "", _authorization_key, write_only=True, reconnect=True),
    # Raised only, never lowered; the uplink reconnects with the new profile.
    _int_key("SecurityProfile", 0, 0, 3, reconnect=True),
)

KEYS: dict[str, KeyDef] = {d.name: d for d in _DEFS}
_CANONICAL = {name.lower(): name for name in KEYS}


def canonical_key(key: str) -> str | None:
    """The registry spelling of a key, matched case-insensitively; None for a key we do not know."""
    return _CANONICAL.get(key.strip().lower())


def seed_from_settings(ocpp: OcppSettings, ping_interval_s: int, security_profile: int = 0) -> dict[str, str]:
    """The seed for `OcppConfiguration` from the config file's `ocpp:` section and `backend:` settings."""
    return {
        "SecurityProfile": wire_value(security_profile),
        "HeartbeatInterval": wire_value(ocpp.heartbeat_interval_s),
        "MeterValueSampleInterval": wire_value(ocpp.meter_value_sample_interval_s),
        "MeterValuesSampledData": wire_value(ocpp.meter_values_sampled_data),
        "TransactionMessageAttempts": wire_value(ocpp.transaction_message_attempts),
        "TransactionMessageRetryInterval": wire_value(ocpp.transaction_message_retry_interval_s),
        "WebSocketPingInterval": wire_value(ping_interval_s),
    }


@dataclass(frozen=True)
class ChangeResult:
    """The answer to one ChangeConfiguration.req. `reason` says why it was Rejected; it never holds the value."""

    status: ChangeStatus
    key: str  # canonical spelling when known, else as requested
    reconnect: bool = False  # Accepted, and the uplink must reconnect for it to take effect
    reason: str = ""


class OcppConfiguration:
    """The current configuration values of the charge point, as wire strings."""

    def __init__(
        self,
        number_of_connectors: int,
        seed: Mapping[str, str | int | bool | Sequence[str]] | None = None,
        *,
        max_security_profile: int = 3,
    ) -> None:
        """`seed`: values from the config file (may set read-only keys); invalid ones raise InvalidValue.

        `max_security_profile`: the highest SecurityProfile this installation can use (2 needs
        wss and a CA, 3 a client certificate); the backend cannot raise it further.
        """
        self.max_security_profile = max_security_profile
        self._changed: dict[str, str] = {}
        self.dropped: list[str] = []  # persisted changes from_json could not restore, for one log line
        self._base: dict[str, str] = {name: d.default for name, d in KEYS.items()}
        self._base["GetConfigurationMaxKeys"] = str(len(KEYS))
        self._base["NumberOfConnectors"] = self._checked("NumberOfConnectors", str(number_of_connectors))
        self._base["ConnectorPhaseRotationMaxLength"] = str(number_of_connectors + 1)
        problems: list[str] = []
        for raw_key, raw_value in (seed or {}).items():
            name = canonical_key(raw_key)
            if name is None or name in ("NumberOfConnectors", "GetConfigurationMaxKeys"):
                problems.append(f"{raw_key}: not a key the config file may set")
                continue
            try:
                self._base[name] = self._checked(name, wire_value(raw_value))
            except InvalidValue as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise InvalidValue("; ".join(problems))

    def __repr__(self) -> str:
        shown = {k: ("<redacted>" if KEYS[k].write_only else v) for k, v in self._changed.items()}
        return f"OcppConfiguration(changed={shown})"

    # --- reading ---------------------------------------------------------------

    def value(self, key: str) -> str:
        """The current wire value of a key; raises OcppConfigError for a key we do not know."""
        name = self._known(key)
        return self._changed.get(name, self._base[name])

    def int_value(self, key: str) -> int:
        return int(self.value(self._of_kind(key, Kind.INT)))

    def bool_value(self, key: str) -> bool:
        return self.value(self._of_kind(key, Kind.BOOL)) == "true"

    def csl_value(self, key: str) -> list[str]:
        text = self.value(self._of_kind(key, Kind.CSL))
        return text.split(",") if text else []

    def authorization_key(self) -> bytes | None:
        """The Basic-auth password the backend set (its bytes, decoded from hex); None when never set."""
        text = self.value("AuthorizationKey")
        return bytes.fromhex(text) if text else None

    # --- the two messages --------------------------------------------------------

    def get(self, keys: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """GetConfiguration (§5.8): (configurationKey list, unknownKey list), both in request order.

        No keys (None or empty) means every key. More requested keys than
        GetConfigurationMaxKeys raises TooManyKeys.
        """
        if not keys:
            names: list[str] = list(KEYS)
            unknown: list[str] = []
        else:
            limit = self.int_value("GetConfigurationMaxKeys")
            if len(keys) > limit:
                raise TooManyKeys(f"{len(keys)} keys requested, GetConfigurationMaxKeys is {limit}")
            names, unknown = [], []
            for key in keys:
                name = canonical_key(key)
                if name is None:
                    if key not in unknown:
                        unknown.append(key)
                elif name not in names:
                    names.append(name)
        return [self._key_value(name) for name in names], unknown

    def change(self, key: str, value: str) -> ChangeResult:
        """ChangeConfiguration (§5.3). Applies the value on Accepted; changes nothing otherwise."""
        name = canonical_key(key)
        if name is None:
            return ChangeResult(ChangeStatus.NOT_SUPPORTED, key)
        definition = KEYS[name]
        if definition.readonly:
            return ChangeResult(ChangeStatus.REJECTED, name, reason="read-only")
        if len(value) > _VALUE_MAX_CHARS:
            return ChangeResult(ChangeStatus.REJECTED, name, reason=f"longer than {_VALUE_MAX_CHARS} characters")
        try:
            canonical = self._checked(name, value)
            if name == "SecurityProfile":
                self._check_security_profile(int(canonical))
        except InvalidValue as exc:
            return ChangeResult(ChangeStatus.REJECTED, name, reason=str(exc))
        self._changed[name] = canonical
        return ChangeResult(ChangeStatus.ACCEPTED, name, reconnect=definition.reconnect)

    # --- persistence -------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The values the backend changed, and nothing else. Never the AuthorizationKey: it is a secret
        kept apart (gateway.auth_key), not in a database that diagnostics bundles may carry."""
        return {"changed": {k: v for k, v in self._changed.items() if not KEYS[k].write_only}}

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        number_of_connectors: int,
        seed: Mapping[str, str | int | bool | Sequence[str]] | None = None,
        *,
        max_security_profile: int = 3,
    ) -> OcppConfiguration:
        """Rebuild from `to_json()`. A persisted change this release no longer takes (a key dropped from
        the registry, a value now out of range, a SecurityProfile below the config file's) is left out
        and named in `.dropped`; the rest is restored.
        """
        config = cls(number_of_connectors, seed, max_security_profile=max_security_profile)
        changed = data.get("changed")
        if not isinstance(changed, Mapping):
            raise OcppConfigError("configuration snapshot without a 'changed' mapping")
        for key, value in changed.items():
            name = canonical_key(str(key))
            if name is None or KEYS[name].readonly or not isinstance(value, str):
                config.dropped.append(str(key))
                continue
            try:
                canonical = config._checked(name, value)
                if name == "SecurityProfile":
                    config._check_security_profile(int(canonical))
            except InvalidValue:
                config.dropped.append(name)
                continue
            config._changed[name] = canonical
        return config

    # --- internals -----------------------------------------------------------------

    def _known(self, key: str) -> str:
        name = canonical_key(key)
        if name is None:
            raise OcppConfigError(f"unknown configuration key {key!r}")
        return name

    def _of_kind(self, key: str, kind: Kind) -> str:
        name = self._known(key)
        if KEYS[name].kind is not kind:
            raise OcppConfigError(f"{name} is a {KEYS[name].kind.value}, not a {kind.value}")
        return name

    def _checked(self, name: str, raw: str) -> str:
        return KEYS[name].parse(raw, self.value)

    def _check_security_profile(self, wanted: int) -> None:
        # Security whitepaper ed. 2: the profile may be raised, never lowered (a downgrade attack).
        current = self.int_value("SecurityProfile")
        if wanted < current:
            raise InvalidValue(f"lower than the current profile {current}")
        if wanted > self.max_security_profile:
            raise InvalidValue(f"this installation supports up to profile {self.max_security_profile}")

    def _key_value(self, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"key": name, "readonly": KEYS[name].readonly}
        if not KEYS[name].write_only:
            entry["value"] = self.value(name)
        return entry
