"""A default-config range backfill (the feed's bad region-days ON) finishes every ready day in ONE
run, quarantines exactly the bad region-days, holds exactly their global days, and leaves
Dagster's partition statuses true."""

import datetime as dt

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline_patterns.defs.checks import QUALITY_GATES, QualityGates
from pipeline_patterns.defs.partitions import REGIONS, daily_partitions, region_key
from pipeline_patterns.lib import landing
from pipeline_patterns.lib.day_window import DayWindow
from pipeline_patterns.lib.delta_writes import content_hash
from pipeline_patterns.lib.fan_in import fx_day, global_orders_table
from pipeline_patterns.lib.late_data import LATE_SCHEMA
from pipeline_patterns.lib.orders import REGIONAL_SCHEMA, STAGED_SCHEMA, daily_revenue_table, regional_orders_frame
from pipeline_patterns.lib.quarantine import AUDIT_COLUMNS, QUARANTINE_SCHEMA, judge
from pipeline_patterns.lib.simulated_feed import (
    RECORD_FIELDS,
    FeedSettings,
    expected_day_orders,
    expected_orders,
    region_day_defects,
    usd_rate,
)
from pipeline_patterns_tests.helpers import TEST_MIN_ORDERS, TEST_ORDERS_PER_DAY, lake_hashes, lake_table, materialize

