"""The `day_close` resource and the `regions_close_their_day` sensor: a region-day is launched when its
region has closed the day in its own time zone, the global day when its last region has. See docs/late_data.md."""

import datetime as dt

import dagster as dg
from pydantic import Field

from pipeline_patterns.defs.assets.global_merge import DAILY_REVENUE, GLOBAL_ORDERS
from pipeline_patterns.defs.keys import CLOSES_TAG, REASON_TAG, late_key, quarantine_key, raw_key, regional_key
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions
from pipeline_patterns.lib import readiness

# The default time after a region's local midnight for its last deliveries to arrive.
GRACE = dt.timedelta(minutes=60)


class DayClose(dg.ConfigurableResource):
    """When a region's day counts as closed: its local midnight plus this grace."""

    grace_minutes: int = Field(
        default=int(GRACE.total_seconds() // 60),
        ge=0,
        description="Minutes after a region's local midnight before its day is launched (late batches arrive).",
    )

    @property
    def grace(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.grace_minutes)


LOOKBACK_DAYS = 3

MATERIALIZED = dg.AssetPartitionStatus.MATERIALIZED
IN_PROGRESS = dg.AssetPartitionStatus.IN_PROGRESS
FAILED = dg.AssetPartitionStatus.FAILED


def region_day_assets(region: str) -> list[dg.AssetKey]:
    """A region-day's run: the landing and the regional step, whose three outputs go together."""
    return [raw_key(region), regional_key(region), quarantine_key(region), late_key(region)]


GLOBAL_DAY_ASSETS = [GLOBAL_ORDERS, DAILY_REVENUE]


def _status(status: dg.AssetPartitionStatus | None) -> str:
    return status.value.lower().replace("_", " ") if status else "not materialized"


def _grace(grace: dt.timedelta) -> str:
    return f"+{int(grace.total_seconds() // 60)} min grace"


def close_requests(
    instance: dg.DagsterInstance,
    now: dt.datetime,
    grace: dt.timedelta = GRACE,
    lookback_days: int = LOOKBACK_DAYS,
) -> tuple[list[dg.RunRequest], list[str]]:
    """The runs of the region-days and global days of the last `lookback_days` days (UTC, up to the
    UTC day of `now`) that are ready at `now` and neither done, being written nor failed; and what
    waits, and why ('2024-01-05 global: waits for us-west (ready at ...)')."""
    now = now.astimezone(dt.UTC)
    today = now.date()
    first = max(daily_partitions.start.date(), today - dt.timedelta(days=lookback_days))
    days = [first + dt.timedelta(days=i) for i in range((today - first).days + 1)]
    if not days:
        return [], []
    keys = [day.isoformat() for day in days]
    regional = {r: instance.get_status_by_partition(regional_key(r), keys, daily_partitions) or {} for r in REGIONS}
    revenue = instance.get_status_by_partition(DAILY_REVENUE, keys, daily_partitions) or {}
    ready = set(readiness.ready_region_days(now, days, REGIONS, grace))
    requests: list[dg.RunRequest] = []
    waits: list[str] = []
    for day, key in zip(days, keys, strict=True):
        # Dagster creates a daily partition when its UTC day ends; a run of it cannot start earlier.
        partition_exists_at = daily_partitions.time_window_for_partition_key(key).end
        for region in REGIONS:
            status = regional[region].get(key)
            if status == MATERIALIZED:
                continue
            if status in (IN_PROGRESS, FAILED):
                handled = "being written" if status == IN_PROGRESS else "failed, not requested again here"
                waits.append(f"{key} {region}: {regional_key(region).to_user_string()} {handled}")
            elif (region, day) not in ready:
                waits.append(f"{key} {region}: ready at {readiness.ready_at(region, day, grace).isoformat()}")
            elif now < partition_exists_at:
                waits.append(
                    f"{key} {region}: closed, the UTC day's partition exists at {partition_exists_at.isoformat()}"
                )
            else:
                reason = (
                    f"{region} closed {key} at {readiness.closes_at(region, day).isoformat()} UTC ({_grace(grace)})"
                )
                requests.append(
                    dg.RunRequest(
                        run_key=f"close {region} {key}",
                        asset_selection=region_day_assets(region),
                        partition_key=key,
                        tags={REASON_TAG: reason, CLOSES_TAG: f"{region} {key}"},
                    )
                )
        if revenue.get(key) == MATERIALIZED:
            continue
        if revenue.get(key) in (IN_PROGRESS, FAILED):
            handled = "being written" if revenue.get(key) == IN_PROGRESS else "failed, left to self-healing"
            waits.append(f"{key} global: {DAILY_REVENUE.to_user_string()} {handled}")
            continue
        missing = [
            f"{region} (ready at {readiness.ready_at(region, day, grace).isoformat()})"
            if (region, day) not in ready
            else f"{regional_key(region).to_user_string()} ({_status(regional[region].get(key))})"
            for region in REGIONS
            if (region, day) not in ready or regional[region].get(key) != MATERIALIZED
        ]
        if missing:
            waits.append(f"{key} global: waits for {', '.join(missing)}")
            continue
        last = max(REGIONS, key=lambda r: readiness.ready_at(r, day, grace))
        requests.append(
            dg.RunRequest(
                run_key=f"close global {key}",
                asset_selection=GLOBAL_DAY_ASSETS,
                partition_key=key,
                tags={
                    REASON_TAG: (
                        f"every region closed {key}, the last {last} at "
                        f"{readiness.closes_at(last, day).isoformat()} UTC ({_grace(grace)}); "
                        f"all {len(REGIONS)} regional days materialized"
                    ),
                    CLOSES_TAG: f"global {key}",
                },
            )
        )
    return requests, waits


@dg.sensor(
    asset_selection=[key for region in REGIONS for key in region_day_assets(region)] + GLOBAL_DAY_ASSETS,
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=60,
    description=(
        "Launches each region-day when the region has closed the day in its own time zone (plus a grace), and the "
        "global day when every region has and every regional day is materialized. Stopped by default: turn it on "
        "and daily_orders_schedule off to launch each piece when it becomes ready."
    ),
)
def regions_close_their_day(context: dg.SensorEvaluationContext, day_close: DayClose) -> dg.SensorResult:
    """Turn it on and `daily_orders_schedule` off to launch each piece when it becomes ready
    (running both would launch the same days twice)."""
    requests, waits = close_requests(context.instance, dt.datetime.now(dt.UTC), grace=day_close.grace)
    for request in requests:
        context.log.info(f"requesting {request.tags[CLOSES_TAG]}: {request.tags[REASON_TAG]}")
    if waits:
        context.log.info("waiting: " + "; ".join(waits))
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None
        if requests
        else ("nothing ready to launch; waiting: " + "; ".join(waits[:20]) if waits else "every recent day is done"),
    )
