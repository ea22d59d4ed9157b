"""What a restarted daemon takes up from its SQLite file (no sockets: the daemon is built, not run)."""

from __future__ import annotations

from pathlib import Path

from gateway.clock import Clock
from gateway.daemon import Daemon
from gateway.reading import PilotState, Reading
from gateway.session import State
from gateway.store import Store
from tests.test_backend_commands import cluster_config


async def _daemon(tmp_path: Path) -> Daemon:
    config = cluster_config(tmp_path, "ws://127.0.0.1:9/ocpp", free_tag=True)
    daemon = Daemon(config, await Store.open(config.storage.path), Clock())
    await daemon.recover()
    return daemon


async def test_a_session_stopped_with_the_ev_plugged_stays_finishing_across_a_restart(tmp_path: Path) -> None:
    """Otherwise free charging would open a new session the user had just ended."""
    daemon = await _daemon(tmp_path)
    connector, wall = daemon.connectors[1], Clock().wall()
    plugged = connector.on_reading(Reading(state=PilotState.parse("B2"), energy_wh=1000.0), wall)
    assert await daemon.handle_effects(plugged + connector.authorize("FREE", wall))
    assert await daemon.handle_effects(connector.stop("Remote", wall))
    assert connector.state is State.FINISHING
    await daemon.store.close()

    again = await _daemon(tmp_path)
    assert again.connectors[1].state is State.FINISHING and again.connectors[1].status == "Finishing"
    assert again.connectors[2].state is State.AVAILABLE
    assert not again.connectors[1].can_start
    await again.store.close()
