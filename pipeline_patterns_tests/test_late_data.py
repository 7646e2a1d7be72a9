"""Late and out-of-order data: an order counts in its event day, a later delivery brings exactly
the published days it touches up to date (the sensor, evaluated as the daemon does), a watermark
sends what is too late to late_orders, and the newest delivery wins whatever the arrival order."""

import datetime as dt
import io
import itertools
import re

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from pipeline_patterns.defs.assets.regional import with_left_days
from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.lake import Lake
from pipeline_patterns.defs.late_data import late_data_rehomes_days, rehome_requests, stale_days
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, region_key
from pipeline_patterns.lib import landing
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import content_hash, read_table
from pipeline_patterns.lib.late_data import event_day, late_day_counts, newest_deliveries, rehomed_frame
from pipeline_patterns.lib.orders import REGIONAL_SCHEMA
from pipeline_patterns.lib.quarantine import RegionDay
from pipeline_patterns.lib.simulated_feed import FeedSettings, region_day_deliveries, region_day_files
from pipeline_patterns.replay import verify_range
from pipeline_patterns_tests.helpers import (
    TEST_MIN_ORDERS,
    TEST_ORDERS_PER_DAY,
    Uncomputed,
    catch_up_late_data,
    materialize,
    pipeline_defs,
    pipeline_resources,
    run_late_data_requests,
)

UTC = dt.UTC
FAN_IN = ["global_orders", "daily_revenue"]
SETTINGS = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)


def delivery(order_id, feed_day, event, delivered, batch, amount=10.0):
    return {
        "order_id": order_id,
        "user_id": "u000001",
        "region": "us-east",
        "amount": amount,
        "currency": "USD",
        "event_ts": dt.datetime.fromisoformat(event).replace(tzinfo=UTC),
        "batch_id": batch,
        "delivered_at": dt.datetime.fromisoformat(delivered).replace(tzinfo=UTC),
        "day": feed_day,
    }


# Three orders delivered more than once across feed days: a correction (a), a late copy whose
# event day is earlier than its first delivery's (c), and a plain late order (b).
DELIVERIES = [
    delivery("a", "2024-01-03", "2024-01-03T10:00:00", "2024-01-03T12:00:00", "b1"),
    delivery("a", "2024-01-05", "2024-01-03T10:00:00", "2024-01-05T06:00:00", "b2", amount=11.0),
    delivery("b", "2024-01-05", "2024-01-02T10:00:00", "2024-01-05T06:00:00", "b2"),
    delivery("c", "2024-01-04", "2024-01-04T10:00:00", "2024-01-04T06:00:00", "b1"),
    delivery("c", "2024-01-05", "2024-01-03T23:00:00", "2024-01-05T07:00:00", "c9"),
    delivery("d", "2024-01-04", "2024-01-04T23:59:00", "2024-01-04T23:59:30", "b1"),
    # same delivery time and batch on two feed days: the tie is broken on the content
    delivery("e", "2024-01-04", "2024-01-04T08:00:00", "2024-01-05T01:00:00", "r", amount=5.0),
    delivery("e", "2024-01-05", "2024-01-04T08:00:00", "2024-01-05T01:00:00", "r", amount=4.0),
]


def as_table(rows):
    return pa.Table.from_pylist(list(rows), schema=REGIONAL_SCHEMA)


def test_every_order_counts_once_in_the_event_day_of_its_newest_delivery():
    won = newest_deliveries(as_table(DELIVERIES), allowed_lateness=3)
    got = {(r["order_id"], r["day"], r["feed_day"], r["amount"]) for r in won.to_pylist()}
    assert got == {
        ("a", "2024-01-03", "2024-01-05", 11.0),  # the correction, delivered two days later, wins
        ("b", "2024-01-02", "2024-01-05", 10.0),  # a late order re-homed to its event day
        ("c", "2024-01-03", "2024-01-05", 10.0),  # the newer copy moved it a day back: counted once
        ("d", "2024-01-04", "2024-01-04", 10.0),
        ("e", "2024-01-04", "2024-01-05", 4.0),  # a tie in time and batch: settled by content
    }


def test_deliveries_arriving_in_every_order_give_identical_days():
    expected = content_hash(newest_deliveries(as_table(DELIVERIES), allowed_lateness=3))
    hashes = {
        content_hash(newest_deliveries(as_table(p), allowed_lateness=3)) for p in itertools.permutations(DELIVERIES[:6])
    }
    assert hashes == {content_hash(newest_deliveries(as_table(DELIVERIES[:6]), allowed_lateness=3))}
    # and any split into per-day calls agrees with one call (a day depends on its feed days only)
    days = [newest_deliveries(as_table(DELIVERIES), 3, [d]) for d in ("2024-01-02", "2024-01-03", "2024-01-04")]
    assert content_hash(pa.concat_tables(days)) == expected


