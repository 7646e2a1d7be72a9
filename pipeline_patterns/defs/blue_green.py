"""green_release and the promote_green / rollback_green jobs: blue-green publication of global_orders
and daily_revenue (the mechanism is lib/blue_green.py). See docs/blue_green.md."""

import datetime as dt

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster_pyspark import PySparkResource
from pydantic import Field

from pipeline_patterns.defs.alerts import Notifier
from pipeline_patterns.defs.assets.global_merge import (
    DAILY_REVENUE,
    GLOBAL_NOT_NULL,
    GLOBAL_ORDERS,
    REVENUE_NOT_NULL,
    fan_in,
)
from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.keys import GREEN_RELEASE, late_key, quarantine_key, regional_key
from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, day_window, single_run
from pipeline_patterns.defs.sources import FxRates
from pipeline_patterns.lib import blue_green, object_store
from pipeline_patterns.lib.delta_writes import RefusedCommit, check_staged
from pipeline_patterns.lib.fan_in import GLOBAL_SCHEMA, daily_revenue_frame
from pipeline_patterns.lib.orders import DAILY_REVENUE_SCHEMA
from pipeline_patterns.lib.spark_tables import read_files, stage_window

PUBLISHED = {"global_orders": GLOBAL_SCHEMA, "daily_revenue": DAILY_REVENUE_SCHEMA}
NOT_NULL = {"global_orders": GLOBAL_NOT_NULL, "daily_revenue": REVENUE_NOT_NULL}
CHECKS = ("green_files_valid", "green_revenue_reconciles", "green_matches_blue")


class Publication(dg.Config):
    """How different from blue a green may be and still be published (the launchpad's run config)."""

    tolerance: float = Field(
        default=0.005,
        description=(
            "Largest relative difference per day between green and blue, in orders and in revenue, that the "
            "audit accepts (0.005 = 0.5 %). Raise it for a deliberate logic change that moves the figures."
        ),
    )


@dg.asset(
    key=GREEN_RELEASE,
    deps=[k for r in REGIONS for k in (regional_key(r), quarantine_key(r), late_key(r))],
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    group_name="publish",
    kinds={"pyspark", "delta"},
    check_specs=[dg.AssetCheckSpec(name, asset=GREEN_RELEASE) for name in CHECKS],
    retry_policy=dg.RetryPolicy(max_retries=1, delay=5),  # it calls the FX service, as global_orders does
    description=(
        "A new version (green) of global_orders and daily_revenue for the window, staged beside the live "
        "tables (blue) and audited; promote it with the promote_green job."
    ),
)
def green_release(
    context: dg.AssetExecutionContext,
    config: Publication,
    spark: PySparkResource,
    lake: dg.ResourceParam[Lake],
    fx_rates: FxRates,
    quality_gates: QualityGates,
    notifier: Notifier,
) -> dg.MaterializeResult:
    if not object_store.is_local(lake.uri):
        raise dg.Failure(
            description=(
                f"green_release: blue-green publication needs the lake on a disk; {lake.uri} is on object "
                "storage, which it does not support yet (its release record and commits take no storage options)"
            ),
            allow_retries=False,
        )
    window, session = day_window(context), spark.spark_session
    merged = fan_in(context, session, lake, window, fx_rates, notifier, quality_gates.allowed_lateness_days)
    release = blue_green.Release(
        release_id=blue_green.new_release_id(),
        start=window.start.isoformat(),
        end=window.end.isoformat(),
        built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        built_by=context.run.run_id,
        tables=[],
    )
    audit: dict[str, dict] = {}
    try:
        orders_uri = lake.table_uri(GLOBAL_ORDERS)
        prefix = f"{blue_green.GREEN_PREFIX}{release.release_id}-"  # staged-green-<release id>-<uuid>
        try:
            staging = stage_window(merged.orders, orders_uri, GLOBAL_SCHEMA, prefix=prefix)
        finally:
            merged.release()
        orders = blue_green.staged_table(lake.uri, "global_orders", staging, window, merged.rows_per_day)
        release.tables.append(orders)
        files = blue_green.green_files(lake.uri, orders, window, GLOBAL_SCHEMA, not_null=GLOBAL_NOT_NULL)
        revenue_uri = lake.table_uri(DAILY_REVENUE)
        staging = stage_window(
            daily_revenue_frame(read_files(session, files, GLOBAL_SCHEMA)),
            revenue_uri,
            DAILY_REVENUE_SCHEMA,
            prefix=prefix,
        )
        adds, rows = check_staged(revenue_uri, staging, window, DAILY_REVENUE_SCHEMA, not_null=REVENUE_NOT_NULL)
        revenue = blue_green.staged_table(lake.uri, "daily_revenue", staging, window, rows)
        release.tables.append(revenue)
        audit["green_files_valid"] = {"passed": True, "detail": "schema, days, types, required fields, rows per day"}
    except RefusedCommit as error:
        audit["green_files_valid"] = {"passed": False, "detail": str(error)}
    if audit["green_files_valid"]["passed"]:
        green = revenue_per_day(revenue_uri, [a.path for a in adds])
        unreconciled = [
            f"{d}: {green.get(d, (0, 0.0))[0]} orders in revenue, {n} global orders"
            for d, n in merged.rows_per_day.items()
            if green.get(d, (0, 0.0))[0] != n
        ]
        audit["green_revenue_reconciles"] = {
            "passed": not unreconciled,
            "detail": "; ".join(unreconciled[:10]) or f"{len(green)} days: revenue orders = global orders",
        }
        blue_orders = lake.per_day(DAILY_REVENUE, window, "SUM(orders)", version=revenue.blue_version)
        blue_revenue = lake.per_day(DAILY_REVENUE, window, "SUM(revenue_usd)", version=revenue.blue_version)
        blue = {d: (int(blue_orders[d]), float(blue_revenue[d])) for d in blue_orders}
        passed, detail = blue_green.compare_to_blue(green, blue, config.tolerance)
        audit["green_matches_blue"] = {"passed": passed, "detail": detail}
    for name in CHECKS:
        audit.setdefault(name, {"passed": False, "detail": "not run: the staged files were refused"})
    release.audit = audit
    release.state = blue_green.AUDITED if release.audit_passed else blue_green.REFUSED
    blue_green.save(lake.uri, release)
    if not release.audit_passed:
        context.log.warning(f"green {release.release_id} failed its audit: it will not be published")
    if len(window.days) > 1:
        # Dagster 1.13 plans each check once per partition of a range, but a check result carries
        # no partition: each day gets the window's verdict too (as the regional gates do)
        for day in window.days:
            for name in CHECKS:
                context.log_event(
                    dg.AssetCheckEvaluation(
                        asset_key=GREEN_RELEASE,
                        check_name=name,
                        passed=audit[name]["passed"],
                        severity=dg.AssetCheckSeverity.ERROR,
                        metadata={"detail": audit[name]["detail"], "release_id": release.release_id},
                        partition=day.isoformat(),
                    )
                )
    return dg.MaterializeResult(
        metadata={
            "release_id": release.release_id,
            "state": release.state,
            "days_ready": len(merged.ready),
            "days_held": ", ".join(merged.held) or "none",
            **{f"{t.name}/rows": sum(t.rows_per_day.values()) for t in release.tables},
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=name,
                passed=audit[name]["passed"],
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"detail": audit[name]["detail"]},
            )
            for name in CHECKS
        ],
    )


