"""Process or quarantine, per region-day: the verdicts (`judge`; `judge_days` on Spark's executors),
each branch's rows, and the accounting. See docs/quality_gates.md."""

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.errors import PythonException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipeline_patterns.lib.landing import LandedDay, changed_during_read
from pipeline_patterns.lib.late_data import (
    LATE_SCHEMA,
    late_day_counts,
    lateness_sql,
    spark_event_day,
    spark_lateness,
    too_late_reason,
)
from pipeline_patterns.lib.orders import REGIONAL_SCHEMA, STAGED_SCHEMA
from pipeline_patterns.lib.rules import REPEATS, DayJudge, GateSettings, RuleOutcome, blocking_failures

QUARANTINE_SCHEMA = pa.schema(
    [
        *REGIONAL_SCHEMA,
        pa.field("parse_errors", pa.string()),
        pa.field("failed_checks", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("quarantined_by_run", pa.string()),
        pa.field("quarantined_at", pa.timestamp("us", tz="UTC")),
    ]
)
# Columns that record when and by which run a row was quarantined, not what it says.
AUDIT_COLUMNS = ("quarantined_by_run", "quarantined_at")


@dataclasses.dataclass(frozen=True)
class RegionDay:
    """The branch one region-day took, and its accounting."""

    day: str
    rows: int
    """Rows after deduplication: all go to the clean table, or all to quarantine."""
    outcomes: list[RuleOutcome]
    landed: int
    """Records in the day's read files; a refused file's are not counted (it was not read)."""
    duplicates: int
    superseded: int
    refused: list[str] = dataclasses.field(default_factory=list)
    """Landed files not read, with why (the day is quarantined by files_readable)."""
    too_late: int = 0
    """Rows (counted in `rows`) delivered more than the allowed lateness after their event day:
    on a processed day they go to the late table, not the clean one."""
    late_days: dict[str, int] = dataclasses.field(default_factory=dict)
    """Earlier event day -> rows of this delivery within the allowed lateness: the global days
    this delivery touches besides its own (whichever branch the day takes)."""
    ids_normalised: int = 0
    """Landed rows whose raw order id the order identity changed (trimmed, zero-width characters
    removed, NFC): a variant of an id is the same order, so its correction replaces it."""
    before_first_day: int = 0
    """Rows within the allowed lateness whose event day precedes the first partition: in the
    clean table, but in no global day (the fan-in counts partitions only)."""

    @property
    def failed_checks(self) -> list[str]:
        return [o.rule for o in blocking_failures(self.outcomes)]

    @property
    def branch(self) -> str:
        return "quarantined" if self.failed_checks else "processed"

    @property
    def clean_rows(self) -> int:
        return self.rows - self.too_late if self.branch == "processed" else 0

    @property
    def too_late_rows(self) -> int:
        """Rows written to the late table (a quarantined day keeps all its rows in quarantine)."""
        return self.too_late if self.branch == "processed" else 0

    @property
    def quarantined_rows(self) -> int:
        return self.rows if self.branch == "quarantined" else 0

    @property
    def reason(self) -> str:
        return _reason(blocking_failures(self.outcomes), self.rows)

    @property
    def accounted(self) -> bool:
        """landed = processed + duplicates + superseded + quarantined + too late: every landed row
        is kept, a true copy of a kept row, an older version of a kept row, in quarantine (a
        refused file's day is quarantined as a whole; the file stays in the landing zone, named)
        or in the late table."""
        return self.landed == self.rows + self.duplicates + self.superseded

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> "RegionDay":
        fields = json.loads(text)
        return cls(**{**fields, "outcomes": [RuleOutcome(**o) for o in fields["outcomes"]]})


def judge(
    day: str,
    batches: Iterable[pa.Table],
    *,
    landed: LandedDay,
    settings: GateSettings,
    allowed_lateness: int = 3,
    first_day: str = "",
) -> RegionDay:
    """Gate one region-day's deduplicated rows (`STAGED_SCHEMA`), fed in batches. `landed` is
    what the landing zone holds for the day (its records, drifted and refused files); its rows'
    lateness is counted against `allowed_lateness` (lib/late_data.py), and those whose event day
    precedes `first_day` (the first partition, 'YYYY-MM-DD') counted apart."""
    gate = DayJudge(dt.date.fromisoformat(day), settings, landed)
    duplicates = superseded = too_late = normalised = 0
    late_days: dict[str, int] = {}
    for batch in batches:
        duplicates += _total(batch, "duplicates")
        superseded += _total(batch, "superseded")
        normalised += _total(batch, "ids_normalised")
        late, earlier = late_day_counts(batch, day, allowed_lateness)
        too_late += late
        for event_day, rows in earlier.items():
            late_days[event_day] = late_days.get(event_day, 0) + rows
        gate.add(batch.drop_columns([c for c in STAGE_COUNTS if c in batch.column_names]))
    return RegionDay(
        day,
        gate.rows,
        gate.outcomes(),
        landed.records,
        duplicates,
        superseded,
        landed.refused,
        too_late,
        dict(sorted(late_days.items())),
        normalised,
        sum(rows for event_day, rows in late_days.items() if event_day < first_day),
    )


# What the deduplication counted per kept row (`STAGED_SCHEMA`), summed per day; not judged.
STAGE_COUNTS = ("duplicates", "superseded", "ids_normalised")


def _total(batch: pa.Table, column: str) -> int:
    """The day's total of a stage count (0 when a hand-made batch leaves it out)."""
    return int(pc.sum(batch[column]).as_py() or 0) if column in batch.column_names else 0


def judge_days(
    staged: DataFrame,
    landed: Sequence[LandedDay],
    *,
    settings: GateSettings,
    allowed_lateness: int,
    first_day: str = "",
) -> list[RegionDay]:
    """`judge` every day of `landed`, on the executors: each day's rows reach one Python worker
    as a stream of Arrow batches (memory: one batch, whatever the day's size); only the verdicts
    come back. Each row carries its order id's count over the whole day (`REPEATS`, a window over
    the day's partition: no shuffle). A day without any row is judged here."""
    by_day = {d.day: d for d in landed}
    judged_schema = pa.schema([*STAGED_SCHEMA, pa.field(REPEATS, pa.int64())])

    def judge_group(key: tuple, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        day = key[0].as_py()
        tables = (pa.Table.from_batches([b]).select(judged_schema.names).cast(judged_schema) for b in batches)
        verdict = judge(
            day,
            tables,
            landed=by_day[day],
            settings=settings,
            allowed_lateness=allowed_lateness,
            first_day=first_day,
        )
        yield pa.RecordBatch.from_pydict({"day": [day], "verdict": [verdict.to_json()]})

    counted = staged.withColumn(REPEATS, F.count(F.lit(1)).over(Window.partitionBy("day", "order_id")))
    try:  # the job reads the landed files
        verdicts = counted.groupBy("day").applyInArrow(judge_group, "day string, verdict string").toArrow()
    except PythonException as error:  # a landed file changed after the inspection: its message, not a trace
        changed = changed_during_read(error)
        if changed is None:
            raise
        raise changed from None
    judged = {
        d: RegionDay.from_json(v)
        for d, v in zip(verdicts["day"].to_pylist(), verdicts["verdict"].to_pylist(), strict=True)
    }
    for day in set(by_day) - set(judged):
        empty = judge(day, [], landed=by_day[day], settings=settings, allowed_lateness=allowed_lateness)
        judged[day] = RegionDay.from_json(empty.to_json())  # as the executors' verdicts travel
    return [judged[d.day] for d in landed]


def before_first_day_note(region_days: list[RegionDay], first_day: str) -> str | None:
    """What a run says of the orders it kept whose event day precedes the first partition (within
    the allowed lateness): no global day counts them. None when there are none."""
    days = [f"{d.day}: {d.before_first_day}" for d in region_days if d.before_first_day]
    if not days:
        return None
    total = sum(d.before_first_day for d in region_days)
    orders = "1 order has" if total == 1 else f"{total} orders have"
    return (
        f"{orders} an event day before the first partition {first_day} (per feed day: {', '.join(days)}): "
        "they are in the clean table but counted in no global day. To count them, start the daily partitions "
        "earlier (defs/partitions.py) and backfill from there; to drop them, correct the source."
    )


def _branch_days(spark: SparkSession, region_days: list[RegionDay], branch: str) -> DataFrame:
    chosen = [d for d in region_days if d.branch == branch]
    return spark.createDataFrame(
        [(d.day, ",".join(d.failed_checks), d.reason) for d in chosen],
        "day string, failed_checks string, reason string",
    )


def _processed(region_days: list[RegionDay]) -> str:
    """SQL: the rows of the processed days (ISO dates: safe as literals)."""
    days = [d.day for d in region_days if d.branch == "processed"]
    return f"day IN ({', '.join(repr(d) for d in days)})" if days else "false"


def clean_frame(staged: DataFrame, region_days: list[RegionDay], allowed_lateness: int) -> DataFrame:
    """The rows of the processed days within the allowed lateness, as the clean table holds them."""
    accepted = f"coalesce({lateness_sql()} <= {int(allowed_lateness)}, true)"
    return staged.where(f"{_processed(region_days)} AND {accepted}").selectExpr(*REGIONAL_SCHEMA.names)


def late_frame(staged: DataFrame, region_days: list[RegionDay], allowed_lateness: int) -> DataFrame:
    """The rows of the processed days delivered too late for their event day, with why."""
    return (
        staged.where(_processed(region_days))
        .withColumns(
            {
                "lateness_days": spark_lateness().cast("long"),
                "event_day": spark_event_day(),
                "reason": F.lit(too_late_reason(allowed_lateness)),
            }
        )
        .where(f"lateness_days > {int(allowed_lateness)}")
        .selectExpr(*LATE_SCHEMA.names)
    )


def quarantined_frame(staged: DataFrame, region_days: list[RegionDay], run_id: str, at: dt.datetime) -> DataFrame:
    """Every row of the quarantined days with the failed checks, the reason, the run and the time."""
    quarantined = F.broadcast(_branch_days(staged.sparkSession, region_days, "quarantined"))
    return (
        staged.join(quarantined, "day")
        .withColumn("quarantined_by_run", F.lit(run_id))
        .withColumn("quarantined_at", F.lit(at))
        .select(QUARANTINE_SCHEMA.names)
    )


def _reason(failures: list[RuleOutcome], rows: int) -> str:
    """Why a region-day was quarantined: per failed rule, how many of its rows failed (the whole
    day is quarantined all the same) with sample ids, or the rule's details for day-level rules."""
    return "; ".join(
        f"{f.rule}: {f.failing_rows} of {rows} rows (e.g. {', '.join(f.sample_keys[:3])}); the whole day quarantined"
        + (f" ({f.details['remedy']})" if "remedy" in f.details else "")
        if f.failing_rows
        else f"{f.rule}: {f.details}"
        for f in failures
    )
