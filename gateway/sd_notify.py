"""systemd's notify protocol (sd_notify(3)): READY=1, STATUS=, WATCHDOG=1, RELOADING=1, STOPPING=1.

Written here rather than taken from systemd-python: with Type=notify a daemon that cannot
notify never becomes ready, and systemd-python is optional (it needs libsystemd to build).
The protocol is one datagram per message to the socket named by $NOTIFY_SOCKET.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("gateway.systemd")


class Notifier:
    """Messages to systemd; does nothing when not started by systemd with Type=notify."""

    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        # An address starting with '@' is in the abstract namespace (a leading NUL byte).
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None  # WatchdogSec=, None: off
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls) -> Notifier:
        """From $NOTIFY_SOCKET and $WATCHDOG_USEC (meant for this process only when $WATCHDOG_PID is ours or unset)."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        return cls(os.environ.get("NOTIFY_SOCKET") or None, int(usec) if usec.isdigit() and mine else None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> None:
        """notify(READY=1, STATUS="...") sends 'READY=1\\nSTATUS=...'. Failures are logged once, never raised."""
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc.strerror or exc)
            self._failed = True
        else:
            self._failed = False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
