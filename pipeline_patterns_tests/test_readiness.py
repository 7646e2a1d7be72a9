"""Regions close their day in their own time zone: each region's close and ready instants, winter
and summer (DST), and the `regions_close_their_day` sensor's requests at frozen instants, against
an ephemeral instance whose materializations are reported without runs (no Spark, nothing runs)."""

import datetime as dt

import dagster as dg
import pytest

from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, region_key
from pipeline_patterns.defs.readiness import (
    CLOSES_TAG,
    REASON_TAG,
    DayClose,
    close_requests,
    region_day_assets,
    regions_close_their_day,
)
from pipeline_patterns.lib.readiness import (
    closes_at,
    global_ready_at,
    ready_at,
    ready_region_days,
    timeline,
)

HOUR = dt.timedelta(hours=1)
SECOND = dt.timedelta(seconds=1)
WINTER = dt.date(2024, 1, 5)
SUMMER = dt.date(2024, 7, 5)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("region", "day", "closes"),
    [
        # winter: IST (no DST), GMT, EST, PST
        ("ap-south", WINTER, "2024-01-05T18:30"),
        ("eu-west", WINTER, "2024-01-06T00:00"),
        ("us-east", WINTER, "2024-01-06T05:00"),
        ("us-west", WINTER, "2024-01-06T08:00"),
        # summer: IST, BST, EDT, PDT
        ("ap-south", SUMMER, "2024-07-05T18:30"),
        ("eu-west", SUMMER, "2024-07-05T23:00"),
        ("us-east", SUMMER, "2024-07-06T04:00"),
        ("us-west", SUMMER, "2024-07-06T07:00"),
        # the days the clocks change: the local day is 23 or 25 hours, its close is in the new offset
        ("us-west", dt.date(2024, 3, 10), "2024-03-11T07:00"),
        ("us-west", dt.date(2024, 11, 3), "2024-11-04T08:00"),
        ("eu-west", dt.date(2024, 3, 31), "2024-03-31T23:00"),
        ("eu-west", dt.date(2024, 10, 27), "2024-10-28T00:00"),
    ],
)
def test_a_region_closes_its_day_at_its_local_midnight(region, day, closes):
    assert closes_at(region, day) == utc(closes)
    assert closes_at(region, day).tzinfo == dt.UTC
    assert ready_at(region, day, HOUR) == utc(closes) + HOUR


def test_a_region_day_is_ready_at_its_close_plus_grace_not_a_second_before():
    us_west = utc("2024-01-06T09:00")  # 08:00 close + 60 min
    assert ready_region_days(us_west - SECOND, [WINTER], ["us-west"], HOUR) == []
    assert ready_region_days(us_west, [WINTER], ["us-west"], HOUR) == [("us-west", WINTER)]


def test_exactly_the_closed_regions_are_ready_between_the_first_and_the_last_close():
    days = [WINTER - dt.timedelta(days=1), WINTER]
    ready = ready_region_days(utc("2024-01-06T05:30"), days, REGIONS, dt.timedelta(minutes=30))
    # every region of the 4th; of the 5th, us-east's close at 05:00 + 30 min is the instant itself
    assert ready == [(r, days[0]) for r in REGIONS] + [("us-east", WINTER), ("eu-west", WINTER), ("ap-south", WINTER)]


def test_the_global_day_is_ready_when_its_last_region_is():
    assert global_ready_at(WINTER, REGIONS, HOUR) == utc("2024-01-06T09:00")  # us-west, PST
    assert global_ready_at(SUMMER, REGIONS, HOUR) == utc("2024-07-06T08:00")  # us-west, PDT
    assert global_ready_at(WINTER, ["ap-south", "eu-west"], HOUR) == utc("2024-01-06T01:00")


def test_a_negative_grace_and_a_naive_now_are_refused():
    with pytest.raises(ValueError, match="grace"):
        ready_at("us-east", WINTER, -SECOND)
    with pytest.raises(ValueError, match="timezone-aware"):
        ready_region_days(dt.datetime(2024, 1, 6, 9), [WINTER], REGIONS, HOUR)


def test_the_timeline_lists_the_regions_by_close_and_the_global_ready_instant():
    line = timeline(WINTER, REGIONS, HOUR)
    assert [(c.region, c.closes_at, c.ready_at) for c in line.regions] == [
        ("ap-south", utc("2024-01-05T18:30"), utc("2024-01-05T19:30")),
        ("eu-west", utc("2024-01-06T00:00"), utc("2024-01-06T01:00")),
        ("us-east", utc("2024-01-06T05:00"), utc("2024-01-06T06:00")),
        ("us-west", utc("2024-01-06T08:00"), utc("2024-01-06T09:00")),
    ]
    assert line.global_ready_at == utc("2024-01-06T09:00")
    table = line.markdown().splitlines()
    assert table[2] == "| ap-south | Asia/Kolkata | 2024-01-05 18:30 UTC | 2024-01-05 19:30 UTC |"
    assert table[-1] == "| **global** | | | **2024-01-06 09:00 UTC** |"


# The sensor's function, at frozen instants, on an ephemeral instance.

DAY = WINTER.isoformat()


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def report_materialized(instance, key: dg.AssetKey, day: str = DAY) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=day))


def materialize_region(instance, region: str, day: str = DAY) -> None:
    for key in region_day_assets(region)[1:]:  # the step's three outputs; the landing needs no status
        report_materialized(instance, key, day)


