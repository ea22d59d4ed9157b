"""The daemon as systemd runs it: READY only once the store is open, STATUS= and WATCHDOG=1 while every
task runs, SIGHUP reloads what it can, SIGTERM ends the bus transactions and flushes the store.

systemd itself is played by a real Unix datagram socket given as $NOTIFY_SOCKET (what systemd does
for Type=notify); the daemon is the real process on the simulated cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from gateway.clock import Clock
from gateway.config import load_config
from gateway.daemon import Daemon, StopRequested
from gateway.reload import plan_reload
from gateway.sd_notify import Notifier
from gateway.store import Store
from tests.killing import Scenario, spawn_gateway, terminate, write_config
from tests.ocpp_rpc_peer import OcppRpcBackend

CLUSTER = Scenario(kills=0, seed=5, speed=60.0, idle_s=(5.0, 20.0), session_kwh=(0.2, 0.5), sample_interval_s=2)


class SystemdSocket:
    """The receiving end of $NOTIFY_SOCKET: every datagram the daemon sends, as a dict."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    async def next(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        """The next message carrying `key` (messages before it are kept in `messages`)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(self.sock, 4096)
                message = dict(line.split("=", 1) for line in data.decode().splitlines())
                self.messages.append(message)
                if key in message:
                    return message


@contextlib.contextmanager
def systemd_socket(tmp_path: Path) -> Iterator[SystemdSocket]:
    listener = SystemdSocket(tmp_path / "notify.sock")
    try:
        yield listener
    finally:
        listener.sock.close()


@contextlib.asynccontextmanager
async def simulated_cluster(tmp_path: Path, backend_url: str) -> AsyncIterator[Path]:
    config = write_config(tmp_path, backend_url, CLUSTER)
    sim = await spawn_gateway("simulate", "-c", str(config), log=tmp_path / "sim.log")
    try:
        async with asyncio.timeout(20):
            while not (tmp_path / "ttyRS485-1").exists():
                await asyncio.sleep(0.05)
        yield config
    finally:
        await terminate(sim)


def test_notifier_speaks_the_sd_notify_datagram_protocol(tmp_path: Path) -> None:
    with systemd_socket(tmp_path) as systemd:
        notifier = Notifier(str(systemd.path), 4_000_000)
        notifier.notify(READY=1, STATUS="all well")
        assert systemd.sock.recv(100) == b"READY=1\nSTATUS=all well"
        assert notifier.watchdog_s == 4.0
        notifier.close()


def test_notifier_does_nothing_outside_systemd_and_survives_a_vanished_socket(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Notifier(None, None).notify(READY=1)  # no NOTIFY_SOCKET: nothing to do, nothing raised
    gone = Notifier(str(tmp_path / "nobody-listens"), None)
    gone.notify(WATCHDOG=1)
    gone.notify(WATCHDOG=1)
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1, "logged once, not per ping"


def test_watchdog_is_only_for_the_process_systemd_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@systemd-notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.from_environment().watchdog_s == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # a parent's watchdog, inherited: not ours to feed
    assert Notifier.from_environment().watchdog_s is None


# Run in a private mount namespace with a tmpfs over /run: the journald socket there is ours, the host's untouched.
# The daemon's logging (setup_logging, as `charger-gateway run` calls it under systemd, JOURNAL_STREAM set) sends
# one record through systemd-python's journal.send; the datagram is read back and its native-protocol fields printed.
JOURNAL_PROBE = r"""
import json, logging, os, socket, struct
os.makedirs("/run/systemd/journal")
journald = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
journald.bind("/run/systemd/journal/socket")
os.environ["JOURNAL_STREAM"] = "0:0"
from gateway.logs import setup_logging
setup_logging(False)
logging.getLogger("gateway.test_journal").warning(
    "connector %d: offline", 3, extra={"connector": 3, "bus": "rs485-1", "unit": 2, "transaction": None})
data, fields = journald.recv(65536), {}
while data:  # KEY=value\n, or KEY\n + 64-bit little-endian length + value + \n (systemd.io/JOURNAL_NATIVE_PROTOCOL)
    line, _, data = data.partition(b"\n")
    if b"=" in line:
        key, _, value = line.partition(b"=")
    else:
        size = struct.unpack("<Q", data[:8])[0]
        key, value, data = line, data[8:8 + size], data[9 + size:]
    fields[key.decode()] = value.decode()
print(json.dumps(fields))
"""


def test_journald_gets_each_record_with_its_structured_fields() -> None:
    pytest.importorskip("systemd.journal", reason="systemd-python (the [systemd] extra) is not installed")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private mount namespace for the journald socket needs root and unshare")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation=private", "sh", "-c", 'mount -t tmpfs tmpfs /run && exec "$0" -c "$1"',
         sys.executable, JOURNAL_PROBE],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parents[1],
    )
    assert probe.returncode == 0, probe.stderr
    fields = json.loads(probe.stdout)
    assert fields["MESSAGE"] == "connector 3: offline"
    assert fields["PRIORITY"] == "4" and fields["SYSLOG_IDENTIFIER"] == "charger-gateway"
    assert (fields["CONNECTOR"], fields["BUS"], fields["UNIT"]) == ("3", "rs485-1", "2")
    assert "TRANSACTION" not in fields


