"""The source systems as Dagster resources: the regional order feed and the FX rate service
(pattern: the source system behind a resource).

By default both are the deterministic simulators of `lib/simulated_feed.py`; a real API client
replaces them by implementing the same two methods. Fault injection is configuration, not code.
"""

import datetime as dt
import dagster as dg
import pyarrow as pa
from pydantic import PrivateAttr

from pipeline_patterns.lib import simulated_feed as feed


class OrdersSource(dg.ConfigurableResource):
    """The regional order feed (simulated). Same seed, region and day: same records."""

    seed: int = 7
    orders_per_day: int = 5000
    batches_per_day: int = 4
    duplicate_rate: float = 0.005
    late_rate: float = 0.01
    null_user_day_rate: float = 0.02
    collapsed_volume_day_rate: float = 0.02
    failure_rate: float = 0.0
    outages: list[str] = []
    """Outage windows, 'START/END' in ISO 8601 UTC: the feed refuses every call inside them."""

    _faults: feed.FeedFaults = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        windows = [tuple(dt.datetime.fromisoformat(t) for t in w.split("/")) for w in self.outages]
        self._faults = feed.FeedFaults(failure_rate=self.failure_rate, outages=windows)

    def settings(self) -> feed.FeedSettings:
        return feed.FeedSettings(
            seed=self.seed,
            orders_per_day=self.orders_per_day,
            batches_per_day=self.batches_per_day,
            duplicate_rate=self.duplicate_rate,
            late_rate=self.late_rate,
            null_user_day_rate=self.null_user_day_rate,
            collapsed_volume_day_rate=self.collapsed_volume_day_rate,
        )

    def fetch(self, region: str, day: dt.date) -> dict[str, bytes]:
        """The files the feed delivers for a region-day: file name -> CSV bytes, as received."""
        self._faults.check(f"orders feed {region} {day}")
        return feed.region_day_files(region, day, self.settings())


class FxRates(dg.ConfigurableResource):
    """Daily FX rates to USD (simulated: a seasonal swing plus daily noise around a base level)."""

    seed: int = 7
    failure_rate: float = 0.0

    _faults: feed.FeedFaults = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._faults = feed.FeedFaults(failure_rate=self.failure_rate)

    def rates(self, currencies: list[str], days: list[dt.date]) -> pa.Table:
        """currency, fx_day ('YYYY-MM-DD'), usd_rate for every currency and day asked for."""
        self._faults.check("fx rates")
        pairs = [(c, d) for c in sorted(set(currencies)) for d in sorted(set(days))]
        return pa.table(
            {
                "currency": [c for c, _ in pairs],
                "fx_day": [d.isoformat() for _, d in pairs],
                "usd_rate": [feed.usd_rate(c, d, self.seed) for c, d in pairs],
            }
        )
