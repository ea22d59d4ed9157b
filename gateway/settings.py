"""The validated configuration, as typed frozen data. gateway.config builds it from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.devprofile import Framing, Profile


@dataclass(frozen=True)
class ChargePointInfo:
    identity: str  # the OCPP charge-point identity: last path segment of the URL, Basic-auth user
    vendor: str
    model: str
    serial_number: str | None = None


@dataclass(frozen=True)
class BackendSettings:
    url: str  # wss:// (ws:// only with insecure_lab_mode); the identity is appended as the last path segment
    # OCPP 1.6 security whitepaper: 1 Basic auth over ws (lab only), 2 TLS + Basic auth, 3 TLS + client
    # certificate; 0: wss with neither (the backend cannot tell who connects). None: inferred from what is set.
    security_profile: int | None = None
    password_file: Path | None = None  # the installer's Basic-auth password (user = identity); the backend may replace it
    ca_file: Path | None = None  # PEM bundle; system CAs when absent
    client_cert: Path | None = None  # PEM, profile 3 (mutual TLS)
    client_key: Path | None = None
    insecure_lab_mode: bool = False  # the only way to plain ws://; warned at every start
    response_timeout_s: float = 30.0  # wait for a CALLRESULT before counting the call as failed
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 300.0
    ping_interval_s: int = 0  # WebSocketPingInterval: a ping after this long without a frame from the backend; 0 = none
    ping_timeout_s: float = 30.0  # no pong within this: the link is dead
    compression: bool = True  # offer permessage-deflate (used where the backend accepts it)


@dataclass(frozen=True)
class ModemSettings:
    """A GPRS/LTE modem's AT port, polled for health; the data port belongs to pppd or ModemManager."""

    at_port: str  # e.g. /dev/ttyUSB2
    baudrate: int = 115200
    poll_interval_s: float = 300.0
    command_timeout_s: float = 3.0


@dataclass(frozen=True)
class UplinkSettings:
    """One way to the backend. The list order is the preference: the first is used whenever healthy."""

    name: str  # e.g. wired, gprs
    interface: str | None = None  # bind the websocket to this network interface (SO_BINDTODEVICE)
    source_address: str | None = None  # or to this local address
    monthly_budget_mb: float | None = None  # an alarm at 80 % of it (and at 100 %)
    modem: ModemSettings | None = None


@dataclass(frozen=True)
class FailoverSettings:
    failback_after_s: float = 600.0  # the preferred uplink must have been healthy this long before it is taken back
    probe_interval_s: float = 60.0  # how often a preferred uplink is tried while a lesser one carries the link


@dataclass(frozen=True)
class BusSettings:
    name: str
    kind: Framing  # rtu, ascii (serial lines) or tcp
    port: str | None = None  # serial device, e.g. /dev/ttyS1 (serial kinds only)
    baudrate: int = 19200
    parity: str = "E"  # N, E, O
    stopbits: int = 1
    bytesize: int = 8
    request_timeout_s: float | None = None  # per-request deadline; None: the profile's
    poll_interval_s: float = 1.0  # one round over every device of the bus


@dataclass(frozen=True)
class MeterSettings:
    """A separate energy meter that measures one connector, where its charger has no (or no trusted) meter.

    It may sit on another bus than the charger, or on the same one at another unit.
    """

    bus: str
    unit: int  # Modbus unit (slave) id
    profile: str  # a profile of kind meter
    host: str | None = None  # tcp buses only
    port: int = 502


@dataclass(frozen=True)
class ConnectorSettings:
    id: int  # OCPP connectorId, 1..N
    bus: str
    unit: int  # Modbus unit (slave) id
    profile: str
    host: str | None = None  # tcp buses only
    port: int = 502
    id_tag: str | None = None  # free-charging idTag for this connector; overrides the site's
    max_current_a: float | None = None  # installation limit; None: the profile's max
    # The site phases (1..3 = L1..L3) the outlet's phases 1..n are wired to, in order: a 1-phase
    # box on L2 is [2], a 3-phase box wired with rotation is [2, 3, 1]. None: L1..Ln.
    phases: tuple[int, ...] | None = None
    # The outlet of a multi-outlet controller this connector is (1-based): its registers lie
    # profile.outlet_stride * (outlet - 1) above the first outlet's.
    outlet: int = 1
    # Where the connector's energy, power, currents and voltages come from, if not from its charger.
    meter: MeterSettings | None = None


@dataclass(frozen=True)
class AuthorizationSettings:
    free_charging_id_tag: str | None = None  # site-wide: every plug-in starts a session with this idTag


@dataclass(frozen=True)
class SiteSettings:
    """Site load management: the supply the whole cluster shares."""

    # The main fuse (or the part of it given to charging) per phase L1..L3. None: no site limit;
    # the cluster is then capped only by a ChargePointMaxProfile the backend sets.
    phase_limit_a: tuple[float, float, float] | None = None
    rotation_s: float = 900.0  # a turn when there is not enough for everyone (KEBA: 15 minutes)
    # What a slave falls back to when the master goes silent; None: the site limit divided among
    # the outlets on each phase, so that all of them together stay within it.
    failsafe_current_a: float | None = None


