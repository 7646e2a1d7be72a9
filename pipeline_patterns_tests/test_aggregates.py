"""Monthly and summary aggregates follow a backfill on their own, for exactly what changed; a month
is never published from an incomplete set of days, and never requested twice for one state of them."""

import dataclasses
import datetime as dt
import pathlib

import dagster as dg
import pyarrow.compute as pc
import pytest

from pipeline_patterns.defs.automation import aggregates_follow_days, monthly_revenue_job
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, monthly_partitions, region_key
from pipeline_patterns.lib import aggregates
from pipeline_patterns.lib.delta_writes import read_table
from pipeline_patterns.lib.simulated_feed import FeedSettings, add_corrections, region_day_defects
from pipeline_patterns_tests.helpers import TEST_ORDERS_PER_DAY, catch_up_late_data, materialize, pipeline_defs

DAILY = dg.AssetKey("daily_revenue")
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
CLEAN_DAY = next(d.isoformat() for d in JANUARY if d.isoformat() not in {day for _, day in BAD})


# --- the decisions, on plain values (storage ids: a larger one is a later event) ----------------


def month(
    *, lacking: tuple[str, ...] = (), writing: tuple[str, ...] = (), changed=None, published=0, last_run=0
) -> aggregates.Month:
    """January: every day materialized at storage id 10, but the `changed` ones, `lacking` and `writing`."""
    days = aggregates.month_days("2024-01-01")
    return aggregates.Month(
        "2024-01-01",
        tuple(aggregates.Day(d, (changed or {}).get(d, 10), d not in lacking, d in writing) for d in days),
        published,
        last_run,
    )


def ticks(*states: aggregates.Month) -> list[aggregates.Plan]:
    """The plans of successive ticks over January's states, the cursor carried (summary up to date)."""
    plans: list[aggregates.Plan] = []
    for state in states:
        requested = plans[-1].requested if plans else {}
        plans.append(aggregates.plan([state], newest_day=0, summary=0, requested=requested))
    return plans


def months_requested(plan: aggregates.Plan) -> list[str]:
    return [r.month for r in plan.requests]


def test_month_days_are_the_days_of_the_calendar_month():
    assert len(aggregates.month_days("2024-02-01")) == 29 and aggregates.month_days("2024-02-01")[-1] == "2024-02-29"
    assert aggregates.month_days("2024-12-01")[-1] == "2024-12-31"


def test_a_complete_month_is_requested_once_per_state_of_its_days():
    plans = ticks(
        month(),  # every day materialized, never published
        month(),  # the same state: its run is requested, not started yet
        month(last_run=20),  # its run started after every change and failed (a crash)
        month(published=30, last_run=20),  # a person's run published it
        month(changed={"2024-01-15": 40}, published=30, last_run=20),  # a day rewritten
    )
    assert [months_requested(p) for p in plans] == [["2024-01-01"], [], [], [], ["2024-01-01"]]
    assert plans[0].requests[0].reason == "2024-01: every day materialized, not published yet"
    assert plans[1].waiting == [
        "2024-01: its run for this state of its days was requested or ran already; waiting for a day to change"
    ]
    assert plans[3].up_to_date == ["2024-01"]
    assert plans[4].requests[0].reason == "2024-01: every day materialized, a day changed since it was published"


def test_a_refused_month_is_not_requested_again_until_its_days_change():
    # the loop of issue 28: January attempted while 30 of its days were missing (refused), then days
    # of it changed: a day rewritten, a blue-green promote and a rollback of it
    missing = tuple(aggregates.month_days("2024-01-01")[1:])
    plans = ticks(
        month(lacking=missing, last_run=20),
        month(lacking=missing, changed={"2024-01-01": 30}, last_run=20),
        month(lacking=missing, changed={"2024-01-01": 40}, last_run=20),  # promote
        month(lacking=missing, changed={"2024-01-01": 50}, last_run=20),  # rollback
        month(changed={"2024-01-31": 60}, last_run=20),  # the last missing day materialized
    )
    assert [months_requested(p) for p in plans] == [[], [], [], [], ["2024-01-01"]]
    assert plans[0].waiting == [
        "2024-01: 30 of 31 days not materialized (2024-01-02, 2024-01-03, 2024-01-04, ...); "
        "a month is published only complete"
    ]


def test_a_published_month_that_loses_a_day_is_requested_once_per_set_of_days_it_lacks():
    held = {"2024-01-20": 40}
    plans = ticks(
        month(lacking=("2024-01-20",), changed=held, published=30, last_run=25),  # its day 20 held on a re-run
        month(lacking=("2024-01-20",), changed=held, published=30, last_run=45),  # its run failed naming it
        month(lacking=("2024-01-20",), changed={**held, "2024-01-03": 50}, published=30, last_run=45),  # promote
        month(lacking=("2024-01-20",), changed={**held, "2024-01-03": 60}, published=30, last_run=45),  # rollback
        month(lacking=("2024-01-20", "2024-01-21"), changed={**held, "2024-01-21": 70}, published=30, last_run=45),
        month(changed={"2024-01-20": 80, "2024-01-21": 90}, published=30, last_run=75),  # both healed
    )
    assert [months_requested(p) for p in plans] == [["2024-01-01"], [], [], [], ["2024-01-01"], ["2024-01-01"]]
    assert plans[0].requests[0].reason == "2024-01: published, now lacks 2024-01-20: its run fails naming them"
    assert plans[3].waiting == [
        "2024-01: its run for this state of its days fails for lacking 2024-01-20; waiting for a day to change"
    ]


