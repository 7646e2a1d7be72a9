"""Quality gates block bad region-days, quarantine them with reasons, and lose no row."""

import dataclasses
import datetime as dt
import gzip

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline_patterns.defs.assets.regional import quarantine_key, regional_key, regional_orders_assets, run_outcome
from pipeline_patterns.defs.checks import (
    QUALITY_GATES,
    QualityGates,
    accounting_result,
    day_evaluations,
    gate_results,
)
from pipeline_patterns.defs.partitions import REGIONS
from pipeline_patterns.lib import landing
from pipeline_patterns.lib.delta_writes import read_table
from pipeline_patterns.lib.quarantine import RegionDay, judge
from pipeline_patterns.lib.rules import REPEATS, RULES, DayJudge, GateSettings, RuleOutcome, evaluate_day
from pipeline_patterns.lib.simulated_feed import FeedSettings, region_day_defects
from pipeline_patterns_tests.helpers import (
    TEST_MIN_ORDERS,
    TEST_ORDERS_PER_DAY,
    gate_evaluation,
    materialize,
)

DAY = dt.date(2024, 1, 2)
SETTINGS = GateSettings(min_orders_per_day=2, max_orders_per_day=10, known_currencies=("EUR", "USD"), region="us-east")
HEADER = "order_id,user_id,region,amount,currency,event_ts,batch_id,delivered_at"


def orders(**overrides) -> pa.Table:
    """Three good orders of DAY, with columns overridden."""
    base = {
        "order_id": ["o1", "o2", "o3"],
        "user_id": ["u1", "u2", "u3"],
        "region": ["us-east"] * 3,
        "amount": [10.0, 20.0, 0.0],
        "currency": ["USD", "EUR", "USD"],
        "event_ts": [dt.datetime(2024, 1, 2, h, tzinfo=dt.UTC) for h in (1, 12, 23)],
        "batch_id": ["b"] * 3,
        "delivered_at": [dt.datetime(2024, 1, 3, tzinfo=dt.UTC)] * 3,
        "day": [DAY.isoformat()] * 3,
        "parse_errors": ["", "", ""],
    }
    base.update(overrides)
    table = pa.table(base)
    return table.set_column(
        table.schema.get_field_index("event_ts"), "event_ts", table["event_ts"].cast(pa.timestamp("us", tz="UTC"))
    ).set_column(
        table.schema.get_field_index("delivered_at"),
        "delivered_at",
        table["delivered_at"].cast(pa.timestamp("us", tz="UTC")),
    )


def outcome(table: pa.Table, rule: str, landed: landing.LandedDay | None = None):
    return next(o for o in evaluate_day(table, DAY, SETTINGS, landed) if o.rule == rule)


def landed(drift: list[str] = [], refused: list[str] = []) -> landing.LandedDay:  # noqa: B006 (read only)
    return landing.LandedDay("us-east", DAY.isoformat(), ["b00.csv"], 3, drift, refused)


FAILING = {
    "files_readable": (orders(), landed(refused=["b01.csv: gzip-compressed content, not CSV text"])),
    "schema_matches": (orders(), landed(drift=["b00.csv: id, user"])),
    "values_parse": orders(parse_errors=["", "amount", ""]),
    "order_id_not_null": orders(order_id=["o1", None, "o3"]),
    "user_id_not_null": orders(user_id=[None, "u2", "u3"]),
    "order_id_unique": orders(order_id=["o1", "o1", "o3"]),
    "volume_within_bounds": orders().slice(0, 1),
    "required_fields_present": orders(amount=[10.0, None, 1.0]),
    "region_matches": orders(region=["us-east", "eu-west", "us-east"]),
    "keys_plausible": orders(user_id=["u1", "u" * 257, "u3"]),
    "amount_plausible": orders(amount=[10.0, float("nan"), 1e17]),
    "amount_non_negative": orders(amount=[10.0, -5.0, 1.0]),
    "currency_known": orders(currency=["USD", "XYZ", "USD"]),
    "event_time_not_in_future": orders(event_ts=[dt.datetime(2024, 1, 5, tzinfo=dt.UTC)] * 3),
    "times_in_range": orders(event_ts=[dt.datetime(1, 1, 1, tzinfo=dt.UTC)] * 3),
    "event_time_fresh": orders(event_ts=[dt.datetime(2024, 1, 2, 1, tzinfo=dt.UTC)] * 3),
}