def revenue_per_day(uri: str, paths: list[str]) -> dict[str, tuple[int, float]]:
    """Day -> (orders, revenue in USD) of staged daily_revenue files (a few rows a day)."""
    totals: dict[str, tuple[int, float]] = {}
    for path in paths:
        day = path.split("/")[-2].split("=", 1)[1]
        table = pq.read_table(f"{uri}/{path}", columns=["orders", "revenue_usd"])
        orders, revenue = totals.get(day, (0, 0.0))
        totals[day] = (
            orders + int(pc.sum(table["orders"]).as_py() or 0),
            revenue + float(pc.sum(table["revenue_usd"]).as_py() or 0.0),
        )
    return totals


def switched_days(lake: Lake, release: blue_green.Release, note: str) -> list[dg.AssetMaterialization]:
    """Materializations of the published tables' days the switch changed, as they are now."""
    events = []
    for green in release.tables:
        key = dg.AssetKey(green.name)
        rows = lake.per_day(key, release.window)
        version = lake.version(key)
        for day, count in sorted(rows.items()):
            events.append(
                dg.AssetMaterialization(
                    asset_key=key,
                    partition=day,
                    metadata={
                        "dagster/row_count": count,
                        "delta_version": version,
                        "publication": note,
                        "release_id": release.release_id,
                    },
                )
            )
    return events


def current_release(lake: Lake) -> blue_green.Release:
    release = blue_green.load(lake.uri)
    if release is None:
        raise dg.Failure(description="no green release: materialize green_release for the window first")
    return release


@dg.op(out={}, pool="fan_in", description="Publish the audited green release: one commit per table.")
def promote_green_release(context: dg.OpExecutionContext, lake: dg.ResourceParam[Lake], notifier: Notifier):
    release = current_release(lake)
    try:
        release = blue_green.promote(lake.uri, release, PUBLISHED, NOT_NULL)
    except blue_green.PublishRefused as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    notifier.notify("green_promoted", release_id=release.release_id, days=release.days)
    yield from switched_days(lake, release, f"green {release.release_id} promoted")


@dg.op(out={}, pool="fan_in", description="Switch the published tables back to blue: one restore commit per table.")
def rollback_green_release(context: dg.OpExecutionContext, lake: dg.ResourceParam[Lake], notifier: Notifier):
    release = current_release(lake)
    added = {t.name: set(lake.per_day(dg.AssetKey(t.name), release.window)) for t in release.tables}
    try:
        release = blue_green.rollback(lake.uri, release)
    except blue_green.PublishRefused as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    gone = sorted(
        {d for name, days in added.items() for d in days - set(lake.per_day(dg.AssetKey(name), release.window))}
    )
    if gone:  # days only green had: no OSS API marks a partition un-materialized, so say it
        context.log.warning(
            f"rolled back: {', '.join(gone)} are no longer in the published tables; re-materialize them"
        )
    notifier.notify("green_rolled_back", release_id=release.release_id, days_removed=gone)
    yield from switched_days(lake, release, f"rolled back from green {release.release_id} to blue")


@dg.job(description="Publish the audited green release of global_orders and daily_revenue (blue-green).")
def promote_green():
    promote_green_release()


@dg.job(description="Switch global_orders and daily_revenue back to blue (undo the last promotion).")
def rollback_green():
    rollback_green_release()
