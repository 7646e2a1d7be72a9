"""regional_orders, quarantined_orders and late_orders per region: the fan-out step that parses,
deduplicates and gates a region's landed files and sends each region-day down one branch.
See docs/fan_out_fan_in.md and docs/quality_gates.md."""

import dataclasses
import datetime as dt
import functools

import dagster as dg
import pyarrow as pa
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame, SparkSession

from pipeline_patterns.defs.alerts import Notifier
from pipeline_patterns.defs.checks import (
    QualityGates,
    TargetMaterialization,
    accounting_result,
    day_evaluations,
    day_materializations,
    gate_results,
    gate_specs,
)
from pipeline_patterns.defs.keys import late_key, quarantine_key, raw_key, regional_key
from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.landing import LandingZone
from pipeline_patterns.defs.late_data import LATE_EVENT_DAYS, format_late_days
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, day_window, region_key, single_run
from pipeline_patterns.lib import landing as landing_files
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import RefusedCommit, WriteResult
from pipeline_patterns.lib.late_data import LATE_SCHEMA, left_days
from pipeline_patterns.lib.orders import REGIONAL_SCHEMA, regional_orders_frame
from pipeline_patterns.lib.quarantine import (
    QUARANTINE_SCHEMA,
    RegionDay,
    before_first_day_note,
    clean_frame,
    judge_days,
    late_frame,
    quarantined_frame,
)

# The first partition: orders of earlier event days are kept, but no global day counts them.
FIRST_DAY = daily_partitions.start.date().isoformat()
# What the gates guarantee of a clean row; checked again on the files before they are committed.
CLEAN_NOT_NULL = ("order_id", "user_id", "region", "amount", "currency", "event_ts", "delivered_at")


