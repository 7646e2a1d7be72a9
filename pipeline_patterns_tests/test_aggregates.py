"""Monthly and summary aggregates follow a backfill on their own, for exactly what changed, and a
month is never published from an incomplete set of days."""

import datetime as dt

import dagster as dg
import pyarrow.compute as pc
import pytest

from pipeline_patterns.defs.automation import aggregates_follow_days, monthly_revenue_job
from pipeline_patterns.defs.partitions import REGIONS
from pipeline_patterns.lib.delta_writes import read_table
from pipeline_patterns.lib.simulated_feed import FeedSettings, add_corrections, region_day_defects
from pipeline_patterns_tests.helpers import TEST_ORDERS_PER_DAY, catch_up_late_data, materialize, pipeline_defs

pytestmark = pytest.mark.spark
MONTHLY = dg.AssetKey("monthly_revenue")
SUMMARY = dg.AssetKey("revenue_summary")
JANUARY = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(31)]
BAD = sorted(
    (r, d.isoformat())
    for d in JANUARY
    for r in REGIONS
    if region_day_defects(r, d, FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)).defects
    and {"null_user_ids", "collapsed_volume"} & set(region_day_defects(r, d, FeedSettings()).defects)
)


def blocks(days: list[str]) -> list[tuple[str, str]]:
    """Contiguous runs of days as (first, last)."""
    spans: list[list[str]] = []
    for day in days:
        if spans and dt.date.fromisoformat(day) - dt.date.fromisoformat(spans[-1][-1]) == dt.timedelta(days=1):
            spans[-1].append(day)
        else:
            spans.append([day])
    return [(span[0], span[-1]) for span in spans]


def lake(data_dir, name):
    return read_table(str(data_dir / "lake" / name))


def tick(defs, instance) -> set[tuple[str, str | None]]:
    """One evaluation of the aggregates sensor, as the daemon calls it: what it requests."""
    result = aggregates_follow_days(dg.build_sensor_context(instance=instance, definitions=defs))
    return {(r.job_name, r.partition_key) for r in result.run_requests}


def run_requested(data_dir, instance, requests):
    """What the daemon would launch for the sensor, run in process."""
    for job, partition in requests:
        materialize(
            data_dir, instance, partition=partition, selection=[MONTHLY if job == monthly_revenue_job.name else SUMMARY]
        )


@pytest.fixture(scope="module")
def january(spark, tmp_path_factory):
    """January backfilled in one run with the default feed (bad region-days on), then corrected."""
    data_dir = tmp_path_factory.mktemp("january")
    instance = dg.DagsterInstance.ephemeral()
    defs = pipeline_defs(data_dir)
    materialize(data_dir, instance, first="2024-01-01", last="2024-01-31", raise_on_error=False)
    held = tick(defs, instance)  # the sensor starts only now, after the backfill
    add_corrections(str(data_dir / "source_corrections.json"), [f"{r} {d}" for r, d in BAD])
    for first, last in blocks(sorted({d for _, d in BAD})):  # a fix-up backfill: one run per block of days
        days = {"partition": first} if first == last else {"first": first, "last": last}
        assert materialize(data_dir, instance, **days).success
    completed = tick(defs, instance)
    run_requested(data_dir, instance, completed)
    caught_up = tick(defs, instance)
    return data_dir, instance, defs, held, completed, caught_up


def test_the_default_january_has_bad_region_days():
    assert len(BAD) >= 2


def test_a_month_with_held_days_is_not_published_but_the_summary_is(january):
    _, _, _, held, _, _ = january
    assert held == {("revenue_summary_job", None)}


def test_once_its_days_are_corrected_the_month_and_the_summary_are_requested_once(january):
    _, _, _, _, completed, caught_up = january
    assert completed == {("monthly_revenue_job", "2024-01-01"), ("revenue_summary_job", None)}
    assert caught_up == set()


def test_monthly_revenue_sums_the_days_of_its_month(january):
    data_dir, *_ = january
    daily = lake(data_dir, "daily_revenue")
    monthly = lake(data_dir, "monthly_revenue")
    assert monthly["month"].to_pylist() == ["2024-01-01"] * 4
    for row in monthly.to_pylist():
        mine = daily.filter(pc.equal(daily["region"], row["region"]))
        assert row["days"] == 31 and row["orders"] == pc.sum(mine["orders"]).as_py()
        assert row["revenue_usd"] == pytest.approx(pc.sum(mine["revenue_usd"]).as_py(), abs=0.01)


