"""Late and out-of-order data: event time decides the day, a watermark decides what is still accepted,
and the newest delivery of an order wins (`newest_deliveries`). See docs/late_data.md."""

import datetime as dt
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema

from pipeline_patterns.lib.orders import ORDER_COLUMNS, REGIONAL_SCHEMA, batch_sequence

# A re-homed order: `day` is its event day, `feed_day` the day of the delivery that won.
REHOMED_SCHEMA = REGIONAL_SCHEMA.append(pa.field("feed_day", pa.string()))
LATE_SCHEMA = pa.schema(
    [
        *REGIONAL_SCHEMA,  # `day` is the feed day, as in the regional table
        pa.field("event_day", pa.string()),
        pa.field("lateness_days", pa.int64()),
        pa.field("reason", pa.string()),
    ]
)


def _event_date(
    event_ts: pa.ChunkedArray | pa.Array, feed_day: pa.ChunkedArray | pa.Array
) -> tuple[pa.ChunkedArray | pa.Array, pa.ChunkedArray | pa.Array]:
    feed = pc.cast(feed_day, pa.date32())  # a feed day is a partition key: always YYYY-MM-DD
    event = pc.cast(event_ts, pa.date32())  # dates, not strings: year 10000 compares right
    return pc.if_else(pc.greater(event, feed), feed, event), feed


