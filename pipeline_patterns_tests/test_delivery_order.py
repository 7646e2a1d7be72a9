"""The newest delivery of an order wins, deterministically and visibly: deliveries are ordered by
delivery time, then by batch sequence comparing numbers as numbers ('b9' < 'b10'); two deliveries
that tie on both but say different things quarantine their region-day."""

import datetime as dt

import pyarrow as pa
import pytest

from pipeline_patterns.lib import landing
from pipeline_patterns.lib.late_data import newest_deliveries
from pipeline_patterns.lib.orders import (
    REGIONAL_SCHEMA,
    STAGED_SCHEMA,
    batch_sequence,
    batch_sequence_sql,
    regional_orders_frame,
)
from pipeline_patterns.lib.quarantine import judge
from pipeline_patterns.lib.rules import GateSettings

DAY = dt.date(2024, 1, 2)
HEADER = "order_id,user_id,region,amount,currency,event_ts,batch_id,delivered_at"
NOON = f"{DAY}T12:00:00Z"
# in natural order, each a later batch than the one before
BATCHES = [None, "", "0", "b", "b1", "b01a", "b2", "b9", "b10", "b10a", "b11", "b100", "b1000000000000000000000", "c"]


def test_batch_ids_compare_numbers_as_numbers():
    assert sorted(BATCHES[1:], key=batch_sequence) == BATCHES[1:]
    assert batch_sequence("b09") == batch_sequence("b9") and batch_sequence(None) is None


def test_spark_orders_batch_ids_exactly_as_python_does(spark):
    frame = spark.createDataFrame([(b,) for b in BATCHES], "b string").selectExpr(f"{batch_sequence_sql('b')} AS k")
    assert [row.k for row in frame.collect()] == [batch_sequence(b) for b in BATCHES]


def land(root, *rows: tuple[str, str, str, str]) -> list[str]:
    """One file per row of (order id, amount, batch, delivery time), all of DAY."""
    files = {
        f"f{i}.csv": f"{HEADER}\n{o},u1,us-east,{a},USD,{DAY}T10:00:00Z,{b},{t}\n".encode()
        for i, (o, a, b, t) in enumerate(rows)
    }
    landing.land(root, "us-east", DAY, "r1", files)
    return landing.landed_files(root, "us-east", [DAY])


def test_the_later_batch_by_number_wins_a_same_time_redelivery(spark, tmp_path):
    files = land(tmp_path, ("o1", "10.00", "b10", NOON), ("o1", "9.00", "b9", NOON))
    [kept] = regional_orders_frame(spark, files).toArrow().to_pylist()
    assert (kept["amount"], kept["batch_id"], kept["superseded"], kept["ordering_ties"]) == (10.0, "b10", 1, 0)


@pytest.mark.parametrize("batches", [("b1", "b1"), ("b09", "b9"), ("", "")])
def test_two_deliveries_tied_on_time_and_batch_with_other_content_quarantine_the_day(spark, tmp_path, batches):
    files = land(
        tmp_path, ("o1", "10.00", batches[0], NOON), ("o1", "12.00", batches[1], NOON), ("o2", "1.00", "b1", NOON)
    )
    staged = regional_orders_frame(spark, files).toArrow().select(STAGED_SCHEMA.names).cast(STAGED_SCHEMA)
    assert sorted(zip(staged["order_id"].to_pylist(), staged["ordering_ties"].to_pylist(), strict=True)) == [
        ("o1", 1),
        ("o2", 0),
    ]
    [landed] = landing.inspect_days(tmp_path, "us-east", [DAY], HEADER.split(","))
    settings = GateSettings(min_orders_per_day=1, known_currencies=("USD",), freshness_lag_hours=24)
    verdict = judge(DAY.isoformat(), [staged], landed=landed, settings=settings)
    assert verdict.failed_checks == ["deliveries_ordered"] and verdict.accounted
    assert verdict.reason.startswith("deliveries_ordered: 1 of 2 rows (e.g. o1)")


def test_true_copies_tied_on_time_and_batch_are_duplicates_not_a_tie(spark, tmp_path):
    files = land(tmp_path, ("o1", "10.00", "b1", NOON), ("o1", "10.00", "b1", NOON))
    [kept] = regional_orders_frame(spark, files).toArrow().to_pylist()
    assert (kept["duplicates"], kept["ordering_ties"]) == (1, 0)


def test_across_feed_days_the_later_batch_by_number_wins_too():
    def delivery(feed_day: str, batch: str, amount: float) -> dict:
        at = dt.datetime(2024, 1, 3, 12, tzinfo=dt.UTC)
        return {
            "order_id": "o1", "user_id": "u1", "region": "us-east", "amount": amount, "currency": "USD",
            "event_ts": dt.datetime(2024, 1, 2, 10, tzinfo=dt.UTC), "batch_id": batch, "delivered_at": at,
            "day": feed_day,
        }  # fmt: skip

    rows = pa.Table.from_pylist([delivery("2024-01-02", "b10", 10.0), delivery("2024-01-03", "b9", 9.0)])
    [winner] = newest_deliveries(rows.cast(REGIONAL_SCHEMA), allowed_lateness=3).to_pylist()
    assert (winner["batch_id"], winner["amount"]) == ("b10", 10.0)