def test_reload_takes_the_backend_and_idtags_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    old = load_config(write_config(tmp_path, "ws://127.0.0.1:9/ocpp", CLUSTER))
    raw = yaml.safe_load((tmp_path / "cluster.yaml").read_text())
    raw["backend"]["url"] = "ws://127.0.0.1:10/ocpp"
    raw["authorization"]["free_charging_id_tag"] = "NEW-TAG"
    raw["connectors"][1]["id_tag"] = "OUTLET-2"
    raw["buses"][0]["poll_interval_s"] = 2.0
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(raw))
    new = load_config(tmp_path / "cluster.yaml")

    plan = plan_reload(old, new)

    assert plan.applied == ("backend", "authorization", "connectors[].id_tag")
    assert plan.need_restart == ("buses",)
    assert plan.reconnect
    assert plan.config.backend.url == "ws://127.0.0.1:10/ocpp" and plan.config.buses == old.buses
    assert plan.config.connectors[1].id_tag == "OUTLET-2"
    assert plan_reload(old, old) == type(plan)(old, (), (), reconnect=False)


@pytest.mark.interop
async def test_daemon_under_systemd_ready_status_watchdog_reload_and_clean_stop(tmp_path: Path) -> None:
    async with OcppRpcBackend() as backend, simulated_cluster(tmp_path, backend.url) as config:
        with systemd_socket(tmp_path) as systemd:
            env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"}
            daemon = await spawn_gateway("run", "-c", str(config), log=tmp_path / "daemon.log", env=env)
            try:
                ready = await systemd.next("READY")
                assert (tmp_path / "gateway.db").exists(), "READY=1 came before the database was open"
                assert "slaves online" in ready["STATUS"] and "queued" in ready["STATUS"]
                for _ in range(3):  # WatchdogSec=1s: a ping every half second, each with the status line
                    ping = await systemd.next("WATCHDOG", timeout=3)
                    assert ping["WATCHDOG"] == "1" and "uplink" in ping["STATUS"]
                await backend.wait_for_calls("BootNotification", identity=None, timeout=20)

                raw = yaml.safe_load(config.read_text())
                raw["authorization"]["free_charging_id_tag"] = "RELOADED"
                raw["buses"][0]["poll_interval_s"] = 2.0
                config.write_text(yaml.safe_dump(raw))
                daemon.send_signal(signal.SIGHUP)
                assert "MONOTONIC_USEC" in await systemd.next("RELOADING")
                await systemd.next("READY")
                config.write_text("charge_point: [broken\n")
                daemon.send_signal(signal.SIGHUP)
                await systemd.next("READY")  # refused, running on
                assert daemon.returncode is None

                daemon.send_signal(signal.SIGTERM)
                await systemd.next("STOPPING")
                async with asyncio.timeout(10):
                    assert await daemon.wait() == 0
            finally:
                await terminate(daemon)
    log = (tmp_path / "daemon.log").read_text()
    assert "reloaded" in log and "authorization" in log
    assert "kept until a restart" in log and "buses" in log
    assert "reload refused" in log and "cluster.yaml:1" in log
    assert log.rstrip().endswith("stopped"), log[-2000:]
    with contextlib.closing(sqlite3.connect(tmp_path / "gateway.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_watchdog_is_withheld_once_a_task_has_ended(tmp_path: Path) -> None:
    async with simulated_cluster(tmp_path, "ws://127.0.0.1:9/ocpp") as config_path:
        config = load_config(config_path)
        with systemd_socket(tmp_path) as systemd:
            store = await Store.open(config.storage.path, Clock())
            daemon = Daemon(config, store, Clock(), Notifier(str(systemd.path), 400_000))
            await daemon.recover()
            running = asyncio.create_task(daemon.run())
            try:
                await systemd.next("WATCHDOG", timeout=5)
                assert daemon._tasks is not None
                poller = next(t for t in daemon._tasks.tasks if t.get_name() == "connector 2")
                poller.cancel()
                ended = await systemd.next("STATUS", timeout=5)
                while "ended" not in ended["STATUS"]:
                    ended = await systemd.next("STATUS", timeout=5)
                assert ended == {"STATUS": "task connector 2 ended"}
                before = len(systemd.messages)
                await asyncio.sleep(1.0)
                with contextlib.suppress(TimeoutError):
                    await systemd.next("WATCHDOG", timeout=0.5)
                assert not any("WATCHDOG" in m for m in systemd.messages[before:]), "the watchdog was fed with a task dead"
                daemon.request_stop()
                with pytest.raises(ExceptionGroup) as stopped:
                    await asyncio.wait_for(running, 10)
                assert stopped.group_contains(StopRequested)
            finally:
                running.cancel()
                await store.close()
