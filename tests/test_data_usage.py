"""Data usage per uplink: UTC keys, budget thresholds, the recorder on a real SQLite file, the
`data-usage` command, and the socket meter on real loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cli
from gateway.data_usage import (
    MB,
    THRESHOLDS_PERCENT,
    UsageRow,
    alarm_text,
    budget_bytes,
    day_key,
    days_ending,
    first_day_needed,
    month_of,
    previous_month,
    render_text,
    summarize,
    thresholds_crossed,
    to_json,
)
from gateway.errors import StoreError
from gateway.settings import UplinkSettings
from gateway.store import Store
from gateway.traffic import SocketMeter, Traffic
from gateway.usage_recorder import UsageRecorder
from tests.clocks import BOOT_1970, HandClock

REPO = Path(__file__).resolve().parent.parent
LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)
UPLINKS = (UplinkSettings("wired"), UplinkSettings("gprs", monthly_budget_mb=1.0))


def at(text: str) -> float:
    """Wall time of a UTC time given as ISO 8601 without zone."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# --- pure: keys ------------------------------------------------------------------------------


def test_days_and_months_are_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: local time is already the next day
    time.tzset()
    try:
        assert day_key(at("2026-09-30T23:59:59")) == "2026-09-30"
        assert day_key(at("2026-10-01T00:00:00")) == "2026-10-01"
        assert month_of(day_key(at("2026-12-31T23:59:59.999"))) == "2026-12"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_month_arithmetic_across_years_and_leap_days() -> None:
    assert previous_month("2026-01") == "2025-12" and previous_month("2026-03") == "2026-02"
    assert days_ending("2028-03-01", 3) == ["2028-02-28", "2028-02-29", "2028-03-01"]
    assert days_ending("2027-01-01", 2) == ["2026-12-31", "2027-01-01"]
    assert first_day_needed("2026-03-05", 7) == "2026-02-01"  # the previous month reaches further back
    assert first_day_needed("2026-03-05", 60) == "2026-01-05"
    for bad in (0, -1, 10**9):
        with pytest.raises(ValueError, match="number of days"):
            days_ending("2026-03-05", bad)


def test_budgets_in_decimal_megabytes_and_bad_ones_refused() -> None:
    assert budget_bytes(None) is None and budget_bytes(1.5) == 1_500_000
    for bad in (0.0, -3.0, float("nan")):
        with pytest.raises(ValueError, match="above 0"):
            budget_bytes(bad)


# --- pure: thresholds ---------------------------------------------------------------------------


def test_a_threshold_is_crossed_by_the_portion_that_reaches_it() -> None:
    budget = 1_000_000
    assert thresholds_crossed(0, 799_999, budget) == ()
    assert thresholds_crossed(799_999, 800_000, budget) == (80,), "exactly 80 % counts"
    assert thresholds_crossed(800_000, 999_999, budget) == (), "already past 80 %: not again"
    assert thresholds_crossed(900_000, 1_000_000, budget) == (100,)
    assert thresholds_crossed(0, 5_000_000, budget) == (80, 100), "one big portion crosses both"
    assert thresholds_crossed(2_000_000, 3_000_000, budget) == ()
    assert thresholds_crossed(0, 10**12, None) == ()
    assert thresholds_crossed(0, 2, 3) == () and thresholds_crossed(2, 3, 3) == (80, 100), "80 % of 3 bytes is 2.4, not rounded"


@given(budget=st.integers(1, 10**9), portions=st.lists(st.integers(0, 3 * 10**8), max_size=40))
def test_each_threshold_is_reported_once_whatever_the_portions(budget: int, portions: list[int]) -> None:
    """Only the stored month total goes in, so a restart between any two portions changes nothing:
    every threshold the month reaches is reported exactly once, and none it does not reach."""
    stored = 0
    reported: list[int] = []
    for size in portions:
        reported += thresholds_crossed(stored, stored + size, budget)
        stored += size
    assert reported == [p for p in THRESHOLDS_PERCENT if stored * 100 >= p * budget]


