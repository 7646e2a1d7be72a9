"""Late data in Dagster: the `late_data_rehomes_days` sensor, which re-runs exactly the published days
a later delivery touched (the watermark is `quality_gates.allowed_lateness_days`). See docs/late_data.md."""

import hashlib

import dagster as dg

from pipeline_patterns.defs.keys import DAILY_REVENUE, GLOBAL_ORDERS, REASON_TAG, REHOMES_TAG, regional_key
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions

MATERIALIZATION = dg.DagsterEventType.ASSET_MATERIALIZATION
LATE_EVENT_DAYS = "late_event_days"
REGIONAL_VERSIONS = "regional_versions"


def format_late_days(late_days: dict[str, int]) -> str:
    return ", ".join(f"{day}: {rows}" for day, rows in sorted(late_days.items())) or "none"


def parse_late_days(text: str) -> dict[str, int]:
    if not text or text == "none":
        return {}
    return {day: int(rows) for day, rows in (part.split(": ") for part in text.split(", "))}


def format_versions(versions: dict[str, int]) -> str:
    return ", ".join(f"{region}: {version}" for region, version in versions.items())


def parse_versions(text: str) -> dict[str, int]:
    return {region: int(version) for region, version in (part.split(": ") for part in text.split(", ") if part)}


rehome_days_job = dg.define_asset_job(
    "rehome_late_orders",
    selection=[GLOBAL_ORDERS, DAILY_REVENUE],
    partitions_def=daily_partitions,
    description="The fan-in and daily revenue of days a later delivery touched (requested by late_data_rehomes_days).",
)