def regional_orders_asset(region: str) -> dg.AssetsDefinition:
    clean_key, quarantined_key, too_late_key = regional_key(region), quarantine_key(region), late_key(region)
    raw = raw_key(region)

    @dg.multi_asset(
        name=f"regional_orders__{region_key(region)}",
        # one group per branch: the lineage view opens with groups collapsed, and the group boxes
        # (regional, quarantine, late) are what shows the branches; kinds name them on each node
        specs=[
            dg.AssetSpec(
                clean_key,
                deps=[raw],
                group_name="regional",
                kinds={"pyspark", "delta", "clean"},
                description=(
                    f"Clean rows of {region}.\n\nOrders that passed every blocking gate: typed, one row per order "
                    "and day (the latest delivery kept), in a Delta table partitioned by day. Each day's "
                    "materialization says the branch it took (`branch`)."
                ),
            ).with_io_manager_key("lake"),
            dg.AssetSpec(
                quarantined_key,
                deps=[raw],
                group_name="quarantine",
                kinds={"delta", "quarantine"},
                description=(
                    f"Quarantine of {region}.\n\nRegion-days that failed a blocking gate: all their rows, with the "
                    "failed checks, the reason, the run and the time. Empty for a clean day."
                ),
            ).with_io_manager_key("lake"),
            dg.AssetSpec(
                too_late_key,
                deps=[raw],
                group_name="late",
                kinds={"delta", "late"},
                description=(
                    f"Too late for {region}.\n\nOrders of processed days delivered later than the allowed lateness after "
                    "their event day (the watermark): kept with the lateness and why, never counted in a "
                    "closed day. Partitioned by feed day."
                ),
            ).with_io_manager_key("lake"),
        ],
        check_specs=gate_specs(clean_key),
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        # one writer of the region's tables at a time (limit in dagster.yaml): they are three
        # commits, and two runs interleaving them could leave a day in neither table
        pool=f"regional_{region_key(region)}",
    )
    def regional_orders(
        context: dg.AssetExecutionContext,
        spark: PySparkResource,
        landing: dg.ResourceParam[LandingZone],
        lake: dg.ResourceParam[Lake],
        quality_gates: QualityGates,
        notifier: Notifier,
    ):
        window, lateness = day_window(context), quality_gates.allowed_lateness_days
        try:
            landed = landing.inspect(region, window.days)
        except landing_files.MissingLandingDataError as error:
            raise dg.Failure(description=f"{clean_key.to_user_string()}: {error}", allow_retries=False) from None
        run_id = context.run.run_id
        files = [file for day in landed for file in day.files]  # a refused file is not read
        # computed once, kept on the executors (memory, spilling to disk) for the gates and both writes
        # each file read as inspected, or the step fails naming it (a file swapped in for a link meanwhile)
        frame = regional_orders_frame(spark.spark_session, files, landing.options(), landing_files.identities(landed))
        staged = frame.repartition("day").persist()
        try:
            try:
                region_days = judge_days(
                    staged,
                    landed,
                    settings=quality_gates.settings(region),
                    allowed_lateness=lateness,
                    first_day=FIRST_DAY,
                )
            except landing_files.LandingChangedError as error:
                raise dg.Failure(description=f"{clean_key.to_user_string()}: {error}", allow_retries=False) from None
            region_days = with_left_days(spark.spark_session, lake, clean_key, staged, region_days, window, lateness)
            checks = [*gate_results(region_days), accounting_result(region_days)]
            lost = [d for d in region_days if not d.accounted]
            if lost:
                log_day_evaluations(context, clean_key, region_days, {})  # nothing materialized to target
                yield from checks
                raise dg.Failure(
                    description=(
                        f"{clean_key.to_user_string()}: rows lost between landing and the tables on "
                        + ", ".join(
                            f"{d.day} ({d.landed} records landed, {d.rows + d.duplicates + d.superseded} read)"
                            for d in lost
                        )
                        + "; nothing was written. The landed files' line count and Spark's parse disagree: "
                        "see the rows_accounted check, then the landed files of those days, and report it."
                    ),
                    allow_retries=False,
                )
            write = functools.partial(write_or_fail, lake, region, window, run_id)
            clean = write(
                clean_key,
                clean_frame(staged, region_days, lateness),
                REGIONAL_SCHEMA,
                rows_per_day={d.day: d.clean_rows for d in region_days},
                not_null=CLEAN_NOT_NULL,
                clustered=True,
            )
            quarantined = write(
                quarantined_key,
                quarantined_frame(staged, region_days, run_id, dt.datetime.now(dt.UTC)),
                QUARANTINE_SCHEMA,
                rows_per_day={d.day: d.quarantined_rows for d in region_days},
                clustered=True,
            )
            too_late = write(
                too_late_key,
                late_frame(staged, region_days, lateness),
                LATE_SCHEMA,
                rows_per_day={d.day: d.too_late_rows for d in region_days},
                clustered=True,
            )
        finally:
            staged.unpersist()
        held_here = [d.day for d in region_days if d.branch == "quarantined"]
        if note := before_first_day_note(region_days, FIRST_DAY):  # reported per run, and per day below
            context.log.warning(f"{clean_key.to_user_string()}: {note}")
        for d in region_days:
            report_region_day(context, clean_key, quarantined_key, too_late_key, d, lateness, held_here)
            if d.branch == "quarantined":
                context.log.warning(
                    f"{clean_key.to_user_string()} {d.day}: quarantined {d.quarantined_rows} rows "
                    f"({', '.join(d.failed_checks)}); the global day {d.day} is held until a corrected delivery"
                )
                notifier.notify(
                    "region_day_quarantined",
                    region=region,
                    day=d.day,
                    checks=d.failed_checks,
                    rows=d.quarantined_rows,
                )
        yield dg.MaterializeResult(
            asset_key=clean_key,
            metadata={"delta_version": clean.version, "table_uri": dg.MetadataValue.path(clean.table_uri)},
            check_results=checks,
        )
        days = [d.day for d in region_days]
        log_day_evaluations(context, clean_key, region_days, day_materializations(context.instance, clean_key, days))
        yield dg.MaterializeResult(
            asset_key=quarantined_key,
            metadata={"delta_version": quarantined.version, "table_uri": dg.MetadataValue.path(quarantined.table_uri)},
        )
        yield dg.MaterializeResult(
            asset_key=too_late_key,
            metadata={"delta_version": too_late.version, "table_uri": dg.MetadataValue.path(too_late.table_uri)},
        )

    return regional_orders


def log_day_evaluations(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    region_days: list[RegionDay],
    targets: dict[str, TargetMaterialization],
) -> None:
    """A range run's verdicts, each under its day and targeting that day's materialization (a
    verdict that targets none is not the day's current one). One day: the step's results are its own."""
    if len(region_days) > 1:
        for d in region_days:
            for evaluation in day_evaluations(key, d, targets.get(d.day)):
                context.log_event(evaluation)