@pytest.mark.parametrize("rule", [r.name for r in RULES])
def test_each_rule_passes_a_good_day_and_fails_its_bad_day(rule):
    assert outcome(orders(), rule, landed()).passed
    table, day_landed = FAILING[rule] if isinstance(FAILING[rule], tuple) else (FAILING[rule], None)
    bad = outcome(table, rule, day_landed)
    assert not bad.passed
    if bad.failing_rows:
        assert bad.sample_keys


def test_a_day_judged_in_batches_gets_the_verdicts_of_the_day_judged_at_once():
    day = pa.concat_tables([FAILING[r] for r in FAILING if not isinstance(FAILING[r], tuple)])
    day = day.set_column(0, "order_id", pa.array([f"o{i % 7}" for i in range(day.num_rows)]))  # repeats too
    judge = DayJudge(DAY, SETTINGS)
    for batch in day.to_batches(max_chunksize=4):
        judge.add(pa.Table.from_batches([batch]))
    assert judge.outcomes() == evaluate_day(day, DAY, SETTINGS)
    assert not next(o for o in judge.outcomes() if o.rule == "order_id_unique").passed
    # the same day with each row's count of its id over the whole day (REPEATS, as judge_days'
    # window adds it): the judge keeps no id, and its verdicts are the same
    ids = day["order_id"].to_pylist()
    counted = day.append_column(REPEATS, pa.array([ids.count(i) if i else 1 for i in ids], pa.int64()))
    from_counts = DayJudge(DAY, SETTINGS)
    for batch in counted.to_batches(max_chunksize=4):
        from_counts.add(pa.Table.from_batches([batch]))
    assert from_counts.outcomes() == judge.outcomes() and not from_counts._ids


def test_every_rule_has_a_failing_example():
    assert set(FAILING) == {r.name for r in RULES}


def quarantine(data_dir) -> pa.Table:
    """Every region's quarantined rows."""
    tables = [read_table(str(p)) for p in sorted((data_dir / "lake" / "quarantined_orders").iterdir())]
    return pa.concat_tables(tables)


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}


def test_known_bad_region_days_are_quarantined_and_hold_only_their_global_days(default_range):
    """Over the first five days of the shared default-config range (conftest.py)."""
    five = [(dt.date(2024, 1, 1) + dt.timedelta(i)).isoformat() for i in range(5)]
    bad = {("eu-west", "2024-01-01"), ("us-east", "2024-01-05"), ("eu-west", "2024-01-05")}
    feed = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)
    listed = {
        (r, d) for r in REGIONS for d in five if region_day_defects(r, dt.date.fromisoformat(d), feed).null_user_ids
    }
    assert listed == bad  # what `pipeline-patterns source defects` announces
    data_dir, result = default_range.data_dir, default_range.result
    assert not result.success  # the run reports the held days
    global_days = {
        e.partition for e in result.get_asset_materialization_events() if e.asset_key.path == ["global_orders"]
    }
    assert global_days & set(five) == {"2024-01-02", "2024-01-03", "2024-01-04"}

    quarantined = quarantine(data_dir)
    quarantined = quarantined.filter(pc.is_in(quarantined["day"], value_set=pa.array(five)))
    assert set(zip(quarantined["region"].to_pylist(), quarantined["day"].to_pylist(), strict=True)) == bad
    assert set(quarantined["failed_checks"].to_pylist()) == {"user_id_not_null"}
    assert all("user_id_not_null" in r for r in quarantined["reason"].to_pylist())
    assert set(quarantined["quarantined_by_run"].to_pylist()) == {result.run_id}
    evaluations = {
        (e.asset_key.to_user_string(), e.check_name, e.partition): e
        for e in result.get_asset_check_evaluations()
        if e.partition in five
    }
    eu_west = evaluations[("regional_orders/eu_west", QUALITY_GATES, "2024-01-01")]
    assert not eu_west.passed and eu_west.severity == dg.AssetCheckSeverity.ERROR
    assert eu_west.metadata["user_id_not_null"].value["passed"] is False
    assert eu_west.metadata["failed_checks"].value == "user_id_not_null"
    assert all(
        evaluations[("regional_orders/us_west", QUALITY_GATES, d)].metadata["user_id_not_null"].value["passed"]
        for d in five
    )
    # each day's verdict targets that day's materialization: the current verdict of the day, which
    # the check's partition bar in the UI shows (a verdict targeting none would not count)
    key = dg.AssetKey(["regional_orders", "eu_west"])
    materialized = {
        r.partition_key: r.storage_id
        for r in default_range.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=five), limit=5
        ).records
    }
    targets = {
        e.partition: e.target_materialization_data.storage_id
        for e in result.get_asset_check_evaluations()
        if e.asset_key == key
        and e.check_name == QUALITY_GATES
        and e.partition in five
        and e.target_materialization_data
    }
    assert targets == materialized and len(targets) == 5
    for region in REGIONS:
        key = f"regional_orders/{region.replace('-', '_')}"
        assert all(evaluations[(key, "rows_accounted", d)].passed for d in five)
        clean = read_table(str(data_dir / "lake" / "regional_orders" / region.replace("-", "_")))
        clean_days = set(clean["day"].to_pylist())
        assert clean_days.isdisjoint({d for r, d in bad if r == region})  # the clean partition stays empty


