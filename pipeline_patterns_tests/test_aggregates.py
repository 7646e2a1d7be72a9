"""Monthly and summary aggregates follow a backfill on their own, for exactly what changed."""

import dagster as dg
import pyarrow.compute as pc
import pytest

from pipeline_patterns.lib.delta_writes import read_table
from pipeline_patterns_tests.conftest import materialize, pipeline_defs

pytestmark = pytest.mark.spark
# no quarantined days here: this module is about the aggregates, not the gates
CLEAN = {"null_user_day_rate": 0.0, "collapsed_volume_day_rate": 0.0}
DAILY_GRAPH = ["*daily_revenue"]
MONTHLY = dg.AssetKey("monthly_revenue")
SUMMARY = dg.AssetKey("revenue_summary")


def lake(data_dir, name):
    return read_table(str(data_dir / "lake" / name))


def requested(result) -> dict[str, set]:
    return {
        key.to_user_string(): result.get_requested_partitions(key)
        for key in (MONTHLY, SUMMARY)
        if result.get_num_requested(key)
    }


def run_requested(data_dir, instance, result):
    """What the automation sensor would launch, run in process."""
    for key, partitions in requested(result).items():
        for partition in partitions:
            materialize(data_dir, instance, partition=partition, selection=[key])


@pytest.fixture(scope="module")
def january(spark, tmp_path_factory):
    """January and 1 February backfilled in one range run, then the aggregates caught up."""
    data_dir = tmp_path_factory.mktemp("january")
    instance = dg.DagsterInstance.ephemeral()
    defs = pipeline_defs(data_dir)
    # the automation sensor's tick before the backfill (under `dagster dev` it ticks all the time)
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    materialize(data_dir, instance, first="2024-01-01", last="2024-02-01", selection="*daily_revenue", **CLEAN)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    run_requested(data_dir, instance, first)
    # the next tick sees those runs' materializations: the aggregates are caught up
    caught_up = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    return data_dir, instance, defs, first, caught_up


def test_after_a_backfill_only_complete_months_and_the_summary_are_requested(january):
    _, _, _, first, caught_up = january
    assert requested(caught_up) == {}
    assert requested(first) == {"monthly_revenue": {"2024-01-01"}, "revenue_summary": {None}}


def test_monthly_revenue_sums_the_days_of_its_month(january):
    data_dir, *_ = january
    daily = lake(data_dir, "daily_revenue")
    monthly = lake(data_dir, "monthly_revenue")
    assert monthly["month"].to_pylist() == ["2024-01-01"] * 4
    january_days = daily.filter(pc.less(daily["day"], "2024-02-01"))
    for row in monthly.to_pylist():
        mine = january_days.filter(pc.equal(january_days["region"], row["region"]))
        assert row["days"] == 31 and row["orders"] == pc.sum(mine["orders"]).as_py()
        assert row["revenue_usd"] == pytest.approx(pc.sum(mine["revenue_usd"]).as_py(), abs=0.01)


def test_revenue_summary_covers_the_trailing_30_days(january):
    data_dir, *_ = january
    summary = lake(data_dir, "revenue_summary")
    daily = lake(data_dir, "daily_revenue")
    recent = daily.filter(pc.greater_equal(daily["day"], "2024-01-03"))
    assert set(summary["window_start"].to_pylist()) == {"2024-01-03"}
    assert set(summary["window_end"].to_pylist()) == {"2024-02-01"}
    for row in summary.to_pylist():
        mine = recent.filter(pc.equal(recent["region"], row["region"]))
        assert row["days_with_data"] == 30 and row["orders"] == pc.sum(mine["orders"]).as_py()


def test_a_rewritten_day_refreshes_its_month_and_the_summary_and_nothing_else(january):
    data_dir, instance, defs, _, caught_up = january
    before = lake(data_dir, "monthly_revenue")
    # a re-delivery of 15 January with another volume: the day is rewritten
    materialize(data_dir, instance, partition="2024-01-15", selection="*daily_revenue", orders_per_day=300, **CLEAN)
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=caught_up.cursor)
    assert requested(second) == {"monthly_revenue": {"2024-01-01"}, "revenue_summary": {None}}
    run_requested(data_dir, instance, second)
    after = lake(data_dir, "monthly_revenue")
    orders_before = dict(zip(before["region"].to_pylist(), before["orders"].to_pylist()))
    orders_after = dict(zip(after["region"].to_pylist(), after["orders"].to_pylist()))
    assert {r: orders_before[r] - orders_after[r] for r in orders_after} == {r: 100 for r in orders_after}
    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert requested(third) == {}  # caught up: nothing is recomputed twice
