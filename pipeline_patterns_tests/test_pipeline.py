"""The daily regional pipeline end to end, in process, checked exactly against the simulator."""

import datetime as dt

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from pipeline_patterns.defs.partitions import REGIONS, region_key
from pipeline_patterns.lib.delta_writes import content_hash
from pipeline_patterns.lib.simulated_feed import (
    FeedSettings,
    expected_day_orders,
    expected_orders,
    region_day_defects,
    usd_rate,
)
from pipeline_patterns_tests.helpers import (
    TABLES,
    TEST_ORDERS_PER_DAY,
    lake_hashes,
    lake_table,
    materialize,
    pipeline_defs,
)

SETTINGS = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)
DAYS = [dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)]


def as_records(table: pa.Table) -> set[tuple]:
    """(order_id, user_id, amount, currency, event_ts, batch_id) as comparable text."""
    event_ts = table["event_ts"]
    if pa.types.is_timestamp(event_ts.type):
        event_ts = pc.strftime(event_ts.cast(pa.timestamp("s", tz="UTC")), "%Y-%m-%dT%H:%M:%SZ")
    amounts = [f"{float(a):.2f}" for a in table["amount"].to_pylist()]
    return set(
        zip(
            table["order_id"].to_pylist(),
            table["user_id"].to_pylist(),
            amounts,
            table["currency"].to_pylist(),
            event_ts.to_pylist(),
            table["batch_id"].to_pylist(),
            strict=True,
        )
    )


@pytest.fixture
def two_days(clean_days):
    """The shared clean scenario (conftest.py): the whole graph for 2024-01-02 and 01-03, a run each."""
    return clean_days.data_dir, clean_days.instance, clean_days.results


def test_regional_tables_hold_exactly_the_simulated_orders_once(two_days):
    data_dir, _, _ = two_days
    for region in REGIONS:
        table = lake_table(data_dir, f"regional_orders/{region_key(region)}")
        for day in DAYS[:2]:
            rows = table.filter(pc.equal(table["day"], day.isoformat()))
            expected = expected_orders(region, day, SETTINGS)
            assert rows.num_rows == expected.num_rows
            assert len(set(rows["order_id"].to_pylist())) == rows.num_rows, "duplicate order_ids"
            assert as_records(rows) == as_records(expected)


def test_duplicate_deliveries_are_dropped_keeping_the_latest(two_days):
    data_dir, _, results = two_days
    table = lake_table(data_dir, "regional_orders/us_east")
    redelivered = pc.sum(pc.ends_with(table["batch_id"], "redelivery")).as_py()
    assert redelivered > 0, "the latest delivery of a redelivered order is the redelivery"
    dropped = [
        e.materialization.metadata["duplicates_dropped"].value
        for r in results
        for e in r.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["regional_orders", "us_east"])
    ]
    assert sum(dropped) == redelivered


def test_global_orders_convert_every_order_to_usd_with_the_event_days_rate(two_days):
    data_dir, _, _ = two_days
    table = lake_table(data_dir, "global_orders")
    # day by day, each global day read the feed days delivered by then: its own
    expected = pa.concat_tables(expected_day_orders(d, SETTINGS, [d], REGIONS) for d in DAYS[:2])
    assert table.num_rows == expected.num_rows
    assert len(set(table["order_id"].to_pylist())) == table.num_rows
    want = sum(
        round(float(a) * usd_rate(c, dt.date.fromisoformat(ts[:10])), 2)
        for a, c, ts in zip(
            expected["amount"].to_pylist(),
            expected["currency"].to_pylist(),
            expected["event_ts"].to_pylist(),
            strict=True,
        )
    )
    assert pc.sum(table["amount_usd"]).as_py() == pytest.approx(want, abs=0.01)
    assert set(table["currency"].to_pylist()) == {"USD", "MXN", "EUR", "GBP", "INR", "SGD"}