def test_a_collapsed_volume_day_is_quarantined_with_its_bounds(spark, tmp_path):
    result = materialize(
        tmp_path,
        dg.DagsterInstance.ephemeral(),
        partition="2024-02-09",
        selection=[
            "raw_orders/eu_west",
            "regional_orders/eu_west",
            "quarantined_orders/eu_west",
            "late_orders/eu_west",
        ],
        raise_on_error=False,
    )
    gate = gate_evaluation(result, region="eu-west")
    assert not gate.passed and gate.metadata["failed_checks"].value == "volume_within_bounds"
    assert gate.partition == "2024-02-09"  # the verdict is the day's own
    volume = gate.metadata["volume_within_bounds"].value
    assert not volume["passed"] and volume["orders"] == 8 and volume["min_orders_per_day"] == TEST_MIN_ORDERS
    assert quarantine(tmp_path).num_rows == 8


def test_a_quarantined_day_moves_to_the_clean_table_once_its_source_is_fixed(spark, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    selection = ["raw_orders/us_east", "regional_orders/us_east", "quarantined_orders/us_east", "late_orders/us_east"]
    materialize(tmp_path, instance, partition="2024-01-05", selection=selection, raise_on_error=False)
    assert quarantine(tmp_path).num_rows == TEST_ORDERS_PER_DAY
    # the source corrects the day (no more null user ids): re-extract and re-process the same day
    fixed = materialize(
        tmp_path, instance, partition="2024-01-05", selection=selection, corrected=["us-east 2024-01-05"]
    )
    assert fixed.success
    assert quarantine(tmp_path).num_rows == 0
    clean = read_table(str(tmp_path / "lake" / "regional_orders" / "us_east"))
    assert clean.num_rows == TEST_ORDERS_PER_DAY and clean["user_id"].null_count == 0
    # and back: a re-run with the bad source quarantines it again, nothing duplicated
    materialize(tmp_path, instance, partition="2024-01-05", selection=selection, raise_on_error=False)
    assert quarantine(tmp_path).num_rows == TEST_ORDERS_PER_DAY
    assert read_table(str(tmp_path / "lake" / "regional_orders" / "us_east")).num_rows == 0


GOOD = "o{i},u{i},us-east,12.50,USD,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z"
# The battery of hostile inputs, one per day of a range run, is test_hostile_input.py.


def test_a_compressed_file_is_refused_unread_and_quarantines_its_region_day_naming_it(spark, tmp_path):
    """Its lines cannot be read as records: the file is refused (named, left in the landing zone),
    the day's other rows go to quarantine, and the accounting holds over the files read."""
    good = "\n".join(GOOD.format(i=i) for i in range(3)) + "\n"
    packed = gzip.compress(f"{HEADER}\n{GOOD.format(i=9)}\n".encode(), mtime=0)
    landing.land(
        tmp_path / "landing", "us-east", DAY, "hand-made", {"b00.csv": f"{HEADER}\n{good}".encode(), "b01.csv": packed}
    )
    result = _materialize_small(tmp_path)
    assert result.success  # the quarantine is the designed branch
    gate = gate_evaluation(result)
    readable = gate.metadata["files_readable"].value
    assert not gate.passed and not readable["passed"]
    assert readable["refused_files"] == (
        "b01.csv: gzip-compressed content, not CSV text, refused unread; have the source deliver it uncompressed"
    )
    rows = quarantine(tmp_path)
    assert sorted(rows["order_id"].to_pylist()) == ["o0", "o1", "o2"]
    assert set(rows["failed_checks"].to_pylist()) == {"files_readable"}
    assert "b01.csv: gzip-compressed" in rows["reason"][0].as_py()
    assert check_evaluations(result)[("regional_orders/us_east", "rows_accounted")] is True


def test_a_region_day_of_empty_files_fails_the_volume_gate(spark, tmp_path):
    landing.land(tmp_path / "landing", "us-east", DAY, "empty", {"b00.csv": b"", "b01.csv": f"{HEADER}\n".encode()})
    result = _materialize_small(tmp_path)
    volume = gate_evaluation(result).metadata["volume_within_bounds"].value
    assert not volume["passed"] and volume["orders"] == 0
    assert read_table(str(tmp_path / "lake" / "regional_orders" / "us_east")).num_rows == 0


def _materialize_small(data_dir) -> dg.ExecuteInProcessResult:
    """The regional step over hand-landed files, with volume bounds that fit three orders."""
    return materialize(
        data_dir,
        dg.DagsterInstance.ephemeral(),
        partition=DAY.isoformat(),
        selection=["regional_orders/us_east", "quarantined_orders/us_east", "late_orders/us_east"],
        resources={"quality_gates": QualityGates(min_orders_per_day=1, freshness_lag_hours=24)},
        raise_on_error=False,
    )


def test_schema_drift_in_a_landed_header_is_quarantined(spark, tmp_path):
    drifted = "id,user_id,region,amount,currency,event_ts,batch_id,delivered_at"
    landing.land(
        tmp_path / "landing", "us-east", DAY, "drift", {"b00.csv": f"{drifted}\n{GOOD.format(i=1)}\n".encode()}
    )
    result = _materialize_small(tmp_path)
    schema = gate_evaluation(result).metadata["schema_matches"].value
    assert schema["landed_header_drift"] == "b00.csv: header: missing order_id; 1 unexpected"
    assert not schema["passed"]


def test_a_quarantined_region_day_reports_its_branch_and_rows_per_day(default_range):
    result = default_range.result
    # a quarantined day is the designed branch, not a failure: only the fan-in, which holds its day, fails
    assert {e.step_key for e in result.all_events if e.is_step_failure} == {"global_orders_and_daily_revenue"}
    per_day = {
        (e.asset_key.path[0], e.partition): e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.path[1:] == ["us_east"]
    }
    assert per_day[("regional_orders", "2024-01-05")]["branch"].value == "quarantined: user_id_not_null"
    assert per_day[("regional_orders", "2024-01-05")]["dagster/row_count"].value == 0
    assert per_day[("quarantined_orders", "2024-01-05")]["dagster/row_count"].value == TEST_ORDERS_PER_DAY
    assert per_day[("quarantined_orders", "2024-01-05")]["failed_checks"].value == "user_id_not_null"
    assert per_day[("regional_orders", "2024-01-05")]["run_outcome"].value.startswith(
        "quarantined: global_orders holds"
    )
    for day in ("2024-01-04", "2024-01-06"):
        assert per_day[("regional_orders", day)]["branch"].value == "processed"
        assert "2024-01-05" in per_day[("regional_orders", day)]["run_outcome"].value  # why its run is red
        assert per_day[("regional_orders", day)]["dagster/row_count"].value == TEST_ORDERS_PER_DAY
        assert per_day[("quarantined_orders", day)]["dagster/row_count"].value == 0
    evaluations = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == QUALITY_GATES and e.asset_key.path == ["regional_orders", "us_east"]
    ]
    feed = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)
    days = [(dt.date(2024, 1, 1) + dt.timedelta(i)) for i in range(10)]
    failing = [d.isoformat() for d in days if region_day_defects("us-east", d, feed).null_user_ids]
    assert "2024-01-05" in failing
    gate = next(e for e in evaluations if e.partition is None)  # the range's summary
    assert not gate.passed and gate.metadata["user_id_not_null"].value["failing_days"] == failing
    assert all(f"{day} (user_id_not_null" in (gate.description or "") for day in failing)
    # and each day's own verdict, with the rule's own outcome
    verdicts = {e.partition: e.metadata["user_id_not_null"].value["passed"] for e in evaluations if e.partition}
    assert verdicts == {d.isoformat(): d.isoformat() not in failing for d in days}
    assert all(not e.passed for e in evaluations if e.partition in failing)


