"""The data each uplink moves, per UTC day and month, and its monthly budget's alarms. Pure: no I/O.

What is counted is what gateway.traffic counts at the uplink's TCP socket: the TLS
records and websocket frames exactly, the IP and TCP headers estimated per segment.
DNS lookups and what PPP or the radio layer add are not counted, so a SIM operator's
bill runs somewhat above these figures. A megabyte is 10^6 bytes.

Days and months are UTC, like every time the gateway keeps. On a site at UTC+2 the
day rolls over at 02:00 local time, and an operator's billing month (local time)
differs from ours by the traffic of those hours at either end.

A budget raises an alarm at 80 % and at 100 %. Whether a portion crossed a threshold
is decided by the month's total before and after adding it, so each threshold is
reported once per month and uplink, across restarts, with nothing remembered about
what was reported. A budget lowered below what the month already used raises
nothing until the next month.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from gateway.settings import UplinkSettings
from gateway.traffic import Traffic

MB = 1_000_000
THRESHOLDS_PERCENT = (80, 100)
MAX_REPORT_DAYS = 3660  # ten years: more is a typo, and dates before year 1 do not exist


@dataclass(frozen=True)
class UsageRow:
    """What one uplink moved on one UTC day, as the store keeps it."""

    uplink: str
    day: str  # YYYY-MM-DD, UTC
    traffic: Traffic


@dataclass(frozen=True)
class Period:
    """The traffic of a day (key YYYY-MM-DD) or a month (key YYYY-MM)."""

    key: str
    traffic: Traffic


@dataclass(frozen=True)
class UplinkUsage:
    """One uplink's figures, as a technician reads them."""

    uplink: str
    budget: int | None  # bytes per month
    days: tuple[Period, ...]  # oldest first; the last is today
    this_month: Period
    previous_month: Period

    @property
    def today(self) -> Period:
        return self.days[-1]

    def percent(self, month: Period) -> float | None:
        """How much of the monthly budget a month used; None without a budget."""
        return None if self.budget is None else 100 * month.traffic.total / self.budget


def day_key(wall: float) -> str:
    """The UTC day (YYYY-MM-DD) of a wall time."""
    return datetime.fromtimestamp(wall, tz=UTC).date().isoformat()


def month_of(day: str) -> str:
    """The month (YYYY-MM) of a day key."""
    return day[:7]


def previous_month(month: str) -> str:
    year, number = int(month[:4]), int(month[5:7])
    return f"{year - 1:04d}-12" if number == 1 else f"{year:04d}-{number - 1:02d}"


def days_ending(today: str, count: int) -> list[str]:
    """The `count` day keys up to and including `today`, oldest first."""
    if not 1 <= count <= MAX_REPORT_DAYS:
        raise ValueError(f"the number of days must be 1..{MAX_REPORT_DAYS}, not {count}")
    last = date.fromisoformat(today)
    return [(last - timedelta(days=back)).isoformat() for back in range(count - 1, -1, -1)]


def first_day_needed(today: str, count: int) -> str:
    """The earliest day a report of `count` days and two months, ending `today`, reads."""
    return min(days_ending(today, count)[0], previous_month(month_of(today)) + "-01")


def budget_bytes(monthly_budget_mb: float | None) -> int | None:
    if monthly_budget_mb is None:
        return None
    if not monthly_budget_mb > 0:  # also NaN
        raise ValueError(f"a monthly budget must be above 0 MB, not {monthly_budget_mb}")
    return round(monthly_budget_mb * MB)


def thresholds_crossed(before: int, after: int, budget: int | None) -> tuple[int, ...]:
    """The thresholds (percent of the budget) that a portion took the month's total from below to at or above."""
    if budget is None:
        return ()
    # Whole numbers: 80 % of a budget is compared as total * 100 against 80 * budget, without rounding.
    return tuple(p for p in THRESHOLDS_PERCENT if before * 100 < p * budget <= after * 100)


