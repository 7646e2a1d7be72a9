"""Quality gates block bad region-days, quarantine them with reasons, and lose no row."""

import datetime as dt
import gzip
import pathlib

import dagster as dg
import pyarrow as pa
import pytest

from pipeline_patterns.defs.checks import QualityGates
from pipeline_patterns.defs.partitions import REGIONS
from pipeline_patterns.lib import landing
from pipeline_patterns.lib.delta_writes import read_table
from pipeline_patterns.lib.rules import RULES, GateSettings, evaluate_day
from pipeline_patterns.lib.simulated_feed import FeedSettings, region_day_defects
from pipeline_patterns_tests.helpers import (
    TEST_MIN_ORDERS,
    TEST_ORDERS_PER_DAY,
    all_assets,
    materialize,
    pipeline_resources,
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
        "landed_columns": pa.array([None] * 3, pa.string()),
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


def outcome(table: pa.Table, rule: str):
    return next(o for o in evaluate_day(table, DAY, SETTINGS) if o.rule == rule)


FAILING = {
    "schema_matches": orders(landed_columns=["b00.csv: id, user", None, None]),
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
    "event_time_fresh": orders(event_ts=[dt.datetime(2024, 1, 2, 1, tzinfo=dt.UTC)] * 3),
}


@pytest.mark.parametrize("rule", [r.name for r in RULES])
def test_each_rule_passes_a_good_day_and_fails_its_bad_day(rule):
    assert outcome(orders(), rule).passed
    bad = outcome(FAILING[rule], rule)
    assert not bad.passed
    if bad.failing_rows:
        assert bad.sample_keys


def test_every_rule_has_a_failing_example():
    assert set(FAILING) == {r.name for r in RULES}


def quarantine(data_dir) -> pa.Table:
    """Every region's quarantined rows."""
    tables = [read_table(str(p)) for p in sorted((data_dir / "lake" / "quarantined_orders").iterdir())]
    return pa.concat_tables(tables)


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}


@pytest.mark.spark
def test_known_bad_region_days_are_quarantined_and_hold_only_their_global_days(spark, tmp_path):
    bad = {("eu-west", "2024-01-01"), ("us-east", "2024-01-05"), ("eu-west", "2024-01-05")}
    feed = FeedSettings(orders_per_day=TEST_ORDERS_PER_DAY)
    listed = {
        (r, (dt.date(2024, 1, 1) + dt.timedelta(i)).isoformat())
        for r in REGIONS
        for i in range(5)
        if region_day_defects(r, dt.date(2024, 1, 1) + dt.timedelta(i), feed).null_user_ids
    }
    assert listed == bad  # what `pipeline-patterns source defects` announces
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(tmp_path, instance, first="2024-01-01", last="2024-01-05", raise_on_error=False)
    assert not result.success  # the run reports the held days
    global_days = {
        e.partition for e in result.get_asset_materialization_events() if e.asset_key.path == ["global_orders"]
    }
    assert global_days == {"2024-01-02", "2024-01-03", "2024-01-04"}

    quarantined = quarantine(tmp_path)
    assert set(zip(quarantined["region"].to_pylist(), quarantined["day"].to_pylist(), strict=True)) == bad
    assert set(quarantined["failed_checks"].to_pylist()) == {"user_id_not_null"}
    assert all("user_id_not_null" in r for r in quarantined["reason"].to_pylist())
    assert set(quarantined["quarantined_by_run"].to_pylist()) == {result.run_id}
    evaluations = check_evaluations(result)
    assert evaluations[("regional_orders/eu_west", "user_id_not_null")] is False
    assert evaluations[("regional_orders/us_west", "user_id_not_null")] is True
    for region in REGIONS:
        key = f"regional_orders/{region.replace('-', '_')}"
        assert evaluations[(key, "rows_accounted")] is True
        clean = read_table(str(tmp_path / "lake" / "regional_orders" / region.replace("-", "_")))
        clean_days = set(clean["day"].to_pylist())
        assert clean_days.isdisjoint({d for r, d in bad if r == region})  # the clean partition stays empty