def staged(table: pa.Table, duplicates: list[int], superseded: list[int]) -> pa.Table:
    """`table` as the parse and deduplication stage hands it to the gates: each kept row with the
    count of true copies and of older versions dropped for it."""
    return table.append_column("duplicates", pa.array(duplicates, pa.int64())).append_column(
        "superseded", pa.array(superseded, pa.int64())
    )


def test_a_good_region_day_is_processed_and_every_landed_row_is_accounted():
    verdict = judge(
        DAY.isoformat(), [staged(orders(), [1, 0, 0], [0, 1, 0])], landed=landed_records(5), settings=SETTINGS
    )
    assert verdict.branch == "processed" and verdict.failed_checks == []
    assert (verdict.clean_rows, verdict.quarantined_rows, verdict.duplicates, verdict.superseded) == (3, 0, 1, 1)
    assert verdict.accounted  # 5 landed = 3 kept + 1 copy + 1 older version


def test_one_failed_blocking_rule_sends_the_whole_region_day_to_quarantine_naming_it():
    bad = orders(user_id=[None, "u2", "u3"])
    verdict = judge(DAY.isoformat(), [staged(bad, [0, 0, 0], [0, 0, 0])], landed=landed_records(3), settings=SETTINGS)
    assert verdict.branch == "quarantined" and verdict.failed_checks == ["user_id_not_null"]
    assert (verdict.clean_rows, verdict.quarantined_rows) == (0, 3)
    assert verdict.reason == "user_id_not_null: 1 of 3 rows (e.g. o1); the whole day quarantined"
    assert verdict.accounted