def test_daily_revenue_summarises_each_region_day(two_days):
    data_dir, _, _ = two_days
    revenue = lake_table(data_dir, "daily_revenue")
    assert revenue.num_rows == len(REGIONS) * 2
    orders = lake_table(data_dir, "global_orders")
    for row in revenue.to_pylist():
        mine = orders.filter(pc.and_(pc.equal(orders["day"], row["day"]), pc.equal(orders["region"], row["region"])))
        assert row["orders"] == mine.num_rows
        assert row["revenue_usd"] == pytest.approx(pc.sum(mine["amount_usd"]).as_py(), abs=0.01)
        assert row["distinct_users"] == pc.count_distinct(mine["user_id"]).as_py()


def test_every_asset_is_readable_per_partition_with_load_asset_value(two_days):
    data_dir, instance, _ = two_days
    defs = pipeline_defs(data_dir)
    revenue = defs.load_asset_value("daily_revenue", partition_key="2024-01-03", instance=instance)
    assert set(revenue["day"].to_pylist()) == {"2024-01-03"}
    assert revenue.num_rows == len(REGIONS)
    regional = defs.load_asset_value(["regional_orders", "eu_west"], partition_key="2024-01-02", instance=instance)
    assert regional.num_rows == expected_orders("eu-west", DAYS[0], SETTINGS).num_rows
    raw = defs.load_asset_value(["raw_orders", "eu_west"], partition_key="2024-01-02", instance=instance)
    assert raw.num_rows == regional.num_rows + region_day_defects("eu-west", DAYS[0], SETTINGS).duplicate_deliveries
    assert raw.schema.field("amount").type == pa.string()  # as received


def test_materializations_report_rows_version_uri_and_duplicates(two_days):
    data_dir, _, results = two_days
    events = results[-1].get_asset_materialization_events()
    assert {e.partition for e in events} == {"2024-01-03"}
    for event in events:
        metadata = event.materialization.metadata
        if event.asset_key.path[0] == "raw_orders":
            assert metadata["files"].value >= 4
            continue
        table = lake_table(data_dir, "/".join(event.asset_key.path))
        assert metadata["dagster/row_count"].value == (pc.sum(pc.equal(table["day"], "2024-01-03")).as_py() or 0)
        assert metadata["delta_version"].value >= 1
        assert metadata["table_uri"].value.endswith("/".join(event.asset_key.path))
        if event.asset_key.path[0] == "regional_orders":
            assert metadata["branch"].value == "processed" and metadata["duplicates_dropped"].value >= 0
            assert metadata["dagster/row_count"].value > 0


def test_every_delta_commit_carries_the_run_id(two_days):
    data_dir, _, results = two_days
    run_ids = {r.run_id for r in results}
    for name in TABLES:
        history = DeltaTable(str(data_dir / "lake" / name)).history()
        assert {h["dagster_run_id"] for h in history} == run_ids


def test_rerunning_a_partition_leaves_identical_content(clean_days, tmp_path):
    data_dir = clean_days.copy_to(tmp_path / "data")
    instance = dg.DagsterInstance.ephemeral()
    materialize(data_dir, instance, partition="2024-01-02")  # after 01-03: it takes in 01-03's late orders
    before = lake_hashes(data_dir)
    materialize(data_dir, instance, partition="2024-01-02")
    assert lake_hashes(data_dir) == before
    # and the re-runs replaced their own day only: the neighbour day was written once
    history = DeltaTable(str(data_dir / "lake" / "global_orders")).history()
    assert [h["dagster_partitions"] for h in reversed(history)] == [
        "2024-01-02",
        "2024-01-03",
        "2024-01-02",
        "2024-01-02",
    ]


def test_a_range_in_one_run_equals_the_same_days_run_one_by_one(spark, tmp_path, two_days):
    day_by_day, _, _ = two_days
    instance = dg.DagsterInstance.ephemeral()
    materialize(tmp_path, instance, partition="2024-01-03")  # a day written before, to be replaced
    result = materialize(tmp_path, instance, first="2024-01-02", last="2024-01-04")
    assert result.success
    table = lake_table(tmp_path, "global_orders")
    for day in DAYS:  # the range's global days hold their late orders from the range's later feed days
        rows = table.filter(pc.equal(table["day"], day.isoformat()))
        assert as_records(rows) == as_records(expected_day_orders(day, SETTINGS, DAYS, REGIONS)), day
    for name in TABLES[: len(REGIONS)]:  # the regional tables: per feed day, as day by day
        mine = lake_table(tmp_path, name)
        first_two = mine.filter(pc.less(mine["day"], "2024-01-04"))
        assert content_hash(first_two) == content_hash(lake_table(day_by_day, name)), name
    # day by day, the global days equal the range's once the late-data sensor's runs brought them
    # up to date: test_late_data.py
    assert set(lake_table(tmp_path, "daily_revenue")["day"].to_pylist()) == {d.isoformat() for d in DAYS}