def with_left_days(
    session: SparkSession,
    lake: Lake,
    clean_key: dg.AssetKey,
    staged: DataFrame,
    region_days: list[RegionDay],
    window: DayWindow,
    lateness: int,
) -> list[RegionDay]:
    """Add to each region-day's `late_days` the earlier event days of the orders it re-delivers
    (a correction may move an order out of a published day: that day must be re-run too). The
    earlier deliveries: the clean table's feed days before the window, and the window's own."""
    start = max(window.start - dt.timedelta(days=lateness), daily_partitions.start.date())
    before = DayWindow(start, window.start) if lateness and start < window.start else None
    earlier = before if before and lake.per_day(clean_key, before) else None  # None: no clean row there
    if not lateness or (len(window.days) == 1 and not earlier):
        return region_days  # no earlier delivery a feed day could re-deliver: no Spark job
    frames = [clean_frame(staged, region_days, lateness)]  # the window's clean rows, as about to be written
    if earlier:
        frames.append(lake.frame(session, clean_key, REGIONAL_SCHEMA, earlier))
    left = left_days(staged, functools.reduce(DataFrame.unionByName, frames), lateness)
    merged = []
    for d in region_days:
        days = dict(d.late_days)
        for day, rows in left.get(d.day, {}).items():
            days[day] = days.get(day, 0) + rows
        merged.append(dataclasses.replace(d, late_days=dict(sorted(days.items()))))
    return merged


def report_region_day(
    context: dg.AssetExecutionContext,
    clean_key: dg.AssetKey,
    quarantined_key: dg.AssetKey,
    too_late_key: dg.AssetKey,
    d: RegionDay,
    lateness: int,
    held_here: list[str],
) -> None:
    """Each day's own metadata: its row counts and the branch it took (a range run's
    materialization would otherwise show the whole range's figures on every day)."""
    context.add_asset_metadata(
        {
            "dagster/row_count": d.clean_rows,
            "branch": d.branch if d.branch == "processed" else f"quarantined: {', '.join(d.failed_checks)}",
            "run_outcome": run_outcome(d, held_here),
            "rows_landed": d.landed,
            "duplicates_dropped": d.duplicates,
            "superseded_dropped": d.superseded,
            # raw order ids the order identity changed (lib/orders.py identity_sql)
            "ids_normalised": d.ids_normalised,
            # event days before the first partition: in the clean table, in no global day
            "orders_before_first_partition": d.before_first_day,
            "rows_quarantined": d.quarantined_rows,
            "rows_too_late": d.too_late_rows,
            # the global days this delivery touches besides its own: the late_data_rehomes_days
            # sensor re-runs those already published (defs/late_data.py)
            LATE_EVENT_DAYS: format_late_days(d.late_days),
            "files_refused": "; ".join(d.refused) or "none",
        },
        asset_key=clean_key,
        partition_key=d.day,
    )
    context.add_asset_metadata(
        {
            "dagster/row_count": d.quarantined_rows,
            "failed_checks": ", ".join(d.failed_checks) or "none",
            "reason": d.reason or "none",
        },
        asset_key=quarantined_key,
        partition_key=d.day,
    )
    context.add_asset_metadata(
        {
            "dagster/row_count": d.too_late_rows,
            "allowed_lateness_days": lateness,
        },
        asset_key=too_late_key,
        partition_key=d.day,
    )


def run_outcome(d: RegionDay, held_here: list[str]) -> str:
    """Why a region-day's run may be red although the day succeeded: the run's fan-in (its last
    step) fails when it holds a day, and Dagster links every day of the run to that red run.
    `held_here`: the days this region quarantined in the same run."""
    if d.branch == "quarantined":
        return (
            f"quarantined: global_orders holds {d.day} until a corrected delivery, so this run ends Failed "
            "(the fan-in's message names every held day)"
        )
    held = f"; this region holds {', '.join(held_here)} in this run" if held_here else ""
    return (
        "processed and committed. A run ends Failed when its fan-in holds a day (a quarantined "
        f"region-day of any region): global_orders shows the held days red{held}"
    )


regional_orders_assets = [regional_orders_asset(region) for region in REGIONS]


def write_or_fail(
    lake: Lake, region: str, window: DayWindow, run_id: str, key: dg.AssetKey, frame: DataFrame, schema: pa.Schema, **kw
) -> WriteResult:
    """`lake.write`, failing the step with what a person needs when the table cannot be written
    (permissions, a full disk, a broken table): which table, region and days, and the remedy."""
    try:
        return lake.write(key, frame, window, run_id, schema, **kw)
    except RefusedCommit:
        raise  # the commit's own checks refused the files: their message already says what and why
    except Exception as error:
        raise dg.Failure(
            description=(
                f"{key.to_user_string()}: could not write {window} of region {region} to "
                f"{lake.table_uri(key)} ({type(error).__name__}: {str(error)[:300]}). A write is one "
                "transaction: this table keeps what it held for these days, and the fan-in holds any day whose "
                "region tables disagree. Make the lake writable (permissions, free space), then re-materialize "
                f"regional_orders/{region_key(region)} for {window}."
            )
        ) from error