SETTINGS = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)
DAYS = [(dt.date(2024, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(10)]  # the default_range scenario
# what `pipeline-patterns source defects` announces for these days
BAD = {
    (r, d)
    for r in REGIONS
    for d in DAYS
    if {"null_user_ids", "collapsed_volume"} & set(region_day_defects(r, dt.date.fromisoformat(d), SETTINGS).defects)
}
HELD = sorted({d for _, d in BAD})
READY = [d for d in DAYS if d not in HELD]


@pytest.fixture
def backfill(default_range):
    """The shared default-config range (conftest.py): 2024-01-01..01-10 in one run."""
    return default_range.data_dir, default_range.instance, default_range.result


def test_the_range_has_bad_region_days_on_more_than_one_day():
    assert len(HELD) >= 2 and DAYS[0] in HELD and READY


def test_one_run_processes_every_ready_day_and_holds_exactly_the_days_with_a_bad_region_day(backfill):
    data_dir, _, result = backfill
    orders = lake_table(data_dir, "global_orders")
    assert sorted(set(orders["day"].to_pylist())) == READY
    middle = READY[len(READY) // 2]
    rows = orders.filter(pc.equal(orders["day"], middle))
    # its orders by event time: from its own feed day and the range's clean feed days after it
    delivered = [dt.date.fromisoformat(d) for d in DAYS]
    expected = expected_day_orders(dt.date.fromisoformat(middle), SETTINGS, delivered, REGIONS, held=BAD)
    assert sorted(rows["order_id"].to_pylist()) == sorted(expected["order_id"].to_pylist())
    feed_days = {i.split("-")[-2] for i in rows["order_id"].to_pylist()}  # ids name their feed day
    assert len(feed_days) > 1, "late orders of later feed days are counted in their event day"
    revenue = lake_table(data_dir, "daily_revenue")
    assert sorted(set(revenue["day"].to_pylist())) == READY and revenue.num_rows == len(READY) * len(REGIONS)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "global_orders_and_daily_revenue"
    message = str(failure.event_specific_data.error)
    assert f"held {len(HELD)} of {len(DAYS)} days" in message
    for region, day in BAD:
        assert f"{region}: quarantined (" in message and f"{day}: " in message


def test_the_quarantine_holds_exactly_the_bad_region_days_rows(backfill):
    data_dir, _, _ = backfill
    for region in REGIONS:
        quarantined = lake_table(data_dir, f"quarantined_orders/{region_key(region)}")
        bad_days = sorted(d for r, d in BAD if r == region)
        assert sorted(set(quarantined["day"].to_pylist())) == bad_days
        for day in bad_days:
            rows = quarantined.filter(pc.equal(quarantined["day"], day))
            assert rows.num_rows == expected_orders(region, dt.date.fromisoformat(day), SETTINGS).num_rows
            defects = region_day_defects(region, dt.date.fromisoformat(day), SETTINGS)
            if defects.null_user_ids:  # the reason says how much of the day failed, and that all of it went
                assert set(rows["reason"].to_pylist()) == {
                    f"user_id_not_null: {defects.null_user_ids} of {rows.num_rows} rows (e.g. "
                    + ", ".join(sorted(rows.filter(pc.is_null(rows["user_id"]))["order_id"].to_pylist())[:3])
                    + "); the whole day quarantined"
                }


def test_every_region_day_accounts_for_every_landed_row(backfill):
    _, _, result = backfill
    seen = 0
    for event in result.get_asset_materialization_events():
        if event.asset_key.path[0] != "regional_orders":
            continue
        m = event.materialization.metadata
        quarantined = m["rows_quarantined"].value
        kept_or_copies = m["dagster/row_count"].value + m["duplicates_dropped"].value + m["superseded_dropped"].value
        assert m["rows_landed"].value == kept_or_copies + quarantined
        assert m["superseded_dropped"].value == 0  # the simulator's redeliveries are true copies
        region = event.asset_key.path[1].replace("_", "-")
        assert (quarantined > 0) == ((region, event.partition) in BAD)
        seen += 1
    assert seen == len(REGIONS) * len(DAYS)


def test_partition_statuses_are_true_per_day(backfill):
    _, instance, _ = backfill

    def statuses(key: str) -> dict[str, set[str]]:
        by_status: dict[str, set[str]] = {}
        found = instance.get_status_by_partition(dg.AssetKey.from_user_string(key), DAYS, daily_partitions) or {}
        for day in DAYS:
            by_status.setdefault(str(found.get(day)), set()).add(day)
        return by_status

    for key in ("global_orders", "daily_revenue"):
        assert statuses(key) == {
            "AssetPartitionStatus.MATERIALIZED": set(READY),
            "AssetPartitionStatus.FAILED": set(HELD),
        }
    for region in REGIONS:
        for layer in ("raw_orders", "regional_orders", "quarantined_orders", "late_orders"):
            assert statuses(f"{layer}/{region_key(region)}") == {"AssetPartitionStatus.MATERIALIZED": set(DAYS)}


def test_rerunning_overlapping_ranges_in_another_order_leaves_identical_content(backfill, tmp_path):
    data_dir, _, _ = backfill
    instance = dg.DagsterInstance.ephemeral()
    materialize(tmp_path, instance, first=DAYS[4], last=DAYS[-1], raise_on_error=False)
    materialize(tmp_path, instance, first=DAYS[0], last=DAYS[6], raise_on_error=False)
    materialize(tmp_path, instance, partition=DAYS[5], raise_on_error=False)
    assert lake_hashes(tmp_path) == lake_hashes(data_dir)


def test_every_check_has_a_verdict_for_every_day_of_the_range(backfill):
    """Dagster plans each check for each day of the range: every planned day gets its verdict (none
    left in progress or "execution failed"), each day's gate verdict carries each rule's outcome."""
    _, instance, result = backfill
    for region in REGIONS:
        key = dg.AssetKey(["regional_orders", region_key(region)])
        bad_days = {d for r, d in BAD if r == region}
        for check in (QUALITY_GATES, "rows_accounted"):
            records = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(key, check), limit=50
            )
            days = {r.partition: r for r in records if r.run_id == result.run_id and r.partition}
            by_day = {day: r.status.value for day, r in days.items()}
            expected = {d: "FAILED" if check == QUALITY_GATES and d in bad_days else "SUCCEEDED" for d in DAYS}
            assert by_day == expected, (region, check)
            for day, r in days.items():  # the history lists descriptions, not partitions: each names its day first
                evaluation = r.event.asset_check_evaluation if r.event else None
                assert evaluation and (evaluation.description or "").startswith(f"{day}: ")
                if check == QUALITY_GATES:
                    for rule in ("user_id_not_null", "volume_within_bounds"):
                        outcome = evaluation.metadata[rule].value
                        assert outcome["passed"] is not _fails(rule, region, day), (region, day, rule)
                        assert (rule in (evaluation.description or "")) is _fails(rule, region, day)


def _fails(check: str, region: str, day: str) -> bool:
    defects = set(region_day_defects(region, dt.date.fromisoformat(day), SETTINGS).defects)
    return {"user_id_not_null": "null_user_ids", "volume_within_bounds": "collapsed_volume"}[check] in defects


AUDIT_FREE = [c for c in QUARANTINE_SCHEMA.names if c not in AUDIT_COLUMNS]


def test_every_table_equals_a_reference_computed_the_simple_way(backfill, spark):
    """The executor-written, driver-committed tables hold exactly what the simple path (every row
    collected to Arrow, judged and converted in this process) computes from the same landing."""
    data_dir, _, _ = backfill
    landing_root = data_dir / "landing"
    gates = QualityGates(min_orders_per_day=TEST_MIN_ORDERS)
    window = DayWindow(dt.date.fromisoformat(DAYS[0]), dt.date.fromisoformat(DAYS[-1]) + dt.timedelta(days=1))
    expected, clean_by_region, held = {}, [], set()
    for region in REGIONS:
        settings = gates.settings(region)
        landed = landing.inspect_days(landing_root, region, window.days, columns=list(RECORD_FIELDS))
        files = [f for day in landed for f in day.files]
        staged = regional_orders_frame(spark, files).toArrow().select(STAGED_SCHEMA.names).cast(STAGED_SCHEMA)
        clean, quarantined = [], []
        for day, day_landed in zip(DAYS, landed, strict=True):
            rows = staged.filter(pc.equal(staged["day"], day))
            verdict = judge(day, [rows], landed=day_landed, settings=settings)  # one batch; ids counted here
            kept = rows.drop_columns(["duplicates", "superseded"])
            if verdict.branch == "processed":
                clean.append(kept.select(REGIONAL_SCHEMA.names).cast(REGIONAL_SCHEMA))
            else:
                held.add(day)
                n = kept.num_rows
                quarantined.append(
                    kept.append_column("failed_checks", pa.array([",".join(verdict.failed_checks)] * n, pa.string()))
                    .append_column("reason", pa.array([verdict.reason] * n, pa.string()))
                    .select(AUDIT_FREE)
                    .cast(pa.schema([QUARANTINE_SCHEMA.field(c) for c in AUDIT_FREE]))
                )
        clean_table = pa.concat_tables([REGIONAL_SCHEMA.empty_table(), *clean])
        clean_by_region.append(clean_table)
        expected[f"regional_orders/{region_key(region)}"] = content_hash(clean_table)
        expected[f"quarantined_orders/{region_key(region)}"] = content_hash(
            pa.concat_tables([QUARANTINE_SCHEMA.empty_table().select(AUDIT_FREE), *quarantined])
        )
        expected[f"late_orders/{region_key(region)}"] = content_hash(LATE_SCHEMA.empty_table())  # none > 3 days
    # the global days: every clean row counted in its event day (the simulator delivers an order
    # on one feed day only), the held days and the days before the range left out
    regional = []
    for t in clean_by_region:
        by_event = t.set_column(t.schema.get_field_index("day"), "day", fx_day(t["event_ts"]))
        ready = sorted(set(DAYS) - held)
        regional.append(by_event.filter(pc.is_in(by_event["day"], value_set=pa.array(ready))))
    orders = pa.concat_tables(regional)
    pairs = sorted(
        {(c, d) for c, d in zip(orders["currency"].to_pylist(), fx_day(orders["event_ts"]).to_pylist(), strict=True)}
    )
    rates = pa.table(
        {
            "currency": [c for c, _ in pairs],
            "fx_day": [d for _, d in pairs],
            "usd_rate": [usd_rate(c, dt.date.fromisoformat(d)) for c, d in pairs],  # what FxRates serves
        }
    )
    global_orders = global_orders_table(regional, rates)
    expected["global_orders"] = content_hash(global_orders)
    expected["daily_revenue"] = content_hash(daily_revenue_table(global_orders))
    assert held == set(HELD)
    assert lake_hashes(data_dir) == expected
