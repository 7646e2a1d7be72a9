"""regional_orders/<region>: a region's landed files parsed, typed and deduplicated in Spark,
stored in Delta (pattern: fan-out; idempotent window writes).

Each region is its own asset and step, so one region failing never stops the others. The steps
share the run's one Spark session (in-process executor); Spark spreads each region's job over
every core, which is where the parallelism lives (FACTS.md: a JVM per step process costs more
than it gains on a small machine).
"""

import dagster as dg
import pyarrow as pa
from dagster_pyspark import PySparkResource

from pipeline_patterns.defs.lake import LandingZone
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, day_window, region_key, single_run
from pipeline_patterns.lib.orders import regional_orders_table


def regional_orders_asset(region: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=["regional_orders", region_key(region)],
        deps=[dg.AssetKey(["raw_orders", region_key(region)])],
        partitions_def=daily_partitions,
        backfill_policy=single_run,
        group_name="regional",
        io_manager_key="lake_io_manager",
        kinds={"pyspark", "delta"},
        description=(
            f"{region} orders: typed, one row per order and day (the latest delivery kept), "
            "in a Delta table partitioned by day."
        ),
    )
    def regional_orders(
        context: dg.AssetExecutionContext, spark: PySparkResource, landing: LandingZone
    ) -> pa.Table:
        window = day_window(context)
        files = landing.files(region, window.days)
        orders, duplicates = regional_orders_table(spark.spark_session, files)
        context.add_output_metadata({"duplicates_dropped": duplicates, "landed_files": len(files)})
        return orders

    return regional_orders


regional_orders_assets = [regional_orders_asset(region) for region in REGIONS]
