"""The fan-in: which days are ready (all regions or nothing) and every region's clean orders of a day in
one table, in USD; one home for the asset, the replay check and the benchmark. See docs/fan_out_fan_in.md."""

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import from_arrow_schema

from pipeline_patterns.lib.orders import DAILY_REVENUE_SCHEMA, REGIONAL_SCHEMA, daily_revenue_table

_NO_RATE = (
    "global_orders: the FX service returned no rate for {gaps} (currency and event day); the "
    "currency_known gate should have quarantined an unknown currency, so check the FX service's "
    "answer for those days"
)
FX_RATES_SCHEMA = pa.schema([("currency", pa.string()), ("fx_day", pa.string()), ("usd_rate", pa.float64())])
GLOBAL_SCHEMA = REGIONAL_SCHEMA.append(pa.field("usd_rate", pa.float64())).append(pa.field("amount_usd", pa.float64()))


def fx_day(event_ts: pa.ChunkedArray) -> pa.ChunkedArray:
    """The UTC calendar day of each event, as 'YYYY-MM-DD' (the day whose FX rate applies)."""
    return pc.cast(pc.cast(event_ts, pa.date32()), pa.string())


def orders_in_usd(orders: pa.Table, rates: pa.Table) -> pa.Table:
    """Add `usd_rate` and `amount_usd` to orders. `rates` has currency, fx_day, usd_rate and must
    cover every (currency, event day) of the orders."""
    keyed = orders.append_column("fx_day", fx_day(orders["event_ts"]))
    joined = keyed.join(rates, keys=["currency", "fx_day"], join_type="left outer")
    missing = pc.is_null(joined["usd_rate"])
    if pc.any(missing).as_py():
        gaps = joined.filter(missing).select(["currency", "fx_day"]).group_by(["currency", "fx_day"]).aggregate([])
        raise ValueError(_NO_RATE.format(gaps=gaps.to_pylist()[:5]))
    amount_usd = pc.round(pc.multiply(joined["amount"], joined["usd_rate"]), 2)
    result = joined.append_column("amount_usd", amount_usd).drop_columns(["fx_day"])
    return result.sort_by([("day", "ascending"), ("order_id", "ascending")])


def global_orders_table(regional: list[pa.Table], rates: pa.Table) -> pa.Table:
    """The regions' clean orders of some days as one table with `usd_rate` and `amount_usd`."""
    return orders_in_usd(pa.concat_tables(regional), rates).cast(GLOBAL_SCHEMA)


def check_rates_cover(needed: pa.Table, rates: pa.Table) -> None:
    """Raise, naming them, if `rates` lacks a rate for some (currency, fx_day) of `needed`."""
    joined = needed.select(["currency", "fx_day"]).join(rates, keys=["currency", "fx_day"], join_type="left outer")
    gaps = joined.filter(pc.is_null(joined["usd_rate"])).select(["currency", "fx_day"]).to_pylist()
    if gaps:
        raise ValueError(_NO_RATE.format(gaps=gaps[:5]))


def global_orders_frame(regional: DataFrame, rates: pa.Table) -> DataFrame:
    """`global_orders_table` on Spark's executors, batch by batch: the regional orders (one
    DataFrame of every region) in USD. `rates` (a few rows per day) travels with each task, so
    the join is a broadcast join and no order reaches the driver. Call `check_rates_cover` first: a
    missing rate fails the executors' task with a less readable error."""

    def convert(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from global_orders_table([pa.Table.from_batches([batch]).cast(REGIONAL_SCHEMA)], rates).to_batches()

    return regional.select(REGIONAL_SCHEMA.names).mapInArrow(convert, from_arrow_schema(GLOBAL_SCHEMA))


_REVENUE_INPUT = pa.schema([GLOBAL_SCHEMA.field(c) for c in ("day", "region", "order_id", "user_id", "amount_usd")])


def daily_revenue_frame(global_orders: DataFrame) -> DataFrame:
    """`daily_revenue_table` on the executors, one day of global orders (the columns it reads
    only) at a time."""

    def revenue(table: pa.Table) -> pa.Table:
        return daily_revenue_table(table.select(_REVENUE_INPUT.names).cast(_REVENUE_INPUT))

    return (
        global_orders.select(_REVENUE_INPUT.names)
        .groupBy("day")
        .applyInArrow(revenue, from_arrow_schema(DAILY_REVENUE_SCHEMA))
    )


def held_days(
    days: list[str],
    regions: list[str],
    clean_rows: dict[str, dict[str, int]],
    quarantine_reasons: dict[str, dict[str, str]],
    too_late_rows: dict[str, dict[str, int]] | None = None,
) -> dict[str, list[str]]:
    """The days of a window the fan-in must hold, each with why: every region-day without clean
    rows, as 'region: quarantined (checks)', 'region: no clean data: all N orders ... came later
    than the allowed lateness ...' or 'region: no clean data (not processed yet, or delivered empty)'.

    `clean_rows[region][day]` counts the clean rows, `quarantine_reasons[region][day]` names the
    failed checks of a quarantined region-day, `too_late_rows[region][day]` the rows of a
    processed feed day that went to the late table. A day is ready when every region has clean rows.
    """
    held: dict[str, list[str]] = {}
    late = too_late_rows or {}
    for day in days:
        reasons = [
            f"{region}: quarantined ({quarantine_reasons[region][day]})"
            if day in quarantine_reasons.get(region, {})
            else _all_too_late(region, day, late[region][day])
            if late.get(region, {}).get(day)
            else f"{region}: no clean data (not processed yet, or delivered empty)"
            for region in regions
            # quarantine rows hold the day even beside clean rows (a regional run that died
            # between its two commits): re-running the region-day settles it
            if not clean_rows.get(region, {}).get(day) or day in quarantine_reasons.get(region, {})
        ]
        if reasons:
            held[day] = reasons
    return held


def _all_too_late(region: str, day: str, rows: int) -> str:
    key = region.replace("-", "_")
    return (
        f"{region}: no clean data: all {rows} orders delivered for {day} came later than the allowed lateness after "
        f"their event day, so the day is empty (they are in late_orders/{key}); have the source deliver the day's "
        f"own orders, or raise quality_gates.allowed_lateness_days and re-materialize regional_orders/{key} for {day}"
    )