def test_a_month_waits_while_its_days_are_being_written():
    [plan] = ticks(month(writing=("2024-01-05",), changed={"2024-01-05": 40}, published=30))
    assert plan.requests == [] and plan.waiting == ["2024-01: days being written (2024-01-05)"]


def test_the_summary_is_requested_once_per_newest_day():
    first = aggregates.plan([], newest_day=40, summary=30, requested={})
    again = aggregates.plan([], newest_day=40, summary=30, requested=first.requested)
    later = aggregates.plan([], newest_day=50, summary=45, requested=again.requested)
    assert [months_requested(p) for p in (first, again, later)] == [[aggregates.SUMMARY], [], [aggregates.SUMMARY]]
    assert aggregates.plan([], newest_day=40, summary=45, requested={}).requests == []


# --- the sensor over real runs -------------------------------------------------------------------


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


class Sensor:
    """The aggregates sensor as the daemon evaluates it: one tick after another, its cursor kept."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance, self.cursor, self.skip_message = defs, instance, None, ""

    def tick(self) -> set[tuple[str, str | None]]:
        """One evaluation: what it requests."""
        context = dg.build_sensor_context(instance=self.instance, definitions=self.defs, cursor=self.cursor)
        result = aggregates_follow_days(context)
        self.cursor = result.cursor
        self.skip_message = result.skip_reason.skip_message if result.skip_reason else ""
        return {(r.job_name, r.partition_key) for r in result.run_requests}


def switch(instance: dg.DagsterInstance, day: str, *notes: str) -> None:
    """What a blue-green promote or rollback records: a new materialization of the day's daily_revenue."""
    for note in notes:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(DAILY, partition=day, metadata={"publication": note})
        )


def run_requested(data_dir, instance, requests):
    """What the daemon would launch for the sensor, run in process."""
    for job, partition in requests:
        materialize(
            data_dir, instance, partition=partition, selection=[MONTHLY if job == monthly_revenue_job.name else SUMMARY]
        )


@dataclasses.dataclass
class January:
    data_dir: pathlib.Path
    instance: dg.DagsterInstance
    sensor: Sensor
    held: set  # the first tick, after the backfill
    refused: dg.ExecuteInProcessResult  # January launched by hand while incomplete
    refused_wrote: bool  # whether monthly_revenue existed right after it
    waiting: str  # the tick after it: what the sensor waits for
    loop: list[set]  # the ticks while January stays incomplete: a promote, a rollback, fix-up blocks
    completed: set  # the tick after the last fix-up block
    fixed: dict  # after the fix-up blocks: global_orders' days and held days' status, quarantined rows
    caught_up: set  # the tick after the runs it requested


@pytest.fixture(scope="module")
def january(spark, tmp_path_factory) -> January:
    """January backfilled in one run with the default feed (bad region-days on), the sensor started
    after it; January then attempted by hand and refused, one of its days switched by a blue-green
    promote and rollback (the loop of issue 28); then its held days corrected, block by block."""
    data_dir = tmp_path_factory.mktemp("january")
    instance = dg.DagsterInstance.ephemeral()
    sensor = Sensor(pipeline_defs(data_dir), instance)
    materialize(data_dir, instance, first="2024-01-01", last="2024-01-31", raise_on_error=False)
    held = sensor.tick()
    run_requested(data_dir, instance, held)
    refused = materialize(data_dir, instance, partition="2024-01-01", selection=[MONTHLY], raise_on_error=False)
    refused_wrote = (data_dir / "lake" / "monthly_revenue").exists()
    loop = [sensor.tick()]
    waiting = sensor.skip_message
    for note in ("promote", "rollback"):
        switch(instance, CLEAN_DAY, note)
        loop.append(sensor.tick())
    add_corrections(str(data_dir / "source_corrections.json"), [f"{r} {d}" for r, d in BAD])
    for first, last in blocks(sorted({d for _, d in BAD})):  # a fix-up backfill: one run per block of days
        days = {"partition": first} if first == last else {"first": first, "last": last}
        assert materialize(data_dir, instance, **days).success
        loop.append(sensor.tick())
    completed = loop.pop()
    fixed = {
        "days": set(lake(data_dir, "global_orders")["day"].to_pylist()),
        "quarantined": sum(lake(data_dir, f"quarantined_orders/{region_key(r)}").num_rows for r in REGIONS),
        "status": instance.get_status_by_partition(dg.AssetKey("global_orders"), held_days(), daily_partitions),
    }
    run_requested(data_dir, instance, completed)
    return January(
        data_dir, instance, sensor, held, refused, refused_wrote, waiting, loop, completed, fixed, sensor.tick()
    )


