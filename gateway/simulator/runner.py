"""`charger-gateway simulate`: play every slave of a config on this machine, until stopped.

Serial buses become pty lines linked at their configured port paths; TCP
connectors become Modbus TCP servers on their (loopback) addresses; an
uplink's modem becomes a simulated modem answering AT queries on a pty linked
at its AT port path. All of
them, and the clock that moves the EVs and watchdogs on, run in one
asyncio.TaskGroup; stopping removes the port links again.

A connector's meter answers on its own bus and unit and measures that
connector's EV. Outlets of one multi-outlet controller answer on their shared
unit, and a profile's blocks on a fixed unit (Alfen's station, unit 200) are
answered by the first connector of that profile at its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import IO, Any

from gateway.devprofile import Framing
from gateway.errors import GatewayError
from gateway.settings import BusSettings, Config, ConnectorSettings
from gateway.simulator.errors import SimulatorError
from gateway.simulator.ev import EvModel, EvTiming
from gateway.simulator.modem import SimModem, SimModemPort
from gateway.simulator.serial_server import PtyLink, serve_line
from gateway.simulator.slave import SimSlave, SlaveEvent, TimeScale
from gateway.simulator.tcp_server import TcpSimServer, open_tcp_server

# How often EVs and watchdogs move on when nobody polls. Events are computed
# at their exact simulated instant whatever this is; it only bounds how late
# they are reported, and how late a watchdog expiry shows (100 ms of 15 s).
_TICK_S = 0.1
# Lifetime meters of boxes that have been in service a while.
_START_ENERGY_WH = (50_000.0, 2_000_000.0)

OnEvent = Callable[[dict[str, Any]], None]


def _rng_for(seed: int | None, connector: int) -> random.Random:
    """Each connector gets its own stream, so one outlet's traffic does not shift another's draws."""
    return random.Random(f"charger-gateway-simulator/{seed}/{connector}") if seed is not None else random.Random()


def _build_slave(
    config: Config,
    connector: ConnectorSettings,
    clock: TimeScale,
    seed: int | None,
    emit: Callable[[SlaveEvent], None],
    id_tags: Sequence[str],
) -> SimSlave:
    profile = config.profile_of(connector)
    rng = _rng_for(seed, connector.id)
    start_energy = round(rng.uniform(*_START_ENERGY_WH))
    timing = EvTiming(idle_s=config.simulator.idle_s, session_kwh=config.simulator.session_kwh)
    now = time.monotonic()
    try:
        ev = EvModel(
            rng, timing=timing, outlet_phases=profile.phases, start_energy_wh=start_energy, now=clock.sim(now), id_tags=id_tags
        )
        return SimSlave(connector=connector.id, unit=connector.unit, profile=profile, ev=ev, clock=clock, now=now, emit=emit)
    except ValueError as exc:  # a profile or setting the simulator cannot play
        raise SimulatorError(f"connector {connector.id}: {exc}") from exc


async def run_simulation(
    config: Config,
    *,
    speed: float | None = None,
    seed: int | None = None,
    wire_delay: bool | None = None,
    on_event: OnEvent | None = None,
    ready: asyncio.Event | None = None,
    id_tags: Sequence[str] | None = None,
) -> None:
    """Play the slaves of `config` until cancelled. Arguments that are not None override config.simulator.

    Each arriving EV's driver presents one of `id_tags` (drawn with its
    connector's seeded random stream), shown in the id_tag register of
    profiles that have one from plug-in until unplug; none: no tag is shown.

    `on_event` gets one dict per connector event: {"event", "connector", "unit",
    "energy_wh" (the energy register's value at that instant, Wh), "sim_time",
    "wall"}. `ready` is set once every line and TCP address is open.
    Raises SimulatorError (before `ready`) when a line or address cannot be made.
    `wire_delay` holds back serial replies only: TCP has no wire time to model.
    """
    settings = config.simulator
    speed = settings.speed if speed is None else speed
    seed = settings.seed if seed is None else seed
    wire_delay = settings.wire_delay if wire_delay is None else wire_delay
    id_tags = settings.id_tags if id_tags is None else id_tags
    if not speed > 0:
        raise SimulatorError(f"simulator speed must be > 0, got {speed}")

    def emit(event: SlaveEvent) -> None:
        if on_event is not None:
            on_event(
                {
                    "event": event.kind,
                    "connector": event.connector,
                    "unit": event.unit,
                    "energy_wh": event.energy_wh,
                    "sim_time": event.sim_time,
                    "wall": time.time(),
                }
            )

    clock = TimeScale(time.monotonic(), speed)
    serial_buses = [b for b in config.buses if b.kind is not Framing.TCP]
    lines: dict[str, dict[int, SimSlave]] = {b.name: {} for b in serial_buses}
    addresses: dict[tuple[str, int], dict[int, SimSlave]] = {}
    everyone: list[SimSlave] = []

    def units_at(what: str, bus: BusSettings, host: str | None, port: int) -> tuple[dict[int, SimSlave], str]:
        if bus.kind is not Framing.TCP:
            return lines[bus.name], f"bus {bus.name}"
        if host is None:
            raise SimulatorError(f"{what}: a tcp bus needs a host")
        return addresses.setdefault((host, port), {}), f"{host}:{port}"

    for connector in config.connectors:
        units, where = units_at(f"connector {connector.id}", config.bus(connector.bus), connector.host, connector.port)
        slave = _build_slave(config, connector, clock, seed, emit, id_tags)
        first = units.get(connector.unit)
        if first is None:
            units[connector.unit] = slave
        elif first.profile.name == slave.profile.name and first.profile.outlet_stride > 0:
            first.join(slave)  # another outlet of the same controller
        else:
            raise SimulatorError(f"connector {connector.id}: unit {connector.unit} already answers on {where}")
        for block in slave.profile.blocks:
            if block.unit is not None:
                units.setdefault(block.unit, slave)  # one station per address answers its fixed unit
        everyone.append(slave)
        meter, meter_profile = connector.meter, config.meter_profile_of(connector)
        if meter is not None and meter_profile is not None:
            what = f"connector {connector.id} meter"
            units, where = units_at(what, config.bus(meter.bus), meter.host, meter.port)
            if meter.unit in units:
                raise SimulatorError(f"{what}: unit {meter.unit} already answers on {where}")
            units[meter.unit] = SimSlave(
                connector=connector.id, unit=meter.unit, profile=meter_profile, ev=slave.ev, clock=clock,
                now=time.monotonic(), measures=slave,
            )
            slave.energy_spec = meter_profile.values.get("energy")  # the session energy is the meter's

    at_ports = [(u.name, u.modem.at_port) for u in config.uplinks if u.modem is not None]
    claims = [(bus.port, f"bus {bus.name}", "port") for bus in serial_buses]
    claims += [(at_port, f"uplink {name}", "modem AT port") for name, at_port in at_ports]
    ports: dict[str, str] = {}  # absolute path -> what is linked there
    for path, owner, what in claims:
        if not path:
            raise SimulatorError(f"{owner}: a serial bus needs a port path to link the simulated line at")
        if (other := ports.setdefault(os.path.abspath(path), owner)) != owner:
            raise SimulatorError(f"{owner}: {what} {path} is also the port of {other}")

    links: list[PtyLink] = []
    modems: list[SimModemPort] = []
    servers: list[TcpSimServer] = []
    try:
        for bus in serial_buses:
            assert bus.port is not None  # checked above
            links.append(PtyLink(bus.port))
        for _uplink, at_port in at_ports:
            modem = SimModemPort(SimModem(), at_port)
            modem.open()
            modems.append(modem)
        for (host, port), units in addresses.items():
            servers.append(await open_tcp_server(host, port, units))
        if ready is not None:
            ready.set()
        async with asyncio.TaskGroup() as group:
            for bus, link in zip(serial_buses, links, strict=True):
                group.create_task(
                    serve_line(bus, link, lines[bus.name], wire_delay=wire_delay, turnaround=settings.turnaround), name=f"line {bus.name}"
                )
            for server in servers:
                group.create_task(server.serve(), name=f"tcp {server.address}")
            group.create_task(_tick(everyone), name="simulator clock")
    finally:
        for server in servers:
            await server.close()
        for link in links:
            link.close()
        for modem in modems:
            modem.close()


async def _tick(slaves: list[SimSlave]) -> None:
    """Move every EV and watchdog on, also while nobody polls."""
    while True:
        now = time.monotonic()
        for slave in slaves:
            slave.tick(now)
        await asyncio.sleep(_TICK_S)


# --- command line ----------------------------------------------------------------


def format_event(event: dict[str, Any]) -> str:
    """One readable line, e.g. `12:00:03 connector 2 plug      energy 1234 Wh  (sim 0:20:34)`."""
    wall = datetime.fromtimestamp(event["wall"]).strftime("%H:%M:%S")
    energy = "" if event["energy_wh"] is None else f"energy {event['energy_wh']} Wh"
    sim = int(event["sim_time"])
    return f"{wall} connector {event['connector']} {event['event']:<9} {energy}  (sim {sim // 3600}:{sim // 60 % 60:02d}:{sim % 60:02d})"


def main(
    config_path: str,
    *,
    speed: float | None = None,
    seed: int | None = None,
    wire_delay: bool | None = None,
    events_file: str | None = None,
) -> int:
    """Run the simulator for the config at `config_path` until SIGINT/SIGTERM; the exit code."""
    # Imported here: the config loader (and YAML parsing) is needed only when run from the command line.
    from gateway.config import load_config

    try:
        config = load_config(config_path)
    except GatewayError as exc:
        print(f"charger-gateway simulate: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    with contextlib.ExitStack() as stack:
        sink: IO[str] | None = None
        if events_file is not None:
            try:
                sink = stack.enter_context(open(events_file, "w", encoding="utf-8"))
            except OSError as exc:
                print(f"charger-gateway simulate: cannot write events to {events_file}: {exc}", file=sys.stderr)
                return SimulatorError.exit_code

        def on_event(event: dict[str, Any]) -> None:
            print(format_event(event), flush=True)
            if sink is not None:
                sink.write(json.dumps(event) + "\n")
                sink.flush()  # a test or an installer may follow the file while it grows

        for bus in config.buses:
            if bus.kind is not Framing.TCP:
                print(f"bus {bus.name}: simulated {bus.kind.value} line at {bus.port}, {bus.baudrate} baud", flush=True)
        for uplink in config.uplinks:
            if uplink.modem is not None:
                print(f"uplink {uplink.name}: simulated modem, AT port at {uplink.modem.at_port}", flush=True)
        errors: list[BaseException] = []
        try:
            asyncio.run(_run_until_signal(config, speed=speed, seed=seed, wire_delay=wire_delay, on_event=on_event))
        except* GatewayError as group:
            errors = _leaves(group)
        for error in errors:
            print(f"charger-gateway simulate: {error}", file=sys.stderr)
    return int(getattr(errors[0], "exit_code", 1)) if errors else 0


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions in a (nested) group, as the TaskGroup of run_simulation raises them."""
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


async def _run_until_signal(config: Config, **options: Any) -> None:
    """run_simulation, ended cleanly (links removed) by SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(run_simulation(config, **options))
    signalled: list[int] = []

    def stop(signum: int) -> None:
        signalled.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    try:
        await task
    except asyncio.CancelledError:
        if not signalled:
            raise  # cancelled from outside, not by a signal: not ours to swallow
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