@pytest.mark.spark
def test_a_collapsed_volume_day_is_quarantined_with_its_bounds(spark, tmp_path):
    result = materialize(
        tmp_path,
        dg.DagsterInstance.ephemeral(),
        partition="2024-02-09",
        selection=["raw_orders/eu_west", "regional_orders/eu_west", "quarantined_orders/eu_west"],
        raise_on_error=False,
    )
    volume = next(e for e in result.get_asset_check_evaluations() if e.check_name == "volume_within_bounds")
    assert not volume.passed
    assert volume.metadata["orders"].value == 8 and volume.metadata["min_orders_per_day"].value == TEST_MIN_ORDERS
    assert quarantine(tmp_path).num_rows == 8


@pytest.mark.spark
def test_a_quarantined_day_moves_to_the_clean_table_once_its_source_is_fixed(spark, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    selection = ["raw_orders/us_east", "regional_orders/us_east", "quarantined_orders/us_east"]
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
BAD_INPUTS = {
    "an empty file beside good ones": ("", set()),
    "malformed line": ("o9,u9,us-east,1.00\n", {"values_parse", "currency_known", "required_fields_present"}),
    "unparseable amount": (
        "o9,u9,us-east,twelve,USD,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n",
        {"values_parse", "required_fields_present"},
    ),
    "unparseable timestamp": (
        "o9,u9,us-east,1.00,USD,yesterday,b00,2024-01-02T12:00:00Z\n",
        {"values_parse", "required_fields_present"},
    ),
    "unknown currency": ("o9,u9,us-east,1.00,XYZ,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n", {"currency_known"}),
    "negative amount": (
        "o9,u9,us-east,-1.00,USD,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n",
        {"amount_non_negative"},
    ),
    "future timestamp": (
        "o9,u9,us-east,1.00,USD,2030-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n",
        {"event_time_not_in_future"},
    ),
    "a cut-off timestamp": (
        "o9,u9,us-east,1.00,USD,2024-01-02T1,b00,2024-01-02T12:00:00Z\n",
        {"values_parse", "required_fields_present"},
    ),
    "a date without a time": (
        "o9,u9,us-east,1.00,USD,2024-01-02,b00,2024-01-02T12:00:00Z\n",
        {"values_parse", "required_fields_present"},
    ),
    "a huge line": (
        f"o9,{'u' * 2_000_000},us-east,1.00,USD,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n",
        {"keys_plausible"},
    ),
    # whole files (bytes) that are not UTF-8 CSV text: the reason names the file
    "a latin-1 file": (
        (HEADER + "\n" + GOOD.format(i=9).replace("u9", "u\xe9") + "\n").encode("latin-1"),
        {"schema_matches"},
    ),
    "a file with a byte-order mark": (f"\ufeff{HEADER}\n{GOOD.format(i=9)}\n".encode(), {"schema_matches"}),
    "a row of another region": (
        "o9,u9,eu-west,1.00,USD,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n",
        {"region_matches"},
    ),
    "an empty amount": (
        "o9,u9,us-east,,USD,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n",
        {"required_fields_present"},
    ),
    "a NaN amount": ("o9,u9,us-east,NaN,USD,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n", {"amount_plausible"}),
    "an infinite amount": (
        "o9,u9,us-east,inf,USD,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n",
        {"amount_plausible"},
    ),
    "an absurd amount": (
        "o9,u9,us-east,1e17,USD,2024-01-02T10:00:00Z,b00,2024-01-02T12:00:00Z\n",
        {"amount_plausible"},
    ),
}


@pytest.mark.spark
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_quarantined_with_a_reason(spark, tmp_path, case):
    extra, expected_checks = BAD_INPUTS[case]
    good = "\n".join(GOOD.format(i=i) for i in range(3)) + "\n"
    second = extra if isinstance(extra, bytes) else (f"{HEADER}\n{extra}" if extra else "").encode()
    files = {"b00.csv": f"{HEADER}\n{good}".encode(), "b01.csv": second}
    landing.land(tmp_path / "landing", "us-east", DAY, "hand-made", files)
    result = _materialize_small(tmp_path)
    failed = {
        e.check_name for e in result.get_asset_check_evaluations() if not e.passed and e.severity.value == "ERROR"
    }
    assert failed == expected_checks, case
    landed = landing.record_count(landing.landed_files(tmp_path / "landing", "us-east", [DAY]))
    if not expected_checks:
        assert read_table(str(tmp_path / "lake" / "regional_orders" / "us_east")).num_rows == landed
        return
    rows = quarantine(tmp_path)
    assert set(rows["failed_checks"].to_pylist()) == {
        ",".join(sorted(expected_checks, key=[r.name for r in RULES].index))
    }
    assert rows.num_rows == landed  # nothing lost: every landed line is in quarantine
    if isinstance(extra, bytes):  # the reason names the file and what is wrong with it
        drift = next(e for e in result.get_asset_check_evaluations() if e.check_name == "schema_matches")
        assert drift.metadata["landed_header_drift"].value.startswith("b01.csv: "), drift.metadata


@pytest.mark.spark
def test_a_compressed_file_fails_the_region_day_naming_the_file_and_writes_nothing(spark, tmp_path):
    """Its lines cannot be counted as records, so the accounting cannot hold: a clear refusal."""
    good = "\n".join(GOOD.format(i=i) for i in range(3)) + "\n"
    packed = gzip.compress(f"{HEADER}\n{GOOD.format(i=9)}\n".encode(), mtime=0)
    landing.land(
        tmp_path / "landing", "us-east", DAY, "hand-made", {"b00.csv": f"{HEADER}\n{good}".encode(), "b01.csv": packed}
    )
    result = _materialize_small(tmp_path)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "regional_orders/us_east: rows lost" in message and DAY.isoformat() in message
    assert "b01.csv: gzip-compressed content, not CSV text: have the source deliver it uncompressed" in message
    assert not (tmp_path / "lake" / "regional_orders" / "us_east" / "_delta_log").exists()


REDELIVERED = {
    # a later delivery repeating the order exactly: a duplicate
    "a true copy": ("o1,u1,us-east,12.50,USD,2024-01-02T10:00:00Z,b01,2024-01-02T18:00:00Z\n", set(), (3, 1, 0)),
    # a later delivery with another amount: the newest wins, the older version is superseded
    "a correction": ("o1,u1,us-east,13.00,USD,2024-01-02T10:00:00Z,b01,2024-01-02T18:00:00Z\n", set(), (3, 0, 1)),
    # a malformed later delivery must not outrank, nor vanish behind, the good one
    "a malformed redelivery": ('o1,u1,us-east,"1,234.50",USD,2024-01-02T10:00:00Z\n', {"values_parse"}, None),
    # blank ids are no ids: never merged into one order
    "blank order ids": (
        "  ,u8,us-east,1.00,USD,2024-01-02T10:00:00Z,b01,2024-01-02T18:00:00Z\n"
        " ,u9,us-east,2.00,USD,2024-01-02T11:00:00Z,b01,2024-01-02T18:00:00Z\n",
        {"order_id_not_null"},
        None,
    ),
}


@pytest.mark.spark
@pytest.mark.parametrize("case", list(REDELIVERED))
def test_only_true_copies_count_as_duplicates_and_nothing_is_lost(spark, tmp_path, case):
    extra, expected_checks, counts = REDELIVERED[case]
    good = "\n".join(GOOD.format(i=i) for i in range(3)) + "\n"
    files = {"b00.csv": f"{HEADER}\n{good}".encode(), "b01.csv": f"{HEADER}\n{extra}".encode()}
    landing.land(tmp_path / "landing", "us-east", DAY, "hand-made", files)
    result = _materialize_small(tmp_path)
    failed = {
        e.check_name for e in result.get_asset_check_evaluations() if not e.passed and e.severity.value == "ERROR"
    }
    assert failed == expected_checks, case
    metadata = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.path[0] == "regional_orders"
    )
    landed = metadata["rows_landed"].value
    kept, duplicates, superseded = (
        metadata["dagster/row_count"].value,
        metadata["duplicates_dropped"].value,
        metadata["superseded_dropped"].value,
    )
    assert landed == kept + duplicates + superseded + metadata["rows_quarantined"].value
    if counts:
        assert (kept, duplicates, superseded) == counts
        amount = read_table(str(tmp_path / "lake" / "regional_orders" / "us_east")).to_pydict()
        assert dict(zip(amount["order_id"], amount["amount"], strict=True))["o1"] == (13.0 if superseded else 12.5)
    else:
        assert kept == 0 and metadata["rows_quarantined"].value >= 1


