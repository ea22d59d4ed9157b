"""A 1-week dead zone in accelerated time, with sessions running: nothing lost, order kept, once.

The daemon's pollers, session machines, store and uplink play a week in about
a minute (tests/virtual_cluster.py); the uplink meanwhile keeps trying through
a blackholing proxy, then drains to the strict backend when the zone ends.
bench/outage_week.py plays the same for 16 connectors and prints the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.virtual_cluster import WeekScenario, run_week

pytestmark = pytest.mark.interop


async def test_a_week_without_uplink_loses_nothing(tmp_path: Path) -> None:
    report = await run_week(tmp_path, WeekScenario(connectors=2, outage_days=7.0))
    print(report.summary())
    assert report.problems == []
    assert report.sessions_simulated >= 30, "a week on 2 outlets is dozens of sessions"
    assert report.by_action["StartTransaction"] >= 25 and report.by_action["StopTransaction"] >= 25
    assert report.samples_queued >= 5000
    # Batched drain: consecutive samples of a session go up to 60 per MeterValues.
    assert report.messages_after < report.outbox_rows / 20
