"""`charger-gateway scan`: find the slaves on a bus, tell their models by profile, print their config.

Two parts (STYLE.md: pure cores, thin I/O):

- pure: the profiles that can sit on a bus (`candidates`), the probe plan
  (`plan_scan`: units, the presence request and its timeout), ranking the
  profiles a device answered to (`rank`); gateway.scan_report renders the
  result;
- I/O: `run_scan` opens the line with the daemon's own ModbusLine (SerialLine,
  or one TcpEndpoint per host and port; owner tasks in a TaskGroup) and probes.

A scan goes in two passes. Presence first, cheaply: one short read per unit.
Any reply, a Modbus exception included, proves a device is there (Modbus
application protocol §7: a slave answers a request it cannot serve with an
exception); only silence means absent. The presence timeout is the reply's
wire time at the bus's baud rate plus a turnaround margin, so an absent unit
costs about 60 ms at 19200 baud and units 1-247 take well under a minute.
Then identification, only for the units that answered: every candidate
profile's blocks are read from the unit (a block's own `unit`, the profile's
`repeat` and timeout honoured) and the profile matches when
`registers.identify_matches` holds on the words.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway.devprofile import Framing, Profile, ReadBlock, Table
from gateway.errors import ConfigError, ConfigIssue, DeviceError, DeviceException, DeviceTimeout, FrameError, LineUnavailable
from gateway.modbus_line import ModbusLine, SerialLine, TcpEndpoint
from gateway.modbus_transport import SERIAL_UNITS, TCP_UNITS
from gateway.registers import identify_matches
from gateway.settings import BusSettings
from gateway.wiretime import ascii_frame_chars, char_time_s, rtu_reply_bytes, t35_s

log = logging.getLogger(__name__)

# Device turnaround allowed on top of the probe's wire time, serial lines. Heidelberg
# answers about 10 ms after a request (evcc #16866 trace, modbus-register-maps.md §1);
# 50 ms is five times that, for slower boxes and meters, and still keeps an absent unit
# at about 60 ms at 19200 baud. A unit slower than this is caught when its late reply
# lands in a later unit's wait (_Prober.presence_pass); --margin-ms raises it.
SERIAL_MARGIN_S = 0.050
# Modbus TCP has no wire time to speak of; a device on a LAN answers within milliseconds,
# a TCP-to-RTU gateway within its own serial timeout, which the margin must cover.
TCP_MARGIN_S = 0.5
# A LAN host answers a TCP SYN within milliseconds; a missing one is given up after this.
TCP_CONNECT_TIMEOUT_S = 1.0
# Modbus application protocol §7, codes 0x0A / 0x0B: a TCP gateway saying that nothing
# answered behind it. That is the absence of a device, not a device.
GATEWAY_CODES = frozenset({10, 11})
# Units tried on TCP when neither a profile's factory unit nor --units names one: the Modbus
# TCP implementation guide (V1.0b, "Unit Identifier") has a device addressed by IP use 0xFF,
# and many answer 1.
_TCP_FALLBACK_UNITS = (1, 255)
# The config's largest outlet number (gateway.config, connectors[].outlet).
_MAX_OUTLET = 255


class Presence(enum.Enum):
    """What a unit did with the presence probe."""

    DATA = "data"  # answered with registers
    EXCEPTION = "exception"  # answered with a Modbus exception code: a device is there
    GARBLED = "garbled"  # something answered, but no valid reply
    SILENT = "silent"  # no reply: absent


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a device answers: a unit on a serial line, or a unit behind a TCP host and port."""

    unit: int
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.host is None:
            return f"unit {self.unit}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port} unit {self.unit}"


@dataclasses.dataclass(frozen=True)
class Match:
    """A profile whose blocks the device answered and whose identify checks hold on them."""

    profile: Profile
    checks: int  # identify checks held; 0: the profile has none, a "possible" only
    words: int  # registers (or coils) read for it

    @property
    def certain(self) -> bool:
        return self.checks > 0