def test_a_landed_row_the_stages_lost_breaks_the_accounting():
    verdict = judge(
        DAY.isoformat(), [staged(orders(), [0, 0, 0], [0, 0, 0])], landed=landed_records(4), settings=SETTINGS
    )
    assert not verdict.accounted  # 4 landed, 3 kept, none dropped as a copy: one row unaccounted


def landed_records(records: int) -> landing.LandedDay:
    return landing.LandedDay("us-east", DAY.isoformat(), ["b00.csv"], records, [], [])


def test_each_days_check_verdict_names_its_day_first_so_the_history_rows_differ():
    good = judge(DAY.isoformat(), [staged(orders(), [0, 0, 0], [0, 0, 0])], landed=landed_records(3), settings=SETTINGS)
    bad_day = (DAY + dt.timedelta(days=1)).isoformat()
    bad = judge(
        bad_day,
        [staged(orders(user_id=[None, "u2", "u3"], day=[bad_day] * 3), [0, 0, 0], [0, 0, 0])],
        landed=landing.LandedDay("us-east", bad_day, ["b00.csv"], 3, [], []),
        settings=SETTINGS,
    )
    key = regional_key("us-east")
    for d in (good, bad):
        for evaluation in day_evaluations(key, d):
            assert evaluation.partition == d.day and evaluation.metadata["day"].value == d.day
            assert evaluation.description and evaluation.description.startswith(f"{d.day}: ")
    by_check = {e.check_name: e.description for e in day_evaluations(key, bad)}
    # its events are of the day before: stale for its own day, a warning (a check of its own) that
    # does not quarantine
    assert by_check[QUALITY_GATES] == f"{bad_day}: user_id_not_null failed on 1 row; the region-day is quarantined"
    assert by_check["event_time_fresh"] == f"{bad_day}: event_time_fresh failed; the region-day is quarantined"
    assert by_check["rows_accounted"] == f"{bad_day}: every landed row accounted for"
    # the run's own results over the days say which days they cover
    gate, fresh = gate_results([good, bad])
    label = f"{good.day}...{bad_day} (2 days; each day also has its own row)"
    assert gate.description == f"{label}: failed on {bad_day} (user_id_not_null)"
    assert fresh.description == f"{label}: failed on {bad_day} (event_time_fresh)"
    assert gate_results([good])[0].description == f"{good.day}: every rule passed; the region-day is processed"
    assert accounting_result([good]).description == f"{good.day}: every landed row accounted for"


