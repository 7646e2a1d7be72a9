"""The `heal_failed_days` sensor and the `healing_policy` resource: failed days re-run without a person,
capped (the decisions are lib/healing.py). See docs/self_healing.md."""

import datetime as dt
import json
import time

import dagster as dg
from dagster._core.execution.backfill import (  # not exported at the top level in 1.13
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionsFilter,
    BulkActionStatus,
)
from pydantic import Field

from pipeline_patterns.defs import automation  # the module, not its job: the defs folder must see the job once
from pipeline_patterns.defs.alerts import Notifier
from pipeline_patterns.defs.keys import ATTEMPT_TAG, DAILY_REVENUE, HEALS_DAY_TAG, REASON_TAG, quarantine_key
from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions
from pipeline_patterns.defs.resilience import Dependency
from pipeline_patterns.defs.sources import FxRates, OrdersSource
from pipeline_patterns.lib import healing
from pipeline_patterns.lib.day_window import DayWindow

IN_PROGRESS = [s for s in BulkActionStatus if s not in BULK_ACTION_TERMINAL_STATUSES]


class HealingPolicy(dg.ConfigurableResource):
    """How far self-healing goes before it leaves a failed day for a person."""

    max_attempts: int = Field(
        default=3, description="Automatic runs of a failed day (since it last succeeded) before healing gives up."
    )
    lookback_hours: float = Field(
        default=48.0, description="Only days whose failed run ended within this many hours are healed."
    )


def failed_days(instance: dg.DagsterInstance, lake: Lake, orders_source: OrdersSource) -> list[healing.FailedDay]:
    """What healing needs to know of every day whose daily_revenue partition is FAILED."""
    keys = daily_partitions.get_partition_keys()
    statuses = instance.get_status_by_partition(DAILY_REVENUE, keys, daily_partitions) or {}
    days = sorted(d for d, s in statuses.items() if s == dg.AssetPartitionStatus.FAILED)
    if not days:
        return []
    span = DayWindow(dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1]) + dt.timedelta(days=1))
    quarantined = {r: lake.per_day(quarantine_key(r), span) for r in REGIONS}
    found = []
    for day in days:
        planned = instance.get_latest_planned_materialization_info(DAILY_REVENUE, partition=day)
        record = instance.get_run_record_by_id(planned.run_id) if planned else None
        if record is None:
            continue
        last_success = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=DAILY_REVENUE, asset_partitions=[day]), limit=1
        ).records
        since = dt.datetime.fromtimestamp(last_success[0].timestamp, dt.UTC) if last_success else None
        held = tuple(r for r in REGIONS if quarantined[r].get(day))
        found.append(
            healing.FailedDay(
                day=day,
                run_id=record.dagster_run.run_id,
                failed_at=record.end_time or record.update_timestamp.timestamp(),
                attempts=instance.get_runs_count(dg.RunsFilter(tags={HEALS_DAY_TAG: day}, created_after=since)),
                quarantined=held,
                corrected=tuple(r for r in held if orders_source.has_correction(r, dt.date.fromisoformat(day))),
                retried_by_dagster=record.dagster_run.tags.get("dagster/will_retry") == "true",
            )
        )
    return found


def backfill_days(instance: dg.DagsterInstance, repository: dg.RepositoryDefinition) -> dict[str, set[str]]:
    """Id of each backfill in progress -> the days it targets of what a healing run writes (the
    daily_orders job's assets): a backfill of other assets, such as a green_release build, is not in the way."""
    healed = automation.daily_orders_job.selection.resolve(repository.asset_graph)
    found = {}
    for backfill in instance.get_backfills(filters=BulkActionsFilter(statuses=IN_PROGRESS)):
        if backfill.is_asset_backfill:
            target = backfill.get_asset_backfill_data(repository.asset_graph).target_subset
            days = {p.partition_key for p in target.iterate_asset_partitions() if p.asset_key in healed}
        else:  # a job's backfill: its partitions, of the assets it selects (all of its job's if none)
            name = backfill.job_name or ""
            job_keys = repository.get_job(name).asset_layer.selected_asset_keys if repository.has_job(name) else set()
            days = set(backfill.partition_names or []) if healed & set(backfill.asset_selection or job_keys) else set()
        found[backfill.backfill_id] = {day for day in days if day}
    return found


def healing_decisions(
    instance: dg.DagsterInstance,
    repository: dg.RepositoryDefinition,
    policy: HealingPolicy,
    lake: Lake,
    orders_source: OrdersSource,
    dependencies: list[Dependency],
) -> list[healing.Decision]:
    """What healing decides now for every failed day."""
    statuses = [d.circuit().status() for d in dependencies]
    return healing.decide(
        failed_days(instance, lake, orders_source),
        now=time.time(),
        lookback_hours=policy.lookback_hours,
        max_attempts=policy.max_attempts,
        breakers_open={s.name: s.retry_after for s in statuses if s.retry_after > 0},
        backfills_running=backfill_days(instance, repository),
    )


@dg.sensor(
    jobs=[automation.daily_orders_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description=(
        "Re-runs failed days once a re-run can succeed (dependency back, correction delivered, no backfill "
        "running), at most `healing_policy.max_attempts` times each; then reports the day and leaves it for a person."
    ),
)
def heal_failed_days(
    context: dg.SensorEvaluationContext,
    healing_policy: HealingPolicy,
    lake: dg.ResourceParam[Lake],
    orders_source: OrdersSource,
    fx_rates: FxRates,
    notifier: Notifier,
) -> dg.SensorResult:
    if context.repository_def is None:  # the daemon always passes it; build_sensor_context(definitions=...) does
        raise dg.DagsterInvariantViolationError("heal_failed_days needs the repository: its job's assets")
    decisions = healing_decisions(
        context.instance, context.repository_def, healing_policy, lake, orders_source, [orders_source, fx_rates]
    )
    reported = json.loads(context.cursor) if context.cursor else {}
    requests, observations = [], []
    for d in decisions:
        context.log.info(f"{d.day}: {d.action}: {d.reason}")
        if d.action == healing.REQUEST:
            requests.append(
                dg.RunRequest(
                    run_key=f"heal {d.day} attempt {d.attempt} after {d.run_id}",
                    job_name=automation.daily_orders_job.name,
                    partition_key=d.day,
                    tags={HEALS_DAY_TAG: d.day, ATTEMPT_TAG: str(d.attempt), REASON_TAG: d.reason},
                )
            )
            notifier.notify("healing_attempt", day=d.day, attempt=d.attempt, reason=d.reason, failed_run=d.run_id)
        elif d.action == healing.GIVE_UP and reported.get(d.day) != d.run_id:
            reported[d.day] = d.run_id  # once per failed run: a person's later failed run is reported again
            observations.append(
                dg.AssetObservation(
                    asset_key=DAILY_REVENUE,
                    partition=d.day,
                    metadata={"healing": "gave up", "healing/reason": d.reason, "healing/failed_run": d.run_id},
                )
            )
            notifier.notify("healing_gave_up", day=d.day, reason=d.reason, failed_run=d.run_id)
    waiting = [f"{d.day}: {d.reason}" for d in decisions if d.action != healing.REQUEST]
    return dg.SensorResult(
        run_requests=requests,
        asset_events=observations,
        cursor=json.dumps(reported, sort_keys=True),
        skip_reason=None
        if requests
        else ("not healing now: " + "; ".join(waiting[:20]) if waiting else "no failed day to heal"),
    )