def event_day(event_ts: pa.ChunkedArray | pa.Array, feed_day: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """'YYYY-MM-DD' of each event's UTC day, never after its feed day (null where the time is)."""
    event, _ = _event_date(event_ts, feed_day)
    return pc.cast(event, pa.string())


def lateness_days(
    event_ts: pa.ChunkedArray | pa.Array, feed_day: pa.ChunkedArray | pa.Array
) -> pa.ChunkedArray | pa.Array:
    """Days from each event day to its feed day (0 for an order delivered on its own day)."""
    event, feed = _event_date(event_ts, feed_day)
    return pc.days_between(event, feed)


def event_day_sql(event_ts: str = "event_ts", feed_day: str = "day") -> str:
    """`event_day` in Spark SQL (the session's time zone is UTC). SQL text rather than a tree of
    Columns: each Column built through py4j costs round trips to the JVM."""
    return f"date_format(least(to_date({event_ts}), to_date({feed_day})), 'yyyy-MM-dd')"


def lateness_sql(event_ts: str = "event_ts", feed_day: str = "day") -> str:
    """`lateness_days` in Spark SQL."""
    return f"datediff(to_date({feed_day}), least(to_date({event_ts}), to_date({feed_day})))"


def spark_event_day(event_ts: str = "event_ts", feed_day: str = "day") -> Column:
    return F.expr(event_day_sql(event_ts, feed_day))


def spark_lateness(event_ts: str = "event_ts", feed_day: str = "day") -> Column:
    return F.expr(lateness_sql(event_ts, feed_day))


def too_late_reason(allowed_lateness: int) -> str:
    return (
        f"delivered more than the allowed lateness ({allowed_lateness} days) after its event day: "
        "that day was closed, so the order is not counted in it"
    )


def _newest_first(row: dict) -> tuple:
    """Sort key: newest delivery first (delivery time, then batch sequence: numbers as numbers,
    then batch id, descending, nulls last; as lib/orders.py orders a day's deliveries), ties
    broken on every other column, so the winner never depends on arrival order."""

    def desc(value: dt.datetime | str | None) -> tuple[int, float | _Reversed]:  # None sorts last
        if value is None:
            return (1, 0)
        return (0, -value.timestamp()) if isinstance(value, dt.datetime) else (0, _Reversed(value))

    def asc(value: str | float | dt.datetime | None) -> tuple[int, str | float | dt.datetime]:
        return (1, "") if value is None else (0, value)

    return (
        desc(row["delivered_at"]),
        desc(batch_sequence(row["batch_id"])),
        desc(row["batch_id"]),
        *(asc(row[c]) for c in ORDER_COLUMNS[1:]),
        asc(row["feed_day"]),
    )


class _Reversed:
    """A string that sorts in reverse."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: "_Reversed") -> bool:
        return self.value > other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value


def newest_deliveries(deliveries: pa.Table, allowed_lateness: int, days: Sequence[str] | None = None) -> pa.Table:
    """The orders of `days` (all event days when None) as global days hold them (`REHOMED_SCHEMA`).

    `deliveries` are clean regional rows (`REGIONAL_SCHEMA`, `day` = feed day) and must hold
    every delivery of each order they contain within the feed days that matter (the fan-in groups
    them by order id). Each row's event day E is computed here; it wins E when no delivery of
    the same order in feed days E .. E + allowed_lateness is newer."""
    table = deliveries.select(REGIONAL_SCHEMA.names).cast(REGIONAL_SCHEMA)
    table = table.append_column("event_day", event_day(table["event_ts"], table["day"]))
    # an order is (region, order_id): two regions' feeds may reuse an id
    table = table.append_column("_order", pc.binary_join_element_wise(table["region"], table["order_id"], "\u0000"))
    counts = table.group_by("_order").aggregate([("_order", "count")])
    repeated = counts.filter(pc.greater(counts["_order_count"], 1))["_order"]
    alone = pc.invert(pc.is_in(table["_order"], value_set=repeated))
    winners = [table.filter(alone)]
    if len(repeated):
        winners.append(_reconcile(table.filter(pc.invert(alone)), allowed_lateness))
    merged = pa.concat_tables(winners)
    if days is not None:
        merged = merged.filter(pc.is_in(merged["event_day"], value_set=pa.array(list(days), pa.string())))
    columns = {n: merged[n] for n in REGIONAL_SCHEMA.names if n != "day"}
    rehomed = pa.table({**columns, "day": merged["event_day"], "feed_day": merged["day"]})
    return (
        rehomed.select(REHOMED_SCHEMA.names)
        .cast(REHOMED_SCHEMA)
        .sort_by([("day", "ascending"), ("order_id", "ascending")])
    )


def _reconcile(rows: pa.Table, allowed_lateness: int) -> pa.Table:
    """The winning deliveries among orders delivered more than once (few: a re-delivery on
    another feed day, a correction)."""
    by_order: dict[str, list[dict]] = {}
    columns = ["_order", "day", "event_day", "delivered_at", "batch_id", *ORDER_COLUMNS[1:]]
    for index, row in enumerate(rows.select(columns).to_pylist()):
        row["feed_day"], row["_index"] = row["day"], index
        by_order.setdefault(row["_order"], []).append(row)
    keep = []
    for versions in by_order.values():
        ranked = sorted(versions, key=_newest_first)
        for row in versions:
            first = dt.date.fromisoformat(row["event_day"])
            last = (first + dt.timedelta(days=allowed_lateness)).isoformat()
            rivals = [r for r in ranked if row["event_day"] <= r["feed_day"] <= last]
            if rivals and rivals[0] is row:
                keep.append(row["_index"])
    return rows.take(pa.array(sorted(keep), pa.int64()))


def rehomed_frame(regional: DataFrame, allowed_lateness: int, days: Sequence[str]) -> DataFrame:
    """`newest_deliveries` on Spark's executors: the clean regional rows of the feed days read
    (every region in one DataFrame), grouped by order id by a shuffle and sorted, then streamed
    batch by batch (an order's deliveries are never split between two calls): memory is one
    batch, whatever the range. An order is its (region, order_id)."""
    wanted = list(days)

    def rehome(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        carry: pa.Table | None = None
        for batch in batches:
            table = pa.Table.from_batches([batch])
            if carry is not None:
                table = pa.concat_tables([carry, table])
            if table.num_rows == 0:
                continue
            open_order = pc.and_(
                pc.equal(table["region"], table["region"][-1]), pc.equal(table["order_id"], table["order_id"][-1])
            )
            carry = table.filter(open_order)
            done = table.filter(pc.invert(open_order))
            if done.num_rows:
                yield from newest_deliveries(done, allowed_lateness, wanted).to_batches()
        if carry is not None and carry.num_rows:
            yield from newest_deliveries(carry, allowed_lateness, wanted).to_batches()

    return (
        regional.select(REGIONAL_SCHEMA.names)
        .repartition("region", "order_id")
        .sortWithinPartitions("region", "order_id")
        .mapInArrow(rehome, from_arrow_schema(REHOMED_SCHEMA))
    )


def late_day_counts(table: pa.Table, feed_day: str, allowed_lateness: int) -> tuple[int, dict[str, int]]:
    """Of one feed day's rows: how many are too late, and per earlier event day within the
    watermark, how many re-home there."""
    feed = pa.array([feed_day] * table.num_rows, pa.string())
    days, late = event_day(table["event_ts"], feed), lateness_days(table["event_ts"], feed)
    too_late = pc.sum(pc.fill_null(pc.greater(late, allowed_lateness), False).cast(pa.int64())).as_py() or 0
    accepted = pc.and_(pc.greater(late, 0), pc.less_equal(late, allowed_lateness))
    earlier = pc.filter(days, pc.fill_null(accepted, False))
    counts = pc.value_counts(earlier)
    return too_late, {v["values"].as_py(): v["counts"].as_py() for v in counts}


def left_days(staged: DataFrame, earlier: DataFrame, allowed_lateness: int) -> dict[str, dict[str, int]]:
    """Feed day -> the earlier event days whose orders a delivery re-delivers (and may take away:
    a correction moving an order to another day), with how many: for each order of `staged`
    (`day` = its feed day F), the event days of its deliveries in `earlier` on feed days
    F - allowed_lateness .. F - 1. `earlier` is clean regional rows (`day` = feed day), the feed
    days before a run's window and the window's own. Only the counts reach the driver."""
    delivered = staged.where("order_id IS NOT NULL").selectExpr("order_id", "day AS feed_day")
    before = earlier.selectExpr("order_id", "day AS earlier_feed", f"{event_day_sql()} AS earlier_event")
    gap = "datediff(to_date(feed_day), to_date(earlier_feed))"
    rows = (
        delivered.join(before, "order_id")
        .where(f"{gap} > 0 AND {gap} <= {int(allowed_lateness)}")
        .groupBy("feed_day", "earlier_event")
        .count()
        .collect()
    )
    found: dict[str, dict[str, int]] = {}
    for row in rows:
        found.setdefault(row["feed_day"], {})[row["earlier_event"]] = row["count"]
    return found