def test_a_processed_day_says_why_its_run_may_be_red_and_a_quarantined_day_that_it_is_held():
    good = judge(DAY.isoformat(), [staged(orders(), [0, 0, 0], [0, 0, 0])], landed=landed_records(3), settings=SETTINGS)
    bad = judge(
        DAY.isoformat(),
        [staged(orders(user_id=[None, "u2", "u3"]), [0, 0, 0], [0, 0, 0])],
        landed=landed_records(3),
        settings=SETTINGS,
    )
    assert "fan-in holds a day" in run_outcome(good, []) and "this region holds" not in run_outcome(good, [])
    assert run_outcome(good, ["2024-01-05"]).endswith("this region holds 2024-01-05 in this run")
    assert run_outcome(bad, [bad.day]).startswith(f"quarantined: global_orders holds {bad.day}")


def test_each_regional_nodes_kind_and_first_description_line_name_its_branch():
    """The lineage view labels all three nodes of a region with the region; the kind tag (shown on
    the node by default) and the description's first line tell the branch."""
    specs = {spec.key: spec for assets in regional_orders_assets for spec in assets.specs}
    for region in REGIONS:
        clean, quarantine = specs[regional_key(region)], specs[quarantine_key(region)]
        late = specs[dg.AssetKey(["late_orders", quarantine_key(region).path[1]])]
        assert "clean" in clean.kinds and "quarantine" in quarantine.kinds and "late" in late.kinds
        # the lineage view opens with groups collapsed: one group per branch shows the branches
        assert (clean.group_name, quarantine.group_name, late.group_name) == ("regional", "quarantine", "late")
        assert (clean.description or "").splitlines()[0] == f"Clean rows of {region}."
        assert (quarantine.description or "").splitlines()[0] == f"Quarantine of {region}."
        assert (late.description or "").splitlines()[0] == f"Too late for {region}."


# deliveries_ordered reads what the deduplication counted: a kept row with a delivery tied to it
# (hand-made rows without the count have no deliveries to order)
FAILING["deliveries_ordered"] = (orders(ordering_ties=[0, 1, 0]), None)


def test_a_tie_between_deliveries_of_an_order_quarantines_the_day_saying_what_to_do():
    tied = staged(orders(ordering_ties=[0, 1, 0]), [0, 0, 0], [0, 1, 0])
    verdict = judge(DAY.isoformat(), [tied], landed=landed_records(4), settings=SETTINGS)
    assert verdict.branch == "quarantined" and verdict.failed_checks == ["deliveries_ordered"] and verdict.accounted
    assert verdict.reason.startswith("deliveries_ordered: 1 of 3 rows (e.g. o2); the whole day quarantined (two ")
    assert "have the source redeliver the order with a later delivery time or batch" in verdict.reason


def test_a_batch_id_longer_than_the_key_limit_is_implausible():
    bad = outcome(orders(batch_id=["b", "b" * (SETTINGS.max_key_length + 1), "b"]), "keys_plausible")
    assert not bad.passed and bad.failing_rows == 1 and bad.sample_keys == ["o2"]


