"""global_orders and daily_revenue: the fan-in of every region's clean orders of a day, in USD, and the
day's revenue; a range run writes every ready day and holds the others, naming them.
See docs/fan_out_fan_in.md and docs/backfills.md."""

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Iterator

import dagster as dg
import pyarrow as pa
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline_patterns.defs.alerts import Notifier
from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.keys import DAILY_REVENUE, GLOBAL_ORDERS, late_key, quarantine_key, regional_key
from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.late_data import REGIONAL_VERSIONS, format_versions
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, day_window, single_run
from pipeline_patterns.defs.resilience import call_dependency
from pipeline_patterns.defs.sources import FxRates
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import WriteResult
from pipeline_patterns.lib.fan_in import (
    FX_RATES_SCHEMA,
    GLOBAL_SCHEMA,
    check_rates_cover,
    daily_revenue_frame,
    global_orders_frame,
    held_days,
)
from pipeline_patterns.lib.late_data import rehomed_frame
from pipeline_patterns.lib.orders import DAILY_REVENUE_SCHEMA, REGIONAL_SCHEMA

# Days of rates asked of the FX service per call: a year of backfill is 12 calls, not 365.
DAYS_PER_FX_CALL = 31
# What a global order always has; checked on the files before they are committed.
GLOBAL_NOT_NULL = ("order_id", "region", "amount", "currency", "event_ts", "usd_rate", "amount_usd")
REVENUE_NOT_NULL = ("region", "orders", "revenue_usd", "distinct_users")


@dg.multi_asset(
    name="global_orders_and_daily_revenue",
    specs=[
        dg.AssetSpec(
            GLOBAL_ORDERS,
            # the quarantine tables too (they say why a held day is held), and the late tables
            # (what came too late to count): every table of a regional step is upstream
            deps=[k for r in REGIONS for k in (regional_key(r), quarantine_key(r), late_key(r))],
            skippable=True,
            group_name="global",
            kinds={"pyspark", "delta"},
            description="All regions' orders of a day, with the day's FX rate and the amount in USD. "
            "A day is written only when all four region-days are clean; the others are held.",
        ).with_io_manager_key("lake"),
        dg.AssetSpec(
            DAILY_REVENUE,
            deps=[GLOBAL_ORDERS],
            skippable=True,
            group_name="revenue",
            kinds={"pyspark", "delta"},
            description="Per day and region: orders, revenue in USD, distinct users.",
        ).with_io_manager_key("lake"),
    ],
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    can_subset=True,
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
    pool="fan_in",  # one writer of global_orders + daily_revenue at a time (dagster.yaml)
)
def global_orders_and_daily_revenue(
    context: dg.AssetExecutionContext,
    spark: PySparkResource,
    lake: dg.ResourceParam[Lake],
    fx_rates: FxRates,
    quality_gates: QualityGates,
    notifier: Notifier,
):
    window, run_id, session = day_window(context), context.run.run_id, spark.spark_session
    days = [d.isoformat() for d in window.days]
    if GLOBAL_ORDERS in context.selected_asset_keys:
        merged = fan_in(context, session, lake, window, fx_rates, notifier, quality_gates.allowed_lateness_days)
        held, ready = merged.held, merged.ready
        try:
            written = lake.write(
                GLOBAL_ORDERS,
                merged.orders,
                window,
                run_id,
                GLOBAL_SCHEMA,
                rows_per_day=merged.rows_per_day,
                not_null=GLOBAL_NOT_NULL,
            )
        finally:
            merged.release()
        # recorded at once: committed days must not show FAILED if the revenue write then fails
        yield from day_materializations(
            lake, GLOBAL_ORDERS, written, window, ready, fx_rates.breaker_metadata(), merged.day_metadata
        )
    else:  # daily_revenue alone follows what global_orders holds
        present = lake.per_day(GLOBAL_ORDERS, window)
        held = {d: ["global_orders: no rows for the day (held or not processed)"] for d in days if not present.get(d)}
        ready = [d for d in days if d not in held]
    if DAILY_REVENUE in context.selected_asset_keys:
        orders = lake.frame(session, GLOBAL_ORDERS, GLOBAL_SCHEMA, window).where(F.col("day").isin(ready))
        written = lake.write(
            DAILY_REVENUE,
            daily_revenue_frame(orders),
            window,
            run_id,
            DAILY_REVENUE_SCHEMA,
            not_null=REVENUE_NOT_NULL,
        )
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
                + ". Correct the source for those region-days: the heal_failed_days sensor then re-runs each day "
                "within a minute, or backfill only failed and missing partitions (faster for many days)."
            ),
            metadata={"held_days": ", ".join(held), "days_processed": len(ready), "days_held": len(held)},
            allow_retries=False,
        )


@dataclasses.dataclass(frozen=True)
class FanIn:
    ready: list[str]  # the days whose four region-days are clean
    held: dict[str, list[str]]  # the other days, each with why
    orders: DataFrame  # the global orders of the ready days, in USD (lazy: computed on the executors)
    rows_per_day: dict[str, int]  # what `orders` holds per day (the re-homed regional rows)
    late_per_day: dict[str, int]  # of those, the orders delivered on a later feed day
    versions: dict[str, int]  # the regional table versions read
    rehomed: DataFrame  # kept on the executors while `orders` is written: `release()` frees it

    def release(self) -> None:
        self.rehomed.unpersist()

    def day_metadata(self, day: str) -> dict:
        """What a global day records of its inputs (the late-data sensor compares the versions)."""
        return {
            "late_orders_included": self.late_per_day.get(day, 0),
            REGIONAL_VERSIONS: format_versions(self.versions),
        }


