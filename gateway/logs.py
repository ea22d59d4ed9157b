"""Where the daemon's and the tools' log records go.

Under systemd with systemd-python present: journald, each record with its structured fields
(CONNECTOR=, BUS=, UNIT=, TRANSACTION=, UPLINK=) so `journalctl CONNECTOR=3` finds one outlet's
story. Otherwise plain lines on stderr. Either way the ring of recent events
(gateway.event_log.RECENT) gets every record, for `charger-gateway events` and diagnostics.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TextIO

from gateway.event_log import RECENT, fields_of

# Libraries that log every frame at INFO: a technician's -v, not the journal's default.
CHATTY = ("ocpp", "websockets", "gateway.frames", "gateway.websocket")


class JournalHandler(logging.Handler):
    """Records to journald through systemd-python's `journal.send`, with their structured fields."""

    # logging level -> syslog priority (sd-journal PRIORITY=)
    PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def __init__(self, send: Callable[..., None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            priority = next((p for level, p in self.PRIORITIES if record.levelno >= level), 7)
            fields = {name.upper(): str(value) for name, value in fields_of(record).items()}
            self._send(
                self.format(record), PRIORITY=str(priority), SYSLOG_IDENTIFIER="charger-gateway", LOGGER=record.name, **fields
            )
        except Exception:  # noqa: BLE001 - logging must never take the daemon down (logging.Handler's own rule)
            self.handleError(record)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Plain lines to whatever sys.stderr is at the time of each record (a test may have swapped it since)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def journal_handler() -> logging.Handler | None:
    """journald's handler when this process runs under systemd (JOURNAL_STREAM set) and systemd-python is there."""
    if "JOURNAL_STREAM" not in os.environ:
        return None
    try:
        from systemd import journal  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return JournalHandler(journal.send)


def setup_logging(verbose: bool) -> None:
    """Called once per command; again (a test running several commands in one process) it replaces its own handlers."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for old in [h for h in root.handlers if getattr(h, "charger_gateway", False)]:
        root.removeHandler(old)
    handler = journal_handler()
    if handler is None:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    handler.charger_gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.addHandler(RECENT)  # a second add of the same handler is a no-op
    # pymodbus logs every timeout at ERROR; the line layer reports outages once instead.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if not verbose:
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
