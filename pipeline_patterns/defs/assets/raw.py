"""raw_orders/<region>: one region-day of the feed landed as files, as received (pattern:
fan-out, extraction step; immutable landing zone)."""

import functools

import dagster as dg

from pipeline_patterns.defs.alerts import Notifier
from pipeline_patterns.defs.keys import raw_key
from pipeline_patterns.defs.landing import LandingZone
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, day_window, single_run
from pipeline_patterns.defs.resilience import call_dependency
from pipeline_patterns.defs.sources import OrdersSource


def raw_orders_asset(region: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=raw_key(region),
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        group_name="landing",
        io_manager_key="landing",
        kinds={"csv"},
        # Unexpected transient failures (a lost worker, a full disk that recovers); the feed's own
        # known transient errors get capped backoff through RetryRequested (resilience.py).
        retry_policy=dg.RetryPolicy(max_retries=1, delay=5),
        description=f"The {region} order feed of a day, landed as the CSV files the source delivered.",
    )
    def raw_orders(
        context: dg.AssetExecutionContext,
        orders_source: OrdersSource,
        landing: dg.ResourceParam[LandingZone],
        notifier: Notifier,
    ) -> dg.MaterializeResult:
        run_id = context.run.run_id
        files = size = 0
        for day in day_window(context).days:
            if landing.landed_by(region, day) == run_id:
                continue  # landed by an earlier attempt of this step: a retry resumes, not restarts
            delivered = call_dependency(
                context,
                f"orders feed {region} {day}",
                functools.partial(orders_source.fetch, region, day),
                dependency=orders_source,
                notifier=notifier,
            )
            manifest = landing.land(region, day, run_id, delivered)
            files, size = files + len(manifest.files), size + manifest.bytes
            context.add_asset_metadata(
                {"files": len(manifest.files), "bytes": manifest.bytes, "landed_by_run": run_id},
                partition_key=day.isoformat(),
            )
        return dg.MaterializeResult(
            metadata={
                "files": files,
                "bytes": size,
                "retries": context.retry_number,
                "landing_dir": dg.MetadataValue.path(str(landing.root)),
                **orders_source.breaker_metadata(),
            }
        )

    return raw_orders


raw_orders_assets = [raw_orders_asset(region) for region in REGIONS]