def fan_in(
    context: dg.AssetExecutionContext,
    session: SparkSession,
    lake: Lake,
    window: DayWindow,
    fx_rates: FxRates,
    notifier: Notifier,
    allowed_lateness: int,
) -> FanIn:
    """The fan-in of `window` from the live regional tables: which days are ready, and their
    global orders in USD. One home for the computation: `global_orders` writes it, the green
    build of blue-green publication (defs/blue_green.py) stages it.

    A day is ready when its four region-days (feed days) are clean; its orders are those whose
    EVENT day it is, from its own feed day and the `allowed_lateness` feed days after it, the
    newest delivery of each order winning (lib/late_data.py)."""
    days = [d.isoformat() for d in window.days]
    # one snapshot per regional table, pinned: readiness and the rows read agree even if a
    # regional run commits meanwhile
    versions = {r: lake.version(regional_key(r)) for r in REGIONS}
    clean_rows = {r: lake.per_day(regional_key(r), window, version=versions[r]) for r in REGIONS}
    quarantined = {r: quarantined_checks(lake, r, window) for r in REGIONS}
    held = held_days(days, REGIONS, clean_rows, quarantined, {r: lake.per_day(late_key(r), window) for r in REGIONS})
    ready = [d for d in days if d not in held]
    delivered = DayWindow(window.start, window.end + dt.timedelta(days=allowed_lateness))
    regional = functools.reduce(
        DataFrame.unionByName,
        [lake.frame(session, regional_key(r), REGIONAL_SCHEMA, delivered, versions[r]) for r in REGIONS],
    )
    rehomed = rehomed_frame(regional, allowed_lateness, ready).persist()
    try:
        # one job: the rows (and late rows) per day, and the (currency, event day) pairs to convert
        groups = (
            rehomed.groupBy("day", "currency", F.date_format(F.to_date("event_ts"), "yyyy-MM-dd").alias("fx_day"))
            .agg(F.count("*").alias("rows"), F.sum((F.col("feed_day") != F.col("day")).cast("long")).alias("late"))
            .toArrow()
        )
        counts = groups.group_by("day").aggregate([("rows", "sum"), ("late", "sum")]).to_pylist()
        orders = rehomed.select(REGIONAL_SCHEMA.names)
        rates = fx_rates_for(context, groups.select(["currency", "fx_day"]), fx_rates, notifier)
    except BaseException:  # a retry or a failure: the caller never gets the frame to release
        rehomed.unpersist()
        raise
    return FanIn(
        ready=ready,
        held=held,
        orders=global_orders_frame(orders, rates),
        rows_per_day={row["day"]: row["rows_sum"] for row in counts},
        late_per_day={row["day"]: row["late_sum"] for row in counts},
        versions={r: v for r, v in versions.items() if v is not None},
        rehomed=rehomed,
    )


def fx_rates_for(
    context: dg.AssetExecutionContext,
    needed: pa.Table,
    fx_rates: FxRates,
    notifier: Notifier,
) -> pa.Table:
    """The FX rates of every (currency, fx_day) of `needed`, asked of the FX service a month of
    days at a time, through its breaker and capped retries."""
    currencies = sorted(set(needed["currency"].to_pylist()))
    fx_days = sorted(dt.date.fromisoformat(d) for d in set(needed["fx_day"].to_pylist()))
    parts = [
        call_dependency(
            context,
            "fx rates",
            functools.partial(fx_rates.rates, currencies, fx_days[i : i + DAYS_PER_FX_CALL]),
            dependency=fx_rates,
            notifier=notifier,
        )
        for i in range(0, len(fx_days), DAYS_PER_FX_CALL)
    ]
    rates = pa.concat_tables(
        [FX_RATES_SCHEMA.empty_table(), *(p.select(FX_RATES_SCHEMA.names).cast(FX_RATES_SCHEMA) for p in parts)]
    )
    check_rates_cover(needed, rates)
    return rates


def holds_days(step_failure: dg.DagsterEvent) -> bool:
    """Whether a STEP_FAILURE event is this step holding days (the designed outcome) rather than
    a crash: its Failure carries `held_days` metadata."""
    failure = step_failure.step_failure_data.user_failure_data
    return failure is not None and "held_days" in failure.metadata


def day_materializations(
    lake: Lake,
    key: dg.AssetKey,
    written: WriteResult,
    window: DayWindow,
    ready: list[str],
    extra: dict,
    per_day: Callable[[str], dict] | None = None,
) -> Iterator[dg.AssetMaterialization]:
    """One materialization per processed day, with that day's own row count (and `per_day`'s)."""
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
                **(per_day(day) if per_day else {}),
            },
        )


def quarantined_checks(lake: Lake, region: str, window: DayWindow) -> dict[str, str]:
    """Day -> failed checks of the region's quarantined days in the window."""
    return lake.per_day(quarantine_key(region), window, "MIN(failed_checks)")  # one value per day
