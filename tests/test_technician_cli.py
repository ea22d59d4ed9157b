"""The technician's command line against a running daemon on the simulator, and its pure parts.

One cluster for the module: the demo backend, `charger-gateway simulate` (two Heidelberg
boxes on a pty RS-485 line, two on Modbus TCP) and `charger-gateway run`, all real
processes; every command runs as `python -m gateway ...`, a real process too, and its
exit code and output are what is judged. `sessions` and `queue` are also run on a database
made here, whose every row is known, with no daemon running.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from gateway import history
from gateway.clock import Clock
from gateway.config import load_config_with_warnings
from gateway.control_socket import (
    ControlServer,
    ControlSocketError,
    EventsRequest,
    ModbusRequest,
    RequestError,
    TriggerRequest,
    bind_control_socket,
    call,
    find_device,
    parse_request,
)
from gateway.daemon import Daemon
from gateway.devprofile import Table
from gateway.modbus_line import LineStats
from gateway.modem_replies import ModemHealth
from gateway.session import StatusChanged, Transaction, TransactionStarted, TransactionStopped
from gateway.settings import ChargePointInfo, ConnectorSettings
from gateway.store import Store
from gateway.technician import ConnectorView, LineView, StatusInput, render_status, status_alarms
from gateway.uplink import UplinkStatus
from tests.loopback import free_port

REPO = Path(__file__).resolve().parents[1]
IDENTITY = "CP-TECH-01"
CLOCK = Clock()


def cluster_doc(workdir: Path, backend_port: int) -> dict:
    """Two RTU boxes on one pty line, two TCP boxes (both unit 1); EVs come within 3 s and charge for seconds."""
    return {
        "charge_point": {"identity": IDENTITY, "vendor": "OpenGateway", "model": "Cluster", "serial_number": "TECH-1"},
        "backend": {"url": f"ws://127.0.0.1:{backend_port}/ocpp", "insecure_lab_mode": True},
        "buses": [
            {"name": "rs485-1", "kind": "rtu", "port": str(workdir / "ttyRS485-1"), "baudrate": 19200, "parity": "N", "poll_interval_s": 1.0},
            {"name": "lan", "kind": "tcp", "poll_interval_s": 0.5},
        ],
        "connectors": [
            {"id": 1, "bus": "rs485-1", "unit": 1, "profile": "heidelberg-energy-control"},
            {"id": 2, "bus": "rs485-1", "unit": 2, "profile": "heidelberg-energy-control"},
            {"id": 3, "bus": "lan", "host": "127.0.0.1", "port": free_port(), "unit": 1, "profile": "heidelberg-energy-control"},
            {"id": 4, "bus": "lan", "host": "127.0.0.1", "port": free_port(), "unit": 1, "profile": "heidelberg-energy-control"},
        ],
        "storage": {"path": str(workdir / "gateway.db")},
        "control": {"socket": str(workdir / "control.sock")},
        "authorization": {"free_charging_id_tag": "TECH-FREE"},
        "simulator": {"speed": 120, "seed": 5, "wire_delay": True, "turnaround": True, "idle_s": [240, 360], "session_kwh": [0.05, 0.1]},
    }


def write_config(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli(config: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS -c CONFIG`, a real process."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "-c", str(config)], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def until(predicate: Callable[[], object], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}" + (f"\n{log.read_text()[-3000:]}" if log else ""))
        time.sleep(0.1)


@dataclass
class Cluster:
    workdir: Path
    config: Path
    socket: Path
    backend_log: Path
    daemon_log: Path

    def status(self) -> dict:
        return dict(asyncio.run(call(self.socket, {"op": "status"}, 5.0)))


def _spawn(workdir: Path, name: str, *args: str, umask: int = -1) -> subprocess.Popen[bytes]:
    with (workdir / f"{name}.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), umask=umask,
        )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("tech")
    port = free_port()
    config = write_config(workdir / "cluster.yaml", cluster_doc(workdir, port))
    procs = [_spawn(workdir, "backend", "demo-backend", "--port", str(port))]
    try:
        procs.append(_spawn(workdir, "sim", "simulate", "-c", str(config)))

        def alive() -> bool:
            dead = [p.args for p in procs if p.poll() is not None]
            assert not dead, f"{dead} ended:\n" + "\n".join((workdir / f"{n}.log").read_text()[-2000:] for n in ("backend", "sim", "daemon") if (workdir / f"{n}.log").exists())
            return True

        until(lambda: alive() and (workdir / "ttyRS485-1").exists(), 20, "the simulated line", workdir / "sim.log")
        until(lambda: alive() and "listening" in (workdir / "backend.log").read_text(), 20, "the backend", workdir / "backend.log")
        # With umask 0 bind() would make the socket 0777: its mode must still come out 0660.
        procs.append(_spawn(workdir, "daemon", "run", "-c", str(config), umask=0))
        running = Cluster(workdir, config, workdir / "control.sock", workdir / "backend.log", workdir / "daemon.log")

        def ready() -> bool:
            if not (alive() and running.socket.exists()):
                return False
            status = running.status()
            return bool(status["uplink"]["connected"] and all(c["online"] for c in status["connectors"]))

        until(ready, 20, "the daemon connected, every slave online", running.daemon_log)
        yield running
    finally:
        for proc in reversed(procs):
            _stop(proc)


# --- against the running daemon ------------------------------------------------------------------


def test_status_json_has_the_whole_structure_and_exit_0_without_alarms(cluster: Cluster) -> None:
    # A loaded test machine may miss a poll deadline now and then (a slave_offline alarm for a poll period): a calm moment is waited for.
    for _ in range(10):
        done = cli(cluster.config, "status", "--json")
        status = json.loads(done.stdout)
        assert done.returncode == (1 if status["alarms"] else 0), done.stderr
        if not status["alarms"]:
            break
        time.sleep(0.5)
    assert status["alarms"] == []
    assert status["charge_point"]["identity"] == IDENTITY
    assert status["uplink"] | {"problem": None} == {"name": "default", "connected": True, "security_profile": 0, "compression": True, "problem": None}
    assert [(c["id"], c["line"], c["unit"], c["online"]) for c in status["connectors"]] == [
        (1, "rs485-1", 1, True), (2, "rs485-1", 2, True),
        (3, f"lan/127.0.0.1:{status['connectors'][2]['port']}", 1, True), (4, f"lan/127.0.0.1:{status['connectors'][3]['port']}", 1, True),
    ]
    assert isinstance(status["queue"]["pending"], int)
    assert {line["name"] for line in status["lines"]} == {c["line"] for c in status["connectors"]}
    assert all(line["requests"] > 0 for line in status["lines"])


def test_status_text_fits_one_screen(cluster: Cluster) -> None:
    done = cli(cluster.config, "status")
    lines = done.stdout.splitlines()
    assert done.returncode in (0, 1), done.stderr
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 110, done.stdout
    assert lines[0].startswith(IDENTITY)
    assert "uplink    default: connected, security profile 0" in done.stdout
    assert sum(1 for line in lines if "heidelberg-energy-control" in line) == 4


def test_a_silent_client_and_garbage_get_nowhere_and_the_server_serves_on(cluster: Cluster) -> None:
    with socket.socket(socket.AF_UNIX) as silent:
        silent.connect(str(cluster.socket))  # says nothing, and stays
        for garbage in (b"garbage\n", b"[1, 2]\n", b'{"op": "reboot"}\n', b"\xff\xfe\n", b'{"op": "modbus", "action": "read"}\n'):
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(5)
                client.connect(str(cluster.socket))
                client.sendall(garbage)
                answer = json.loads(client.makefile("rb").readline())
            assert answer["ok"] is False and answer["kind"] == "request" and answer["error"], garbage
        started = time.monotonic()
        assert cluster.status()["charge_point"]["identity"] == IDENTITY
        assert time.monotonic() - started < 2


def test_the_socket_is_0660_whatever_the_umask(cluster: Cluster) -> None:
    mode = cluster.socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660


def test_events_last_and_follow_until_ctrl_c(cluster: Cluster) -> None:
    done = cli(cluster.config, "events", "--last", "3", "--json")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and len(events) == 3, done.stderr
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in events)

    out = cluster.workdir / "follow.out"
    with out.open("w") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-m", "gateway", "events", "--follow", "--last", "0", "-c", str(cluster.config)],
            cwd=REPO, stdout=sink, stderr=subprocess.PIPE, text=True,
        )
    try:
        # The follower may not have subscribed yet when a trigger goes: trigger until one shows.
        def seen() -> bool:
            assert cli(cluster.config, "trigger", "--connector", "0").returncode == 0
            return "technician asks for StatusNotification of connector 0" in out.read_text()

        until(seen, 10, "the trigger's event in the live tail")
        follower.send_signal(signal.SIGINT)
        assert follower.wait(5) == 0
        assert "Traceback" not in (follower.stderr.read() if follower.stderr else "")
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_events_follow_ends_quietly_when_its_reader_goes(cluster: Cluster) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "gateway", "events", "--follow", "--last", "1", "-c", str(cluster.config)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert follower.stdout is not None and follower.stderr is not None
    try:
        follower.stdout.readline()  # the backlog came: it is following
        follower.stdout.close()  # `| head -1` is done with it
        until(lambda: cli(cluster.config, "trigger").returncode == 0 and follower.poll() is not None, 10, "the follower ending on EPIPE")
        assert follower.returncode == 0
        assert follower.stderr.read() == b""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        follower.stderr.close()


def test_modbus_read_through_the_daemons_line(cluster: Cluster) -> None:
    done = cli(cluster.config, "modbus", "read", "rs485-1", "2", "4", "2", "--table", "input", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["line"] == "rs485-1" and result["table"] == "input" and result["address"] == 4
    layout, state = result["values"]
    assert 0x0100 <= layout <= 0x01FF and 2 <= state <= 11  # Heidelberg's layout version and state
    text = cli(cluster.config, "modbus", "read", "rs485-1", "1", "0x4", "--table", "input")
    assert text.returncode == 0 and f"0x{layout:04X}" in text.stdout


def test_modbus_on_a_tcp_bus_takes_the_configured_devices_host(cluster: Cluster) -> None:
    ambiguous = cli(cluster.config, "modbus", "read", "lan", "1", "4", "--table", "input")
    assert ambiguous.returncode == 2 and "several devices" in ambiguous.stderr
    line = json.loads(cli(cluster.config, "status", "--json").stdout)["connectors"][2]["line"]
    done = cli(cluster.config, "modbus", "read", line, "1", "4", "--table", "input", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["line"] == line


def test_modbus_write_needs_force_and_then_writes(cluster: Cluster) -> None:
    refused = cli(cluster.config, "modbus", "write", "rs485-1", "1", "258", "0")
    assert refused.returncode == 2 and "--force" in refused.stderr
    try:
        written = cli(cluster.config, "modbus", "write", "rs485-1", "1", "258", "0", "--force")
        assert written.returncode == 0, written.stderr
        assert "wrote holding 258 = 0 on rs485-1 unit 1" in written.stdout
        back = cli(cluster.config, "modbus", "read", "rs485-1", "1", "258", "--json")
        assert json.loads(back.stdout)["values"] == [0]
    finally:
        assert cli(cluster.config, "modbus", "write", "rs485-1", "1", "258", "4", "--force").returncode == 0  # standby off again
    events = cli(cluster.config, "events", "--last", "200").stdout
    assert "technician writes holding 258 = [0] on rs485-1 unit 1" in events  # the audit trail


def test_modbus_exceptions_timeouts_and_bad_requests_are_told_apart(cluster: Cluster) -> None:
    exception = cli(cluster.config, "modbus", "write", "rs485-1", "1", "100", "5", "--force")
    assert exception.returncode == 1 and "exception 2 (illegal data address)" in exception.stderr
    silence = cli(cluster.config, "modbus", "read", "rs485-1", "9", "4")
    assert silence.returncode == 1 and "no reply within 0.3 s" in silence.stderr
    unknown = cli(cluster.config, "modbus", "read", "rs485-9", "1", "4")
    assert unknown.returncode == 2 and "no bus or line named 'rs485-9'" in unknown.stderr


def test_trigger_resends_status_notifications(cluster: Cluster) -> None:
    def station_statuses() -> int:
        return sum(1 for line in cluster.backend_log.read_text().splitlines() if f"{IDENTITY} #0 " in line)

    before = station_statuses()
    done = cli(cluster.config, "trigger", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"message": "StatusNotification", "connector": None, "connected": True}
    until(lambda: station_statuses() > before, 5, "connector 0's StatusNotification at the backend")
    wrong = cli(cluster.config, "trigger", "--connector", "7")
    assert wrong.returncode == 2 and "no connector 7" in wrong.stderr


def test_identify_reads_every_slave_and_matches_its_profile(cluster: Cluster) -> None:
    result = asyncio.run(call(cluster.socket, {"op": "identify"}, 10.0))
    assert [(r["connector"], r["answered"], r["matches"]) for r in result] == [(c, True, True) for c in (1, 2, 3, 4)]
    assert all(r["profile"] == "heidelberg-energy-control" and r["detail"].startswith("answers as heidelberg-energy-control") for r in result)
    # The same verdict as the standalone selftest's (gateway.device_probe): the ids read, nothing it looks like instead.
    assert all(r["ids"] and r["looks_like"] == [] for r in result), result


def test_sessions_and_queue_of_the_live_database(cluster: Cluster) -> None:
    db = cluster.workdir / "gateway.db"

    def a_session_reached_the_backend() -> bool:
        with history.read_only(db) as conn:
            return any(s.stopped is not None and s.reached_backend for s in history.sessions(conn, 0.0, time.time()))

    until(a_session_reached_the_backend, 20, "a whole session at the backend", cluster.daemon_log)
    done = cli(cluster.config, "sessions", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    stopped = [s for s in report["sessions"] if s["stopped"] is not None and s["reached_backend"]]
    assert stopped and all(s["energy_kwh"] > 0 and s["stop_reason"] == "EVDisconnected" and s["id_tag"] == "TECH-FREE" for s in stopped)
    assert sum(t["sessions"] for t in report["daily_totals"]) == len(report["sessions"])
    queue = cli(cluster.config, "queue")
    assert queue.returncode == 0 and queue.stdout.split()[1:3] == ["messages", "pending"], queue.stderr


# --- the database alone, and no daemon -----------------------------------------------------------------


async def _known_history(db: Path) -> None:
    """Three sessions: one ten days ago, wholly at the backend; one whose Stop waits; one open whose Start waits."""
    store = await Store.open(db)
    now = time.time()
    try:
        old = Transaction("old", "TAG-OLD", 1000, now - 10 * 86_400)
        await store.commit([TransactionStarted(1, old), TransactionStopped(1, old, 3000, "Local", now - 10 * 86_400 + 3600)], CLOCK)
        done = Transaction("done", "TAG-A", 10_000, now - 7200)
        await store.commit([TransactionStarted(2, done), TransactionStopped(2, done, 17_500, "EVDisconnected", now - 3600)], CLOCK)
        for tx_id in (41, None, 42):  # the backend answers the old session's Start and Stop, and the next Start
            message = await store.next_to_send()
            assert message is not None
            await store.acknowledge(message, {"transactionId": tx_id, "idTagInfo": {"status": "Accepted"}} if tx_id else {})
        await store.commit([TransactionStarted(2, Transaction("open", "TAG-B", 20_000, now - 600))], CLOCK)
    finally:
        await store.close()


async def test_sessions_and_queue_read_a_database_with_no_daemon(tmp_path: Path) -> None:
    await _known_history(tmp_path / "gw.db")
    doc = cluster_doc(tmp_path, free_port()) | {"storage": {"path": str(tmp_path / "gw.db")}}
    config = write_config(tmp_path / "gw.yaml", doc)

    done = await asyncio.to_thread(cli, config, "sessions", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert [(s["session"], s["connector"], s["transaction_id"], s["energy_kwh"], s["queued"], s["reached_backend"]) for s in report["sessions"]] == [
        ("done", 2, 42, 7.5, 1, False),  # its StopTransaction waits
        ("open", 2, None, None, 1, False),
    ]
    assert sum(t["kwh"] for t in report["daily_totals"]) == 7.5 and sum(t["sessions"] for t in report["daily_totals"]) == 2

    older = await asyncio.to_thread(cli, config, "sessions", "--since", "30d", "--connector", "1")
    assert older.returncode == 0, older.stderr
    row = next(line for line in older.stdout.splitlines() if "TAG-OLD" in line)
    assert row.split()[-4:] == ["2.00", "Local", "41", "yes"] and "TAG-A" not in older.stdout

    queue = await asyncio.to_thread(cli, config, "queue", "--json")
    assert queue.returncode == 0, queue.stderr
    outbox = json.loads(queue.stdout)
    assert outbox["by_action"] == {"StartTransaction": 1, "StopTransaction": 1}
    assert [(m["action"], m["connector"], m["transaction_id"], m["attempts"]) for m in outbox["messages"]] == [
        ("StopTransaction", 2, 42, 0), ("StartTransaction", 2, None, 0),
    ]
    assert [m["age_s"] for m in outbox["messages"]] == [pytest.approx(3600, abs=60), pytest.approx(600, abs=60)]
    text = await asyncio.to_thread(cli, config, "queue")
    assert text.stdout.startswith("2 messages pending (StartTransaction 1, StopTransaction 1)")
    assert not (tmp_path / "gw.db-wal").exists(), "a read-only look leaves no -wal file behind"


@pytest.mark.skipif(shutil.which("faketime") is None, reason="needs Debian's faketime")
async def test_sessions_on_a_box_that_believes_it_is_1970(tmp_path: Path) -> None:
    await _known_history(tmp_path / "gw.db")
    config = write_config(tmp_path / "gw.yaml", cluster_doc(tmp_path, free_port()) | {"storage": {"path": str(tmp_path / "gw.db")}})
    done = await asyncio.to_thread(
        subprocess.run, ["faketime", "1970-01-02 00:00:00", sys.executable, "-m", "gateway", "sessions", "--since", "2d", "--json", "-c", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "the system clock is not set" in done.stderr
    assert [s["session"] for s in json.loads(done.stdout)["sessions"]] == ["done", "open"]  # days counted back from the last time in the database


def test_no_database_yet_is_66_and_no_daemon_is_69(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.yaml", cluster_doc(tmp_path, free_port()))
    for command in ("sessions", "queue"):
        done = cli(config, command)
        assert done.returncode == 66 and "no database" in done.stderr
    done = cli(config, "status")
    assert done.returncode == 69
    assert "systemctl status charger-gateway" in done.stderr and str(tmp_path / "control.sock") in done.stderr
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(tmp_path / "control.sock"))  # left by a daemon that was killed: bound, nobody listening
    dead.close()
    done = cli(config, "events")
    assert done.returncode == 69 and "nothing listens" in done.stderr


# --- the socket's life in the daemon ----------------------------------------------------------------------


async def test_a_stale_socket_is_replaced_but_a_live_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    sock, _ = await bind_control_socket(path)
    sock.listen()
    try:
        with pytest.raises(ControlSocketError, match="another daemon answers"):
            await bind_control_socket(path)
    finally:
        sock.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await bind_control_socket(path)
    assert path.read_text() == "not a socket"
    with pytest.raises(ControlSocketError, match="does not exist"):
        await bind_control_socket(tmp_path / "missing" / "control.sock")


async def test_the_daemon_runs_on_without_its_socket_and_takes_it_when_it_can(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config, _ = load_config_with_warnings(write_config(tmp_path / "gw.yaml", cluster_doc(tmp_path, free_port())))
    store = await Store.open(config.storage.path)
    daemon = Daemon(config, store, Clock())
    await daemon.recover()
    path = tmp_path / "run" / "control.sock"
    server = asyncio.create_task(ControlServer(daemon, path, retry_s=0.05).run())
    try:
        with caplog.at_level(logging.WARNING, "gateway.control_socket"):
            await asyncio.sleep(0.3)
        assert not server.done()
        assert [r.getMessage() for r in caplog.records].count(
            f"control socket not made: the directory {path.parent} does not exist. The daemon runs on without it (status and "
            "the other technician's commands cannot reach it) and tries again every 0.05 s"
        ) == 1
        path.parent.mkdir()
        async with asyncio.timeout(5):
            while not path.exists():
                await asyncio.sleep(0.02)
        status = await call(path, {"op": "status"}, 5.0)
        assert [c["online"] for c in status["connectors"]] == [None] * 4  # nothing polled: the daemon's tasks do not run here
        assert {a["kind"] for a in status["alarms"]} == {"uplink_down"}
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        await store.close()
    assert not path.exists(), "the socket goes with the server"


# --- the pure parts --------------------------------------------------------------------------------------


def test_parse_request() -> None:
    assert parse_request(b'{"op": "events", "last": 5, "follow": true}\n') == EventsRequest(5, True)
    assert parse_request(b'{"op": "trigger", "connector": null}') == TriggerRequest("StatusNotification", None)
    assert parse_request(b'{"op": "modbus", "action": "read", "bus": "b", "unit": 3, "address": 4, "count": 2, "table": "input"}') == (
        ModbusRequest("read", "b", 3, 4, 2, (), Table.INPUT)
    )
    assert parse_request(b'{"op": "modbus", "action": "write", "bus": "b", "unit": 3, "address": 261, "values": [160]}') == (
        ModbusRequest("write", "b", 3, 261, 1, (160,), Table.HOLDING)
    )
    for bad, why in (
        (b'{"op": "modbus", "action": "write", "bus": "b", "unit": 3, "address": 1, "values": [65536]}', "0..65535"),
        (b'{"op": "modbus", "action": "read", "bus": "b", "unit": 3, "address": 1, "count": 126}', "count"),
        (b'{"op": "modbus", "action": "read", "bus": "b", "unit": true, "address": 1}', "unit"),
        (b'{"op": "events", "follow": "yes"}', "follow"),
        (b'{"op": "trigger", "message": "Reset"}', "message"),
    ):
        with pytest.raises(RequestError, match=why):
            parse_request(bad)


def test_find_device(tmp_path: Path) -> None:
    doc = cluster_doc(tmp_path, 9)
    doc["connectors"][3]["unit"] = 2
    config, _ = load_config_with_warnings(write_config(tmp_path / "gw.yaml", doc))
    port3, port4 = doc["connectors"][2]["port"], doc["connectors"][3]["port"]
    serial = find_device(config, "rs485-1", 7)  # no device configured there: the line's own profiles' timing
    assert (serial.line, serial.unit, serial.timeout_s, serial.gap_s) == ("rs485-1", 7, 0.3, 0.1)
    assert find_device(config, "lan", 2).line == f"lan/127.0.0.1:{port4}"
    assert find_device(config, f"lan/127.0.0.1:{port3}", 255).line == f"lan/127.0.0.1:{port3}"
    with pytest.raises(RequestError, match=r"unit of a device configured on it: 1 \(lan/"):
        find_device(config, "lan", 5)
    with pytest.raises(RequestError, match="1..247"):
        find_device(config, "rs485-1", 0)


def test_status_alarms_and_their_screen() -> None:
    settings = ConnectorSettings(1, "rs485-1", 1, "heidelberg-energy-control")
    reading_less = ConnectorView(settings, "rs485-1", StatusChanged(1, "Faulted", "OtherError", "slave not answering", 0.0), False, None, None)
    quiet = StatusInput(
        info=ChargePointInfo(IDENTITY, "V", "M"), uptime_s=3725, wall=1.8e9, clock_valid=True,
        uplink=UplinkStatus("wired", True, 2, False, None), modems={}, monotonic=100.0, budgets=[],
        connectors=[replace(reading_less, status=StatusChanged(1, "Available", "NoError", None, 0.0), online=True)],
        lines=[LineView("rs485-1", True, LineStats(requests=10))], pending=0, uncommitted=0, store_problem=None, recorded=[],
    )
    assert status_alarms(quiet) == []
    troubled = replace(
        quiet, uplink=UplinkStatus("gprs", False, 2, False, "TimeoutError"), modems={"gprs": ModemHealth(problem="AT+CSQ: no answer")},
        connectors=[reading_less], lines=[LineView("rs485-1", False, LineStats(requests=10, timeouts=4))],
        uncommitted=3, clock_valid=False, recorded=[history.RecordedAlarm(1.8e9 - 60, 0, "database was corrupt and was replaced")],
    )
    alarms = status_alarms(troubled)
    assert [a["kind"] for a in alarms] == ["uplink_down", "modem", "slave_offline", "faulted", "store", "clock", "recorded"]
    assert alarms[2]["text"] == "connector 1: slave rs485-1 unit 1 not answering (line rs485-1 is not open)"
    from gateway.technician import build_status

    screen = render_status(build_status(troubled))
    assert "NOT CONNECTED (TimeoutError)" in screen and "line      rs485-1 NOT OPEN: 10 requests, 4 timeouts" in screen
    assert "alarms    7:" in screen and "up 1:02:05" in screen


def test_daily_totals_and_since() -> None:
    day = datetime(2026, 5, 1, tzinfo=UTC).timestamp()
    rows = [
        history.SessionRow("a", 1, "T", day + 3600, day + 3 * 3600, 0, 10_000, "Local", 1, 0),
        history.SessionRow("b", 1, "T", day + 23 * 3600, day + 26 * 3600, 10_000, 13_000, "Local", 2, 0),
        history.SessionRow("c", 2, "T", day + 86_400 + 600, None, 0, None, None, None, 1),
    ]
    totals = history.daily_totals(rows, now=day + 86_400 + 4200)
    assert [(t.day, t.connector, t.sessions, round(t.hours, 2), t.kwh) for t in totals] == [
        ("2026-05-01", 1, 2, 5.0, 13.0), ("2026-05-02", 2, 1, 1.0, 0.0),
    ]
    assert history.parse_since("1d", date(2026, 5, 2)) == day + 86_400
    assert history.parse_since("2026-05-01", date(2026, 5, 9)) == day
    with pytest.raises(ValueError, match="7d"):
        history.parse_since("last week", date(2026, 5, 9))
