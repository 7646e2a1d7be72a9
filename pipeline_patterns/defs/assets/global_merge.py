"""global_orders: every region's orders of a day in one table, amounts in USD (pattern: fan-in).

Depends on all regional assets for the same days, so it runs only after every region succeeded,
and refuses to run, naming what is missing, while any region-day of its window has no clean data
(never materialized, or quarantined): a global day is all regions or nothing.
"""

import datetime as dt

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, day_window, region_key, single_run
from pipeline_patterns.defs.resilience import Breaker, Notifier, RetrySettings, breaker_metadata, call_dependency
from pipeline_patterns.defs.sources import FxRates
from pipeline_patterns.lib.orders import fx_day, missing_region_days, orders_in_usd


@dg.asset(
    ins={region_key(r): dg.AssetIn(key=["regional_orders", region_key(r)]) for r in REGIONS},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    group_name="global",
    io_manager_key="lake_io_manager",
    kinds={"pyarrow", "delta"},
    description="All regions' orders of a day, with the day's FX rate and the amount in USD.",
)
def global_orders(
    context: dg.AssetExecutionContext,
    fx_rates: FxRates,
    fx_breaker: Breaker,
    fx_retries: RetrySettings,
    notifier: Notifier,
    **regional: pa.Table,
) -> pa.Table:
    orders = pa.concat_tables(regional.values())
    window = day_window(context)
    missing = missing_region_days(orders, REGIONS, [d.isoformat() for d in window.days])
    if missing:
        raise dg.Failure(
            description=(
                f"global_orders {window}: upstream not ready for {len(missing)} region-days "
                f"({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}); materialize their "
                "regional_orders (or fix their quarantine) first"
            ),
            metadata={"missing_region_days": ", ".join(missing)},
            allow_retries=False,
        )
    days = [dt.date.fromisoformat(d) for d in pc.unique(fx_day(orders["event_ts"])).to_pylist()]
    currencies = pc.unique(orders["currency"]).to_pylist()
    rates = call_dependency(
        context, "fx rates", lambda: fx_rates.rates(currencies, days),
        breaker=fx_breaker, retries=fx_retries, notifier=notifier,
    )
    context.add_output_metadata({"regions": len(regional), "fx_rates": rates.num_rows, **breaker_metadata(fx_breaker)})
    return orders_in_usd(orders, rates)
