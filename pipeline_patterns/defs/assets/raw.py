"""raw_orders/<region>: one region-day of the feed landed as files, as received (pattern:
fan-out, extraction step; immutable landing zone)."""

import dagster as dg

from pipeline_patterns.defs.lake import LandingZone
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, day_window, region_key, single_run
from pipeline_patterns.defs.sources import OrdersSource


def raw_orders_asset(region: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=["raw_orders", region_key(region)],
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        group_name="landing",
        io_manager_key="landing_io_manager",
        kinds={"csv"},
        description=f"The {region} order feed of a day, landed as the CSV files the source delivered.",
    )
    def raw_orders(
        context: dg.AssetExecutionContext, orders_source: OrdersSource, landing: LandingZone
    ) -> dg.MaterializeResult:
        manifests = [
            landing.land(region, day, context.run.run_id, orders_source.fetch(region, day))
            for day in day_window(context).days
        ]
        return dg.MaterializeResult(
            metadata={
                "files": sum(len(m.files) for m in manifests),
                "bytes": sum(m.bytes for m in manifests),
                "landing_dir": dg.MetadataValue.path(str(landing.root)),
            }
        )

    return raw_orders


raw_orders_assets = [raw_orders_asset(region) for region in REGIONS]
