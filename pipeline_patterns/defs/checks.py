"""The quality gates as Dagster asset checks (pattern: quality gate; process or quarantine).

Each rule of `lib/rules.py` is one check definition reused on every regional asset. The gates are
evaluated inside the regional step on the staged rows, BEFORE the clean table is written: a
region-day failing a blocking gate goes to `quarantined_orders` instead, and the failed check
(blocking) stops `global_orders` in the same run. A check after the write could only report bad
data already published (FACTS.md: blocking checks stop only what comes after the checked asset).
"""

import datetime as dt

import dagster as dg

from pipeline_patterns.lib.rules import RULES, GateSettings, RuleOutcome

ROWS_ACCOUNTED = "rows_accounted"


class QualityGates(dg.ConfigurableResource):
    """Parameters of the quality gates (see lib/rules.py)."""

    min_orders_per_day: int = 1000
    max_orders_per_day: int = 100_000
    freshness_lag_hours: float = 6.0
    future_tolerance_minutes: float = 5.0

    def settings(self) -> GateSettings:
        return GateSettings(**self.model_dump())


def gate_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(rule.name, asset=asset_key, description=f"[{rule.severity}] {rule.description}", blocking=rule.blocking)
        for rule in RULES
    ]
    specs.append(
        dg.AssetCheckSpec(
            ROWS_ACCOUNTED,
            asset=asset_key,
            description="[ERROR] rows landed = rows processed + duplicates dropped + rows quarantined.",
            blocking=True,
        )
    )
    return specs


def gate_results(outcomes_by_day: dict[dt.date, list[RuleOutcome]]) -> list[dg.AssetCheckResult]:
    """One result per rule over the run's days: passed when every day passed."""
    results = []
    for rule in RULES:
        day_outcomes = {day: next(o for o in outcomes if o.rule == rule.name) for day, outcomes in outcomes_by_day.items()}
        failed = {day: o for day, o in day_outcomes.items() if not o.passed}
        shown = next(iter(failed.values()), None) or next(iter(day_outcomes.values()))
        metadata = {
            "failing_days": ", ".join(d.isoformat() for d in failed) or "none",
            "failing_rows": sum(o.failing_rows for o in failed.values()),
            "sample_keys": ", ".join(shown.sample_keys) or "none",
            **{k: v if isinstance(v, int | float) else str(v) for k, v in shown.details.items()},
        }
        results.append(
            dg.AssetCheckResult(
                check_name=rule.name,
                passed=not failed,
                severity=dg.AssetCheckSeverity.ERROR if rule.blocking else dg.AssetCheckSeverity.WARN,
                metadata=metadata,
            )
        )
    return results


def accounting_result(landed: int, processed: int, duplicates: int, quarantined: int) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=ROWS_ACCOUNTED,
        passed=landed == processed + duplicates + quarantined,
        metadata={
            "rows_landed": landed,
            "rows_processed": processed,
            "duplicates_dropped": duplicates,
            "rows_quarantined": quarantined,
        },
    )
