"""Exception tree, grouped by what the caller does about each error.

Third-party exceptions (pymodbus, websockets, sqlite3) are translated into
these once, at the boundary of the thin I/O layer that uses the library.
"""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


# --- configuration -------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    """One fault in a config or profile file, located for the person fixing it."""

    file: str
    line: int | None  # 1-based; None when the fault has no single place (a missing file)
    path: str  # key path, e.g. "connectors[2].unit"
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class ConfigError(GatewayError):
    """The config (or a device profile) is invalid. Carries every fault found, not just the first."""

    exit_code = 78  # EX_CONFIG from sysexits.h; systemd shows it as "config error"

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


# --- Modbus devices --------------------------------------------------------


class DeviceError(GatewayError):
    """A Modbus transaction with a slave failed; the slave may answer next time."""


class DeviceTimeout(DeviceError):
    """No (complete) reply within the request deadline."""


class FrameError(DeviceError):
    """A reply arrived but was garbled: bad CRC, wrong length, wrong unit or function."""


class DeviceException(DeviceError):
    """The slave answered with a Modbus exception code (Modbus Application Protocol §7)."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(message or f"Modbus exception code {code}")


class LineUnavailable(DeviceError):
    """The serial port or TCP endpoint cannot be opened at all."""


# --- uplink ------------------------------------------------------------------


class UplinkError(GatewayError):
    """The backend connection is down or could not be made; reconnect later."""


class BackendRefused(UplinkError):
    """The backend refused us on purpose (HTTP 401/403/404, BootNotification Rejected)."""


# --- OCPP protocol -------------------------------------------------------------


class LocalProtocolError(GatewayError):
    """We were about to break OCPP: a bug on our side."""


class RemoteProtocolError(GatewayError):
    """The backend broke OCPP: malformed frame, unexpected reply."""


# --- session state machine ---------------------------------------------------


class IllegalTransition(LocalProtocolError):
    """An event that the connector state machine does not accept in its current state."""


# --- storage -------------------------------------------------------------------


class StoreError(GatewayError):
    """SQLite could not persist an event (disk full, I/O error, corrupt file)."""


class ClockUnset(GatewayError):
    """A queued message carries times from before the clock was set, and the clock is still unset: wait."""