def test_alarm_text_names_uplink_month_use_and_budget() -> None:
    text = alarm_text("gprs", "2026-09", 812_345_678, 1_000_000_000, 80)
    assert text == "uplink gprs: monthly data budget 80 % used: 812.3 MB of 1000 MB in 2026-09 (UTC)"
    assert "used up" in alarm_text("gprs", "2026-09", 1_000_000_001, 1_000_000_000, 100)


# --- pure: summaries -------------------------------------------------------------------------------


ROWS = [
    UsageRow("gprs", "2026-08-31", Traffic(100_000, 200_000)),
    UsageRow("gprs", "2026-09-01", Traffic(300_000, 100_000)),
    UsageRow("gprs", "2026-09-03", Traffic(50_000, 50_000)),
    UsageRow("wired", "2026-09-03", Traffic(7, 8)),
    UsageRow("lte-old", "2026-09-02", Traffic(1, 1)),  # an uplink since removed from the config
]


def test_summary_per_day_and_month_with_the_budget_share() -> None:
    gprs, wired, old = summarize(ROWS, UPLINKS[::-1], "2026-09-03", 4)
    assert [gprs.uplink, wired.uplink, old.uplink] == ["gprs", "wired", "lte-old"], "configured first, in order"
    assert [(p.key, p.traffic.total) for p in gprs.days] == [
        ("2026-08-31", 300_000), ("2026-09-01", 400_000), ("2026-09-02", 0), ("2026-09-03", 100_000),
    ]
    assert gprs.today.key == "2026-09-03" and gprs.this_month.traffic == Traffic(350_000, 150_000)
    assert gprs.previous_month.key == "2026-08" and gprs.previous_month.traffic.total == 300_000
    assert gprs.percent(gprs.this_month) == pytest.approx(50.0)
    assert wired.budget is None and wired.percent(wired.this_month) is None
    assert old.budget is None and old.this_month.traffic == Traffic(1, 1)


def test_text_and_json_show_the_same_figures() -> None:
    usages = summarize(ROWS, UPLINKS, "2026-09-03", 2)
    text = render_text(usages)
    assert "uplink gprs (monthly budget 1 MB)" in text and "uplink wired (no budget)" in text
    assert "  2026-09-03 today" in text and "2026-09-02" in text and "2026-09-01 " not in text
    month_line = next(line for line in text.splitlines() if "2026-09 this month" in line and "0.500" in line)
    assert month_line.split()[-2:] == ["50.0", "%"]
    doc = to_json(usages, "2026-09-03")
    gprs = next(u for u in doc["uplinks"] if u["uplink"] == "gprs")
    assert gprs["monthly_budget_bytes"] == MB
    assert gprs["today"] == {"day": "2026-09-03", "sent": 50_000, "received": 50_000, "total": 100_000}
    assert gprs["this_month"] == {"month": "2026-09", "sent": 350_000, "received": 150_000, "total": 500_000, "percent_of_budget": 50.0}
    assert gprs["previous_month"]["percent_of_budget"] == 30.0 and [d["day"] for d in gprs["days"]] == ["2026-09-02", "2026-09-03"]
    assert json.loads(json.dumps(doc)) == doc


# --- the recorder on a real SQLite file ---------------------------------------------------------------


async def alarms(store: Store) -> list[str]:
    async with store._db.execute("SELECT data FROM events WHERE kind = 'alarm' ORDER BY id") as cursor:
        return [json.loads(row[0])["text"] for row in await cursor.fetchall()]


async def test_usage_is_kept_per_utc_day_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    clock = HandClock(system=at("2026-09-30T23:59:00"))
    store = await Store.open(db)
    recorder = UsageRecorder(store, clock, UPLINKS)
    await recorder.record("wired", Traffic(1000, 2000))
    await recorder.record("gprs", Traffic(10, 20))
    await recorder.record("wired", Traffic(1, 1))
    clock.advance(120)  # past midnight UTC: a new day and a new month
    await recorder.record("wired", Traffic(5, 5))
    await recorder.record("wired", Traffic())  # nothing moved: nothing written
    await store.close()

    store = await Store.open(db)
    assert await store.usage() == [
        UsageRow("gprs", "2026-09-30", Traffic(10, 20)),
        UsageRow("wired", "2026-09-30", Traffic(1001, 2001)),
        UsageRow("wired", "2026-10-01", Traffic(5, 5)),
    ]
    assert await store.usage("wired", since_day="2026-10-01") == [UsageRow("wired", "2026-10-01", Traffic(5, 5))]
    assert await store.month_usage("wired", "2026-09") == Traffic(1001, 2001)
    assert await store.month_usage("nobody", "2026-09") == Traffic()
    recorder = UsageRecorder(store, clock, UPLINKS)  # the restarted daemon adds to what is there
    await recorder.record("wired", Traffic(5, 5))
    assert await store.month_usage("wired", "2026-10") == Traffic(10, 10)


