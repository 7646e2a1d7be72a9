"""What runs without a person: the daily schedule and the `aggregates_follow_days` sensor.
See docs/backfills.md."""

import json

import dagster as dg

from pipeline_patterns.defs.keys import DAILY_REVENUE, MONTHLY_REVENUE, REASON_TAG, REVENUE_SUMMARY
from pipeline_patterns.defs.partitions import daily_partitions
from pipeline_patterns.lib import aggregates

MATERIALIZATION = dg.DagsterEventType.ASSET_MATERIALIZATION
PLANNED = dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED

daily_orders_job = dg.define_asset_job(
    "daily_orders",
    selection=dg.AssetSelection.assets(DAILY_REVENUE).upstream(),
    description="The daily graph: landing, regional gates and quarantine, fan-in, daily revenue.",
)
monthly_revenue_job = dg.define_asset_job("monthly_revenue_job", selection=[MONTHLY_REVENUE])
revenue_summary_job = dg.define_asset_job("revenue_summary_job", selection=[REVENUE_SUMMARY])

daily_orders_schedule = dg.build_schedule_from_partitioned_job(
    daily_orders_job,
    hour_of_day=2,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Each day at 02:00 UTC, the day that just closed (its feed is complete by 01:00).",
)


def aggregates_plan(instance: dg.DagsterInstance, requested: dict[str, str]) -> aggregates.Plan:
    """What the aggregates need now (lib/aggregates.py decides), from the event log: a day changed
    when a run materialized it or targeted it (a day held after it had been published changed too)."""
    materialized = instance.get_latest_storage_id_by_partition(DAILY_REVENUE, MATERIALIZATION)
    planned = instance.get_latest_storage_id_by_partition(DAILY_REVENUE, PLANNED)
    published = instance.get_latest_storage_id_by_partition(MONTHLY_REVENUE, MATERIALIZATION)
    month_runs = instance.get_latest_storage_id_by_partition(MONTHLY_REVENUE, PLANNED)
    first_days = sorted({day[:7] + "-01" for day in {*materialized, *planned}} | set(published))
    days = {month: aggregates.month_days(month) for month in first_days}
    keys = [day for month_days in days.values() for day in month_days]
    statuses = (instance.get_status_by_partition(DAILY_REVENUE, keys, daily_partitions) if keys else None) or {}
    months = [
        aggregates.Month(
            month=month,
            days=tuple(
                aggregates.Day(
                    day=day,
                    changed=max(materialized.get(day, 0), planned.get(day, 0)),
                    materialized=statuses.get(day) == dg.AssetPartitionStatus.MATERIALIZED,
                    in_progress=statuses.get(day) == dg.AssetPartitionStatus.IN_PROGRESS,
                )
                for day in month_days
            ),
            published=published.get(month, 0),
            last_run=month_runs.get(month, 0),
        )
        for month, month_days in days.items()
    ]
    summary = instance.fetch_materializations(REVENUE_SUMMARY, limit=1).records
    return aggregates.plan(
        months,
        newest_day=max(materialized.values(), default=0),
        summary=summary[0].storage_id if summary else 0,
        requested=requested,
    )


def run_request(request: aggregates.Request) -> dg.RunRequest:
    if request.month == aggregates.SUMMARY:
        return dg.RunRequest(
            run_key=f"revenue_summary {request.newest}",
            job_name=revenue_summary_job.name,
            tags={REASON_TAG: request.reason},
        )
    return dg.RunRequest(
        run_key=f"monthly_revenue {request.month} {request.newest}",
        job_name=monthly_revenue_job.name,
        partition_key=request.month,
        tags={REASON_TAG: request.reason},
    )


@dg.sensor(
    jobs=[monthly_revenue_job, revenue_summary_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=(
        "Publishes every month whose days are all materialized and changed since, flags a published month that "
        "lost a day, refreshes the summary; never requests the same state of a month's days twice."
    ),
)
def aggregates_follow_days(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    plan = aggregates_plan(context.instance, json.loads(context.cursor) if context.cursor else {})
    for line in [r.reason for r in plan.requests] + plan.waiting:
        context.log.info(line)
    up_to_date = f"up to date: {', '.join(plan.up_to_date)}" if plan.up_to_date else "no month published yet"
    return dg.SensorResult(
        run_requests=[run_request(r) for r in plan.requests],
        cursor=json.dumps(plan.requested, sort_keys=True),
        skip_reason=None if plan.requests else "; ".join(["nothing to request", *plan.waiting, up_to_date]),
    )
