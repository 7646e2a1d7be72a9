"""The source systems as Dagster resources: the regional order feed and the FX rate service (simulated by
lib/simulated_feed.py; a real client implements the same methods). See docs/source_and_landing.md."""

import datetime as dt
from typing import ClassVar

import dagster as dg
import pyarrow as pa
from pydantic import Field, PrivateAttr

from pipeline_patterns.defs.resilience import Dependency
from pipeline_patterns.lib import simulated_feed as feed

_FEED = feed.FeedSettings()


class OrdersSource(Dependency):
    """The regional order feed (simulated), with its own breaker and retries. Same seed, region and
    day: same records. Its realistic defects are ON by default: duplicate and late deliveries, and
    rare bad region-days. A real API client subclasses it and implements `fetch` and `has_correction`."""

    breaker_name: ClassVar[str] = "orders_source"

    seed: int = Field(default=_FEED.seed, description="Seed of the simulated feed and of its fault injection.")
    orders_per_day: int = Field(default=_FEED.orders_per_day, description="Orders per region-day.")
    batches_per_day: int = Field(default=_FEED.batches_per_day, description="Delivery batches per region-day.")
    duplicate_rate: float = Field(default=_FEED.duplicate_rate, description="Share of orders delivered twice.")
    late_rate: float = Field(default=_FEED.late_rate, description="Share of orders delivered 1-3 days late.")
    null_user_day_rate: float = Field(
        default=_FEED.null_user_day_rate, description="Share of region-days with null user ids (quarantined)."
    )
    collapsed_volume_day_rate: float = Field(
        default=_FEED.collapsed_volume_day_rate,
        description="Share of region-days with 2 % of the volume (quarantined).",
    )
    corrected: list[str] = Field(
        default=[],
        description=(
            "Region-days the source has corrected, as 'REGION DAY' (e.g. 'eu-west 2024-01-05'); '*' for any "
            "region or day. Re-fetched, they arrive without their bad-day defects."
        ),
    )
    corrections_file: str = Field(
        default="",
        description=(
            "A JSON list of 'REGION DAY' entries the source has corrected since (written by "
            "`pipeline-patterns source correct`), added to `corrected`: how a fix upstream reaches UI backfills."
        ),
    )
    failure_rate: float = Field(default=0.0, description="Share of calls that time out (fault injection).")
    outages: list[str] = Field(
        default=[], description="Outage windows, 'START/END' in ISO 8601 UTC: the feed refuses every call inside them."
    )

    _faults: feed.FeedFaults = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        windows = [outage_window(w) for w in self.outages]
        self._faults = feed.FeedFaults(failure_rate=self.failure_rate, outages=windows, seed=self.seed)

    def settings(self) -> feed.FeedSettings:
        corrected = set()
        for entry in [*self.corrected, *feed.read_corrections(self.corrections_file)]:
            region, _, day = entry.strip().partition(" ")
            if not day:
                raise ValueError(f"OrdersSource.corrected: {entry!r} is not 'REGION DAY' (e.g. 'eu-west 2024-01-05')")
            corrected.add((region, day.strip()))
        return feed.FeedSettings(
            seed=self.seed,
            orders_per_day=self.orders_per_day,
            batches_per_day=self.batches_per_day,
            duplicate_rate=self.duplicate_rate,
            late_rate=self.late_rate,
            null_user_day_rate=self.null_user_day_rate,
            collapsed_volume_day_rate=self.collapsed_volume_day_rate,
            corrected=frozenset(corrected),
        )

    def has_correction(self, region: str, day: dt.date) -> bool:
        """Whether the source has delivered a correction of a quarantined region-day (self-healing
        re-runs the day then). The simulator knows its corrections list; a real client asks the API."""
        return self.settings().is_corrected(region, day)

    def fetch(self, region: str, day: dt.date) -> dict[str, bytes]:
        """The files the feed delivers for a region-day: file name -> CSV bytes, as received."""
        self._faults.check(f"orders feed {region} {day}")
        return feed.region_day_files(region, day, self.settings())


def outage_window(text: str) -> tuple[dt.datetime, dt.datetime]:
    start, _, end = text.partition("/")
    if not end:
        raise ValueError(f"OrdersSource.outages: {text!r} is not 'START/END' in ISO 8601")
    return dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)


class FxRates(Dependency):
    """Daily FX rates to USD (simulated: a seasonal swing plus daily noise around a base level), with
    its own breaker and retries. A real client subclasses it and implements `rates`."""

    breaker_name: ClassVar[str] = "fx_rates"
    failure_rate: float = Field(default=0.0, description="Share of calls that time out (fault injection).")

    _faults: feed.FeedFaults = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._faults = feed.FeedFaults(failure_rate=self.failure_rate, seed=_FEED.seed)

    def rates(self, currencies: list[str], days: list[dt.date]) -> pa.Table:
        """currency, fx_day ('YYYY-MM-DD'), usd_rate for every currency and day asked for."""
        self._faults.check("fx rates")
        pairs = [(c, d) for c in sorted(set(currencies)) for d in sorted(set(days))]
        return pa.table(
            {
                "currency": [c for c, _ in pairs],
                "fx_day": [d.isoformat() for _, d in pairs],
                "usd_rate": [feed.usd_rate(c, d, _FEED.seed) for c, d in pairs],
            }
        )