async def test_budget_alarms_once_at_80_and_once_at_100_percent_across_restarts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.usage")
    db = tmp_path / "gw.db"
    clock = HandClock(system=at("2026-09-10T12:00:00"))
    store = await Store.open(db)
    recorder = UsageRecorder(store, clock, UPLINKS)  # gprs: 1 MB a month
    await recorder.record("gprs", Traffic(300_000, 400_000))  # 70 %
    await recorder.record("wired", Traffic(5 * MB, 5 * MB))  # no budget: never an alarm
    assert await alarms(store) == []
    await recorder.record("gprs", Traffic(50_000, 50_000))  # 80 %
    await recorder.record("gprs", Traffic(10_000, 0))
    assert await alarms(store) == ["uplink gprs: monthly data budget 80 % used: 0.8 MB of 1 MB in 2026-09 (UTC)"]
    await store.close()

    store = await Store.open(db)  # a restart: nothing is remembered but the file
    recorder = UsageRecorder(store, clock, UPLINKS)
    await recorder.record("gprs", Traffic(100_000, 0))  # 91 %
    assert len(await alarms(store)) == 1
    await recorder.record("gprs", Traffic(0, 100_000))  # 101 %
    await recorder.record("gprs", Traffic(0, 500_000))
    assert (await alarms(store))[1:] == ["uplink gprs: monthly data budget used up: 1.0 MB of 1 MB in 2026-09 (UTC)"]

    clock.system = at("2026-10-01T00:00:01")  # a new month starts from nothing
    await recorder.record("gprs", Traffic(2 * MB, 0))
    assert (await alarms(store))[2:] == [
        "uplink gprs: monthly data budget 80 % used: 2.0 MB of 1 MB in 2026-10 (UTC)",
        "uplink gprs: monthly data budget used up: 2.0 MB of 1 MB in 2026-10 (UTC)",
    ]
    assert [r.getMessage() for r in caplog.records] == await alarms(store), "each alarm logged once, as a warning"


async def test_usage_waits_in_memory_while_the_clock_believes_it_is_1970(tmp_path: Path) -> None:
    clock = HandClock(system=BOOT_1970)
    store = await Store.open(tmp_path / "gw.db")
    recorder = UsageRecorder(store, clock, UPLINKS)
    await recorder.record("gprs", Traffic(100, 200))
    await recorder.record("gprs", Traffic(1, 2))
    await recorder.record("wired", Traffic(7, 7))
    assert await store.usage() == [], "never a 1970 day"
    assert recorder.held == {"gprs": Traffic(101, 202), "wired": Traffic(7, 7)}
    clock.adopt_backend_time("2026-09-10T12:00:00Z")  # the backend's BootNotification time
    await recorder.record("gprs", Traffic())  # a connection that ends with nothing more still writes what waited
    assert await store.usage() == [UsageRow("gprs", "2026-09-10", Traffic(101, 202)), UsageRow("wired", "2026-09-10", Traffic(7, 7))]
    assert recorder.held == {}


