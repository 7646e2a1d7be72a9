"""monthly_revenue and revenue_summary over daily_revenue, kept up to date by the `aggregates_follow_days`
sensor; a month is published only complete. See docs/backfills.md."""

import dagster as dg
import pyarrow as pa

from pipeline_patterns.defs.keys import DAILY_REVENUE
from pipeline_patterns.defs.partitions import monthly_partitions, single_run
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.orders import monthly_revenue_table, revenue_summary_table


@dg.asset(
    ins={"daily": dg.AssetIn(key=DAILY_REVENUE, partition_mapping=dg.TimeWindowPartitionMapping())},
    partitions_def=monthly_partitions,
    backfill_policy=single_run,
    group_name="aggregates",
    io_manager_key="lake",
    metadata={"partition_column": "month"},
    kinds={"pyarrow", "delta"},
    description="Per month and region: orders, revenue in USD, days with data. Published only for complete months.",
)
def monthly_revenue(context: dg.AssetExecutionContext, daily: pa.Table) -> pa.Table:
    window = context.partition_time_window
    days = DayWindow.of(window).days
    present = set(daily["day"].to_pylist())
    lacking = [d.isoformat() for d in days if d.isoformat() not in present]
    if lacking:
        raise dg.Failure(
            description=(
                f"monthly_revenue {window.start.date():%Y-%m}: {len(lacking)} of {len(days)} days lack daily_revenue "
                f"({', '.join(lacking[:10])}{', ...' if len(lacking) > 10 else ''}); a month is published only "
                "complete. Materialize (or un-hold) those days first."
            ),
            metadata={"days_lacking": ", ".join(lacking)},
            allow_retries=False,
        )
    return monthly_revenue_table(daily)


@dg.asset(
    ins={"daily": dg.AssetIn(key=DAILY_REVENUE)},
    group_name="aggregates",
    io_manager_key="lake",
    kinds={"pyarrow", "delta"},
    description="Per region, the trailing 30 days up to the latest day with data: orders, revenue, daily average.",
)
def revenue_summary(context: dg.AssetExecutionContext, daily: pa.Table) -> pa.Table:
    summary = revenue_summary_table(daily)
    context.add_output_metadata({"latest_day": summary["window_end"][0].as_py() if summary.num_rows else "none"})
    return summary
