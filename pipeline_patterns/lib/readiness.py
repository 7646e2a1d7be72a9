"""When a region's day is over, in the region's own time zone, and when the global day is ready
(pure functions). See docs/late_data.md."""

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from zoneinfo import ZoneInfo

# A region without a time zone here is a KeyError: its close would otherwise be a guess.
REGION_TIME_ZONES: dict[str, str] = {
    "us-east": "America/New_York",
    "us-west": "America/Los_Angeles",
    "eu-west": "Europe/London",
    "ap-south": "Asia/Kolkata",
}


def closes_at(region: str, day: dt.date) -> dt.datetime:
    """The instant (UTC) the region's local calendar day `day` ends: its local midnight of day + 1."""
    zone = ZoneInfo(REGION_TIME_ZONES[region])
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone).astimezone(dt.UTC)


def ready_at(region: str, day: dt.date, grace: dt.timedelta) -> dt.datetime:
    """The instant (UTC) the region's day may be processed: its close plus the grace period."""
    if grace < dt.timedelta(0):
        raise ValueError(f"grace must not be negative, got {grace}")
    return closes_at(region, day) + grace


def global_ready_at(day: dt.date, regions: Sequence[str], grace: dt.timedelta) -> dt.datetime:
    """The instant (UTC) the global day is ready: when the last of its regions is."""
    if not regions:
        raise ValueError("a global day needs at least one region")
    return max(ready_at(region, day, grace) for region in regions)


def ready_region_days(
    now: dt.datetime, days: Iterable[dt.date], regions: Sequence[str], grace: dt.timedelta
) -> list[tuple[str, dt.date]]:
    """The (region, day) pairs ready at `now` (an aware datetime), by day, then in `regions`' order."""
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return [(region, day) for day in days for region in regions if now >= ready_at(region, day, grace)]


@dataclasses.dataclass(frozen=True)
class RegionClose:
    region: str
    time_zone: str
    closes_at: dt.datetime
    ready_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class DayTimeline:
    """One day's closes and ready instants, the earliest first, and when the global day is ready."""

    day: dt.date
    grace: dt.timedelta
    regions: tuple[RegionClose, ...]
    global_ready_at: dt.datetime

    def markdown(self) -> str:
        """The timeline as a Markdown table (docs/late_data.md shows one)."""

        def utc(instant: dt.datetime) -> str:
            return instant.strftime("%Y-%m-%d %H:%M UTC")

        minutes = int(self.grace.total_seconds() // 60)
        lines = [
            f"| {self.day} | time zone | closes (local midnight) | ready (+{minutes} min grace) |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r.region} | {r.time_zone} | {utc(r.closes_at)} | {utc(r.ready_at)} |" for r in self.regions]
        lines.append(f"| **global** | | | **{utc(self.global_ready_at)}** |")
        return "\n".join(lines)


def timeline(day: dt.date, regions: Sequence[str], grace: dt.timedelta) -> DayTimeline:
    """When each region closes `day` and is ready (sorted by close), and when the global day is ready."""
    closes = sorted(
        (RegionClose(r, REGION_TIME_ZONES[r], closes_at(r, day), ready_at(r, day, grace)) for r in regions),
        key=lambda c: (c.closes_at, c.region),
    )
    return DayTimeline(day, grace, tuple(closes), global_ready_at(day, regions, grace))
