"""regional_orders/<region>: a region's landed files parsed, typed and deduplicated in Spark,
passed through the quality gates, and stored in Delta (patterns: fan-out; quality gate with a
process-or-quarantine branch; idempotent window writes).

Each region-day takes one branch: it passes every blocking gate and is written to the clean
table, or it goes whole to `quarantined_orders` with the failed checks and the reason, and its
clean partition is left empty (the clean table never holds data that failed its gate). Re-running
the region-day after a fix moves it back: each run replaces its region's days in both tables.

Each region is its own asset and step, so one region failing never stops the others. The steps
share the run's one Spark session (in-process executor); Spark spreads each region's job over
every core, which is where the parallelism lives (FACTS.md: a JVM per step process costs more
than it gains on a small machine).
"""

import datetime as dt

import dagster as dg
import pyarrow as pa
from dagster_pyspark import PySparkResource

from pipeline_patterns.defs.checks import QualityGates, accounting_result, gate_results, gate_specs
from pipeline_patterns.defs.lake import LandingZone, QuarantineTable
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, day_window, region_key, single_run
from pipeline_patterns.lib import landing as landing_files
from pipeline_patterns.lib.orders import REGIONAL_SCHEMA, regional_orders_table, split_by_day
from pipeline_patterns.lib.rules import RuleOutcome, blocking_failures, evaluate_day
from pipeline_patterns.lib.simulated_feed import RECORD_FIELDS


def header_drift_by_day(files: list[str]) -> dict[str, str]:
    """Landed files whose header is not the expected one, by day: schema drift at the source."""
    drift = {}
    for file in files:
        columns = landing_files.header(file)
        if columns and columns != list(RECORD_FIELDS):
            drift[file.split("/")[-3]] = f"{file.split('/')[-1]}: {', '.join(columns)}"
    return drift


def quarantine_rows(rows: pa.Table, failures: list[RuleOutcome], run_id: str) -> pa.Table:
    """A region-day's rows as quarantined: with the failed checks, the reason, run and time."""
    n = rows.num_rows
    reason = "; ".join(f"{f.rule}: {f.failing_rows or f.details} (e.g. {f.sample_keys[:3]})" for f in failures)
    audit = {
        "failed_checks": pa.array([",".join(f.rule for f in failures)] * n, pa.string()),
        "reason": pa.array([reason] * n, pa.string()),
        "quarantined_by_run": pa.array([run_id] * n, pa.string()),
        "quarantined_at": pa.array([dt.datetime.now(dt.UTC)] * n, pa.timestamp("us", tz="UTC")),
    }
    for name, values in audit.items():
        rows = rows.append_column(name, values)
    return rows


QUARANTINE_SCHEMA = REGIONAL_SCHEMA.append(pa.field("parse_errors", pa.string())).append(
    pa.field("failed_checks", pa.string())
).append(pa.field("reason", pa.string())).append(pa.field("quarantined_by_run", pa.string())).append(
    pa.field("quarantined_at", pa.timestamp("us", tz="UTC"))
)


def regional_orders_asset(region: str) -> dg.AssetsDefinition:
    key = dg.AssetKey(["regional_orders", region_key(region)])

    @dg.asset(
        key=key,
        deps=[dg.AssetKey(["raw_orders", region_key(region)])],
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        group_name="regional",
        io_manager_key="lake_io_manager",
        kinds={"pyspark", "delta"},
        check_specs=gate_specs(key),
        description=(
            f"{region} orders: typed, one row per order and day (the latest delivery kept), "
            "gated by quality checks, in a Delta table partitioned by day."
        ),
    )
    def regional_orders(
        context: dg.AssetExecutionContext,
        spark: PySparkResource,
        landing: LandingZone,
        quarantine: QuarantineTable,
        quality_gates: QualityGates,
    ):
        window = day_window(context)
        files = landing.files(region, window.days)
        orders, duplicates = regional_orders_table(spark.spark_session, files)
        drift = header_drift_by_day(files)
        settings = quality_gates.settings()
        clean, quarantined, outcomes_by_day, branches = [], [], {}, {}
        by_day = split_by_day(orders)
        for day in window.days:
            rows = by_day.get(day.isoformat(), orders.slice(0, 0))
            staged = rows.append_column("landed_columns", pa.array([drift.get(day.isoformat())] * rows.num_rows, pa.string()))
            outcomes = outcomes_by_day[day] = evaluate_day(staged, day, settings)
            failures = blocking_failures(outcomes)
            if failures:
                quarantined.append(quarantine_rows(rows, failures, context.run.run_id))
                branches[day.isoformat()] = "quarantined: " + ", ".join(f.rule for f in failures)
                context.log.warning(f"{key.to_user_string()} {day}: quarantined {rows.num_rows} rows ({branches[day.isoformat()]})")
            else:
                clean.append(rows.drop_columns(["parse_errors"]))
                branches[day.isoformat()] = "processed"
        quarantine_table = pa.concat_tables(quarantined) if quarantined else QUARANTINE_SCHEMA.empty_table()
        quarantine.replace(region, window, quarantine_table.cast(QUARANTINE_SCHEMA), context.run.run_id)
        clean_table = pa.concat_tables(clean) if clean else REGIONAL_SCHEMA.empty_table()
        quarantined_days = [d for d, b in branches.items() if b != "processed"]
        yield dg.Output(
            clean_table,
            metadata={
                "branch": "processed" if not quarantined_days else "quarantined" if not clean else "mixed",
                "quarantined_days": ", ".join(quarantined_days) or "none",
                "branch_by_day": dg.MetadataValue.json(branches),
                "duplicates_dropped": duplicates,
                "rows_quarantined": quarantine_table.num_rows,
                "landed_files": len(files),
            },
        )
        yield from gate_results(outcomes_by_day)
        yield accounting_result(
            landed=landing_files.record_count(files),
            processed=clean_table.num_rows,
            duplicates=duplicates,
            quarantined=quarantine_table.num_rows,
        )

    return regional_orders


regional_orders_assets = [regional_orders_asset(region) for region in REGIONS]