def _all_records(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[dg.EventLogRecord]:
    """Every materialization of the asset (each re-delivery of a feed day is one)."""
    records: list[dg.EventLogRecord] = []
    cursor = None
    while True:
        page = instance.fetch_materializations(key, limit=1000, cursor=cursor)
        records.extend(page.records)
        if not page.has_more:
            return records
        cursor = page.cursor


def _metadata(record: dg.EventLogRecord) -> dict:
    materialization = record.asset_materialization
    return {k: v.value for k, v in (materialization.metadata if materialization else {}).items()}


def stale_days(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    """Published global days whose orders in a later feed day changed since they read it, each
    with why ('us-east 2024-01-05: 12 orders of the day (were 0), regional_orders/us_east v9 > v7
    read'). A feed day re-delivered (or re-processed into quarantine) counts too: the day is
    stale when the state it read or the latest state carries orders of it."""
    # the regional versions each day's latest fan-in read (a blue-green switch records none: the
    # fan-in before it counts, which can only make a day stale early, never miss it)
    read: dict[str, dict[str, int]] = {}
    for record in sorted(_all_records(instance, GLOBAL_ORDERS), key=lambda r: r.storage_id):
        versions = _metadata(record).get(REGIONAL_VERSIONS)
        if versions and record.partition_key is not None:
            read[record.partition_key] = parse_versions(versions)
    stale: dict[str, list[str]] = {}
    for region in REGIONS:
        key = regional_key(region)
        history: dict[str, list[tuple[int, dict[str, int]]]] = {}
        for record in _all_records(instance, key):
            metadata = _metadata(record)
            if metadata.get("delta_version") is not None and record.partition_key is not None:
                late = parse_late_days(metadata.get(LATE_EVENT_DAYS, ""))
                history.setdefault(record.partition_key, []).append((int(metadata["delta_version"]), late))
        for feed_day, states in sorted(history.items()):
            states.sort(key=lambda state: state[0])
            version, latest = states[-1]
            for day in sorted({d for _, late in states for d in late}):
                seen = read.get(day, {}).get(region)
                if seen is None or version <= seen:
                    continue  # not published, or it read this delivery's latest state
                # what the day counted of this feed day (the state at the version it read) and
                # what it should count now: stale when either has orders of the day
                base = next((late for v, late in reversed(states) if v <= seen), {})
                if day in latest or day in base:
                    rows = f"{latest.get(day, 0)} orders of the day (were {base.get(day, 0)})"
                    stale.setdefault(day, []).append(
                        f"{region} {feed_day}: {rows}, {key.to_user_string()} v{version} > v{seen} read"
                    )
    return dict(sorted(stale.items()))


def _regional_days_in_progress(instance: dg.DagsterInstance, feed_days: list[str]) -> list[str]:
    """Of `feed_days`, the regional days a run is writing now ('us-east 2024-01-05'), as their
    partition bars show them (a run's planned, not yet reported materializations). Re-homing while
    a run is between its regions' commits of a feed day would read some of its deliveries and not
    the others, and run again for the rest."""
    writing = []
    for region in REGIONS:
        key = regional_key(region)
        statuses = instance.get_status_by_partition(key, feed_days, daily_partitions) or {}
        writing += [
            f"{region} {day}" for day, status in statuses.items() if status == dg.AssetPartitionStatus.IN_PROGRESS
        ]
    return writing


def rehome_requests(instance: dg.DagsterInstance) -> tuple[list[dg.RunRequest], list[str]]:
    """One run per contiguous block of stale, published days; and the stale days left for later
    (being written, or not published: their next run reads the delivery anyway)."""
    stale = stale_days(instance)
    if not stale:
        return [], []
    statuses = instance.get_status_by_partition(DAILY_REVENUE, list(stale), daily_partitions) or {}
    waiting = [
        f"{day}: {str(statuses.get(day, 'not materialized')).split('.')[-1].lower()}"
        for day in stale
        if statuses.get(day) != dg.AssetPartitionStatus.MATERIALIZED
    ]
    ready = [day for day in stale if statuses.get(day) == dg.AssetPartitionStatus.MATERIALIZED]
    # the feed days whose commits made the ready days stale ("us-east 2024-01-05: ..."): while a
    # run still writes one of them in another region, wait; the next tick sees all its commits
    feed_days = sorted({why.split(":", 1)[0].split(" ")[-1] for day in ready for why in stale[day]})
    writing = _regional_days_in_progress(instance, feed_days) if ready else []
    if writing:
        waiting += [f"{day}: its feed days are still being written ({', '.join(writing[:4])})" for day in ready]
        ready = []
    keys = daily_partitions.get_partition_keys()
    position = {key: i for i, key in enumerate(keys)}
    blocks: list[list[str]] = []
    for day in ready:
        if blocks and position[day] == position[blocks[-1][-1]] + 1:
            blocks[-1].append(day)
        else:
            blocks.append([day])
    requests = []
    for block in blocks:
        why = [f"{day} ({'; '.join(stale[day])})" for day in block]
        range_tags = (
            {"dagster/asset_partition_range_start": block[0], "dagster/asset_partition_range_end": block[-1]}
            if len(block) > 1
            else {}
        )
        requests.append(
            dg.RunRequest(
                # the days and the versions that made them stale: a state is requested once
                run_key="rehome " + hashlib.sha256(" | ".join(why).encode()).hexdigest(),
                job_name=rehome_days_job.name,
                partition_key=block[0] if len(block) == 1 else None,
                tags={
                    **range_tags,
                    REHOMES_TAG: f"{block[0]}...{block[-1]}" if len(block) > 1 else block[0],
                    REASON_TAG: ("late orders delivered after the day was published: " + "; ".join(why))[:4000],
                },
            )
        )
    return requests, waiting


@dg.sensor(
    jobs=[rehome_days_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Re-runs exactly the published days that a later delivery carries late orders of.",
)
def late_data_rehomes_days(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    requests, waiting = rehome_requests(context.instance)
    for request in requests:
        context.log.info(f"requesting {request.tags[REHOMES_TAG]}: {request.tags[REASON_TAG]}")
    if waiting:
        context.log.info("stale days not requested yet: " + "; ".join(waiting))
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None
        if requests
        else (
            "stale days not requested yet (their next run reads the late orders): " + "; ".join(waiting)
            if waiting
            else "every published day holds its later deliveries' late orders"
        ),
    )
