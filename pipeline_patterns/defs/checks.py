"""The quality gates as Dagster asset checks: the `quality_gates` resource, one check per rule of
lib/rules.py on every region, and the one blocking check, `rows_accounted`. See docs/quality_gates.md."""

import dagster as dg

# dagster #17005 (partitioned asset checks): an AssetCheckResult carries no partition, so a range
# run's per-day verdicts are AssetCheckEvaluations, which need the materialization they target
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as TargetMaterialization,
)
from pydantic import Field

from pipeline_patterns.defs.partitions import daily_partitions
from pipeline_patterns.lib.quarantine import RegionDay
from pipeline_patterns.lib.rules import RULES, GateSettings, RuleOutcome
from pipeline_patterns.lib.simulated_feed import BASE_USD_RATES

ROWS_ACCOUNTED = "rows_accounted"
_DEFAULTS = GateSettings(known_currencies=())


class QualityGates(dg.ConfigurableResource):
    """Parameters of the quality gates (lib/rules.py) and of the watermark for late data."""

    min_orders_per_day: int = Field(
        default=_DEFAULTS.min_orders_per_day, description="A region-day with fewer orders is quarantined."
    )
    max_orders_per_day: int = Field(
        default=_DEFAULTS.max_orders_per_day, description="A region-day with more orders is quarantined."
    )
    freshness_lag_hours: float = Field(
        default=_DEFAULTS.freshness_lag_hours,
        description="Warn when a day's newest event is older than this before the day's end.",
    )
    future_tolerance_minutes: float = Field(
        default=_DEFAULTS.future_tolerance_minutes,
        description="Quarantine events later than the end of their feed day by more than this.",
    )
    max_amount: float = Field(
        default=_DEFAULTS.max_amount, description="Quarantine a region-day with an amount above this (or not finite)."
    )
    max_event_age_days: float = Field(
        default=_DEFAULTS.max_event_age_days,
        description="Quarantine a region-day with an event time more than this many days before the day.",
    )
    max_delivery_delay_days: float = Field(
        default=_DEFAULTS.max_delivery_delay_days,
        description="Quarantine a region-day with a delivery time more than this many days after the day.",
    )
    max_key_length: int = Field(
        default=_DEFAULTS.max_key_length,
        description="Quarantine a region-day with an order or user id longer than this.",
    )

    known_currencies: list[str] = Field(
        default=sorted(BASE_USD_RATES), description="Currencies the FX service has rates for; others are quarantined."
    )
    allowed_lateness_days: int = Field(
        default=3,
        ge=0,
        description=(
            "The watermark: an order delivered up to this many days after its event day is counted in that day, "
            "which is re-run; later, it goes to late_orders/<region>. The simulated feed delivers up to 3 days late."
        ),
    )

    def settings(self, region: str = "") -> GateSettings:
        fields = self.model_dump(exclude={"known_currencies", "allowed_lateness_days"})
        return GateSettings(**fields, known_currencies=tuple(sorted(self.known_currencies)), region=region)


def gate_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(
            rule.name,
            asset=asset_key,
            partitions_def=daily_partitions,
            description=f"[{rule.severity}] {rule.description}"
            + (" A failing region-day is quarantined." if rule.blocking else ""),
        )
        for rule in RULES
    ]
    specs.append(
        dg.AssetCheckSpec(
            ROWS_ACCOUNTED,
            asset=asset_key,
            partitions_def=daily_partitions,
            description=(
                "[ERROR, blocking] rows landed = processed + duplicates (true copies) + superseded (older "
                "versions of a kept order) + quarantined, every day."
            ),
            blocking=True,
        )
    )
    return specs


def days_label(days: list[str]) -> str:
    """How a check result names the days it judged, first in its description: the check's
    execution history shows the description, not the partition, so rows are told apart by it."""
    if len(days) == 1:
        return days[0]
    return f"{days[0]}...{days[-1]} ({len(days)} days; each day also has its own row)"


