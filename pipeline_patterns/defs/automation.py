"""What runs without a person: the daily schedule, the `aggregates_follow_days` sensor and the
`notify_run_failure` sensor. See docs/backfills.md and docs/alerts.md."""

import datetime as dt

import dagster as dg

from pipeline_patterns.defs.partitions import daily_partitions, monthly_partitions
from pipeline_patterns.defs.resilience import Notifier
from pipeline_patterns.lib.day_window import DayWindow

DAILY_REVENUE = dg.AssetKey("daily_revenue")
MONTHLY_REVENUE = dg.AssetKey("monthly_revenue")
REVENUE_SUMMARY = dg.AssetKey("revenue_summary")
MATERIALIZATION = dg.DagsterEventType.ASSET_MATERIALIZATION
PLANNED = dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED

daily_orders_job = dg.define_asset_job(
    "daily_orders",
    selection=dg.AssetSelection.assets(DAILY_REVENUE).upstream(),
    partitions_def=daily_partitions,
    description="The daily graph: landing, regional gates and quarantine, fan-in, daily revenue.",
)
monthly_revenue_job = dg.define_asset_job(
    "monthly_revenue_job", selection=[MONTHLY_REVENUE], partitions_def=monthly_partitions
)
revenue_summary_job = dg.define_asset_job("revenue_summary_job", selection=[REVENUE_SUMMARY])

daily_orders_schedule = dg.build_schedule_from_partitioned_job(
    daily_orders_job,
    hour_of_day=2,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Each day at 02:00 UTC, the day that just closed (its feed is complete by 01:00).",
)


def month_days(month: str) -> list[str]:
    start = dt.date.fromisoformat(month)
    end = (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return [d.isoformat() for d in DayWindow(start, end).days]


def aggregate_requests(instance: dg.DagsterInstance) -> tuple[list[dg.RunRequest], list[str]]:
    """The runs that bring the aggregates up to date, and why months were left alone.

    A day "changed" when a run materialized it or targeted it (a day held after it had been
    published is a change too); a month is up to date when its last run STARTED after every
    change of its days (a day rewritten while the month ran is not missed)."""
    materialized = instance.get_latest_storage_id_by_partition(DAILY_REVENUE, MATERIALIZATION)
    planned = instance.get_latest_storage_id_by_partition(DAILY_REVENUE, PLANNED)
    changed = {day: max(materialized.get(day, 0), planned.get(day, 0)) for day in {*materialized, *planned}}
    month_started = instance.get_latest_storage_id_by_partition(MONTHLY_REVENUE, PLANNED)
    requests, skipped = [], []
    for month in sorted({day[:7] + "-01" for day in materialized}):
        days = month_days(month)
        newest = max(changed.get(day, 0) for day in days)
        if newest <= month_started.get(month, 0):
            continue  # the month's last run saw its newest day
        statuses = instance.get_status_by_partition(DAILY_REVENUE, days, daily_partitions) or {}
        if any(statuses.get(d) == dg.AssetPartitionStatus.IN_PROGRESS for d in days):
            skipped.append(f"{month[:7]}: days being written")
            continue
        lacking = [d for d in days if statuses.get(d) != dg.AssetPartitionStatus.MATERIALIZED]
        if lacking and month not in month_started:
            skipped.append(f"{month[:7]}: {len(lacking)} days not materialized ({', '.join(lacking[:3])}...)")
            continue
        # complete: publish it; published but now lacking a day: its run fails, naming the day,
        # so the month shows FAILED instead of a total that includes a day no longer there
        requests.append(
            dg.RunRequest(
                run_key=f"monthly_revenue {month} {newest}",
                job_name=monthly_revenue_job.name,
                partition_key=month,
                tags={
                    "pipeline_patterns/reason": f"a day of {month[:7]} changed after the month"
                    + (f"; lacking {', '.join(lacking[:3])}" if lacking else "")
                },
            )
        )
    summary = instance.fetch_materializations(REVENUE_SUMMARY, limit=1).records
    newest_day = max(materialized.values(), default=0)
    if newest_day > (summary[0].storage_id if summary else 0):
        requests.append(
            dg.RunRequest(
                run_key=f"revenue_summary {newest_day}",
                job_name=revenue_summary_job.name,
                tags={"pipeline_patterns/reason": "daily_revenue has days newer than the summary"},
            )
        )
    return requests, skipped


@dg.sensor(
    jobs=[monthly_revenue_job, revenue_summary_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Recomputes every complete month with a rewritten day, and the summary, after any run or backfill.",
)
def aggregates_follow_days(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    requests, skipped = aggregate_requests(context.instance)
    if skipped:
        context.log.info("incomplete months not published: " + "; ".join(skipped))
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None
        if requests
        else "nothing to request: every published aggregate includes its newest days"
        + (f"; not published (incomplete): {'; '.join(skipped)}" if skipped else ""),
    )


@dg.run_failure_sensor(
    description="Sends every failed run to the notifier (final failures, held days).",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def notify_run_failure(context: dg.RunFailureSensorContext, notifier: Notifier) -> None:
    notifier.notify(
        "run_failed",
        run_id=context.dagster_run.run_id,
        job=context.dagster_run.job_name,
        error=context.failure_event.message,
    )