@dataclasses.dataclass(frozen=True)
class Device:
    """A unit that answered the presence probe, with the profiles it matched, best first."""

    target: Target
    presence: Presence
    detail: str  # what the probe got back, for the technician
    matches: tuple[Match, ...] = ()
    outlets: int = 1  # outlets of a multi-outlet controller (the best profile's outlet_stride) that answered

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None

    @property
    def status(self) -> str:
        """garbled, unknown (no profile matches), identified (by identify checks) or possible."""
        if self.presence is Presence.GARBLED:
            return "garbled"
        best = self.best
        return "unknown" if best is None else "identified" if best.certain else "possible"


@dataclasses.dataclass(frozen=True)
class ScanPlan:
    """Everything a scan does, decided before the line is opened."""

    bus: BusSettings
    profiles: tuple[Profile, ...]  # the candidates, by name
    units: tuple[int, ...]  # in probe order
    endpoints: tuple[tuple[str, int], ...]  # TCP (host, port); empty on a serial line
    probe: ReadBlock  # the presence request: one register (or coil)
    timeout_s: float  # presence: reply wire time + margin
    slow_timeout_s: float  # a second look at suspects: the slowest candidate's own timeout
    gap_s: float  # silence kept after a reply before the next request (the candidates' largest)
    repeat: int  # sends of each request (ABL drops the first frame when idle)
    request_timeout_s: float | None = None  # the bus's override of the profiles' timeouts


@dataclasses.dataclass(frozen=True)
class ScanResult:
    plan: ScanPlan
    devices: tuple[Device, ...]
    unreachable: tuple[tuple[str, int, str], ...]  # TCP (host, port, why)
    elapsed_s: float
    requests: int  # frames put on the wire, repeats included
    timeouts: int  # of those, how many went unanswered


# --- the pure part ---------------------------------------------------------------------


def parse_units(text: str, allowed: range) -> tuple[int, ...]:
    """'1-247' or '1,3,10-20' -> the unit ids, sorted, each once; ValueError for anything else."""
    units: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a unit or a range like 10-20")
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        if low > high:
            raise ValueError(f"{low}-{high} is an empty range")
        if low not in allowed or high not in allowed:
            raise ValueError(f"units must be in {allowed.start}-{allowed.stop - 1}, not {part.strip()}")
        units.update(range(low, high + 1))
    return tuple(sorted(units))


def parse_ports(text: str) -> tuple[int, ...]:
    """'502' or '502-503' -> TCP ports; ValueError for anything else."""
    return parse_units(text, range(1, 65536))


def candidates(profiles: Iterable[Profile], framing: Framing) -> tuple[Profile, ...]:
    """The profiles a device on a bus of `framing` may have, by name.

    A serial line carries only its own framing: ASCII and RTU never mix on a
    line (modbus-register-maps.md §7). A TCP endpoint may be a TCP-to-RTU
    gateway fronting any device (as gateway.config allows), so every profile.
    """
    chosen = [p for p in profiles if framing is Framing.TCP or p.line.framing is framing]
    return tuple(sorted(chosen, key=lambda p: p.name))


def presence_probe(profiles: Sequence[Profile]) -> ReadBlock:
    """One register to read from every unit: the block start the most candidates' blocks cover.

    Where a device of a candidate model sits, it answers this with data; any
    other device answers it with an exception (§7), which proves it present too.
    """
    starts = {(b.table, b.address) for p in profiles for b in p.blocks if b.unit is None}
    if not starts:
        raise ValueError("no candidate profile reads from the scanned unit")

    def covered(start: tuple[Table, int]) -> int:
        return sum(any(b.unit is None and b.covers(start[0], start[1], 1) for b in p.blocks) for p in profiles)

    table, address = min(starts, key=lambda s: (-covered(s), s[0].value, s[1]))
    return ReadBlock(table, address, 1)


def presence_timeout_s(bus: BusSettings, margin_s: float) -> float:
    """How long to wait for the probe's reply, from the end of the request on the wire.

    RTU: the slave sees the request end after t3.5 of silence (Modbus over serial
    line §2.5.1.1), then its 7-byte reply takes its wire time. ASCII frames end at
    CR LF, so there is no t3.5, but each byte travels as two hex characters (§2.5.2.1).
    """
    if bus.kind is Framing.TCP:
        return margin_s
    bits = 1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits
    reply = rtu_reply_bytes(3, 1)  # unit, fc, byte count, 2 data, CRC; an exception is shorter
    if bus.kind is Framing.ASCII:
        return ascii_frame_chars(reply) * char_time_s(bus.baudrate, bits) + margin_s
    return reply * char_time_s(bus.baudrate, bits) + t35_s(bus.baudrate) + margin_s