def test_a_newer_delivery_beyond_the_days_watermark_does_not_move_the_order():
    # allowed lateness 1: day 2024-01-03 reads feed days 03 and 04, so a's correction on 05 is not
    # its (the regional step sends such a delivery to late_orders, see the watermark test)
    won = newest_deliveries(as_table(DELIVERIES[:2]), allowed_lateness=1)
    assert [(r["order_id"], r["day"], r["amount"]) for r in won.to_pylist()] == [("a", "2024-01-03", 10.0)]


def test_an_event_just_after_its_feed_days_end_counts_with_its_feed_day():
    times = pa.array([dt.datetime(2024, 1, 5, 0, 3, tzinfo=UTC), dt.datetime(2024, 1, 2, 9, tzinfo=UTC)])
    assert event_day(times, pa.array(["2024-01-04", "2024-01-04"])).to_pylist() == ["2024-01-04", "2024-01-02"]
    assert late_day_counts(as_table(DELIVERIES[2:3]), "2024-01-05", 2) == (1, {})
    assert late_day_counts(as_table(DELIVERIES[2:3]), "2024-01-05", 3) == (0, {"2024-01-02": 1})


def test_a_one_day_window_without_earlier_deliveries_looks_for_no_redelivery(tmp_path):
    lake = Lake(uri=str(tmp_path / "lake"))
    day = RegionDay("2024-01-05", rows=3, outcomes=[], landed=3, duplicates=0, superseded=0, late_days={"x": 1})
    key, window = dg.AssetKey(["regional_orders", "us_east"]), DayWindow(dt.date(2024, 1, 5), dt.date(2024, 1, 6))
    # nothing written before it: no order of the window can take one away from an earlier day
    assert with_left_days(Uncomputed(), lake, key, Uncomputed(), [day], window, 3) == [day]
    assert with_left_days(Uncomputed(), lake, key, Uncomputed(), [day], window, 0) == [day]


def test_the_executors_rehoming_equals_the_arrow_rule_across_batch_boundaries(spark):
    rows = [dict(r, order_id=f"{r['order_id']}{i:03d}") for i in range(40) for r in DELIVERIES]
    frame = spark.createDataFrame(as_table(rows).to_pandas())  # pandas: built by Arrow, no Delta read
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "7")  # an order's rows span batches
    try:
        days = ["2024-01-02", "2024-01-03", "2024-01-04"]
        got = pa.Table.from_batches(rehomed_frame(frame, 3, days)._collect_as_arrow())
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    assert got.num_rows == 5 * 40
    assert content_hash(got) == content_hash(newest_deliveries(as_table(rows), 3, days))


def late_orders_of(feed_day: dt.date, event: str) -> set[str]:
    """The simulated feed's orders delivered with `feed_day` whose event day is `event`."""
    found = set()
    for region in REGIONS:
        for records in region_day_deliveries(region, feed_day, SETTINGS).values():
            days = pc.utf8_slice_codeunits(records["event_ts"], 0, 10)
            found |= set(records.filter(pc.equal(days, event))["order_id"].to_pylist())
    return found


def materialization_count(instance, key: str, day: str) -> int:
    return len(
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[day]), limit=100
        ).records
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory, spark):
    """2024-01-06 .. 01-09 published as one range, then the feed day 01-10 delivered alone."""
    data_dir = tmp_path_factory.mktemp("late")
    instance = dg.DagsterInstance.ephemeral()
    materialize(data_dir, instance, first="2024-01-06", last="2024-01-09")
    before = {t: read_table(str(data_dir / "lake" / t)) for t in FAN_IN}
    materialize(data_dir, instance, partition="2024-01-10")
    return data_dir, instance, before


def test_a_later_delivery_makes_exactly_its_published_event_days_stale(published):
    _, instance, _ = published
    stale = stale_days(instance)
    # feed day 01-10 carries orders of the three days before it (the simulator: 1 to 3 days late)
    assert sorted(stale) == ["2024-01-07", "2024-01-08", "2024-01-09"]
    assert all("2024-01-10" in why for reasons in stale.values() for why in reasons)
    result = late_data_rehomes_days(dg.build_sensor_context(instance=instance))
    assert [r.tags["pipeline_patterns/rehomes_days"] for r in result.run_requests] == ["2024-01-07...2024-01-09"]
    request = result.run_requests[0]
    assert request.tags["dagster/asset_partition_range_start"] == "2024-01-07"
    assert request.job_name == "rehome_late_orders"


