"""The revenue aggregates (pattern: downstream aggregates kept right after backfills).

daily_revenue follows global_orders day by day in the same runs; monthly_revenue (monthly
partitions, through a time-window partition mapping) and revenue_summary (trailing 30 days) are
brought up to date by automation conditions whenever days they read are rewritten.
"""

import dagster as dg
import pyarrow as pa

from pipeline_patterns.defs.assets.global_merge import global_orders
from pipeline_patterns.defs.automation import follows_upstream
from pipeline_patterns.defs.partitions import daily_partitions, monthly_partitions, single_run
from pipeline_patterns.lib.orders import daily_revenue_table, monthly_revenue_table, revenue_summary_table


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


@dg.asset(
    ins={"daily": dg.AssetIn(key=daily_revenue.key, partition_mapping=dg.TimeWindowPartitionMapping())},
    partitions_def=monthly_partitions,
    backfill_policy=single_run,
    automation_condition=follows_upstream(wait_for_complete_upstream=True),
    group_name="revenue",
    io_manager_key="lake_io_manager",
    metadata={"partition_column": "month"},
    kinds={"pyarrow", "delta"},
    description="Per month and region: orders, revenue in USD, days with data. Refreshed when any of its days is rewritten.",
)
def monthly_revenue(daily: pa.Table) -> pa.Table:
    return monthly_revenue_table(daily)


@dg.asset(
    ins={"daily": dg.AssetIn(key=daily_revenue.key)},
    automation_condition=follows_upstream(wait_for_complete_upstream=False),
    group_name="revenue",
    io_manager_key="lake_io_manager",
    kinds={"pyarrow", "delta"},
    description="Per region, the trailing 30 days up to the latest day with data: orders, revenue, daily average.",
)
def revenue_summary(daily: pa.Table) -> pa.Table:
    return revenue_summary_table(daily)
