"""The simulated feed is deterministic and carries exactly the defects it announces."""

import datetime as dt
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline_patterns.lib.simulated_feed import (
    FeedFaults,
    FeedSettings,
    SourceUnavailableError,
    expected_orders,
    region_day_defects,
    region_day_deliveries,
    usd_rate,
)

SETTINGS = FeedSettings(orders_per_day=500)
DAY = dt.date(2024, 1, 2)


def records(region: str, day: dt.date, settings: FeedSettings = SETTINGS) -> pa.Table:
    return pa.concat_tables(region_day_deliveries(region, day, settings).values())


def test_same_region_day_and_seed_give_the_same_records():
    assert records("us-east", DAY).equals(records("us-east", DAY))
    assert not records("us-east", DAY).equals(records("us-east", DAY, FeedSettings(orders_per_day=500, seed=8)))
    assert not records("us-east", DAY).equals(records("us-west", DAY))


def test_each_region_day_delivers_exactly_its_announced_defects():
    for region in ["us-east", "us-west", "eu-west", "ap-south"]:
        for offset in range(20):
            day = DAY + dt.timedelta(offset)
            defects = region_day_defects(region, day, SETTINGS)
            rows = records(region, day)
            assert rows.num_rows == defects.orders + defects.duplicate_deliveries
            assert len(set(rows["order_id"].to_pylist())) == defects.orders
            assert pc.sum(pc.ends_with(rows["batch_id"], "redelivery")).as_py() == defects.duplicate_deliveries
            unique = expected_orders(region, day, SETTINGS)
            late = pc.sum(pc.less(pc.utf8_slice_codeunits(unique["event_ts"], 0, 10), day.isoformat())).as_py()
            assert late == defects.late_records
            assert unique["user_id"].null_count == defects.null_user_ids


def test_bad_region_days_are_rare_but_present_over_a_quarter():
    defects = [
        region_day_defects(r, DAY + dt.timedelta(i), FeedSettings())
        for r in ["us-east", "us-west", "eu-west", "ap-south"]
        for i in range(90)
    ]
    null_days = sum(1 for d in defects if d.null_user_ids)
    collapsed = sum(1 for d in defects if d.collapsed_volume)
    assert 0 < null_days < 20 and 0 < collapsed < 20
    assert all(d.orders < 200 for d in defects if d.collapsed_volume)


def test_regions_sell_in_their_own_currencies():
    assert set(records("eu-west", DAY)["currency"].to_pylist()) == {"EUR", "GBP"}
    assert set(records("us-east", DAY)["currency"].to_pylist()) == {"USD"}
    assert set(records("new-region", DAY)["currency"].to_pylist()) == {"USD"}


def test_fx_rates_are_deterministic_and_near_their_base():
    assert usd_rate("EUR", DAY) == usd_rate("EUR", DAY)
    assert usd_rate("EUR", DAY) != usd_rate("EUR", DAY + dt.timedelta(1))
    assert 1.0 < usd_rate("EUR", DAY) < 1.2 and usd_rate("USD", DAY) == 1.0
    with pytest.raises(KeyError, match="XXX"):
        usd_rate("XXX", DAY)


def test_fault_injection_fails_calls_at_the_configured_rate_and_during_outages():
    faults = FeedFaults(failure_rate=0.3)
    failures = 0
    for _ in range(2000):
        try:
            faults.check("feed")
        except SourceUnavailableError:
            failures += 1
    assert 450 < failures < 750
    now = dt.datetime(2024, 1, 2, 12, tzinfo=dt.UTC)
    down = FeedFaults(outages=[(now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=1))])
    with pytest.raises(SourceUnavailableError, match="outage"):
        down.check("feed", now)
    down.check("feed", now + dt.timedelta(minutes=2))


@pytest.mark.integration
def test_the_defects_command_lists_region_days_as_json_lines():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline_patterns.cli",
            "source",
            "defects",
            "--start",
            "2024-01-01",
            "--end",
            "2024-03-31",
            "--defect",
            "collapsed_volume",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and all("collapsed_volume" in line["defects"] for line in lines)
    expected = [
        (r, (dt.date(2024, 1, 1) + dt.timedelta(i)).isoformat())
        for i in range(91)
        for r in ["us-east", "us-west", "eu-west", "ap-south"]
        if region_day_defects(r, dt.date(2024, 1, 1) + dt.timedelta(i), FeedSettings()).collapsed_volume
    ]
    assert [(line["region"], line["day"]) for line in lines] == expected