def plan_scan(
    bus: BusSettings,
    profiles: Iterable[Profile],
    *,
    units: Sequence[int] = (),
    endpoints: Sequence[tuple[str, int]] = (),
    margin_s: float | None = None,
) -> ScanPlan:
    """The scan of `bus`: which units (and TCP endpoints) to probe, with what, how long to wait.

    Serial: `units` (default 1-247). TCP: every candidate's factory unit, plus
    `units`; 1 and 255 when neither names any. ConfigError for a plan that
    cannot be carried out.
    """
    issues: list[ConfigIssue] = []

    def issue(path: str, message: str) -> None:
        issues.append(ConfigIssue("command line", None, path, message))

    chosen = candidates(profiles, bus.kind)
    if not chosen:
        issue("--framing", f"no device profile speaks {bus.kind.value}: there is nothing to identify")
    tcp = bus.kind is Framing.TCP
    allowed = TCP_UNITS if tcp else SERIAL_UNITS
    if bad := [u for u in units if u not in allowed]:
        issue("--units", f"{bad} outside {allowed.start}-{allowed.stop - 1}")
    if tcp:
        factory = {p.line.unit for p in chosen if p.line.unit is not None}
        wanted = factory | set(units) or set(_TCP_FALLBACK_UNITS)
        order = tuple(sorted(wanted))
        if not endpoints:
            issue("--host", "a TCP scan needs at least one host")
    else:
        order = tuple(units) or tuple(SERIAL_UNITS)
        if not bus.port:
            issue("--port", "a serial scan needs a port, e.g. /dev/ttyUSB0")
    if margin_s is not None and not margin_s > 0:
        issue("--margin-ms", "must be above 0")
    if issues:
        raise ConfigError(issues)
    margin = margin_s if margin_s is not None else (TCP_MARGIN_S if tcp else SERIAL_MARGIN_S)
    return ScanPlan(
        bus=bus,
        profiles=chosen,
        units=order,
        endpoints=tuple(endpoints),
        probe=presence_probe(chosen),
        timeout_s=presence_timeout_s(bus, margin),
        slow_timeout_s=max(bus.request_timeout_s or p.request_timeout_s for p in chosen),
        gap_s=max(p.inter_frame_delay_s for p in chosen),
        repeat=max(p.repeat for p in chosen),
        request_timeout_s=bus.request_timeout_s,
    )


def rank(matches: Iterable[Match]) -> tuple[Match, ...]:
    """Best first: more identify checks held is more specific; then more registers answered; then by name.

    A profile without checks matches whatever decodes; among such "possibles" the
    one whose blocks cover more of the device's registers is the better bet
    (an SDM630 answers the EM340's reads too, never the other way round).
    """
    return tuple(sorted(matches, key=lambda m: (-m.checks, -m.words, m.profile.name)))


# --- the I/O part ------------------------------------------------------------------------

_Outcome = list[int] | DeviceError