@dataclass(frozen=True)
class OcppSettings:
    """Initial values of OCPP configuration keys (the backend may change them later)."""

    heartbeat_interval_s: int = 3600
    meter_value_sample_interval_s: int = 60
    # The exact form smart-charging platforms expect (issue 4); the backend may ask for more.
    meter_values_sampled_data: tuple[str, ...] = ("Energy.Active.Import.Register", "Power.Active.Import")
    transaction_message_attempts: int = 3  # OCPP 1.6 §3.7.1; Start/Stop are kept past it, with an alarm
    transaction_message_retry_interval_s: int = 30  # wait after failure n: n x this
    meter_values_batch_max: int = 60  # queued samples of one transaction sent as one MeterValues message
    # Reset Hard (OCPP 1.6 §5.12) runs this, e.g. ["systemctl", "reboot"]; empty: restart the daemon, as Soft does.
    hard_reset_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class StorageSettings:
    path: Path
    outbox_budget_mb: float = 128.0  # past this, old meter samples are thinned (never Start/Stop)


@dataclass(frozen=True)
class SimulatorSettings:
    """How `charger-gateway simulate` plays the slaves of this config."""

    speed: float = 1.0  # simulated seconds per real second for EV behaviour
    seed: int | None = None
    wire_delay: bool = True  # delay each RTU reply by its wire time at the line's baud rate
    # A box does not hear a request sent sooner than its profile's inter_frame_delay after the last
    # reply on the line (its transceiver is still turning around): the field failure of evcc#2227.
    # Off by default, so that generic Modbus tools (mbpoll, pymodbus clients) can talk to the simulator.
    turnaround: bool = False
    idle_s: tuple[float, float] = (300.0, 3600.0)  # simulated time between unplug and next plug-in
    session_kwh: tuple[float, float] = (3.0, 30.0)  # energy each EV wants
    # The cards drivers present at slaves with an RFID register (one drawn per arriving EV); none: no card.
    id_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    source: Path
    charge_point: ChargePointInfo
    backend: BackendSettings
    buses: tuple[BusSettings, ...]
    connectors: tuple[ConnectorSettings, ...]
    storage: StorageSettings
    authorization: AuthorizationSettings = field(default_factory=AuthorizationSettings)
    site: SiteSettings = field(default_factory=SiteSettings)
    ocpp: OcppSettings = field(default_factory=OcppSettings)
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    uplinks: tuple[UplinkSettings, ...] = (UplinkSettings("default"),)
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    control: ControlSettings = field(default_factory=lambda: ControlSettings())
    firmware: FirmwareSettings = field(default_factory=lambda: FirmwareSettings())
    commissioning: CommissioningSettings = field(default_factory=lambda: CommissioningSettings())
    profiles: dict[str, Profile] = field(default_factory=dict)  # the profiles the connectors use, by name

    def bus(self, name: str) -> BusSettings:
        return next(b for b in self.buses if b.name == name)

    def profile_of(self, connector: ConnectorSettings) -> Profile:
        """The charger profile of a connector, moved to its outlet."""
        return self.profiles[connector.profile].for_outlet(connector.outlet)

    def meter_profile_of(self, connector: ConnectorSettings) -> Profile | None:
        """The profile of the connector's separate meter; None: the charger measures itself."""
        return None if connector.meter is None else self.profiles[connector.meter.profile]

    def max_current_a(self, connector: ConnectorSettings) -> float:
        return outlet_max_current_a(connector, self.profile_of(connector))

    def site_phases(self, connector: ConnectorSettings) -> tuple[int, ...]:
        """The site phases an outlet loads, in the order of its own phases."""
        return connector.phases or (1, 2, 3)[: self.profile_of(connector).phases]


def outlet_max_current_a(connector: ConnectorSettings, profile: Profile) -> float:
    """An outlet's maximum: the installation limit, never above what its device can do."""
    return profile.max_current_a if connector.max_current_a is None else min(profile.max_current_a, connector.max_current_a)


@dataclass(frozen=True)
class ControlSettings:
    """The technician's way in: the control socket `charger-gateway status` and friends talk to."""

    # systemd's RuntimeDirectory=charger-gateway; mode 0660, so members of the service's group may use it.
    socket: Path = Path("/run/charger-gateway/control.sock")


@dataclass(frozen=True)
class FirmwareSettings:
    """UpdateFirmware for the gateway itself (OCPP 1.6 §5.19) and GetDiagnostics (§5.9)."""

    # Installs a downloaded image: {file} is replaced by its path. Empty: UpdateFirmware downloads and
    # verifies, then reports InstallationFailed (nothing to install with).
    install_command: tuple[str, ...] = ()
    install_timeout_s: float = 600.0
    download_timeout_s: float = 300.0  # one attempt of a download or an upload
    retry_interval_s: float = 60.0  # between attempts, when the backend gives no retryInterval
    diagnostics_log_lines: int = 5000  # the recent log lines a diagnostics bundle carries


@dataclass(frozen=True)
class CommissioningSettings:
    """What the commissioning report (`charger-gateway selftest`) says about the site."""

    site_name: str | None = None
    site_address: str | None = None
    operator: str | None = None
    # A QR code per connector on the report (and for the sticker): {identity} and {connector} are filled in,
    # e.g. https://pay.example.net/start/{identity}/{connector}. None: no QR codes.
    qr_url_template: str | None = None
