"""The quality gates as Dagster asset checks on every region, partitioned by day: `quality_gates`
(every rule of lib/rules.py that quarantines, in one verdict per day), one check per warning rule,
and the one blocking check, `rows_accounted`; the `quality_gates` resource. See docs/quality_gates.md."""

import dagster as dg

# dagster #17005 (partitioned asset checks): an AssetCheckResult carries no partition, so a range
# run's per-day verdicts are AssetCheckEvaluations, which need the materialization they target
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as TargetMaterialization,
)
from pydantic import Field

from pipeline_patterns.defs.partitions import daily_partitions
from pipeline_patterns.lib.quarantine import RegionDay
from pipeline_patterns.lib.rules import RULES, DayRule, GateSettings, RowRule
from pipeline_patterns.lib.simulated_feed import BASE_USD_RATES

QUALITY_GATES = "quality_gates"
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


QUARANTINING = [rule for rule in RULES if rule.blocking]  # a failure quarantines the region-day
WARNINGS = [rule for rule in RULES if not rule.blocking]


def gate_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    rules = "\n".join(f"- {rule.name}: {rule.description}" for rule in QUARANTINING)
    specs = [
        dg.AssetCheckSpec(
            QUALITY_GATES,
            asset=asset_key,
            partitions_def=daily_partitions,
            description=(
                "Every rule that quarantines, on each region-day, one verdict per day: failed exactly when the "
                "region-day is quarantined. The description names the failed rules; the metadata has every "
                "rule's outcome.\n\n" + rules
            ),
        ),
        *(
            dg.AssetCheckSpec(
                rule.name,
                asset=asset_key,
                partitions_def=daily_partitions,
                description=f"[WARN] {rule.description} A warning: the region-day is still processed.",
            )
            for rule in WARNINGS
        ),
        dg.AssetCheckSpec(
            ROWS_ACCOUNTED,
            asset=asset_key,
            partitions_def=daily_partitions,
            description=(
                "[ERROR, blocking] rows landed = processed + duplicates (true copies) + superseded (older "
                "versions of a kept order) + quarantined, every day."
            ),
            blocking=True,
        ),
    ]
    return specs


def days_label(days: list[str]) -> str:
    """How a check result names the days it judged, first in its description: the check's
    execution history shows the description, not the partition, so rows are told apart by it."""
    if len(days) == 1:
        return days[0]
    return f"{days[0]}...{days[-1]} ({len(days)} days; each day also has its own row)"


def gate_results(region_days: list[RegionDay]) -> list[dg.AssetCheckResult]:
    """The gate's verdicts over the run's days (for one day, that day's own): `quality_gates`,
    then each warning rule's."""
    return [
        dg.AssetCheckResult(check_name=name, **verdict)
        for name, verdict in zip(_check_names(), _verdicts(region_days), strict=True)
    ]


def _check_names() -> list[str]:
    return [QUALITY_GATES, *(rule.name for rule in WARNINGS)]


def _verdicts(region_days: list[RegionDay]) -> list[dict]:
    return [_gate_verdict(region_days, QUARANTINING), *(_gate_verdict(region_days, [rule]) for rule in WARNINGS)]


def _gate_verdict(region_days: list[RegionDay], rules: list) -> dict:
    """Passed, severity, description and metadata of `rules` over some days: each rule's outcome
    in the metadata, the failed rules in the description after the day(s)."""
    names = {rule.name for rule in rules}
    days = [d.day for d in region_days]
    failed = {d.day: [o for o in d.outcomes if not o.passed and o.rule in names] for d in region_days}
    warning = not any(rule.blocking for rule in rules)
    if len(region_days) == 1:
        d = region_days[0]
        told = [f"{o.rule} failed{_rows(o.failing_rows)}" for o in failed[d.day]]
        passed = "every rule passed" if len(rules) > 1 else "passed"
        description = f"{d.day}: " + (", ".join(told) or passed) + f"; the region-day is {d.branch}"
    else:
        told = [f"{day} ({', '.join(o.rule for o in f)})" for day, f in failed.items() if f]
        description = f"{days_label(days)}: " + (f"failed on {', '.join(told)}" if told else "passed every day")
    return {
        "passed": not any(failed.values()),
        "severity": dg.AssetCheckSeverity.WARN if warning else dg.AssetCheckSeverity.ERROR,
        "description": description,
        "metadata": {
            ("day" if len(days) == 1 else "days"): days_label(days),
            **(
                {}
                if warning
                else {
                    "failed_checks": ", ".join(
                        r.name for r in rules if any(o.rule == r.name for f in failed.values() for o in f)
                    )
                    or "none"
                }
            ),
            "failing_days": ", ".join(day for day, f in failed.items() if f) or "none",
            **{rule.name: dg.MetadataValue.json(_rule_entry(rule, region_days)) for rule in rules},
        },
    }


def _rule_entry(rule: RowRule | DayRule, region_days: list[RegionDay]) -> dict:
    """One rule's outcome over the days: passed or not, the failing rows and sample ids, its
    parameters and findings (of the first failing day)."""
    outcomes = {d.day: next(o for o in d.outcomes if o.rule == rule.name) for d in region_days}
    failed = {day: o for day, o in outcomes.items() if not o.passed}
    shown = next(iter(failed.values()), None) or next(iter(outcomes.values()))
    entry: dict = {"passed": not failed, "severity": rule.severity}
    if len(outcomes) > 1:
        entry["failing_days"] = list(failed)
    entry |= {"failing_rows": sum(o.failing_rows for o in failed.values()), "sample_keys": shown.sample_keys}
    return entry | {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in shown.details.items()}


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
    day = region_day.day
    return [
        *(
            dg.AssetCheckEvaluation(
                asset_key=asset_key, check_name=name, partition=day, target_materialization_data=target, **verdict
            )
            for name, verdict in zip(_check_names(), _verdicts([region_day]), strict=True)
        ),
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
            partition=day,
            target_materialization_data=target,
        ),
    ]


def _rows(failing_rows: int) -> str:
    # a day rule (volume, freshness) counts no rows
    return f" on {failing_rows} row{'' if failing_rows == 1 else 's'}" if failing_rows else ""
