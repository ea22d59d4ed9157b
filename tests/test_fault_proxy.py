"""The loopback fault proxy: each mode against a plain echo server, then the real uplink through a dead zone."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from gateway.clock import Clock
from gateway.session import StatusChanged
from gateway.settings import BackendSettings, ChargePointInfo, OcppSettings
from gateway.store import Store
from gateway.uplink import Uplink
from tests.fault_proxy import FaultProxy
from tests.ocpp_rpc_peer import OcppRpcBackend
from tests.test_uplink import drained, offline_session

# How long "nothing arrives" is watched for. Silence cannot be proven by
# waiting, but the proxy drops the bytes outright, so no wait length makes the
# assertion flaky: a longer one would only make it stronger.
SILENCE_S = 0.5


class EchoServer:
    """A plain asyncio TCP echo server on 127.0.0.1 that remembers what reached it."""

    def __init__(self) -> None:
        self.connections = 0
        self.bytes_received = 0
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while data := await reader.read(65536):
                self.bytes_received += len(data)
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass  # the proxy reset us: that is what some tests do


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), 10)


async def nothing_arrives(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(1), SILENCE_S)
    except TimeoutError:
        return True
    return False


def test_only_loopback_targets_and_urls_of_the_target() -> None:
    for host in ("10.0.0.1", "192.168.1.1", "example.com", "localhost", ""):
        with pytest.raises(ValueError):
            FaultProxy(host, 9000)
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1", 0)


async def test_url_for_rewrites_the_port() -> None:
    async with FaultProxy("127.0.0.1", 9000) as proxy:
        assert proxy.url_for("ws://127.0.0.1:9000/ocpp") == f"ws://127.0.0.1:{proxy.port}/ocpp"
        assert proxy.url_for("wss://127.0.0.1:9000/a/b") == f"wss://127.0.0.1:{proxy.port}/a/b"
        for url in ("ws://127.0.0.1:9001/ocpp", "http://127.0.0.1:9000/", "ws://10.0.0.1:9000/ocpp"):
            with pytest.raises(ValueError):
                proxy.url_for(url)


async def test_pass_through_counts_bytes_and_connections() -> None:
    async with EchoServer() as server, FaultProxy("127.0.0.1", server.port) as proxy:
        reader, writer = await connect(proxy)
        assert await echo(reader, writer, b"hello") == b"hello"
        assert (proxy.bytes_up, proxy.bytes_down, proxy.connections_accepted) == (5, 5, 1)
        writer.close()


async def test_exit_closes_every_connection_and_stops_listening() -> None:
    async with EchoServer() as server:
        async with FaultProxy("127.0.0.1", server.port) as proxy:
            reader, writer = await connect(proxy)
            assert await echo(reader, writer, b"x") == b"x"
            port = proxy.port
        assert await asyncio.wait_for(reader.read(10), 10) == b""
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        writer.close()


async def test_a_refused_target_resets_the_client() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound but not listening: connections to it are refused
        async with FaultProxy("127.0.0.1", closed.getsockname()[1]) as proxy:
            reader, writer = await connect(proxy)
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(10), 10)
            writer.close()


async def test_delay_adds_the_round_trip_and_keeps_order() -> None:
    async with EchoServer() as server, FaultProxy("127.0.0.1", server.port) as proxy:
        reader, writer = await connect(proxy)
        await echo(reader, writer, b"warm")
        proxy.delay(0.3)
        start = time.monotonic()
        assert await echo(reader, writer, b"ping") == b"ping"
        assert time.monotonic() - start >= 0.29  # never less: every chunk is held 0.15 s each way
        # Small writes spaced out so that they reach the proxy as separate chunks; order must hold.
        messages = [f"<{i}>".encode() for i in range(20)]
        for m in messages:
            writer.write(m)
            await asyncio.sleep(0.005)
        expected = b"".join(messages)
        assert await asyncio.wait_for(reader.readexactly(len(expected)), 10) == expected
        writer.close()


async def test_delay_does_not_serialize_throughput() -> None:
    """2 MiB is at least 32 chunks each way: one sleep per chunk would need >= 4.8 s, a pipe needs ~0.3 s."""
    payload = bytes(range(256)) * 8192
    async with EchoServer() as server, FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.delay(0.3)
        reader, writer = await connect(proxy)
        start = time.monotonic()

        async def send() -> None:
            writer.write(payload)
            await writer.drain()

        sender = asyncio.create_task(send())
        received = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
        await sender
        elapsed = time.monotonic() - start
        assert received == payload
        assert elapsed < 3.0, f"2 MiB took {elapsed:.1f} s through a 0.3 s RTT: the delay serializes chunks"
        writer.close()


async def test_blackhole_swallows_both_ways_and_new_connections_then_restore_drops_them() -> None:
    async with EchoServer() as server, FaultProxy("127.0.0.1", server.port) as proxy:
        reader, writer = await connect(proxy)
        assert await echo(reader, writer, b"before") == b"before"
        proxy.blackhole()
        received = server.bytes_received
        writer.write(b"into the void")
        assert await nothing_arrives(reader)
        server.writers[0].write(b"from the server")  # the other direction
        await server.writers[0].drain()
        assert await nothing_arrives(reader)
        assert server.bytes_received == received
        # A new connection is accepted (no RST, no refusal) and swallowed: the server never sees it.
        late_reader, late_writer = await connect(proxy)
        late_writer.write(b"hello?")
        assert await nothing_arrives(late_reader)
        assert (server.connections, proxy.connections_accepted) == (1, 2)
        assert proxy.bytes_swallowed >= len(b"into the void" + b"from the server" + b"hello?")

        proxy.restore()
        for dead in (reader, late_reader):
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(dead.read(10), 10)
        fresh_reader, fresh_writer = await connect(proxy)
        assert await echo(fresh_reader, fresh_writer, b"after") == b"after"
        for w in (writer, late_writer, fresh_writer):
            w.close()


async def test_reset_aborts_open_and_new_connections_until_restore() -> None:
    async with EchoServer() as server, FaultProxy("127.0.0.1", server.port) as proxy:
        reader, writer = await connect(proxy)
        assert await echo(reader, writer, b"before") == b"before"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 10)
        # The kernel completes the handshake before accept(), so the RST comes right after it.
        new_reader, new_writer = await connect(proxy)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(new_reader.read(10), 10)
        assert server.connections == 1
        proxy.restore()
        fresh_reader, fresh_writer = await connect(proxy)
        assert await echo(fresh_reader, fresh_writer, b"after") == b"after"
        for w in (writer, new_writer, fresh_writer):
            w.close()


# --- the real uplink through a dead zone ----------------------------------------------

CLOCK = Clock()
INFO = ChargePointInfo("CP-FAULT-1", "OpenGateway", "Cluster", "SN-F1")


def statuses() -> list[StatusChanged]:
    return [StatusChanged(2, "Available", "NoError", None, CLOCK.wall())]


@pytest.mark.interop
async def test_uplink_survives_a_dead_zone_and_delivers_what_was_queued_in_it(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    async with OcppRpcBackend() as backend, FaultProxy("127.0.0.1", backend.port) as proxy:
        # A dead link shows only as a missing answer or a missing pong: keep both short.
        settings = BackendSettings(url=proxy.url_for(backend.url), response_timeout_s=2, ping_interval_s=1,
                                   reconnect_min_s=0.2, reconnect_max_s=1)
        uplink = Uplink(INFO, settings, OcppSettings(), store, CLOCK, statuses)
        task = asyncio.create_task(uplink.run())
        try:
            await asyncio.wait_for(uplink.connected.wait(), 10)
            await backend.wait_for_calls("StatusNotification", 2, timeout=10)

            proxy.blackhole()
            await offline_session(store)  # recorded while the link is dead
            uplink.outbox_changed()
            # Noticed after the 2 s response timeout (or the ping's), plus the closing handshake it still attempts.
            async with asyncio.timeout(25):
                while uplink.connected.is_set():
                    await asyncio.sleep(0.05)
            # It tries again inside the dead zone: accepted by the proxy, never answered.
            async with asyncio.timeout(10):
                while proxy.connections_accepted < 2:
                    await asyncio.sleep(0.05)
            assert len(backend.calls("BootNotification")) == 1
            assert backend.calls("StartTransaction") == []  # swallowed on the way

            proxy.restore()
            await backend.wait_for_calls("BootNotification", 2, timeout=15)
            await drained(store, 15)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        tx_calls = [c for c in backend.calls(identity=INFO.identity) if c["method"] in ("StartTransaction", "MeterValues", "StopTransaction")]
        assert [c["method"] for c in tx_calls] == ["StartTransaction", "MeterValues", "StopTransaction"]
        tx_id = next(r for r in backend.of_type("result") if r["messageId"] == tx_calls[0]["messageId"])["result"]["transactionId"]
        assert tx_calls[1]["params"]["transactionId"] == tx_id == tx_calls[2]["params"]["transactionId"]
        assert proxy.bytes_swallowed > 0
        backend.assert_clean()
    await store.close()