def test_one_regions_failure_does_not_stop_the_other_regions(spark, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    # fast retry and breaker timings (helpers): a failing source gives up in well under a second
    result = materialize(tmp_path, instance, partition="2024-01-02", raise_on_error=False, failure_rate=1.0)
    assert not result.success
    # every extraction fails, so nothing downstream runs, but each region failed on its own
    failed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
    assert failed == {f"raw_orders__{region_key(r)}" for r in REGIONS}
    # now only us_east's landing is present: the other regions still process, global waits
    materialize(tmp_path, instance, partition="2024-01-02", selection="raw_orders/us_east")
    result = materialize(
        tmp_path,
        instance,
        partition="2024-01-02",
        selection=[
            f"{layer}/{r}"
            for layer in ("regional_orders", "quarantined_orders", "late_orders")
            for r in ("us_east", "eu_west")
        ],
        raise_on_error=False,
    )
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert done == {"regional_orders/us_east", "quarantined_orders/us_east", "late_orders/us_east"}
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no landed data for region eu-west on 2024-01-02" in str(failure.event_specific_data.error)


def test_global_orders_holds_a_day_with_a_missing_region_day_names_it_and_processes_the_rest(spark, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    three = [
        f"{layer}/{region_key(r)}"
        for r in REGIONS[:3]
        for layer in ("raw_orders", "regional_orders", "quarantined_orders", "late_orders")
    ]
    materialize(tmp_path, instance, first="2024-01-02", last="2024-01-03", selection=three)
    last = ["raw_orders/ap_south", "regional_orders/ap_south", "quarantined_orders/ap_south", "late_orders/ap_south"]
    materialize(tmp_path, instance, partition="2024-01-03", selection=last)
    result = materialize(
        tmp_path,
        instance,
        first="2024-01-02",
        last="2024-01-03",
        selection=["global_orders", "daily_revenue"],
        raise_on_error=False,
    )
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "held 1 of 2 days" in str(failure.event_specific_data.error)
    assert "2024-01-02: ap-south: no clean data (not processed yet, or delivered empty)" in str(
        failure.event_specific_data.error
    )
    assert set(lake_table(tmp_path, "global_orders")["day"].to_pylist()) == {"2024-01-03"}
    assert {(e.asset_key.to_user_string(), e.partition) for e in result.get_asset_materialization_events()} == {
        ("global_orders", "2024-01-03"),
        ("daily_revenue", "2024-01-03"),
    }
    assert len([e for e in result.all_events if e.event_type_value == "STEP_START"]) == 1  # not retried


def test_the_replay_check_runs_on_demand_passes_on_clean_tables_and_fails_on_a_tampered_one(spark, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    materialize(tmp_path, instance, partition="2024-01-02")
    checks = dg.AssetSelection.checks_for_assets("daily_revenue")
    on_demand = materialize(tmp_path, instance, selection=checks, raise_on_error=False)
    check = next(e for e in on_demand.get_asset_check_evaluations() if e.check_name == "replay_matches")
    assert check.passed and check.metadata["day"].value == "2024-01-02"
    DeltaTable(str(tmp_path / "lake" / "global_orders")).delete("order_id = 'us-east-20240102-000001'")
    on_demand = materialize(tmp_path, instance, selection=checks, raise_on_error=False)
    check = next(e for e in on_demand.get_asset_check_evaluations() if e.check_name == "replay_matches")
    assert not check.passed and check.metadata["global_orders_identical"].value is False