def test_revenue_summary_covers_the_trailing_30_days(january):
    data_dir, *_ = january
    summary = lake(data_dir, "revenue_summary")
    daily = lake(data_dir, "daily_revenue")
    recent = daily.filter(pc.greater_equal(daily["day"], "2024-01-02"))
    assert set(summary["window_start"].to_pylist()) == {"2024-01-02"}
    assert set(summary["window_end"].to_pylist()) == {"2024-01-31"}
    for row in summary.to_pylist():
        mine = recent.filter(pc.equal(recent["region"], row["region"]))
        assert row["days_with_data"] == 30 and row["orders"] == pc.sum(mine["orders"]).as_py()


def test_a_month_launched_by_hand_with_a_missing_day_fails_naming_it(spark, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    materialize(tmp_path, instance, partition="2024-02-02", null_user_day_rate=0.0, collapsed_volume_day_rate=0.0)
    result = materialize(tmp_path, instance, partition="2024-02-01", selection=[MONTHLY], raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "28 of 29 days lack daily_revenue (2024-02-01, 2024-02-03" in str(failure.event_specific_data.error)
    assert not (tmp_path / "lake" / "monthly_revenue").exists()


def test_a_rewritten_day_refreshes_its_month_and_the_summary_and_nothing_else(january):
    data_dir, instance, defs, _, _, _ = january
    # first up to date: the fixture's corrected days re-home their late orders, and the month follows
    catch_up_late_data(data_dir, instance, ticks=1)
    run_requested(data_dir, instance, tick(defs, instance))
    assert tick(defs, instance) == set()
    before = lake(data_dir, "monthly_revenue")
    # a re-delivery of 15 January with another volume: the day is rewritten
    materialize(
        data_dir,
        instance,
        partition="2024-01-15",
        orders_per_day=300,
        null_user_day_rate=0.0,
        collapsed_volume_day_rate=0.0,
    )
    # it carries other late orders of 12..14 January: the late-data sensor re-homes exactly the
    # days it touches before the month is recomputed
    blocks = catch_up_late_data(data_dir, instance, ticks=1)
    assert blocks and all("2024-01-12" <= b[:10] and b[-10:] <= "2024-01-14" for b in blocks), blocks
    second = tick(defs, instance)
    assert second == {("monthly_revenue_job", "2024-01-01"), ("revenue_summary_job", None)}
    run_requested(data_dir, instance, second)
    after = lake(data_dir, "monthly_revenue")
    orders_before = dict(zip(before["region"].to_pylist(), before["orders"].to_pylist(), strict=True))
    orders_after = dict(zip(after["region"].to_pylist(), after["orders"].to_pylist(), strict=True))
    # every order of the feed day counts in January, whichever day it re-homed to
    assert {r: orders_before[r] - orders_after[r] for r in orders_after} == {r: 100 for r in orders_after}
    assert tick(defs, instance) == set()  # caught up: nothing is recomputed twice


def test_a_published_month_that_loses_a_day_is_recomputed_and_fails_naming_it(january):
    data_dir, instance, defs, _, _, _ = january
    # 20 January is re-delivered broken in every region: the re-run holds the day
    held = materialize(data_dir, instance, partition="2024-01-20", null_user_day_rate=1.0, raise_on_error=False)
    assert not held.success
    requests = tick(defs, instance)
    assert ("monthly_revenue_job", "2024-01-01") in requests
    result = materialize(data_dir, instance, partition="2024-01-01", selection=[MONTHLY], raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "1 of 31 days lack daily_revenue (2024-01-20)" in str(failure.event_specific_data.error)
    status = instance.get_status_by_partition(MONTHLY, ["2024-01-01"], monthly_revenue_job.partitions_def)
    assert status == {"2024-01-01": dg.AssetPartitionStatus.FAILED}
    assert ("monthly_revenue_job", "2024-01-01") not in tick(defs, instance)  # no loop