def alarm_text(uplink: str, month: str, used: int, budget: int, percent: int) -> str:
    what = "used up" if percent >= 100 else f"{percent} % used"
    return f"uplink {uplink}: monthly data budget {what}: {used / MB:.1f} MB of {budget / MB:g} MB in {month} (UTC)"


def summarize(rows: Iterable[UsageRow], uplinks: Sequence[UplinkSettings], today: str, days: int) -> list[UplinkUsage]:
    """Per uplink: the `days` days ending `today`, this month and the previous one.

    The configured uplinks come first, in their order, each with its budget; an uplink
    found only in the rows (renamed or removed from the config) follows, without one.
    """
    by_day: defaultdict[tuple[str, str], Traffic] = defaultdict(Traffic)
    by_month: defaultdict[tuple[str, str], Traffic] = defaultdict(Traffic)
    for row in rows:
        by_day[row.uplink, row.day] += row.traffic
        by_month[row.uplink, month_of(row.day)] += row.traffic
    budgets = {u.name: budget_bytes(u.monthly_budget_mb) for u in uplinks}
    names = list(budgets) + sorted({name for name, _ in by_day} - set(budgets))
    keys = days_ending(today, days)
    this, last = month_of(today), previous_month(month_of(today))
    return [
        UplinkUsage(
            uplink=name,
            budget=budgets.get(name),
            days=tuple(Period(day, by_day[name, day]) for day in keys),
            this_month=Period(this, by_month[name, this]),
            previous_month=Period(last, by_month[name, last]),
        )
        for name in names
    ]


def _mb(n: int) -> str:
    return f"{n / MB:.3f}"


def render_text(usages: Sequence[UplinkUsage]) -> str:
    """The technician's table: one block per uplink."""
    lines = ["Data usage per uplink: bytes on the wire, IP/TCP headers estimated; UTC days and months; 1 MB = 10^6 bytes"]
    header = f"  {'':<22}{'sent MB':>12}{'received MB':>14}{'total MB':>12}"
    for usage in usages:
        budget = "no budget" if usage.budget is None else f"monthly budget {usage.budget / MB:g} MB"
        lines += ["", f"uplink {usage.uplink} ({budget})", header + ("" if usage.budget is None else f"{'budget':>10}")]
        labelled: list[tuple[str, Period, float | None]] = [(p.key, p, None) for p in usage.days[:-1]]
        labelled += [
            (f"{usage.today.key} today", usage.today, None),
            (f"{usage.this_month.key} this month", usage.this_month, usage.percent(usage.this_month)),
            (f"{usage.previous_month.key} last month", usage.previous_month, usage.percent(usage.previous_month)),
        ]
        for label, period, percent in labelled:
            t = period.traffic
            line = f"  {label:<22}{_mb(t.sent):>12}{_mb(t.received):>14}{_mb(t.total):>12}"
            lines.append(line if percent is None else f"{line}{percent:>8.1f} %")
    return "\n".join(lines) + "\n"


def _period_json(name: str, period: Period) -> dict[str, object]:
    t = period.traffic
    return {name: period.key, "sent": t.sent, "received": t.received, "total": t.total}


def to_json(usages: Sequence[UplinkUsage], today: str) -> dict[str, object]:
    """The same figures for scripts: bytes, not MB; percentages of the budget rounded to 0.1."""

    def month(usage: UplinkUsage, period: Period) -> dict[str, object]:
        percent = usage.percent(period)
        return {**_period_json("month", period), "percent_of_budget": None if percent is None else round(percent, 1)}

    return {
        "today": today,
        "uplinks": [
            {
                "uplink": u.uplink,
                "monthly_budget_bytes": u.budget,
                "today": _period_json("day", u.today),
                "days": [_period_json("day", p) for p in u.days],
                "this_month": month(u, u.this_month),
                "previous_month": month(u, u.previous_month),
            }
            for u in usages
        ],
    }