async def test_a_full_disk_keeps_usage_in_memory_and_writes_it_when_there_is_room(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.usage")
    clock = HandClock(system=at("2026-09-10T12:00:00"))
    store = await Store.open(tmp_path / "gw.db")
    async with store._db.execute("PRAGMA page_count") as cursor:
        pages = (await cursor.fetchone())[0]
    await store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL once the usage table's page is full
    with pytest.raises(StoreError, match="full"):
        for day in range(1, 1000):
            await store.add_usage("filler", f"{day:04d}-01-01", Traffic(1, 1), 0.0)
    recorder = UsageRecorder(store, clock, UPLINKS)
    await recorder.record("gprs", Traffic(900_000, 0))  # refused, held; never raised
    await recorder.record("gprs", Traffic(1, 0))
    assert recorder.held == {"gprs": Traffic(900_001, 0)} and await store.month_usage("gprs", "2026-09") == Traffic()
    await store._db.execute("PRAGMA max_page_count = 1073741823")
    await recorder.record("gprs", Traffic(0, 1))
    assert recorder.held == {} and await store.month_usage("gprs", "2026-09") == Traffic(900_001, 1)
    assert await alarms(store) == ["uplink gprs: monthly data budget 80 % used: 0.9 MB of 1 MB in 2026-09 (UTC)"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot store data usage" in m for m in messages) == 1, "the outage logged once, not per portion"
    assert "data usage is stored again" in messages


@pytest.mark.parametrize("turns", [1, 2, 3, 4, 6, 8, 12])
async def test_a_record_cancelled_at_any_step_counts_its_portion_exactly_once(tmp_path: Path, turns: int) -> None:
    """From its first step on (the portion is taken), a cancelled record still counts it once."""
    clock = HandClock(system=at("2026-09-10T12:00:00"))
    store = await Store.open(tmp_path / "gw.db")
    recorder = UsageRecorder(store, clock, UPLINKS)
    task = asyncio.create_task(recorder.record("gprs", Traffic(900_000, 0)))
    for _ in range(turns):
        await asyncio.sleep(0)
    was_done = task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled() != was_done, "a cancel that came during the write is raised after it, never swallowed"
    await recorder.record("gprs", Traffic())  # whatever is still held goes now
    assert await store.month_usage("gprs", "2026-09") == Traffic(900_000, 0) and recorder.held == {}
    assert len(await alarms(store)) == 1


async def test_negative_traffic_is_a_caller_bug(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    recorder = UsageRecorder(store, HandClock(system=at("2026-09-10T12:00:00")), UPLINKS)
    with pytest.raises(ValueError, match="negative"):
        await recorder.record("gprs", Traffic(-1, 5))
    assert recorder.held == {}


async def test_a_file_from_before_usage_counting_gets_the_table_on_open(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    store = await Store.open(db)
    await store.close()
    raw = sqlite3.connect(db)
    raw.execute("DROP TABLE uplink_usage")  # as the daemon's previous version left the file
    raw.commit()
    raw.close()
    view = await Store.open_read_only(db)  # a tool never migrates: an old file reads as no usage yet
    assert await view.usage() == [] and await view.month_usage("gprs", "2026-09") == Traffic()
    await view.close()
    store = await Store.open(db)
    await store.add_usage("gprs", "2026-09-10", Traffic(1, 2), 0.0)
    assert await store.usage() == [UsageRow("gprs", "2026-09-10", Traffic(1, 2))]


async def test_the_read_only_view_sees_the_running_daemon_and_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    store = await Store.open(db)
    await store.add_usage("gprs", "2026-09-10", Traffic(1, 2), 0.0)
    view = await Store.open_read_only(db)
    await store.add_usage("gprs", "2026-09-10", Traffic(10, 20), 0.0)  # committed after the view opened
    assert await view.usage() == [UsageRow("gprs", "2026-09-10", Traffic(11, 22))]
    with pytest.raises(StoreError, match="readonly"):
        await view.add_usage("gprs", "2026-09-10", Traffic(1, 1), 0.0)
    await view.close()
    await store.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    view = await Store.open_read_only(db)
    assert await view.month_usage("gprs", "2026-09") == Traffic(11, 22)
    await view.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == files == ["gw.db"], "no -wal or -shm left behind by a reader"
    with pytest.raises(StoreError, match="no such database"):
        await Store.open_read_only(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


# --- the data-usage command ------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "charge_point: {identity: CP-1, vendor: V, model: M}\n"
        "backend: {url: 'wss://127.0.0.1:9/ocpp'}\n"
        "buses: [{name: lan, kind: tcp}]\n"
        "connectors: [{id: 1, bus: lan, host: 127.0.0.1, port: 15020, unit: 1, profile: heidelberg-energy-control}]\n"
        "storage: {path: gw.db}\n"
    )
    return config


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(cli.main, list(argv))  # main runs its own event loop


async def test_data_usage_command_reads_the_running_daemons_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    today = day_key(time.time())
    yesterday, month_ago = days_ending(today, 2)[0], previous_month(month_of(today)) + "-15"
    store = await Store.open(tmp_path / "gw.db")  # the daemon, running
    await store.add_usage("default", today, Traffic(1_500_000, 500_000), 0.0)
    await store.add_usage("default", yesterday, Traffic(250_000, 0), 0.0)
    await store.add_usage("default", month_ago, Traffic(0, 3_000_000), 0.0)

    assert await run_cli("data-usage", "-c", str(config), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["today"] == today
    (default,) = doc["uplinks"]
    assert default["uplink"] == "default" and default["monthly_budget_bytes"] is None
    assert default["today"] == {"day": today, "sent": 1_500_000, "received": 500_000, "total": 2_000_000}
    assert len(default["days"]) == 7 and default["days"][-2] == {"day": yesterday, "sent": 250_000, "received": 0, "total": 250_000}
    this_month = 2_000_000 + (250_000 if month_of(yesterday) == month_of(today) else 0)
    assert default["this_month"]["total"] == this_month and default["this_month"]["percent_of_budget"] is None
    assert default["previous_month"]["total"] == 3_000_000 + (250_000 if month_of(yesterday) != month_of(today) else 0)

    assert await run_cli("data-usage", "-c", str(config), "--days", "2") == 0
    text = capsys.readouterr().out
    assert "uplink default (no budget)" in text
    assert f"  {today} today" in text and f"  {yesterday} " in text
    today_line = next(line for line in text.splitlines() if f"{today} today" in line)
    assert today_line.split()[2:] == ["1.500", "0.500", "2.000"]
    await store.close()


async def test_data_usage_without_a_database_says_so_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert await run_cli("data-usage", "-c", str(config)) == cli.EX_NOINPUT == 66
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "gw.db").exists()
    (tmp_path / "gw.db").write_text("not a database\n" * 300)
    assert await run_cli("data-usage", "-c", str(config)) == 1
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli.main(["data-usage", "-c", str(config), "--days", "0"])
    assert usage.value.code == 2


@pytest.mark.skipif(LIBFAKETIME is None, reason="needs Debian's faketime")
async def test_data_usage_on_a_box_that_believes_it_is_1970_shows_the_last_recorded_days(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    store = await Store.open(tmp_path / "gw.db")
    await store.add_usage("default", "2026-09-10", Traffic(7, 8), 0.0)
    await store.close()
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "@1970-01-01 00:10:00"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "data-usage", "-c", str(config), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "clock is not set" in done.stderr
    doc = json.loads(done.stdout)
    assert doc["today"] == "2026-09-10" and doc["uplinks"][0]["today"]["total"] == 15


# --- the socket meter on real loopback TCP ------------------------------------------------------------------


def test_socket_meter_counts_real_loopback_traffic_with_header_estimate() -> None:
    # Each segment carries at most 52 header bytes (IPv4 20 + TCP 20 + timestamps 12); even at the
    # smallest MSS (536) a payload needs at most payload / 536 segments, plus handshake and ACKs.
    def headers(payload: int) -> int:
        return 52 * (payload // 536 + 10)

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            sending, receiving = SocketMeter(client), SocketMeter(peer)
            for payload in (200_000, 30_000):  # the second take gives only what moved since the first
                client.sendall(b"x" * payload)
                got = 0
                while got < payload:
                    got += len(peer.recv(65536))
                sent, received = sending.take(), receiving.take()
                assert payload <= sent.sent <= payload + headers(payload)
                assert payload <= received.received <= payload + headers(payload)
                assert sent.received <= headers(payload) and received.sent <= headers(payload), "the other way only ACKs"
            sending.close()
            receiving.close()
            assert receiving.take() == Traffic(), "a closed meter gives nothing more"
