"""global_orders and daily_revenue: every region's clean orders of a day in one table in USD, and
the day's revenue (patterns: fan-in; a range backfill that finishes every ready day).

A global day is all regions or nothing. In one run over a range, this step processes every day
whose four region-days are clean and HOLDS the others (a region-day quarantined or not yet
processed), saying which and why: per held day in the run's failure, the notifier and the log.
Both tables still take one transaction each for the whole window, so they hold exactly what one
clean run writes: the ready days' rows, nothing on held days.

Per-day truth in Dagster (FACTS.md, "Partial success inside one range run"): a returned output
would record EVERY day of the range as materialized, so this step is the last of the daily graph
and emits one materialization per processed day itself; its outputs are skippable and never
returned. It then fails with a `Failure` naming the held days, which Dagster shows as FAILED, so
"Backfill only failed and missing partitions" selects exactly them.
"""

import datetime as dt
import functools
from collections.abc import Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from pipeline_patterns.defs.assets.regional import quarantine_key, regional_key
from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, day_window, single_run
from pipeline_patterns.defs.resilience import Breaker, Notifier, RetrySettings, breaker_metadata, call_dependency
from pipeline_patterns.defs.sources import FxRates
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import WriteResult
from pipeline_patterns.lib.fan_in import GLOBAL_SCHEMA, fx_day, global_orders_table, held_days, spooled
from pipeline_patterns.lib.orders import DAILY_REVENUE_SCHEMA, daily_revenue_table

GLOBAL_ORDERS = dg.AssetKey("global_orders")
DAILY_REVENUE = dg.AssetKey("daily_revenue")
# Days read and converted at a time: memory stays bounded by the chunk, not the range.
DAYS_PER_CHUNK = 7


