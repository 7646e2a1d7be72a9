"""The order transformations, free of Dagster: the regional clean-up in Spark and the revenue aggregates
in Arrow (the fan-in itself is fan_in.py). See docs/fan_out_fan_in.md."""

import codecs
import datetime as dt
import re
from collections.abc import Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline_patterns.lib import landing, object_store

# Landed files are read as text and typed here, so a malformed value becomes a null instead of
# failing the whole file.
LANDED_SCHEMA = (
    "order_id STRING, user_id STRING, region STRING, amount STRING, currency STRING, "
    "event_ts STRING, batch_id STRING, delivered_at STRING, _corrupt_record STRING"
)

REGIONAL_SCHEMA = pa.schema(
    [
        ("order_id", pa.string()),
        ("user_id", pa.string()),
        ("region", pa.string()),
        ("amount", pa.float64()),
        ("currency", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC")),
        ("batch_id", pa.string()),
        ("delivered_at", pa.timestamp("us", tz="UTC")),
        ("day", pa.string()),
    ]
)


# What an order says; a redelivery that repeats these is a true copy, one that changes them a
# newer version (batch_id and delivered_at describe the delivery, not the order).
ORDER_COLUMNS = ["order_id", "user_id", "region", "amount", "currency", "event_ts"]


def landed_rows(
    spark: SparkSession,
    files: list[str],
    storage_options: Mapping[str, str] | None = None,
    *,
    by_lines: bool = False,
    identities: Mapping[str, str] | None = None,
) -> DataFrame:
    """The landed CSV files as text columns (`LANDED_SCHEMA`) plus each row's `_path`. Files
    with an identity (`inspect_days` records one for a local landing zone) are opened by the
    executors as inspected, or the job fails (`landing.open_landed`: a link or a file swapped in
    after the inspection is never read); files on object storage (no S3 connector in the wheel)
    are streamed with pyarrow. Both are split into lines exactly as Spark's CSV reader splits
    them (on \\n, \\r\\n or \\r; blank lines and each file's first line, its header, dropped)
    and parsed by its CSV parser (`from_csv`). Other local files (tools, tests) are read by
    Spark's CSV reader, unless `by_lines`."""
    if not files:  # every file of the window refused
        return spark.createDataFrame([], f"{LANDED_SCHEMA}, _path STRING")
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt_record"}
    known = dict(identities or {})
    local = all(object_store.is_local(f) for f in files)
    if not by_lines and not known and local:
        return spark.read.csv(files, header=True, schema=LANDED_SCHEMA, **options).withColumn(
            "_path", F.col("_metadata.file_path")
        )
    store = dict(storage_options or {})
    # a Python task costs more than reading a day's files: as many tasks as the session's shuffle
    # partitions on a disk; on object storage, more, to overlap the requests
    tasks = int(spark.conf.get("spark.sql.shuffle.partitions") or 8) if local else 64
    listed = spark.createDataFrame([(f, known.get(f, "")) for f in files], "file string, identity string")
    lines = listed.repartition(min(len(files), tasks)).mapInArrow(
        lambda batches: _landed_lines(batches, store), "_path string, line string"
    )
    parsed = lines.select("_path", F.from_csv("line", LANDED_SCHEMA, options).alias("r"))
    return parsed.select("r.*", "_path")


def _landed_lines(batches: Iterator[pa.RecordBatch], options: dict) -> Iterator[pa.RecordBatch]:
    """On an executor: the record lines of each listed file, streaming in 4 MiB chunks (a UTF-8
    byte-order mark at the start dropped, as Spark's line reader drops it)."""
    for listing in batches:
        for file, identity in zip(listing["file"].to_pylist(), listing["identity"].to_pylist(), strict=True):
            header_seen, pending, first = False, [b""], True
            with landing.open_read(file, identity, options) as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    if first and chunk.startswith(codecs.BOM_UTF8):
                        chunk = chunk[len(codecs.BOM_UTF8) :]
                    first = False
                    *complete, rest = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
                    if complete:  # the open line ends here: join its pieces once
                        complete[0] = b"".join([*pending, complete[0]])
                        pending = [rest]
                    else:
                        pending.append(rest)
                    kept, header_seen = _records(complete, header_seen)
                    if kept:
                        yield pa.RecordBatch.from_pydict({"_path": [file] * len(kept), "line": kept})
            kept, header_seen = _records([b"".join(pending)], header_seen)
            if kept:
                yield pa.RecordBatch.from_pydict({"_path": [file] * len(kept), "line": kept})


def _records(lines: list[bytes], header_seen: bool) -> tuple[list[str], bool]:
    kept = []
    for line in lines:
        if not line.strip(landing.BLANK):
            continue
        if not header_seen:
            header_seen = True
            continue
        kept.append(line.decode("utf-8", errors="replace"))
    return kept, header_seen


def regional_orders_frame(
    spark: SparkSession,
    files: list[str],
    storage_options: Mapping[str, str] | None = None,
    identities: Mapping[str, str] | None = None,
) -> DataFrame:
    """Typed, deduplicated orders of the landed files: one row per (day, order identity), the
    latest delivery kept, with `duplicates` (other deliveries that are true copies of the kept
    row), `superseded` (older deliveries with other content, replaced by the kept newest one) and
    `ids_normalised` (deliveries whose raw order id `identity_sql` changed). A parse
    error in ANY delivery of the order is carried onto the kept row, so a malformed delivery is
    quarantined rather than silently outranked. `identities`: see `landed_rows`."""
    landed = landed_rows(spark, files, storage_options, identities=identities)
    # SQL text, not Column objects: each Column built through py4j costs JVM round trips
    typed = landed.selectExpr(
        f"{identity_sql('order_id')} AS order_id",
        f"{identity_sql('user_id')} AS user_id",
        "trim(region) AS region",
        f"{_double('amount')} AS amount",
        "upper(trim(currency)) AS currency",
        f"{_timestamp('event_ts')} AS event_ts",
        f"{identity_sql('batch_id')} AS batch_id",
        f"{_timestamp('delivered_at')} AS delivered_at",
        "order_id AS _raw_order_id",
        f"regexp_extract(_path, {_sql_string(landing.DAY_IN_PATH)}, 1) AS day",
        "concat_ws(',', CASE WHEN _corrupt_record IS NOT NULL THEN 'malformed_line' END, "
        + ", ".join(
            f"CASE WHEN length(trim({name})) > 0 AND {parse(name)} IS NULL THEN '{name}' END"
            for name, parse in [("amount", _double), ("event_ts", _timestamp), ("delivered_at", _timestamp)]
        )
        + ") AS parse_errors",
    )
    # Deduplicate within a day only: the result of a day must not depend on which other days
    # share its run, or a range backfill and day-by-day runs would disagree.
    # Rows without an order_id are never merged with each other: each is kept (and quarantined).
    # One hash aggregate per (day, order): the deliveries of an order (one or two, rarely more)
    # collected and sorted, the newest first, which is cheaper than window functions (two sorts).
    signature = (
        "concat_ws('\\u0001', "
        + ", ".join(f"coalesce(cast({c} AS STRING), '\\u0000')" for c in ORDER_COLUMNS)
        + ") AS _signature"
    )
    fields = [c for c in typed.columns if c not in ("day", "_raw_order_id")]
    deliveries = (
        typed.selectExpr(
            "*",
            signature,
            "coalesce(order_id, concat('\\u0000', monotonically_increasing_id())) AS _key",
            "coalesce(order_id != _raw_order_id, false) AS _id_changed",  # a raw id the identity changed
            f"{batch_sequence_sql('batch_id')} AS _batch_sequence",
        )
        # one shuffle, by day: it groups each order's deliveries AND leaves every day in one
        # task, so a caller's `repartition("day")` costs nothing (Spark drops it)
        .repartition("day")
        .groupBy("day", "_key")
        .agg(F.expr(f"collect_list(struct({', '.join([*fields, *_DELIVERY_KEYS])}))").alias("_d"))
        .selectExpr("day", f"array_sort(_d, {_NEWEST_FIRST}) AS _d")
    )
    errors = "filter(transform(_d, x -> x.parse_errors), e -> e IS NOT NULL AND e != '')"
    copies = "size(filter(_d, x -> x._signature = _d[0]._signature))"  # the kept row included
    # deliveries as new as the kept one on every ordering field but saying something else: which
    # one is the correction is unknown (the deliveries_ordered gate quarantines the day)
    ties = (
        "size(filter(_d, x -> x.delivered_at <=> _d[0].delivered_at AND x._batch_sequence <=> _d[0]._batch_sequence "
        "AND x._signature != _d[0]._signature))"
    )
    return deliveries.selectExpr(
        *[f"_d[0].{c} AS {c}" for c in fields if c != "parse_errors"],
        "day",
        f"array_join(array_sort(array_distinct({errors})), ',') AS parse_errors",
        f"CAST({copies} - 1 AS BIGINT) AS duplicates",
        f"CAST(size(_d) - {copies} AS BIGINT) AS superseded",
        "CAST(size(filter(_d, x -> x._id_changed)) AS BIGINT) AS ids_normalised",
        f"CAST({ties} AS BIGINT) AS ordering_ties",
    )


# An order's identity, one definition applied as the landed files are parsed (ids of users and
# batches too): zero-width characters removed (U+200B..U+200D, U+2060, U+FEFF: invisible, so no
# source means them), whitespace trimmed, Unicode's too (no-break and ideographic spaces, tabs:
# Java's (?U)\s is Unicode White_Space), then Unicode NFC ('e' + combining acute is 'é'); blank
# is no id. Spark SQL has no NFC function; ICU4J's Normalizer, which Spark itself ships for its
# collations, does it in the JVM through `reflect`, so no row travels to a Python worker.
ZERO_WIDTH = r"[\u200B-\u200D\u2060\uFEFF]"
EDGE_SPACE = r"(?U)^\s+|\s+$"


def identity_sql(name: str) -> str:
    """SQL: the column as an identity (see above), null when nothing is left."""
    cleaned = f"regexp_replace(regexp_replace({name}, {_sql_string(ZERO_WIDTH)}, ''), {_sql_string(EDGE_SPACE)}, '')"
    nfc = f"reflect('com.ibm.icu.text.Normalizer', 'compose', {cleaned}, false)"  # compose(text, compat=false): NFC
    return f"nullif(CASE WHEN {name} IS NOT NULL THEN {nfc} END, '')"  # the Normalizer fails on null


# What each delivery carries besides its fields: its batch sequence, its content's signature and
# whether the identity changed its raw order id.
_DELIVERY_KEYS = ("_batch_sequence", "_signature", "_id_changed")


def _sql_string(text: str) -> str:
    """`text` as a Spark SQL string literal (backslashes and quotes escaped, as Spark's parser
    reads them by default: `spark.sql.parser.escapedStringLiterals` false; the session never
    sets it)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _nulls_last(field: str, descending: bool = False) -> str:
    before, after = ("-1", "1") if descending else ("1", "-1")
    return (
        f"WHEN l.{field} IS NULL AND r.{field} IS NOT NULL THEN 1 "
        f"WHEN l.{field} IS NOT NULL AND r.{field} IS NULL THEN -1 "
        f"WHEN l.{field} > r.{field} THEN {before} WHEN l.{field} < r.{field} THEN {after} "
    )


# Newest delivery first: by delivery time, then by batch sequence (numbers as numbers); ties
# broken on the batch id's text and every column, so the kept row never depends on the order
# Spark reads the files in (a tie with other content is counted: `ordering_ties`).
_NEWEST_FIRST = (
    "(l, r) -> CASE "
    + _nulls_last("delivered_at", descending=True)
    + _nulls_last("_batch_sequence", descending=True)
    + _nulls_last("batch_id", descending=True)
    + "".join(_nulls_last(c) for c in [*ORDER_COLUMNS[1:], "parse_errors"])
    + "ELSE 0 END"
)


# A batch id as a sequence that compares numbers as numbers (natural order: 'b9' < 'b10' <
# 'b10a'): each run of ASCII digits becomes \x01, its length without leading zeros in ten digits,
# then those digits; text stays as it is. 'b09' and 'b9' are the same sequence.
def batch_sequence(batch_id: str | None) -> str | None:
    """The natural-order key of a batch id (None for none); `batch_sequence_sql` in Spark SQL."""
    if batch_id is None:
        return None
    return "".join(_number_key(t) if t[0].isdigit() else t for t in re.findall(r"[0-9]+|[^0-9]+", batch_id))


def _number_key(digits: str) -> str:
    significant = digits.lstrip("0")
    return f"\x01{len(significant):010d}{significant}"


def batch_sequence_sql(name: str) -> str:
    """SQL: `batch_sequence` of the column (the same key, so both engines order batches alike)."""
    runs = f"regexp_extract_all({name}, '[0-9]+|[^0-9]+', 0)"
    key = (
        "t -> CASE WHEN t RLIKE '^[0-9]' THEN concat('\\u0001', lpad(CAST(length(regexp_replace(t, '^0+', '')) "
        "AS STRING), 10, '0'), regexp_replace(t, '^0+', '')) ELSE t END"
    )
    return f"CASE WHEN {name} IS NOT NULL THEN array_join(transform({runs}, {key}), '') END"


# A whole ISO 8601 instant: Spark alone reads a cut-off '2024-01-02T1' as 01:00 and a bare date as
# midnight, silently; anything short of date AND time is a parse error here.
ISO_INSTANT = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?$"


def _double(name: str) -> str:
    """SQL: the column as a double, null where it does not parse."""
    return f"try_cast(trim({name}) AS DOUBLE)"


def _timestamp(name: str) -> str:
    """SQL: the column as a timestamp, null unless it is a whole ISO 8601 instant."""
    return f"CASE WHEN trim({name}) RLIKE {_sql_string(ISO_INSTANT)} THEN try_to_timestamp(trim({name})) END"


STAGED_SCHEMA = pa.schema(
    [
        *REGIONAL_SCHEMA,
        pa.field("parse_errors", pa.string()),
        pa.field("duplicates", pa.int64()),
        pa.field("superseded", pa.int64()),
        pa.field("ids_normalised", pa.int64()),
        pa.field("ordering_ties", pa.int64()),
    ]
)


def _cents(dollars: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.cast(pc.round(pc.multiply(dollars, 100)), pa.int64())


def _dollars(cents: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.divide(pc.cast(cents, pa.float64()), 100.0)


def _sum_in_cents(table: pa.Table, keys: list[str], column: str, others: list[tuple[str, str]]) -> pa.Table:
    """Group and sum a money column exactly: a float sum depends on the order rows arrive in
    (which a re-run does not keep), an integer sum of cents does not."""
    summed = table.append_column("_cents", _cents(table[column])).group_by(keys).aggregate([("_cents", "sum"), *others])
    return summed.append_column(column, _dollars(summed["_cents_sum"])).drop_columns(["_cents_sum"])


DAILY_REVENUE_SCHEMA = pa.schema(
    [
        ("day", pa.string()),
        ("region", pa.string()),
        ("orders", pa.int64()),
        ("revenue_usd", pa.float64()),
        ("distinct_users", pa.int64()),
    ]
)


def daily_revenue_table(global_orders: pa.Table) -> pa.Table:
    """Per day and region: orders, revenue in USD, distinct users."""
    summary = _sum_in_cents(
        global_orders, ["day", "region"], "amount_usd", [("order_id", "count"), ("user_id", "count_distinct")]
    )
    summary = summary.rename_columns(
        {"order_id_count": "orders", "amount_usd": "revenue_usd", "user_id_count_distinct": "distinct_users"}
    )
    return (
        summary.select(DAILY_REVENUE_SCHEMA.names)
        .cast(DAILY_REVENUE_SCHEMA)
        .sort_by([("day", "ascending"), ("region", "ascending")])
    )


def monthly_revenue_table(daily_revenue: pa.Table) -> pa.Table:
    """Per month ('YYYY-MM-01') and region: orders, revenue in USD, days with data."""
    month = pc.binary_join_element_wise(pc.utf8_slice_codeunits(daily_revenue["day"], 0, 7), "01", "-")
    summary = _sum_in_cents(
        daily_revenue.append_column("month", month),
        ["month", "region"],
        "revenue_usd",
        [("orders", "sum"), ("day", "count")],
    ).rename_columns({"orders_sum": "orders", "day_count": "days"})
    return summary.select(["month", "region", "orders", "revenue_usd", "days"]).sort_by(
        [("month", "ascending"), ("region", "ascending")]
    )


def revenue_summary_table(daily_revenue: pa.Table, days: int = 30) -> pa.Table:
    """Per region, the trailing `days` days ending at the latest day with data: orders, revenue
    in USD, average revenue per day with data."""
    if daily_revenue.num_rows == 0:
        raise ValueError("daily_revenue is empty: materialize some days first")
    last = dt.date.fromisoformat(pc.max(daily_revenue["day"]).as_py())
    first = (last - dt.timedelta(days=days - 1)).isoformat()
    recent = daily_revenue.filter(pc.greater_equal(daily_revenue["day"], first))
    summary = _sum_in_cents(recent, ["region"], "revenue_usd", [("orders", "sum"), ("day", "count")]).rename_columns(
        {"orders_sum": "orders", "day_count": "days_with_data"}
    )
    n = summary.num_rows
    return (
        summary.append_column(
            "avg_daily_revenue_usd",
            pc.round(pc.divide(summary["revenue_usd"], pc.cast(summary["days_with_data"], pa.float64())), 2),
        )
        .append_column("window_start", pa.array([first] * n))
        .append_column("window_end", pa.array([last.isoformat()] * n))
        .select(
            ["region", "window_start", "window_end", "days_with_data", "orders", "revenue_usd", "avg_daily_revenue_usd"]
        )
        .sort_by("region")
    )
