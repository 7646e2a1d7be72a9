"""daily_revenue: per day and region, orders, revenue in USD and distinct users (pattern:
downstream aggregate, recomputed for exactly the days its upstream rewrote)."""

import dagster as dg
import pyarrow as pa

from pipeline_patterns.defs.assets.global_merge import global_orders
from pipeline_patterns.defs.partitions import daily_partitions, single_run
from pipeline_patterns.lib.orders import daily_revenue_table


@dg.asset(
    ins={"orders": dg.AssetIn(key=global_orders.key)},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    group_name="revenue",
    io_manager_key="lake_io_manager",
    kinds={"pyarrow", "delta"},
    description="Per day and region: orders, revenue in USD, distinct users.",
)
def daily_revenue(orders: pa.Table) -> pa.Table:
    return daily_revenue_table(orders)