def requested(instance, now, lookback=1):
    """The closes requested at `now` (the UTC day of `now` and the day before, by default)."""
    requests, waits = close_requests(instance, now, grace=HOUR, lookback_days=lookback)
    return [r.tags[CLOSES_TAG] for r in requests], requests, waits


def status(instance, key: dg.AssetKey, day: str = DAY):
    return (instance.get_status_by_partition(key, [day], daily_partitions) or {}).get(day)


@pytest.mark.parametrize(
    ("region", "ready"),
    [("eu-west", "2024-01-06T01:00"), ("us-east", "2024-01-06T06:00"), ("us-west", "2024-01-06T09:00")],
)
def test_a_region_day_is_requested_at_its_ready_instant_not_a_second_before(instance, region, ready):
    before, _, waits = requested(instance, utc(ready) - SECOND)
    assert f"{region} {DAY}" not in before
    assert f"{DAY} {region}: ready at {utc(ready).isoformat()}" in waits
    at, requests, _ = requested(instance, utc(ready))
    assert f"{region} {DAY}" in at
    request = next(r for r in requests if r.tags[CLOSES_TAG] == f"{region} {DAY}")
    assert request.partition_key == DAY
    assert request.run_key == f"close {region} {DAY}"
    assert request.asset_selection == [
        dg.AssetKey([layer, region_key(region)])
        for layer in ("raw_orders", "regional_orders", "quarantined_orders", "late_orders")
    ]


def test_exactly_the_ready_region_days_are_requested(instance):
    names, requests, waits = requested(instance, utc("2024-01-06T06:00"))
    # the 5th: ap-south, eu-west and us-east ready, us-west at 09:00; the 6th: not yet a partition
    assert sorted(names) == sorted(f"{r} {DAY}" for r in ("us-east", "eu-west", "ap-south"))
    assert requests[0].tags[REASON_TAG] == "us-east closed 2024-01-05 at 2024-01-06T05:00:00+00:00 UTC (+60 min grace)"
    assert f"{DAY} us-west: ready at 2024-01-06T09:00:00+00:00" in waits


def test_a_region_east_of_utc_waits_for_its_utc_day_to_become_a_partition(instance):
    # ap-south is ready at 19:30 UTC on the 5th, but Dagster's partition 2024-01-05 exists at midnight
    names, _, waits = requested(instance, utc("2024-01-05T19:30"), lookback=0)  # the UTC day of `now` alone
    assert names == []
    assert f"{DAY} ap-south: closed, the UTC day's partition exists at 2024-01-06T00:00:00+00:00" in waits
    names, _, _ = requested(instance, utc("2024-01-06T00:00"))
    assert names == [f"ap-south {DAY}"]


def test_a_materialized_region_day_is_not_requested_again(instance):
    materialize_region(instance, "us-east")
    assert status(instance, dg.AssetKey(["regional_orders", "us_east"])) == dg.AssetPartitionStatus.MATERIALIZED
    names, _, waits = requested(instance, utc("2024-01-06T06:00"))
    assert sorted(names) == [f"ap-south {DAY}", f"eu-west {DAY}"]
    assert not any(w.startswith(f"{DAY} us-east") for w in waits)


def test_the_global_day_waits_until_its_last_region_is_ready_and_all_four_are_materialized(instance):
    for region in ("ap-south", "eu-west", "us-east"):
        materialize_region(instance, region)
    names, _, waits = requested(instance, utc("2024-01-06T08:59:59"))
    assert names == []  # us-west not ready, so neither its region-day nor the global day
    assert f"{DAY} global: waits for us-west (ready at 2024-01-06T09:00:00+00:00)" in waits

    names, _, waits = requested(instance, utc("2024-01-06T09:00"))
    assert names == [f"us-west {DAY}"]  # ready now, but not materialized: the global day still waits
    assert f"{DAY} global: waits for regional_orders/us_west (not materialized)" in waits

    materialize_region(instance, "us-west")
    names, requests, _ = requested(instance, utc("2024-01-06T09:00"))
    assert names == [f"global {DAY}"]
    assert requests[0].asset_selection == [dg.AssetKey("global_orders"), dg.AssetKey("daily_revenue")]
    assert requests[0].run_key == f"close global {DAY}"
    assert requests[0].partition_key == DAY
    assert "the last us-west at 2024-01-06T08:00:00+00:00 UTC (+60 min grace)" in requests[0].tags[REASON_TAG]


def test_a_materialized_global_day_is_not_requested_again(instance):
    for region in REGIONS:
        materialize_region(instance, region)
    report_materialized(instance, dg.AssetKey("global_orders"))
    report_materialized(instance, dg.AssetKey("daily_revenue"))
    names, _, waits = requested(instance, utc("2024-01-06T12:00"), lookback=1)
    assert not any(n.endswith(DAY) for n in names)
    assert not any(w.startswith(DAY) for w in waits)


def test_nothing_is_requested_before_the_partitions_start(instance):
    assert close_requests(instance, utc("2023-12-31T23:00"), grace=HOUR, lookback_days=3) == ([], [])
    names, _, _ = requested(instance, utc("2024-01-02T12:00"), lookback=5)
    assert sorted(names) == sorted(f"{r} 2024-01-01" for r in REGIONS)  # not 2023-12-28 .. 31


def test_the_sensor_evaluates_against_the_real_clock():
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"day_close": DayClose(grace_minutes=30)})
        result = regions_close_their_day(context)
    assert isinstance(result, dg.SensorResult)
    assert result.run_requests or result.skip_reason
    assert regions_close_their_day.default_status == dg.DefaultSensorStatus.STOPPED
