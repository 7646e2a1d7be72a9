"""The daily (and monthly) partitions definitions, the regions, and the day window of a run (pattern:
partitioned assets; backfills as ranges)."""

import warnings

import dagster as dg

from pipeline_patterns.lib.day_window import DayWindow

# Adding a region is one line here; the simulator sells in USD where it knows no currency for it.
REGIONS = ["us-east", "us-west", "eu-west", "ap-south"]

daily_partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01")
monthly_partitions = dg.MonthlyPartitionsDefinition(start_date="2024-01-01")

# A range backfill runs as ONE run whose assets each read and write the whole window in one
# transaction: one Spark session, one Delta commit per table (docs/backfills.md).
single_run = dg.BackfillPolicy.single_run()
# BackfillPolicy is still marked beta in Dagster 1.13; it is the documented way to run a range as
# one run, and this project depends on it deliberately. Set here, where every asset module that
# declares it imports it from (the code location, the CLI and the tests alike).
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")
# A check partitioned by day (preview in 1.13) records each day's verdict under its day: the UI then
# shows the check's days as a partition bar and its history by day (defs/checks.py).
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")


def region_key(region: str) -> str:
    """'us-east' -> 'us_east' (asset keys allow no dashes)."""
    return region.replace("-", "_")


def day_window(context: dg.AssetExecutionContext) -> DayWindow:
    """The days a run materializes: one partition or a whole backfill range."""
    return DayWindow.of(context.partition_time_window)