def held_days() -> list[str]:
    return sorted({d for _, d in BAD})


def test_the_default_january_has_bad_region_days():
    assert len(BAD) >= 2 and len(blocks(sorted({d for _, d in BAD}))) >= 2


def test_a_month_with_held_days_is_not_published_but_the_summary_is(january):
    assert january.held == {("revenue_summary_job", None)}


def test_a_refused_month_is_not_requested_again_when_its_days_change(january):
    assert not january.refused.success
    assert january.loop and all(("monthly_revenue_job", "2024-01-01") not in tick for tick in january.loop)
    assert "2024-01: " in january.waiting and " of 31 days not materialized (" in january.waiting


def test_once_its_days_are_corrected_the_month_and_the_summary_are_requested_once(january):
    assert january.completed == {("monthly_revenue_job", "2024-01-01"), ("revenue_summary_job", None)}
    assert january.caught_up == set()
    assert "up to date: 2024-01" in january.sensor.skip_message


def test_monthly_revenue_sums_the_days_of_its_month(january):
    daily = lake(january.data_dir, "daily_revenue")
    monthly = lake(january.data_dir, "monthly_revenue")
    assert monthly["month"].to_pylist() == ["2024-01-01"] * 4
    for row in monthly.to_pylist():
        mine = daily.filter(pc.equal(daily["region"], row["region"]))
        assert row["days"] == 31 and row["orders"] == pc.sum(mine["orders"]).as_py()
        assert row["revenue_usd"] == pytest.approx(pc.sum(mine["revenue_usd"]).as_py(), abs=0.01)


def test_revenue_summary_covers_the_trailing_30_days(january):
    summary = lake(january.data_dir, "revenue_summary")
    daily = lake(january.data_dir, "daily_revenue")
    recent = daily.filter(pc.greater_equal(daily["day"], "2024-01-02"))
    assert set(summary["window_start"].to_pylist()) == {"2024-01-02"}
    assert set(summary["window_end"].to_pylist()) == {"2024-01-31"}
    for row in summary.to_pylist():
        mine = recent.filter(pc.equal(recent["region"], row["region"]))
        assert row["days_with_data"] == 30 and row["orders"] == pc.sum(mine["orders"]).as_py()


def test_a_fix_up_backfill_of_the_held_days_after_corrections_turns_them_green(january):
    assert january.fixed["days"] == {d.isoformat() for d in JANUARY}
    assert january.fixed["quarantined"] == 0
    assert january.fixed["status"] == {d: dg.AssetPartitionStatus.MATERIALIZED for d in held_days()}


def test_a_month_launched_by_hand_with_a_missing_day_fails_naming_it(january):
    held = held_days()
    failure = next(e for e in january.refused.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"{len(held)} of 31 days lack daily_revenue ({', '.join(held)})" in str(failure.event_specific_data.error)
    assert not january.refused_wrote


def test_a_rewritten_day_refreshes_its_month_and_the_summary_and_nothing_else(january):
    data_dir, instance, sensor = january.data_dir, january.instance, january.sensor
    # first up to date: the fixture's corrected days re-home their late orders, and the month follows
    catch_up_late_data(data_dir, instance, ticks=1)
    run_requested(data_dir, instance, sensor.tick())
    assert sensor.tick() == set()
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
    second = sensor.tick()
    assert second == {("monthly_revenue_job", "2024-01-01"), ("revenue_summary_job", None)}
    run_requested(data_dir, instance, second)
    after = lake(data_dir, "monthly_revenue")
    orders_before = dict(zip(before["region"].to_pylist(), before["orders"].to_pylist(), strict=True))
    orders_after = dict(zip(after["region"].to_pylist(), after["orders"].to_pylist(), strict=True))
    # every order of the feed day counts in January, whichever day it re-homed to
    assert {r: orders_before[r] - orders_after[r] for r in orders_after} == {r: 100 for r in orders_after}
    assert sensor.tick() == set()  # caught up: nothing is recomputed twice


def test_a_published_month_that_loses_a_day_is_recomputed_and_fails_naming_it(january):
    data_dir, instance, sensor = january.data_dir, january.instance, january.sensor
    # 20 January is re-delivered broken in every region: the re-run holds the day
    held = materialize(data_dir, instance, partition="2024-01-20", null_user_day_rate=1.0, raise_on_error=False)
    assert not held.success
    requests = sensor.tick()
    assert ("monthly_revenue_job", "2024-01-01") in requests
    result = materialize(data_dir, instance, partition="2024-01-01", selection=[MONTHLY], raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "1 of 31 days lack daily_revenue (2024-01-20)" in str(failure.event_specific_data.error)
    status = instance.get_status_by_partition(MONTHLY, ["2024-01-01"], monthly_partitions)
    assert status == {"2024-01-01": dg.AssetPartitionStatus.FAILED}
    assert ("monthly_revenue_job", "2024-01-01") not in sensor.tick()  # no loop
    for note in ("promote", "rollback"):  # other days switched: the month still lacks the same day
        switch(instance, CLEAN_DAY, note)
        assert ("monthly_revenue_job", "2024-01-01") not in sensor.tick()
