"""replay_matches: an on-demand check that a day's fan-in and revenue equal what a clean replay gives.
See docs/idempotent_writes.md."""

import datetime as dt

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.keys import DAILY_REVENUE, GLOBAL_ORDERS, regional_key
from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.partitions import REGIONS
from pipeline_patterns.defs.sources import FxRates
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import content_hash
from pipeline_patterns.lib.fan_in import fx_day, global_orders_table
from pipeline_patterns.lib.late_data import newest_deliveries
from pipeline_patterns.lib.orders import REGIONAL_SCHEMA, daily_revenue_table


class ReplayDay(dg.Config):
    day: str = Field(
        default="", description="The day to replay, YYYY-MM-DD; empty means the latest day in daily_revenue."
    )


@dg.asset_check(
    asset=DAILY_REVENUE,
    blocking=False,
    description="On demand: a clean replay of the day's fan-in and revenue gives identical content.",
)
def replay_matches(
    context: dg.AssetCheckExecutionContext,
    config: ReplayDay,
    lake: dg.ResourceParam[Lake],
    fx_rates: FxRates,
    quality_gates: QualityGates,
) -> dg.AssetCheckResult:
    day = dt.date.fromisoformat(config.day or pc.max(lake.read(DAILY_REVENUE)["day"]).as_py())
    window = DayWindow(day, day + dt.timedelta(days=1))
    lateness = quality_gates.allowed_lateness_days
    # the day's orders are delivered on its feed day and up to `lateness` feed days after it
    delivered = DayWindow(day, day + dt.timedelta(days=1 + lateness))
    rows = pa.concat_tables([lake.read(regional_key(r), delivered) for r in REGIONS])
    regional = [newest_deliveries(rows, lateness, [day.isoformat()]).select(REGIONAL_SCHEMA.names)]
    currencies = sorted({c for t in regional for c in t["currency"].to_pylist()})
    days = sorted({dt.date.fromisoformat(d) for t in regional for d in pc.unique(fx_day(t["event_ts"])).to_pylist()})
    replayed_global = global_orders_table(regional, fx_rates.rates(currencies, days))
    same_global = content_hash(replayed_global) == content_hash(lake.read(GLOBAL_ORDERS, window))
    same_revenue = content_hash(daily_revenue_table(replayed_global)) == content_hash(lake.read(DAILY_REVENUE, window))
    return dg.AssetCheckResult(
        passed=same_global and same_revenue,
        metadata={"day": str(window), "global_orders_identical": same_global, "daily_revenue_identical": same_revenue},
    )
