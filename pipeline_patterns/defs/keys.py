"""Every asset key and run tag of the code location, in one place."""

import dagster as dg

from pipeline_patterns.defs.partitions import region_key

GLOBAL_ORDERS = dg.AssetKey("global_orders")
DAILY_REVENUE = dg.AssetKey("daily_revenue")
MONTHLY_REVENUE = dg.AssetKey("monthly_revenue")
REVENUE_SUMMARY = dg.AssetKey("revenue_summary")
GREEN_RELEASE = dg.AssetKey("green_release")


def raw_key(region: str) -> dg.AssetKey:
    return dg.AssetKey(["raw_orders", region_key(region)])


def regional_key(region: str) -> dg.AssetKey:
    return dg.AssetKey(["regional_orders", region_key(region)])


def quarantine_key(region: str) -> dg.AssetKey:
    return dg.AssetKey(["quarantined_orders", region_key(region)])


def late_key(region: str) -> dg.AssetKey:
    return dg.AssetKey(["late_orders", region_key(region)])


# Run tags: why a sensor requested a run, and what it covers (filter the Runs page by them).
REASON_TAG = "pipeline_patterns/reason"
REHOMES_TAG = "pipeline_patterns/rehomes_days"
HEALS_DAY_TAG = "pipeline_patterns/heals_day"
ATTEMPT_TAG = "pipeline_patterns/healing_attempt"
CLOSES_TAG = "pipeline_patterns/closes"  # 'us-west 2024-01-05' or 'global 2024-01-05'