def test_while_a_run_still_writes_the_feed_day_in_another_region_the_stale_days_wait(published):
    data_dir, instance, _ = published
    before, _ = rehome_requests(instance)
    # a run of feed day 01-10 not finished yet: its regional days are planned, not yet reported
    job = pipeline_defs(data_dir).resolve_job_def("daily_orders")
    run = instance.create_run_for_job(job, tags={"dagster/partition": "2024-01-10"})
    try:
        status = instance.get_status_by_partition(
            dg.AssetKey(["regional_orders", "us_east"]), ["2024-01-10"], daily_partitions
        )
        assert status == {"2024-01-10": dg.AssetPartitionStatus.IN_PROGRESS}
        requests, waiting = rehome_requests(instance)
        assert requests == []
        assert [w.split(":")[0] for w in waiting] == ["2024-01-07", "2024-01-08", "2024-01-09"]
        assert all("still being written (us-east 2024-01-10, us-west 2024-01-10" in w for w in waiting), waiting
    finally:
        instance.report_run_failed(run, "died before it wrote anything")
    assert rehome_requests(instance) == (before, [])  # the next tick requests what it would have


def test_the_requested_run_rehomes_the_late_orders_and_touches_nothing_else(published):
    data_dir, instance, before = published
    requests, waiting = rehome_requests(instance)
    assert not waiting
    untouched = materialization_count(instance, "global_orders", "2024-01-06")
    run_late_data_requests(data_dir, instance, requests)
    assert rehome_requests(instance) == ([], []), "nothing is stale after the run"
    orders = read_table(str(data_dir / "lake" / "global_orders"))
    for event in ("2024-01-07", "2024-01-08", "2024-01-09"):
        late = late_orders_of(dt.date(2024, 1, 10), event)
        assert late, event
        day = orders.filter(pc.equal(orders["day"], event))
        assert late <= set(day["order_id"].to_pylist()), f"{event} holds its late orders from 01-10"
        was = before["global_orders"].filter(pc.equal(before["global_orders"]["day"], event))
        assert day.num_rows == was.num_rows + len(late)
    on_feed_day = orders.filter(pc.equal(orders["day"], "2024-01-10"))
    assert not late_orders_of(dt.date(2024, 1, 10), "2024-01-07") & set(on_feed_day["order_id"].to_pylist())
    assert set(pc.utf8_slice_codeunits(on_feed_day["event_ts"].cast(pa.string()), 0, 10).to_pylist()) == {"2024-01-10"}
    # 01-06 is beyond every later delivery's lateness: not recomputed, content unchanged
    assert materialization_count(instance, "global_orders", "2024-01-06") == untouched
    for table in FAN_IN:
        now = read_table(str(data_dir / "lake" / table))
        same_day = [t.filter(pc.equal(t["day"], "2024-01-06")) for t in (now, before[table])]
        assert content_hash(same_day[0]) == content_hash(same_day[1])
    revenue = read_table(str(data_dir / "lake" / "daily_revenue"))
    counted = revenue.filter(pc.is_in(revenue["day"], value_set=pa.array(["2024-01-07", "2024-01-08", "2024-01-09"])))
    assert (
        pc.sum(counted["orders"]).as_py()
        == pc.sum(
            pc.is_in(orders["day"], value_set=pa.array(["2024-01-07", "2024-01-08", "2024-01-09"])).cast(pa.int64())
        ).as_py()
    )
    # the replay of the landed files gives the same tables
    gates = {"quality_gates": pipeline_resources(data_dir)["quality_gates"]}  # sized for the test volume
    comparisons = verify_range(data_dir, dt.date(2024, 1, 6), dt.date(2024, 1, 9), resources=gates)
    assert comparisons and all(c.identical for c in comparisons), [c for c in comparisons if not c.identical]


