"""The simulator's own error: it cannot set up the lines or servers a config asks for."""

from __future__ import annotations

from gateway.errors import GatewayError


class SimulatorError(GatewayError):
    """The simulator cannot play this config on this machine (a port path in the way, a non-loopback host)."""

    exit_code = 73  # EX_CANTCREAT from sysexits.h: a file or socket the simulator needs cannot be made
