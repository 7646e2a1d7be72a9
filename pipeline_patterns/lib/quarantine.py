"""Process or quarantine, per region-day (pattern: quality gate with a quarantine branch).

Each region-day of a run takes exactly one branch: every blocking rule passed, and its rows go to
the clean table; or one failed, and ALL its rows go to the quarantine table with the failed checks
and the reason, while its clean partition stays empty (the clean table never holds data that
failed its gate). `judge` decides for one day, `accounted` proves nothing was lost on the way.

In a run, `judge_days` runs the rules on Spark's executors, one region-day (an Arrow table) at a
time, and only the verdicts come back to the driver; `clean_frame` and `quarantined_frame` then
send each day's rows down its branch, in Spark, without the driver ever holding them.
"""

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline_patterns.lib.orders import REGIONAL_SCHEMA, STAGED_SCHEMA
from pipeline_patterns.lib.rules import GateSettings, RuleOutcome, blocking_failures, evaluate_day

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
    duplicates: int
    superseded: int

    @property
    def failed_checks(self) -> list[str]:
        return [o.rule for o in blocking_failures(self.outcomes)]

    @property
    def branch(self) -> str:
        return "quarantined" if self.failed_checks else "processed"

    @property
    def clean_rows(self) -> int:
        return self.rows if self.branch == "processed" else 0

    @property
    def quarantined_rows(self) -> int:
        return self.rows if self.branch == "quarantined" else 0

    @property
    def reason(self) -> str:
        return _reason(blocking_failures(self.outcomes), self.rows)

    @property
    def accounted(self) -> bool:
        """landed = processed + duplicates + superseded + quarantined: every landed row is kept,
        a true copy of a kept row, an older version of a kept row, or in quarantine."""
        return self.landed == self.rows + self.duplicates + self.superseded

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> "RegionDay":
        fields = json.loads(text)
        return cls(**{**fields, "outcomes": [RuleOutcome(**o) for o in fields["outcomes"]]})


def judge(day: str, staged: pa.Table, *, landed: int, header_drift: str | None, settings: GateSettings) -> RegionDay:
    """Gate one region-day's deduplicated rows (`STAGED_SCHEMA`). `landed` counts the day's
    records in the landed files."""
    duplicates = pc.sum(staged["duplicates"]).as_py() or 0
    superseded = pc.sum(staged["superseded"]).as_py() or 0
    rows = staged.drop_columns(["duplicates", "superseded"])
    gated = rows.append_column("landed_columns", pa.array([header_drift] * rows.num_rows, pa.string()))
    outcomes = evaluate_day(gated, dt.date.fromisoformat(day), settings)
    return RegionDay(day, rows.num_rows, outcomes, landed, duplicates, superseded)


def judge_days(
    staged: DataFrame,
    days: list[str],
    *,
    landed: Mapping[str, int],
    header_drift: Mapping[str, str | None],
    settings: GateSettings,
) -> list[RegionDay]:
    """`judge` every day of `days`, on the executors: each day's rows reach one Python worker as
    one Arrow table; only the verdicts come back. A day without any row is judged here."""

    def judge_group(table: pa.Table) -> pa.Table:
        table = table.select(STAGED_SCHEMA.names).cast(STAGED_SCHEMA)
        day = table["day"][0].as_py()
        verdict = judge(day, table, landed=landed.get(day, 0), header_drift=header_drift.get(day), settings=settings)
        return pa.table({"day": [day], "verdict": [verdict.to_json()]})

    verdicts = staged.groupBy("day").applyInArrow(judge_group, "day string, verdict string").toArrow()
    judged = {
        d: RegionDay.from_json(v)
        for d, v in zip(verdicts["day"].to_pylist(), verdicts["verdict"].to_pylist(), strict=True)
    }
    for day in set(days) - set(judged):
        empty = judge(
            day,
            STAGED_SCHEMA.empty_table(),
            landed=landed.get(day, 0),
            header_drift=header_drift.get(day),
            settings=settings,
        )
        judged[day] = RegionDay.from_json(empty.to_json())  # as the executors' verdicts travel
    return [judged[day] for day in days]


def _branch_days(spark: SparkSession, region_days: list[RegionDay], branch: str) -> DataFrame:
    chosen = [d for d in region_days if d.branch == branch]
    return spark.createDataFrame(
        [(d.day, ",".join(d.failed_checks), d.reason) for d in chosen],
        "day string, failed_checks string, reason string",
    )


def clean_frame(staged: DataFrame, region_days: list[RegionDay]) -> DataFrame:
    """The rows of the processed days, as the clean table holds them."""
    processed = F.broadcast(_branch_days(staged.sparkSession, region_days, "processed").select("day"))
    return staged.join(processed, "day").select(REGIONAL_SCHEMA.names)


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
        if f.failing_rows
        else f"{f.rule}: {f.details}"
        for f in failures
    )
