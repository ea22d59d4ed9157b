"""The daemon's recent events: a ring of its log records, for `charger-gateway events` and diagnostics.

Log records are the events: a connector's status, a session, an uplink outage, an alarm. A record
may carry structured fields (`extra={"connector": 3}`), which journald receives as CONNECTOR=3 and
`events --json` as "connector": 3. The ring keeps the last few thousand in memory; followers get
each new one as it happens.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# The structured fields a record may carry, as `extra=` keys; journald gets them upper-cased.
FIELDS = ("connector", "bus", "unit", "transaction", "uplink")
FOLLOW_BACKLOG = 1000  # a follower that falls this far behind loses the oldest events, never the daemon's memory


@dataclass(frozen=True)
class Event:
    time: float  # wall clock, seconds since the epoch
    level: str
    logger: str
    message: str
    fields: dict[str, str | int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "level": self.level, "logger": self.logger, "message": self.message} | self.fields

    def line(self) -> str:
        stamp = datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%d %H:%M:%S")
        return f"{stamp} {self.level:<7} {self.message}"


def fields_of(record: logging.LogRecord) -> dict[str, str | int]:
    """The structured fields a log record carries (None values left out)."""
    return {name: value for name in FIELDS if (value := getattr(record, name, None)) is not None}


def event_of(record: logging.LogRecord) -> Event:
    return Event(record.created, record.levelname, record.name, record.getMessage(), fields_of(record))


class RecentLog(logging.Handler):
    """A logging handler that keeps the last `capacity` records and hands new ones to followers."""

    def __init__(self, capacity: int = 5000) -> None:
        super().__init__(logging.INFO)
        self._ring: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._followers: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = []
        self._guard = threading.Lock()  # records may come from threads (to_thread, the ocpp library)

    def emit(self, record: logging.LogRecord) -> None:
        event = event_of(record)
        with self._guard:
            self._ring.append(event)
            followers = list(self._followers)
        for loop, queue in followers:
            with contextlib.suppress(RuntimeError):  # the follower's loop has closed
                loop.call_soon_threadsafe(_offer, queue, event)

    @property
    def capacity(self) -> int:
        """How many events the ring keeps."""
        return self._ring.maxlen or 0

    def recent(self, count: int | None = None) -> list[Event]:
        with self._guard:
            events = list(self._ring)
        return events if count is None else events[-count:] if count > 0 else []

    @contextlib.contextmanager
    def follow(self) -> Iterator[asyncio.Queue[Event]]:
        """A queue that receives every event from now on, while the `with` lasts."""
        entry = (asyncio.get_running_loop(), asyncio.Queue[Event](maxsize=FOLLOW_BACKLOG))
        with self._guard:
            self._followers.append(entry)
        try:
            yield entry[1]
        finally:
            with self._guard:
                self._followers.remove(entry)


def _offer(queue: asyncio.Queue[Event], event: Event) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(event)


# The daemon's one ring, attached to the root logger by gateway.logs.setup_logging.
RECENT = RecentLog()
