"""Which uplink carries the backend link: fail over at once, fail back slowly, never flap.

Pure: the uplink tells it what happened (a failure, a link up, a probe's result)
with the monotonic time, and asks what to do.

- Fail over: after FAILURES_TO_SWITCH failures in a row of the active uplink
  (a connect that fails, a link that dies: no pong, no answer, closed), or at
  once when its interface is gone or down, the next usable uplink in the list
  takes over. One retry on the same uplink first, because one lost GPRS
  connection is no proof the path is gone, and a switch costs a TLS handshake.
- Fail back: while a lesser uplink is active, the preferred ones are probed
  now and then; one that has answered every probe for its hold time takes the
  link back. The hold time is failback_after_s, doubled each time the uplink
  failed again soon after it was taken back (up to 2**MAX_DOUBLINGS times), so a
  wired link that comes and goes settles on the backup instead of flapping.
  The doubling is forgotten once the uplink has carried the link for
  FORGIVE_AFTER hold times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FAILURES_TO_SWITCH = 2
MAX_DOUBLINGS = 4
FORGIVE_AFTER = 4


@dataclass
class _Uplink:
    name: str
    healthy_since: float | None = None  # first of the unbroken run of good probes
    next_probe: float = 0.0
    doublings: int = 0
    taken_back_at: float | None = None  # when a failback last made it active


class Failover:
    def __init__(self, names: Sequence[str], failback_after_s: float, probe_interval_s: float) -> None:
        if not names:
            raise ValueError("at least one uplink")
        self._uplinks = [_Uplink(n) for n in names]
        self.failback_after_s = failback_after_s
        self.probe_interval_s = probe_interval_s
        self.active = 0
        self.failures = 0  # of the active uplink, in a row
        self.active_since: float | None = None  # when the active uplink's link last came up

    @property
    def active_name(self) -> str:
        return self._uplinks[self.active].name

    def hold_s(self, index: int) -> float:
        return self.failback_after_s * 2 ** self._uplinks[index].doublings

    def failed(self, now: float, usable: Sequence[bool]) -> bool:
        """The active uplink failed; True when another one takes over."""
        self.failures += 1
        self.active_since = None
        current = self._uplinks[self.active]
        if current.taken_back_at is not None and now - current.taken_back_at < self.hold_s(self.active):
            current.doublings = min(current.doublings + 1, MAX_DOUBLINGS)  # it failed again soon after failback
            current.taken_back_at = None
        if len(self._uplinks) == 1 or (usable[self.active] and self.failures < FAILURES_TO_SWITCH):
            return False
        order = [(self.active + k) % len(self._uplinks) for k in range(1, len(self._uplinks))]
        self._switch(next((i for i in order if usable[i]), order[0]), now)
        return True

    def up(self, now: float) -> None:
        """The active uplink's link is up (connected and booted)."""
        self.failures = 0
        self.active_since = now

    def still_up(self, now: float) -> None:
        """Called now and then while the link stays up: past flaps are forgiven once it proved itself long enough."""
        current = self._uplinks[self.active]
        if self.active_since is not None and now - self.active_since >= FORGIVE_AFTER * self.hold_s(self.active):
            current.doublings = 0
            current.taken_back_at = None

    def probe_due(self, now: float) -> list[int]:
        """The preferred uplinks (better than the active one) whose probe is due, best first."""
        return [i for i in range(self.active) if self._uplinks[i].next_probe <= now]

    def probed(self, index: int, ok: bool, now: float) -> None:
        u = self._uplinks[index]
        u.next_probe = now + self.probe_interval_s
        if not ok:
            u.healthy_since = None
        elif u.healthy_since is None:
            u.healthy_since = now

    def failback_target(self, now: float) -> int | None:
        """The best preferred uplink that has been healthy for its hold time, if any."""
        for i in range(self.active):
            since = self._uplinks[i].healthy_since
            if since is not None and now - since >= self.hold_s(i):
                return i
        return None

    def fail_back(self, index: int, now: float) -> None:
        self._switch(index, now)
        self._uplinks[index].taken_back_at = now

    def _switch(self, index: int, now: float) -> None:
        self.active = index
        self.failures = 0
        self.active_since = None
        for u in self._uplinks:  # probes start afresh against the new active one
            u.healthy_since = None
            u.next_probe = now + self.probe_interval_s