def test_day_by_day_runs_in_any_order_and_the_sensor_give_the_range_runs_tables(published, tmp_path):
    data_dir, published_instance, _ = published
    run_late_data_requests(data_dir, published_instance, rehome_requests(published_instance)[0])  # if run alone
    instance = dg.DagsterInstance.ephemeral()
    for day in ("2024-01-09", "2024-01-07", "2024-01-10", "2024-01-06", "2024-01-08"):
        materialize(tmp_path, instance, partition=day)
    catch_up_late_data(tmp_path, instance)  # as the daemon ticks, until nothing is stale
    for table in FAN_IN:
        ours, theirs = (read_table(str(d / "lake" / table)) for d in (tmp_path, data_dir))
        assert ours.num_rows == theirs.num_rows and content_hash(ours) == content_hash(theirs), table


def test_orders_beyond_the_watermark_go_to_late_orders_and_every_row_is_accounted(spark, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    strict = {"quality_gates": QualityGates(min_orders_per_day=TEST_MIN_ORDERS, allowed_lateness_days=1)}
    materialize(tmp_path, instance, first="2024-01-06", last="2024-01-07", resources=strict)
    orders = read_table(str(tmp_path / "lake" / "global_orders"))
    for region in REGIONS:
        late = read_table(str(tmp_path / "lake" / "late_orders" / region_key(region)))
        feed = late.filter(pc.equal(late["day"], "2024-01-07"))
        records = pa.concat_tables(region_day_deliveries(region, dt.date(2024, 1, 7), SETTINGS).values())
        event_days = pc.utf8_slice_codeunits(records["event_ts"], 0, 10)
        too_late = records.filter(pc.less(event_days, "2024-01-06"))  # more than one day before 01-07
        assert set(feed["order_id"].to_pylist()) == set(too_late["order_id"].to_pylist()), region
        assert set(feed["lateness_days"].to_pylist()) <= {2, 3}
        assert all("allowed lateness (1 days)" in reason for reason in feed["reason"].to_pylist())
        assert not set(feed["order_id"].to_pylist()) & set(orders["order_id"].to_pylist())
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(["regional_orders", region_key(region)]), asset_partitions=["2024-01-07"]
            ),
            limit=1,
        ).records[0]
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        assert meta["rows_too_late"] == feed.num_rows
        assert meta["rows_landed"] == (
            meta["dagster/row_count"]
            + meta["duplicates_dropped"]
            + meta["superseded_dropped"]
            + meta["rows_quarantined"]
            + meta["rows_too_late"]
        )


def test_a_correction_moving_an_order_to_a_later_day_takes_it_out_of_the_published_day(spark, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    materialize(tmp_path, instance, first="2024-01-06", last="2024-01-07")
    # us-east's 01-07 delivery corrects an order of 01-06: its event moves to 01-07, its amount changes
    records = pa.concat_tables(region_day_deliveries("us-east", dt.date(2024, 1, 6), SETTINGS).values())
    moved = records.filter(pc.equal(records["order_id"], "us-east-20240106-000010"))
    fields = {"event_ts": "2024-01-07T00:02:00Z", "delivered_at": "2024-01-07T12:00:00Z", "amount": "99.99"}
    fields |= {"batch_id": "us-east-20240107-fix"}
    for name, value in fields.items():
        moved = moved.set_column(moved.schema.get_field_index(name), name, pa.array([value]))
    buffer = io.BytesIO()
    pacsv.write_csv(moved, buffer)
    files = {**region_day_files("us-east", dt.date(2024, 1, 7), SETTINGS), "fix.csv": buffer.getvalue()}
    landing.land(tmp_path / "landing", "us-east", dt.date(2024, 1, 7), "hand-correction", files)
    us_east = [f"{t}/us_east" for t in ("regional_orders", "quarantined_orders", "late_orders")]
    materialize(tmp_path, instance, partition="2024-01-07", selection=[*us_east, *FAN_IN])
    stale = stale_days(instance)
    assert list(stale) == ["2024-01-06"], stale
    # the day counts one more order of the delivery than before: the one the correction takes away
    [why] = [w for w in stale["2024-01-06"] if w.startswith("us-east 2024-01-07")]
    now, were = map(int, re.match(r"us-east 2024-01-07: (\d+) orders of the day \(were (\d+)\)", why).groups())
    assert now == were + 1, why
    run_late_data_requests(tmp_path, instance, rehome_requests(instance)[0])
    orders = read_table(str(tmp_path / "lake" / "global_orders"))
    rows = orders.filter(pc.equal(orders["order_id"], "us-east-20240106-000010")).to_pylist()
    assert [(r["day"], r["amount"]) for r in rows] == [("2024-01-07", 99.99)]  # counted once, corrected
    revenue = read_table(str(tmp_path / "lake" / "daily_revenue"))
    assert pc.sum(revenue["orders"]).as_py() == orders.num_rows
