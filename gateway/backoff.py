"""Reconnect backoff for the uplink: an endless iterator of delays, in seconds.

Why jitter: when a backend restarts, every master connected to it loses its
websocket in the same instant. With a plain exponential backoff they would all
come back in lock-step, at min, 2·min, 4·min... after the restart: a reconnect
storm of TLS handshakes and BootNotifications, which a freshly started backend
may answer by failing again. Randomising each wait spreads the fleet over the
whole window, so the load on the backend is roughly flat instead of a series of
spikes (the analysis is AWS's "Exponential Backoff And Jitter", 2015).

Two jitter strategies are offered:

- ``Jitter.FULL`` (the default): attempt *n* (1-based) waits a uniform draw
  from ``[min, min(max, min · factor**n)]``. This is "full jitter" with a floor:
  the floor keeps even the luckiest master from retrying at once, which on a
  metered GPRS link would burn data for nothing, and the first attempt is
  already spread over ``[min, factor · min]``.
- ``Jitter.DECORRELATED``: each wait is a uniform draw from
  ``[min, 3 · previous]``, capped at max. Waits are not tied to the attempt
  number, so masters that happened to fail together drift apart faster.

Every delay lies in ``[min, max]``. Call :meth:`Backoff.reset` once a
connection has proven healthy (BootNotification Accepted), not merely when the
TCP or websocket handshake succeeds: a backend that accepts the socket and then
drops it at once would otherwise be hammered at the minimum delay forever.

This module is pure: no clock, no sleeping. The caller sleeps ``next(backoff)``
seconds, and tests pass a seeded ``random.Random``.
"""

from __future__ import annotations

import enum
import math
import random


class Jitter(enum.Enum):
    """How a delay is drawn; see the module docstring for the trade-off."""

    FULL = "full"
    DECORRELATED = "decorrelated"


# Decorrelated jitter draws up to this multiple of the previous delay; 3 is the
# constant of the AWS analysis, which keeps the mean growth close to doubling.
_DECORRELATED_SPREAD = 3.0


class Backoff:
    """Endless iterator of reconnect delays in seconds, each within ``[min_delay, max_delay]``."""

    def __init__(
        self,
        min_delay: float = 1.0,
        max_delay: float = 300.0,
        factor: float = 2.0,
        *,
        jitter: Jitter = Jitter.FULL,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (("min_delay", min_delay), ("max_delay", max_delay), ("factor", factor)):
            if not math.isfinite(value):
                raise ValueError(f"backoff {name} must be a finite number, got {value!r}")
        if min_delay <= 0:
            raise ValueError(f"backoff min_delay must be > 0 s, got {min_delay}")
        if max_delay < min_delay:
            raise ValueError(f"backoff max_delay ({max_delay} s) must be >= min_delay ({min_delay} s)")
        if factor <= 1:
            raise ValueError(f"backoff factor must be > 1, got {factor}")
        self.min_delay = float(min_delay)
        self.max_delay = float(max_delay)
        self.factor = float(factor)
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._attempts = 0
        self._previous = self.min_delay

    @property
    def attempts(self) -> int:
        """How many delays were drawn since construction or the last reset."""
        return self._attempts

    def ceiling(self) -> float:
        """The largest delay the next draw can return.

        With full jitter it grows with every attempt until it reaches max_delay;
        with decorrelated jitter it is three times the previous delay, capped.
        """
        if self.jitter is Jitter.FULL:
            # min * factor**n overflows a float for large n; the exponent form
            # stops growing once the cap is reached, so compare in log space.
            n = self._attempts + 1
            if n * math.log(self.factor) >= math.log(self.max_delay / self.min_delay):
                return self.max_delay
            return min(self.max_delay, self.min_delay * self.factor**n)
        return min(self.max_delay, _DECORRELATED_SPREAD * self._previous)

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        high = self.ceiling()
        # uniform() may round a hair outside [a, b]; clamp so the bounds are a promise.
        delay = min(high, max(self.min_delay, self._rng.uniform(self.min_delay, high)))
        self._attempts += 1
        if self.jitter is Jitter.DECORRELATED:
            self._previous = delay
        return delay

    def reset(self) -> None:
        """Start again from the shortest delays, after a connection proved healthy."""
        self._attempts = 0
        self._previous = self.min_delay