def gate_results(outcomes_by_day: dict[str, list[RuleOutcome]]) -> list[dg.AssetCheckResult]:
    """One result per rule over the run's days: passed when every day passed; a failure names
    its days and sample rows."""
    label = days_label(list(outcomes_by_day))
    results = []
    for rule in RULES:
        day_outcomes = {
            day: next(o for o in outcomes if o.rule == rule.name) for day, outcomes in outcomes_by_day.items()
        }
        failed = {day: o for day, o in day_outcomes.items() if not o.passed}
        shown = next(iter(failed.values()), None) or next(iter(day_outcomes.values()))
        metadata = {
            "failing_days": ", ".join(failed) or "none",
            "failing_rows": sum(o.failing_rows for o in failed.values()),
            "sample_keys": ", ".join(shown.sample_keys) or "none",
            **{k: v if isinstance(v, int | float) else str(v) for k, v in shown.details.items()},
        }
        results.append(
            dg.AssetCheckResult(
                check_name=rule.name,
                passed=not failed,
                severity=dg.AssetCheckSeverity.ERROR if rule.blocking else dg.AssetCheckSeverity.WARN,
                metadata={"days": label, **metadata},
                description=f"{label}: " + (f"failed on {', '.join(failed)}" if failed else "passed"),
            )
        )
    return results


def accounting_result(region_days: list[RegionDay]) -> dg.AssetCheckResult:
    lost = [d.day for d in region_days if not d.accounted]
    label = days_label([d.day for d in region_days])
    return dg.AssetCheckResult(
        check_name=ROWS_ACCOUNTED,
        passed=not lost,
        description=f"{label}: " + (f"rows lost on {', '.join(lost)}" if lost else "every landed row accounted for"),
        metadata={
            "days": label,
            "days_with_lost_rows": ", ".join(lost) or "none",
            "rows_landed": sum(d.landed for d in region_days),
            "rows_processed": sum(d.clean_rows for d in region_days),
            "duplicates_dropped": sum(d.duplicates for d in region_days),
            "superseded_dropped": sum(d.superseded for d in region_days),
            "rows_quarantined": sum(d.quarantined_rows for d in region_days),
        },
    )


def day_materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, days: list[str]
) -> dict[str, TargetMaterialization]:
    """The latest materialization of each day (newest first in storage), which its verdicts target."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=days), limit=len(days)
    ).records
    targets: dict[str, TargetMaterialization] = {}
    for record in records:
        if record.partition_key and record.partition_key not in targets:
            targets[record.partition_key] = TargetMaterialization(
                storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
            )
    return targets


def day_evaluations(
    asset_key: dg.AssetKey, region_day: RegionDay, target: TargetMaterialization | None = None
) -> list[dg.AssetCheckEvaluation]:
    """Every check's verdict on ONE day of a range run, under its day and targeting the day's
    materialization `target` (an `AssetCheckResult` carries no partition in 1.13)."""
    blocking = {rule.name: rule.blocking for rule in RULES}
    day = region_day.day
    evaluations = [
        dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=outcome.rule,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR if blocking[outcome.rule] else dg.AssetCheckSeverity.WARN,
            description=f"{day}: "
            + ("passed" if outcome.passed else _failed_on(outcome.failing_rows, region_day.branch)),
            metadata={
                "day": day,
                "failing_rows": outcome.failing_rows,
                "sample_keys": ", ".join(outcome.sample_keys) or "none",
            },
            partition=day,
            target_materialization_data=target,
        )
        for outcome in region_day.outcomes
    ]
    evaluations.append(
        dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=ROWS_ACCOUNTED,
            passed=region_day.accounted,
            blocking=True,
            description=f"{day}: "
            + (
                "every landed row accounted for" if region_day.accounted else "rows lost between landing and the tables"
            ),
            metadata={
                "day": day,
                "rows_landed": region_day.landed,
                "rows_processed": region_day.clean_rows,
                "duplicates_dropped": region_day.duplicates,
                "superseded_dropped": region_day.superseded,
                "rows_quarantined": region_day.quarantined_rows,
            },
            partition=region_day.day,
            target_materialization_data=target,
        )
    )
    return evaluations


def _failed_on(failing_rows: int, branch: str) -> str:
    # a day rule (volume, freshness) counts no rows
    rows = f" on {failing_rows} row{'' if failing_rows == 1 else 's'}" if failing_rows else ""
    return f"failed{rows}; the region-day is {branch}"