@dg.multi_asset(
    name="global_orders_and_daily_revenue",
    specs=[
        dg.AssetSpec(
            GLOBAL_ORDERS,
            # the quarantine tables too: they say why a held day is held
            deps=[k for r in REGIONS for k in (regional_key(r), quarantine_key(r))],
            skippable=True,
            group_name="global",
            kinds={"pyarrow", "delta"},
            description="All regions' orders of a day, with the day's FX rate and the amount in USD. "
            "A day is written only when all four region-days are clean; the others are held.",
        ).with_io_manager_key("lake_io_manager"),
        dg.AssetSpec(
            DAILY_REVENUE,
            deps=[GLOBAL_ORDERS],
            skippable=True,
            group_name="revenue",
            kinds={"pyarrow", "delta"},
            description="Per day and region: orders, revenue in USD, distinct users.",
        ).with_io_manager_key("lake_io_manager"),
    ],
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    can_subset=True,
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
    pool="fan_in",  # one writer of global_orders + daily_revenue at a time (dagster.yaml)
)
def global_orders_and_daily_revenue(
    context: dg.AssetExecutionContext,
    lake: Lake,
    fx_rates: FxRates,
    fx_breaker: Breaker,
    fx_retries: RetrySettings,
    notifier: Notifier,
):
    window, run_id = day_window(context), context.run.run_id
    days = [d.isoformat() for d in window.days]
    if GLOBAL_ORDERS in context.selected_asset_keys:
        held = held_days(
            days,
            REGIONS,
            {r: lake.per_day(regional_key(r), window) for r in REGIONS},
            {r: quarantined_checks(lake, r, window) for r in REGIONS},
        )
    else:  # daily_revenue alone follows what global_orders holds
        present = lake.per_day(GLOBAL_ORDERS, window)
        held = {d: ["global_orders: no rows for the day (held or not processed)"] for d in days if not present.get(d)}
    ready = [d for d in days if d not in held]

    revenue_parts: list[pa.Table] = []

    def global_chunks():
        """The ready days' global orders, a chunk of days at a time, for one streamed write."""
        for chunk in window.chunks(DAYS_PER_CHUNK):
            chunk_days = [d.isoformat() for d in chunk.days if d.isoformat() in ready]
            if not chunk_days:
                continue
            regional = [only_days(lake.read(regional_key(r), chunk), chunk_days) for r in REGIONS]
            for region, rows in zip(REGIONS, regional, strict=True):
                gone = sorted(set(chunk_days) - set(rows["day"].to_pylist()))
                if gone:  # rewritten by another run since readiness was decided: decide again
                    raise dg.Failure(
                        description=f"regional_orders/{region} lost its rows for {', '.join(gone)} while "
                        f"global_orders {window} ran (another run rewrote them); re-run the window",
                    )
            currencies = sorted({c for t in regional for c in t["currency"].to_pylist()})
            fx_days = sorted(
                {dt.date.fromisoformat(d) for t in regional for d in pc.unique(fx_day(t["event_ts"])).to_pylist()}
            )
            rates = call_dependency(
                context,
                "fx rates",
                functools.partial(fx_rates.rates, currencies, fx_days),
                breaker=fx_breaker,
                retries=fx_retries,
                notifier=notifier,
            )
            orders = global_orders_table(regional, rates)
            revenue_parts.append(daily_revenue_table(orders))
            yield orders

    if GLOBAL_ORDERS in context.selected_asset_keys:
        with spooled(global_chunks(), GLOBAL_SCHEMA) as chunks:
            written = lake.replace(GLOBAL_ORDERS, chunks, window, run_id)
        # recorded at once: committed days must not show FAILED if the revenue write then fails
        yield from day_materializations(lake, GLOBAL_ORDERS, written, window, ready, breaker_metadata(fx_breaker))
    else:
        revenue_parts = [
            daily_revenue_table(only_days(lake.read(GLOBAL_ORDERS, chunk), ready))
            for chunk in window.chunks(DAYS_PER_CHUNK)
            if any(d.isoformat() in ready for d in chunk.days)
        ]
    if DAILY_REVENUE in context.selected_asset_keys:
        revenue = pa.concat_tables([DAILY_REVENUE_SCHEMA.empty_table(), *revenue_parts])  # a few rows a day
        written = lake.replace(DAILY_REVENUE, revenue, window, run_id)
        yield from day_materializations(lake, DAILY_REVENUE, written, window, ready, {})
    if held:
        lines = [f"{day}: {'; '.join(reasons)}" for day, reasons in held.items()]
        for line in lines:
            context.log.warning(f"held {line}")
        notifier.notify("days_held", run_id=run_id, window=str(window), processed=len(ready), held=held)
        raise dg.Failure(
            description=(
                f"held {len(held)} of {len(days)} days of {window} ({len(ready)} processed): "
                + " | ".join(lines[:20])
                + (" | ..." if len(lines) > 20 else "")
                + ". Correct the source for those region-days, then backfill only failed and missing partitions."
            ),
            metadata={"held_days": ", ".join(held), "days_processed": len(ready), "days_held": len(held)},
            allow_retries=False,
        )


def holds_days(step_failure: dg.DagsterEvent) -> bool:
    """Whether a STEP_FAILURE event is this step holding days (the designed outcome) rather than
    a crash: its Failure carries `held_days` metadata."""
    failure = step_failure.step_failure_data.user_failure_data
    return failure is not None and "held_days" in failure.metadata


def day_materializations(
    lake: Lake, key: dg.AssetKey, written: WriteResult, window: DayWindow, ready: list[str], extra: dict
) -> Iterator[dg.AssetMaterialization]:
    """One materialization per processed day, with that day's own row count."""
    rows = lake.per_day(key, window)
    for day in ready:
        yield dg.AssetMaterialization(
            asset_key=key,
            partition=day,
            metadata={
                "dagster/row_count": rows.get(day, 0),
                "delta_version": written.version,
                "table_uri": dg.MetadataValue.path(written.table_uri),
                **extra,
            },
        )


def quarantined_checks(lake: Lake, region: str, window: DayWindow) -> dict[str, str]:
    """Day -> failed checks of the region's quarantined days in the window."""
    return lake.per_day(quarantine_key(region), window, "MIN(failed_checks)")  # one value per day


def only_days(table: pa.Table, days: list[str]) -> pa.Table:
    return table.filter(pc.is_in(table["day"], value_set=pa.array(days, pa.string())))
