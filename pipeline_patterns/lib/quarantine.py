"""Process or quarantine, per region-day (pattern: quality gate with a quarantine branch).

Each region-day of a run takes exactly one branch: every blocking rule passed, and its rows go to
the clean table; or one failed, and ALL its rows go to the quarantine table with the failed checks
and the reason, while its clean partition stays empty (the clean table never holds data that
failed its gate). `route` decides, `accounted` proves nothing was lost on the way.
"""

import dataclasses
import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc

from pipeline_patterns.lib.orders import REGIONAL_SCHEMA
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
    """The branch one region-day took, with its rows and its accounting."""

    day: str
    clean: pa.Table
    quarantined: pa.Table
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
    def reason(self) -> str:
        return _reason(blocking_failures(self.outcomes), self.clean.num_rows + self.quarantined.num_rows)

    @property
    def accounted(self) -> bool:
        """landed = processed + duplicates + superseded + quarantined: every landed row is kept,
        a true copy of a kept row, an older version of a kept row, or in quarantine."""
        return self.landed == self.clean.num_rows + self.duplicates + self.superseded + self.quarantined.num_rows


def route(
    day: str,
    staged: pa.Table,
    *,
    landed: int,
    header_drift: str | None,
    settings: GateSettings,
    run_id: str,
    at: dt.datetime,
) -> RegionDay:
    """Gate one region-day's deduplicated rows (`STAGED_SCHEMA`) and send them down one branch.
    `landed` counts the day's records in the landed files."""
    duplicates = pc.sum(staged["duplicates"]).as_py() or 0
    superseded = pc.sum(staged["superseded"]).as_py() or 0
    rows = staged.drop_columns(["duplicates", "superseded"])
    gated = rows.append_column("landed_columns", pa.array([header_drift] * rows.num_rows, pa.string()))
    outcomes = evaluate_day(gated, dt.date.fromisoformat(day), settings)
    failures = blocking_failures(outcomes)
    if not failures:
        clean, quarantined = rows.drop_columns(["parse_errors"]), QUARANTINE_SCHEMA.empty_table()
    else:
        clean, quarantined = REGIONAL_SCHEMA.empty_table(), _audited(rows, failures, run_id, at)
    return RegionDay(day, clean.cast(REGIONAL_SCHEMA), quarantined, outcomes, landed, duplicates, superseded)


def _audited(rows: pa.Table, failures: list[RuleOutcome], run_id: str, at: dt.datetime) -> pa.Table:
    n = rows.num_rows
    reason = _reason(failures, n)
    audit = {
        "failed_checks": pa.array([",".join(f.rule for f in failures)] * n, pa.string()),
        "reason": pa.array([reason] * n, pa.string()),
        "quarantined_by_run": pa.array([run_id] * n, pa.string()),
        "quarantined_at": pa.array([at] * n, pa.timestamp("us", tz="UTC")),
    }
    for name, values in audit.items():
        rows = rows.append_column(name, values)
    return rows.cast(QUARANTINE_SCHEMA)


def _reason(failures: list[RuleOutcome], rows: int) -> str:
    """Why a region-day was quarantined: per failed rule, how many of its rows failed (the whole
    day is quarantined all the same) with sample ids, or the rule's details for day-level rules."""
    return "; ".join(
        f"{f.rule}: {f.failing_rows} of {rows} rows (e.g. {', '.join(f.sample_keys[:3])}); the whole day quarantined"
        if f.failing_rows
        else f"{f.rule}: {f.details}"
        for f in failures
    )