class Identifier:
    """Tells which of `profiles` a unit on `line` is, by their identify checks; each block read once
    whichever profiles share it. The scan uses it, and so does the selftest for a device that does not
    match its own profile."""

    def __init__(self, line: ModbusLine, profiles: Sequence[Profile], request_timeout_s: float | None) -> None:
        self.line = line
        self.profiles = profiles
        self.request_timeout_s = request_timeout_s  # the bus's; None: each profile's own
        self._cache: dict[tuple[int, Table, int, int, int], _Outcome] = {}

    async def identify(self, unit: int) -> tuple[Match, ...]:
        """Every candidate whose blocks the unit answers and whose identify checks hold, ranked.

        Whose model the unit is, is not known yet, so each read keeps the largest
        inter-frame delay among the candidates it may still be (those not tried
        yet and those it matched). Those with the longest delays go first: once
        their blocks are refused, the rest of the reads need only t3.5.
        """
        alive = sorted(self.profiles, key=lambda p: (-p.inter_frame_delay_s, p.name))
        matches: list[Match] = []
        while alive:
            profile = alive.pop(0)
            gap = max(p.inter_frame_delay_s for p in [profile, *alive, *(m.profile for m in matches)])
            words = await self._words(profile, unit, gap)
            if not isinstance(words, DeviceError) and identify_matches(profile, words):
                matches.append(Match(profile, len(profile.identify), sum(len(w) for w in words.values())))
        return rank(matches)

    async def outlets(self, unit: int, profile: Profile) -> int:
        """How many outlets of a multi-outlet controller answer as the profile's: 1, 2, ... until one does not."""
        count = 1
        while profile.outlet_stride and count < _MAX_OUTLET:
            outlet = profile.for_outlet(count + 1)
            if any(b.address + b.count > 0x10000 for b in outlet.blocks):
                break
            words = await self._words(outlet, unit, profile.inter_frame_delay_s)
            if isinstance(words, DeviceError) or not identify_matches(outlet, words):
                break
            count += 1
        return count

    async def _words(self, profile: Profile, unit: int, gap_s: float) -> dict[ReadBlock, list[int]] | DeviceError:
        """The words of every block of the profile, or the error of the first block that failed."""
        words: dict[ReadBlock, list[int]] = {}
        for block in profile.blocks:
            got = await self._read(profile, block, unit, gap_s)
            if isinstance(got, DeviceError):
                return got
            words[block] = got
        return words

    async def _read(self, profile: Profile, block: ReadBlock, unit: int, gap_s: float) -> _Outcome:
        """One block, read once per scan whichever profiles share it (a failed read included)."""
        source = block.unit if block.unit is not None else unit
        key = (source, block.table, block.address, block.count, profile.repeat)
        if key not in self._cache:
            try:
                self._cache[key] = await self.line.read(
                    source, block.table, block.address, block.count,
                    timeout_s=self.request_timeout_s or profile.request_timeout_s,
                    gap_s=gap_s,
                    repeat=profile.repeat,
                )
            except (DeviceTimeout, DeviceException, FrameError) as exc:
                self._cache[key] = exc
            except LineUnavailable as exc:
                if self.line.framing is not Framing.TCP:
                    raise  # the adapter is gone: the scan cannot go on
                # Some devices close the connection on a read they dislike (Mennekes on holding
                # 730, bender-cc613 notes); the endpoint reconnects for the next request.
                self._cache[key] = exc
        return self._cache[key]


class _Prober(Identifier):
    """Probes and identifies units on one line, one request at a time (the line queues them anyway)."""

    def __init__(self, line: ModbusLine, plan: ScanPlan) -> None:
        super().__init__(line, plan.profiles, plan.request_timeout_s)
        self.plan = plan

    async def probe(self, unit: int, timeout_s: float, gap_s: float) -> tuple[Presence, str]:
        probe = self.plan.probe
        try:
            await self.line.read(unit, probe.table, probe.address, probe.count, timeout_s=timeout_s, gap_s=gap_s, repeat=self.plan.repeat)
        except DeviceTimeout:
            return Presence.SILENT, ""
        except DeviceException as exc:
            if self.line.framing is Framing.TCP and exc.code in GATEWAY_CODES:
                return Presence.SILENT, str(exc)
            return Presence.EXCEPTION, str(exc)
        except FrameError as exc:
            return Presence.GARBLED, str(exc)
        return Presence.DATA, f"{probe.table.value} {probe.address} read"

    async def presence_pass(self, units: Sequence[int]) -> dict[int, tuple[Presence, str]]:
        """Every unit once, fast; then a slow second look at the suspects.

        A reply after the presence timeout lands in a later unit's wait, where it
        is a frame from another unit (Modbus over serial line §2.4.1) and that wait
        ends garbled. So a garbled unit, and every silent one probed within the
        candidates' full request timeout before it (the latest a device of theirs
        may answer), are probed again with that timeout.
        The candidates' inter-frame delay is kept after every reply: a box needs
        it to turn its transceiver round (evcc #2227, #15437). After silence the
        line has been quiet for the whole timeout already, so only t3.5 is kept.
        """
        loop = asyncio.get_running_loop()
        seen: dict[int, tuple[Presence, str]] = {}
        silent: list[tuple[float, int]] = []  # (when its probe started, unit)
        suspects: list[int] = []
        replied = False
        for unit in units:
            started = loop.time()
            presence, detail = await self.probe(unit, self.plan.timeout_s, self.plan.gap_s if replied else 0.0)
            replied = presence is not Presence.SILENT
            seen[unit] = (presence, detail)
            if presence is Presence.SILENT:
                silent.append((started, unit))
            elif presence is Presence.GARBLED:
                late = [u for at, u in silent if at >= started - self.plan.slow_timeout_s]
                suspects += [u for u in (*late, unit) if u not in suspects]
        for unit in suspects:
            seen[unit] = await self.probe(unit, self.plan.slow_timeout_s, self.plan.gap_s)
        return seen

    async def scan(self, host: str | None = None, port: int | None = None) -> list[Device]:
        seen = await self.presence_pass(self.plan.units)
        devices = []
        for unit, (presence, detail) in seen.items():
            if presence is Presence.SILENT:
                continue
            target = Target(unit, host, port)
            matches = () if presence is Presence.GARBLED else await self.identify(unit)
            outlets = await self.outlets(unit, matches[0].profile) if matches else 1
            device = Device(target, presence, detail, matches, outlets)
            log.info("%s: %s", target, device.status + (f" {device.best.profile.name}" if device.best else ""))
            devices.append(device)
        return devices