def test_orders_whose_event_day_precedes_the_first_partition_are_counted_and_reported():
    from pipeline_patterns.lib.quarantine import before_first_day_note

    first = DAY.isoformat()  # as if the partitions started on DAY
    early = [dt.datetime(2024, 1, 2, 9, tzinfo=dt.UTC), dt.datetime(2023, 12, 31, 9, tzinfo=dt.UTC)]
    rows = staged(orders(event_ts=[*early, dt.datetime(2024, 1, 1, 9, tzinfo=dt.UTC)]), [0, 0, 0], [0, 0, 0])
    verdict = judge(first, [rows], landed=landed_records(3), settings=SETTINGS, first_day=first)
    assert verdict.before_first_day == 2 and verdict.late_days == {"2023-12-31": 1, "2024-01-01": 1}
    assert verdict.branch == "processed" and verdict.clean_rows == 3  # kept: the watermark accepts them
    assert before_first_day_note([verdict], first) == (
        f"2 orders have an event day before the first partition {first} (per feed day: {first}: 2): they are in "
        "the clean table but counted in no global day. To count them, start the daily partitions earlier "
        "(defs/partitions.py) and backfill from there; to drop them, correct the source."
    )
    one = dataclasses.replace(verdict, before_first_day=1)
    assert before_first_day_note([one], first).startswith(
        f"1 order has an event day before the first partition {first} ("
    )
    on_time = judge(first, [staged(orders(), [0, 0, 0], [0, 0, 0])], landed=landed_records(3), settings=SETTINGS)
    assert on_time.before_first_day == 0 and before_first_day_note([on_time], first) is None


def test_a_days_gate_verdict_carries_every_rules_outcome_and_its_severity():
    """One gate evaluation per region-day of a range for all the rules that quarantine (each rule's
    outcome an entry of its metadata, the failed rules named after the day), failed exactly when the
    day is quarantined; the warning rule is its own WARN check."""

    def region_day(*failed: str) -> RegionDay:
        outcomes = [
            RuleOutcome(r.name, r.name not in failed, 2 if r.name in failed else 0, ["o1"] * (r.name in failed), {})
            for r in RULES
        ]
        return RegionDay(DAY.isoformat(), rows=3, outcomes=outcomes, landed=3, duplicates=0, superseded=0)

    key = regional_key("us-east")
    for failed, gate_passed, branch in [
        ((), True, "processed"),
        (("event_time_fresh",), True, "processed"),
        (("user_id_not_null", "event_time_fresh"), False, "quarantined"),
    ]:
        d = region_day(*failed)
        assert d.branch == branch  # lib/quarantine.py decides the branch; the verdict reports it
        gate, fresh, accounted = day_evaluations(key, d)
        names = (gate.check_name, fresh.check_name, accounted.check_name)
        assert names == (QUALITY_GATES, "event_time_fresh", "rows_accounted")
        assert accounted.passed and accounted.blocking and not gate.blocking and not fresh.blocking
        # the gate fails exactly when the region-day is quarantined; the warning rule on its own
        assert (gate.passed, gate.severity, gate.partition) == (gate_passed, dg.AssetCheckSeverity.ERROR, d.day)
        assert (fresh.passed, fresh.severity) == ("event_time_fresh" not in failed, dg.AssetCheckSeverity.WARN)
        for rule in RULES:
            entry = (gate if rule.blocking else fresh).metadata[rule.name].value
            assert entry["passed"] is (rule.name not in failed) and entry["severity"] == rule.severity
            assert entry["failing_rows"] == (2 if rule.name in failed else 0)
        assert gate.metadata["failed_checks"].value == (", ".join(d.failed_checks) or "none")
    assert gate.description == f"{DAY}: user_id_not_null failed on 2 rows; the region-day is quarantined"
    assert fresh.description == f"{DAY}: event_time_fresh failed on 2 rows; the region-day is quarantined"
    assert day_evaluations(key, region_day("event_time_fresh"))[1].description == (
        f"{DAY}: event_time_fresh failed on 2 rows; the region-day is processed"
    )