@pytest.mark.spark
def test_a_region_day_of_empty_files_fails_the_volume_gate(spark, tmp_path):
    landing.land(tmp_path / "landing", "us-east", DAY, "empty", {"b00.csv": b"", "b01.csv": f"{HEADER}\n".encode()})
    result = _materialize_small(tmp_path)
    volume = next(e for e in result.get_asset_check_evaluations() if e.check_name == "volume_within_bounds")
    assert not volume.passed and volume.metadata["orders"].value == 0
    assert read_table(str(tmp_path / "lake" / "regional_orders" / "us_east")).num_rows == 0


def _materialize_small(data_dir) -> dg.ExecuteInProcessResult:
    """The regional step over hand-landed files, with volume bounds that fit three orders."""
    return dg.materialize(
        all_assets(),
        selection=["regional_orders/us_east", "quarantined_orders/us_east"],
        partition_key=DAY.isoformat(),
        resources={
            **pipeline_resources(data_dir),
            "quality_gates": QualityGates(min_orders_per_day=1, freshness_lag_hours=24),
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


@pytest.mark.spark
def test_schema_drift_in_a_landed_header_is_quarantined(spark, tmp_path):
    drifted = "id,user_id,region,amount,currency,event_ts,batch_id,delivered_at"
    landing.land(
        tmp_path / "landing", "us-east", DAY, "drift", {"b00.csv": f"{drifted}\n{GOOD.format(i=1)}\n".encode()}
    )
    result = _materialize_small(tmp_path)
    schema = next(e for e in result.get_asset_check_evaluations() if e.check_name == "schema_matches")
    assert not schema.passed and "id, user_id" in schema.metadata["landed_header_drift"].value


@pytest.mark.spark
def test_a_quarantined_region_day_reports_its_branch_and_rows_per_day(spark, tmp_path):
    result = materialize(
        tmp_path,
        dg.DagsterInstance.ephemeral(),
        first="2024-01-04",
        last="2024-01-06",
        selection=["raw_orders/us_east", "regional_orders/us_east", "quarantined_orders/us_east"],
    )
    assert result.success  # a quarantined day is the designed branch, not a failure
    per_day = {
        (e.asset_key.path[0], e.partition): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert per_day[("regional_orders", "2024-01-05")]["branch"].value == "quarantined: user_id_not_null"
    assert per_day[("regional_orders", "2024-01-05")]["dagster/row_count"].value == 0
    assert per_day[("quarantined_orders", "2024-01-05")]["dagster/row_count"].value == TEST_ORDERS_PER_DAY
    assert per_day[("quarantined_orders", "2024-01-05")]["failed_checks"].value == "user_id_not_null"
    for day in ("2024-01-04", "2024-01-06"):
        assert per_day[("regional_orders", day)]["branch"].value == "processed"
        assert per_day[("regional_orders", day)]["dagster/row_count"].value == TEST_ORDERS_PER_DAY
        assert per_day[("quarantined_orders", day)]["dagster/row_count"].value == 0
    evaluations = [e for e in result.get_asset_check_evaluations() if e.check_name == "user_id_not_null"]
    gate = next(e for e in evaluations if e.partition is None)  # the range's summary
    assert not gate.passed and gate.metadata["failing_days"].value == "2024-01-05"
    assert {e.partition: e.passed for e in evaluations if e.partition} == {  # and each day's own verdict
        "2024-01-04": True,
        "2024-01-05": False,
        "2024-01-06": True,
    }


@pytest.mark.spark
def test_a_missing_landing_file_fails_with_an_error_naming_file_and_day(spark, tmp_path):
    manifest = landing.land(
        tmp_path / "landing", "us-east", DAY, "lost", {"b00.csv": f"{HEADER}\n{GOOD.format(i=1)}\n".encode()}
    )
    pathlib.Path(manifest.paths(tmp_path / "landing")[0]).unlink()
    result = _materialize_small(tmp_path)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error)
    assert "b00.csv" in message and "us-east on 2024-01-02 is missing" in message


@pytest.mark.spark
def test_files_with_hidden_glob_or_odd_names_are_all_read(spark, tmp_path):
    names = ["_b01.csv", ".b02.csv", "*.csv", "[b03].csv", "b:04.csv"]
    files = {name: f"{HEADER}\n{GOOD.format(i=i)}\n".encode() for i, name in enumerate(names)}
    landing.land(tmp_path / "landing", "us-east", DAY, "odd-names", files)
    result = _materialize_small(tmp_path)
    assert result.success
    clean = read_table(str(tmp_path / "lake" / "regional_orders" / "us_east"))
    assert sorted(clean["order_id"].to_pylist()) == [f"o{i}" for i in range(len(names))]  # none skipped, none twice