async def run_scan(plan: ScanPlan) -> ScanResult:
    """Carry out the plan on the real line(s). Raises LineUnavailable when a serial line cannot be opened.

    The lines run as the daemon runs them: each owner task in one TaskGroup,
    stopped when the scan is done. TCP endpoints are scanned side by side; one
    that cannot be reached is reported, not raised.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    bus = plan.bus
    lines: list[ModbusLine]
    if bus.kind is Framing.TCP:
        lines = [
            TcpEndpoint(f"{bus.name}/{host}:{port}", host, port, connect_timeout_s=TCP_CONNECT_TIMEOUT_S)
            for host, port in plan.endpoints
        ]
    else:
        lines = [SerialLine(bus)]
    found: list[Device] = []
    unreachable: list[tuple[str, int, str]] = []
    failure: LineUnavailable | None = None
    log.info(
        "scanning %d unit(s)%s on bus %s, %.0f ms presence timeout, %d candidate profiles",
        len(plan.units), f" at {len(plan.endpoints)} TCP endpoint(s)" if plan.endpoints else "", bus.name,
        plan.timeout_s * 1e3, len(plan.profiles),
    )

    async def scan_endpoint(line: ModbusLine, host: str, port: int) -> None:
        try:
            found.extend(await _Prober(line, plan).scan(host, port))
        except LineUnavailable as exc:
            unreachable.append((host, port, str(exc)))

    async with asyncio.TaskGroup() as group:
        owners = [group.create_task(line.run(), name=f"line {line.name}") for line in lines]
        try:
            if bus.kind is Framing.TCP:
                async with asyncio.TaskGroup() as scans:
                    for line, (host, port) in zip(lines, plan.endpoints, strict=True):
                        scans.create_task(scan_endpoint(line, host, port), name=f"scan {line.name}")
            else:
                found.extend(await _Prober(lines[0], plan).scan())
        except LineUnavailable as exc:  # kept until the owners are stopped, so that it is not wrapped in a group
            failure = exc
        finally:
            for owner in owners:
                owner.cancel()
    if failure is not None:
        raise failure
    found.sort(key=lambda d: (d.target.host or "", d.target.port or 0, d.target.unit))
    unreachable.sort()
    return ScanResult(
        plan=plan,
        devices=tuple(found),
        unreachable=tuple(unreachable),
        elapsed_s=loop.time() - started,
        requests=sum(line.stats.requests for line in lines),
        timeouts=sum(line.stats.timeouts for line in lines),
    )


def load_candidates(extra_dirs: Sequence[str], configured: dict[str, Profile]) -> dict[str, Profile]:
    """Every profile that loads (built-in, then site directories), with the config's own profiles winning.

    A broken site profile is skipped with a warning: it must not stop a scan of the others.
    """
    from gateway.profile_loader import load_profiles

    loaded, broken = load_profiles([Path(d) for d in extra_dirs])
    for name, (_, exc) in broken.items():
        log.warning("profile %s skipped: %s", name, exc.issues[0])
    return loaded | configured
